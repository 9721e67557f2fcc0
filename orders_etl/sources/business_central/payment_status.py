"""Payment status of a Business Central order, derived from its invoices and credit memos.

Business Central has no payment status on the order (DESIGN.md §4): it shows on the
posted documents. The API computes a posted invoice's ``status`` as Canceled (a credit
memo cancelled it), else Corrective (the invoice itself cancels a credit memo), else Paid
(its customer ledger entry is closed), else Open; unposted ones are Draft or In Review.
Credit memos mirror this: Corrective is the credit memo that cancels an invoice, Canceled
one that was itself cancelled.

Rules, first match wins:

=========================================  ==============  =====================
situation                                  payment_status  payment_status_detail
=========================================  ==============  =====================
no posted invoice                          null            ``not_invoiced``
every posted invoice Canceled              voided          ``voided``
refunds ≥ total of the uncancelled ones   refunded        ``refunded``
an invoice Paid, some refund               captured        ``partially_refunded``
an invoice Paid, another still open        captured        ``partially_paid``
every invoice Paid                         captured        ``paid``
open, part paid (by remainingAmount)       null            ``partially_paid``
open                                       null            ``open``
=========================================  ==============  =====================

"Refunds" are posted credit memos (Open or Paid). A Corrective credit memo only cancels an
invoice (which then reads Canceled) and a Canceled one was taken back, so neither is money
given back; unposted ones are not booked yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from orders_etl.model import PaymentStatus


class InvoiceState(Enum):
    UNPOSTED = "unposted"
    OPEN = "open"
    PAID = "paid"
    CANCELED = "canceled"


class CreditMemoState(Enum):
    UNPOSTED = "unposted"
    REFUND = "refund"
    NOT_A_REFUND = "not_a_refund"


# Enum members as the API spells them ("In Review" travels as the OData name In_x0020_Review;
# " " is the aggregate's blank default, which only unposted documents can carry).
_UNPOSTED = ("Draft", "In_x0020_Review", "In Review", " ", "")


class UnknownStatus(ValueError):
    """A status value outside the documented vocabulary: the record is rejected, not guessed."""


def invoice_state(status: str, total: Decimal, remaining: Decimal | None) -> InvoiceState:
    if status in _UNPOSTED:
        return InvoiceState.UNPOSTED
    if status == "Open":
        return InvoiceState.OPEN
    if status == "Paid":
        return InvoiceState.PAID
    if status == "Canceled":
        return InvoiceState.CANCELED
    if status == "Corrective":
        # A posted charge whose status does not say whether it is paid: the balance does.
        return (
            InvoiceState.PAID if remaining is not None and remaining == 0 and total > 0 else InvoiceState.OPEN
        )
    raise UnknownStatus(
        f"{status!r} is not a sales invoice status (expected Draft, In_x0020_Review, Open, Paid, Canceled "
        "or Corrective)"
    )


def credit_memo_state(status: str) -> CreditMemoState:
    if status in _UNPOSTED:
        return CreditMemoState.UNPOSTED
    if status in ("Open", "Paid"):
        return CreditMemoState.REFUND
    if status in ("Canceled", "Corrective"):
        return CreditMemoState.NOT_A_REFUND
    raise UnknownStatus(
        f"{status!r} is not a sales credit memo status (expected Draft, In_x0020_Review, Open, Paid, "
        "Canceled or Corrective)"
    )


@dataclass(frozen=True, slots=True)
class Invoice:
    state: InvoiceState
    total: Decimal
    remaining: Decimal | None


@dataclass(frozen=True, slots=True)
class CreditMemo:
    state: CreditMemoState
    total: Decimal


@dataclass(frozen=True, slots=True)
class PaymentDerivation:
    status: PaymentStatus | None
    detail: str
    refunded_amount: Decimal


def derive(invoices: Sequence[Invoice], credit_memos: Sequence[CreditMemo]) -> PaymentDerivation:
    refunded = sum((m.total for m in credit_memos if m.state is CreditMemoState.REFUND), Decimal(0))
    posted = [i for i in invoices if i.state is not InvoiceState.UNPOSTED]
    if not posted:
        return PaymentDerivation(None, "not_invoiced", refunded)
    live = [i for i in posted if i.state is not InvoiceState.CANCELED]
    if not live:
        return PaymentDerivation(PaymentStatus.VOIDED, "voided", refunded)
    invoiced = sum((i.total for i in live), Decimal(0))
    if refunded > 0 and refunded >= invoiced:
        return PaymentDerivation(PaymentStatus.REFUNDED, "refunded", refunded)
    paid = [i for i in live if i.state is InvoiceState.PAID]
    if paid:
        # Shopify maps PARTIALLY_REFUNDED to captured too: the money kept was captured.
        if refunded > 0:
            detail = "partially_refunded"
        else:
            detail = "paid" if len(paid) == len(live) else "partially_paid"
        return PaymentDerivation(PaymentStatus.CAPTURED, detail, refunded)
    # What is no longer owed and was not credited back was paid: part of the money came in.
    if all(i.remaining is not None for i in live):
        outstanding = sum((i.remaining for i in live if i.remaining is not None), Decimal(0))
        if invoiced - outstanding - refunded > 0:
            return PaymentDerivation(None, "partially_paid", refunded)
    return PaymentDerivation(None, "open", refunded)
