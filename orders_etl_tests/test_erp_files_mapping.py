"""Normalizing ERP export rows to orders: every mapping rule, every reject reason."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orders_etl.model import OrderRecord, OrderStatus, PaymentStatus, Reject
from orders_etl.sources.erp_files import Dialect, load_dialect, normalize
from orders_etl.store import RawRecord
from orders_etl.store.landing import LandedRecord, dump_payload, load_payload
from orders_etl_tests.test_hostile_erp_files import record_of

EXAMPLE_DIALECT = Path(__file__).with_name("erp_files_dialect.toml")
UPDATED = datetime(2024, 3, 12, 9, 15, tzinfo=UTC)
ROW = {
    "Document No.": "SO-1",
    "External Document No.": "#1001",
    "Order Date": "12.03.2024 10:15",
    "Last Modified": "12.03.2024 10:15",
    "Currency Code": "",
    "Amount Including VAT": "1.234,56",
    "VAT Amount": "197,12",
    "Status": "Open",
    "Payment Status": "Paid",
    "Shipment Method": "DHL Paket",
    "Package Tracking No.": "00340434161234567890",
    "Customer No.": "C10001",
}


def variant(**changes: Any) -> Dialect:
    return Dialect.model_validate(load_dialect(EXAMPLE_DIALECT).model_dump() | changes)


def raw(line: int = 2, **cells: str) -> RawRecord:
    row = ROW | cells
    return RawRecord(
        row["Document No."].strip() or f"e.csv:{line}", UPDATED, {"file": "e.csv", "line": line, "row": row}
    )


class Resolver:
    """Resolves Shopify names like the store would, and records each call."""

    def __init__(self, known: dict[str, str] | None = None) -> None:
        self.known = known or {}
        self.calls: list[set[str]] = []

    def __call__(self, names: Iterable[str]) -> dict[str, str]:
        wanted = set(names)
        self.calls.append(wanted)
        return {n: self.known[n] for n in wanted if n in self.known}


def run(
    records: list[Any], dialect: Dialect | None = None, resolver: Resolver | None = None, **kw: Any
) -> list[Any]:
    """The records normalized; orders as OrderRecord, whichever path mapped them."""
    normalized = normalize(records, dialect=dialect or variant(), resolve_names=resolver or Resolver(), **kw)
    return [record_of(item) for item in normalized]


def one(record: Any, dialect: Dialect | None = None, resolver: Resolver | None = None) -> Any:
    (result,) = run([record], dialect, resolver)
    return result


def test_a_european_row_becomes_a_canonical_order() -> None:
    order = one(raw(), resolver=Resolver({"#1001": "5501234567890"}))

    assert order == OrderRecord(
        external_id="5501234567890",
        number="SO-1",
        created_at=datetime(2024, 3, 12, 9, 15, tzinfo=UTC),
        currency="EUR",  # empty currency cell: the ERP's local currency
        total_amount=Decimal("1234.56"),
        tax_amount=Decimal("197.12"),
        payment_status=PaymentStatus.CAPTURED,
        status=OrderStatus.PROCESSING,
        shipping_method="dhl_paket",
        tracking_number="00340434161234567890",
        customer_id="C10001",
        refunded_amount=None,  # the file has no credit-memo column: unknown, not zero
        payment_status_detail="paid",
        updated_at=UPDATED,
    )
    assert str(order.total_amount) == "1234.56"


def test_refunded_amount_from_the_credit_memo_column() -> None:
    assert one(raw(**{"Credit Memo Amount": "100,00"})).refunded_amount == Decimal("100.00")
    # The column exists but the cell is empty: no credit memo booked, i.e. nothing refunded.
    assert one(raw(**{"Credit Memo Amount": ""})).refunded_amount == Decimal("0.00")


# -- keying on the Shopify order ---------------------------------------------------------


def test_names_resolve_in_one_call_per_chunk() -> None:
    records = [
        raw(i, **{"Document No.": f"SO-{i}", "External Document No.": f"#{1000 + i}"}) for i in range(2, 7)
    ]
    resolver = Resolver({"#1002": "9002", "#1005": "9005"})

    orders = run(records, resolver=resolver, chunk_size=2)

    assert [o.external_id for o in orders] == ["9002", "SO-3", "SO-4", "9005", "SO-6"]
    # Unresolved names are keyed on the ERP number, which stays the order's number.
    assert [o.number for o in orders] == ["SO-2", "SO-3", "SO-4", "SO-5", "SO-6"]
    assert resolver.calls == [{"#1002", "#1003"}, {"#1004", "#1005"}, {"#1006"}]


def test_a_row_without_reference_is_an_erp_only_order_and_no_lookup_happens() -> None:
    resolver = Resolver()

    order = one(raw(**{"External Document No.": "  "}), resolver=resolver)

    assert order.external_id == "SO-1"
    assert resolver.calls == []


@pytest.mark.parametrize(
    ("reference", "external_id"),
    [
        ("5501234567890", "5501234567890"),
        ("gid://shopify/Order/5501234567890", "5501234567890"),
        ("#1001", "#1001"),
    ],
)
def test_reference_kind_id_keys_on_the_reference_without_lookup(reference: str, external_id: str) -> None:
    resolver = Resolver({"#1001": "should-not-be-used"})

    order = one(raw(**{"External Document No.": reference}), variant(shopify_ref_kind="id"), resolver)

    assert order.external_id == external_id
    assert resolver.calls == []


# -- vocabularies, currencies, shipping ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "payment", "expected_status", "expected_payment"),
    [
        ("Draft", "", OrderStatus.PENDING, None),
        ("in review", "Open", OrderStatus.PENDING, None),  # matching ignores case and spaces
        (" Released ", "AUTHORIZED", OrderStatus.PROCESSING, PaymentStatus.AUTHORIZED),
        ("Shipped", "Refunded", OrderStatus.SHIPPED, PaymentStatus.REFUNDED),
        ("Cancelled", "Canceled", OrderStatus.CANCELLED, PaymentStatus.VOIDED),
    ],
)
def test_status_vocabularies(status: str, payment: str, expected_status: Any, expected_payment: Any) -> None:
    order = one(raw(Status=status, **{"Payment Status": payment}))

    assert (order.status, order.payment_status) == (expected_status, expected_payment)
    assert order.payment_status_detail == (payment.lower() or None)


def test_currency_cell_is_used_and_uppercased() -> None:
    assert one(raw(**{"Currency Code": "usd"})).currency == "USD"
    # JPY has no minor unit: 1.234 yen is fine, 12,50 yen is not.
    assert (
        one(
            raw(**{"Currency Code": "JPY", "Amount Including VAT": "1.234", "VAT Amount": "112"})
        ).total_amount
        == 1234
    )


def test_shipping_methods_map_or_slugify_never_drop() -> None:
    assert one(raw(**{"Shipment Method": "ups standard"})).shipping_method == "ups_standard"
    assert (
        one(raw(**{"Shipment Method": "Spedition Müller & Söhne"})).shipping_method
        == "spedition_muller_sohne"
    )
    assert one(raw(**{"Shipment Method": ""})).shipping_method is None


def test_line_shape_takes_order_fields_from_the_first_row() -> None:
    first = ROW | {"Amount Including VAT": "100,00", "Status": "Open"}
    second = ROW | {"Amount Including VAT": "", "Status": "", "Payment Status": "Bogus"}
    record = RawRecord("SO-1", UPDATED, {"file": "l.csv", "line": 2, "rows": [first, second]})

    order = one(record, variant(row_shape="line"))

    assert (order.total_amount, order.status) == (Decimal("100.00"), OrderStatus.PROCESSING)


def test_landed_payloads_normalize_like_fresh_ones() -> None:
    record = raw()
    landed = LandedRecord(record.record_key, record.updated_at, load_payload(dump_payload(record.payload)), 1)

    assert one(landed) == one(record)


# -- rejects -------------------------------------------------------------------------------


def reason(record: Any, dialect: Dialect | None = None) -> str:
    result = one(record, dialect)
    assert isinstance(result, Reject), result
    assert result.source == "erp_files"
    assert result.payload == record.payload  # the row is kept for whoever fixes it
    return result.reason


def test_unknown_status_is_rejected_naming_file_line_field_and_value() -> None:
    assert reason(raw(7, Status="Teilgeliefert")) == (
        "e.csv line 7: order 'SO-1': field 'status' (column 'Status') = 'Teilgeliefert': not in status_map "
        "['Cancelled', 'Draft', 'In Review', 'Open', 'Released', 'Shipped']"
    )


def test_unknown_payment_status_is_rejected() -> None:
    assert (
        "field 'payment_status' (column 'Payment Status') = 'Teilbezahlt': not in payment_status_map"
        in reason(raw(**{"Payment Status": "Teilbezahlt"}))
    )


def test_every_problem_of_a_row_is_reported_at_once() -> None:
    text = reason(
        raw(4, **{"Amount Including VAT": "12.50", "Order Date": "2024-03-12", "Currency Code": "EURO"})
    )

    assert text.startswith("e.csv line 4: order 'SO-1': ")
    assert (
        "field 'total_amount' (column 'Amount Including VAT') = '12.50': is not an amount with decimal ','"
        in text
    )
    assert "field 'created_at' (column 'Order Date') = '2024-03-12': matches none of the date formats" in text
    assert "field 'currency' (column 'Currency Code') = 'EURO': not an ISO 4217 code" in text


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ({"Amount Including VAT": ""}, "field 'total_amount' (column 'Amount Including VAT') is empty"),
        (
            {"Amount Including VAT": "-5,00"},
            "field 'total_amount' (column 'Amount Including VAT') = Decimal('-5.00')",
        ),
        (
            {"Currency Code": "JPY", "Amount Including VAT": "1.234", "VAT Amount": "12,50"},
            "field 'tax_amount' (column 'VAT Amount') = '12.50': has more decimals than JPY",
        ),
        ({"Customer No.": "C\udc81"}, "field 'customer_id' (column 'Customer No.')"),
    ],
)
def test_values_the_order_model_refuses_are_rejected_with_their_column(
    cells: dict[str, str], expected: str
) -> None:
    assert expected in reason(raw(5, **cells))


def test_error_records_from_the_reader_become_rejects_with_file_and_line() -> None:
    record = RawRecord(
        "e.csv:9",
        UPDATED,
        {"file": "e.csv", "line": 9, "error": "3 fields where the header has 12", "raw": "a;b;c"},
    )

    result = one(record)

    assert result == Reject(
        "erp_files", "e.csv:9", "e.csv line 9: 3 fields where the header has 12", record.payload
    )


def test_rejects_do_not_stop_the_batch_and_order_is_kept() -> None:
    records = [raw(2), raw(3, Status="??"), raw(4, **{"Document No.": "SO-4"})]

    results = run(records)

    assert [type(r).__name__ for r in results] == ["OrderRecord", "Reject", "OrderRecord"]
    json.dumps([r.payload for r in results if isinstance(r, Reject)])  # rejects are storable as JSON
