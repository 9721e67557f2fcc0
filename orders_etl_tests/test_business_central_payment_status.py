"""Payment status derived from Business Central invoices and credit memos (DESIGN.md §4)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from orders_etl.model import PaymentStatus
from orders_etl.sources.business_central.payment_status import (
    CreditMemo,
    CreditMemoState,
    Invoice,
    InvoiceState,
    UnknownStatus,
    credit_memo_state,
    derive,
    invoice_state,
)

D = Decimal


def invoice(status: str, total: str = "100.00", remaining: str | None = None) -> Invoice:
    amount = D(total)
    left = D(remaining) if remaining is not None else (D(0) if status in ("Paid", "Canceled") else amount)
    return Invoice(invoice_state(status, amount, left), amount, left)


def memo(status: str, total: str) -> CreditMemo:
    return CreditMemo(credit_memo_state(status), D(total))


@pytest.mark.parametrize(
    ("invoices", "memos", "status", "detail", "refunded"),
    [
        pytest.param([], [], None, "not_invoiced", "0", id="no invoice"),
        pytest.param([invoice("Draft")], [], None, "not_invoiced", "0", id="draft invoice only"),
        pytest.param([invoice("In_x0020_Review")], [], None, "not_invoiced", "0", id="invoice in review"),
        pytest.param([invoice("Open")], [], None, "open", "0", id="open invoice"),
        pytest.param([invoice("Open", remaining="40.00")], [], None, "partially_paid", "0", id="part paid"),
        pytest.param([invoice("Paid")], [], PaymentStatus.CAPTURED, "paid", "0", id="paid"),
        pytest.param(
            [invoice("Paid"), invoice("Open", "50.00")],
            [],
            PaymentStatus.CAPTURED,
            "partially_paid",
            "0",
            id="one of two invoices paid",
        ),
        pytest.param(
            [invoice("Paid")],
            [memo("Paid", "30.00")],
            PaymentStatus.CAPTURED,
            "partially_refunded",
            "30.00",
            id="partial credit memo keeps captured",
        ),
        pytest.param(
            [invoice("Paid")],
            [memo("Paid", "60.00"), memo("Open", "40.00")],
            PaymentStatus.REFUNDED,
            "refunded",
            "100.00",
            id="credit memos total the invoice",
        ),
        pytest.param(
            [invoice("Open")],
            [memo("Open", "100.00")],
            PaymentStatus.REFUNDED,
            "refunded",
            "100.00",
            id="unpaid but fully credited",
        ),
        pytest.param(
            [invoice("Canceled")],
            [memo("Corrective", "100.00")],
            PaymentStatus.VOIDED,
            "voided",
            "0",
            id="every invoice canceled",
        ),
        pytest.param(
            [invoice("Canceled"), invoice("Canceled", "20.00")],
            [],
            PaymentStatus.VOIDED,
            "voided",
            "0",
            id="two canceled invoices",
        ),
        pytest.param(
            [invoice("Canceled"), invoice("Paid", "105.00")],
            [memo("Corrective", "100.00")],
            PaymentStatus.CAPTURED,
            "paid",
            "0",
            id="canceled then invoiced again",
        ),
        pytest.param(
            [invoice("Paid")],
            [memo("Draft", "100.00")],
            PaymentStatus.CAPTURED,
            "paid",
            "0",
            id="unposted credit memo is not a refund yet",
        ),
        pytest.param(
            [invoice("Paid")],
            [memo("Canceled", "100.00")],
            PaymentStatus.CAPTURED,
            "paid",
            "0",
            id="cancelled credit memo is not a refund",
        ),
        pytest.param(
            [invoice("Open", remaining="70.00")],
            [memo("Paid", "30.00")],
            None,
            "open",
            "30.00",
            id="balance lowered by a credit memo is not a payment",
        ),
        pytest.param(
            [invoice("Corrective", remaining="0")],
            [],
            PaymentStatus.CAPTURED,
            "paid",
            "0",
            id="corrective invoice settled",
        ),
        pytest.param([invoice("Corrective")], [], None, "open", "0", id="corrective invoice owed"),
        pytest.param([invoice(" ")], [], None, "not_invoiced", "0", id="blank status is unposted"),
    ],
)
def test_derivation_rules(invoices, memos, status, detail, refunded):
    result = derive(invoices, memos)
    assert (result.status, result.detail, result.refunded_amount) == (status, detail, D(refunded))


def test_in_review_spelled_with_a_space_is_unposted_too():
    assert invoice_state("In Review", D(10), D(10)) is InvoiceState.UNPOSTED
    assert credit_memo_state("In Review") is CreditMemoState.UNPOSTED


@pytest.mark.parametrize("status", ["Sent", "paid", "Cancelled", "Released"])
def test_unknown_statuses_are_refused_not_guessed(status):
    with pytest.raises(UnknownStatus, match=repr(status)):
        invoice_state(status, D(10), D(0))
    with pytest.raises(UnknownStatus, match=repr(status)):
        credit_memo_state(status)
