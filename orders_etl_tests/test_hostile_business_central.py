"""Hostile input through the Business Central source and the store (SQLite and PostgreSQL).

Bundles as the reader assembles them (a sales order, its invoices and credit memos, as
JSON parsed with ``parse_float=Decimal``), with hostile text in every field the mapping
keeps, amounts from ``1E+2000000`` to ``"NaN"``, impossible timestamps, documents replaced
by arbitrary JSON, and several versions of one order number conflicting in one batch.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orders_etl.model import OrderRecord, Reject
from orders_etl.sources.business_central import normalize
from orders_etl.sources.business_central.reader import _latest_modification
from orders_etl.store import OrderStore, RawRecord
from orders_etl_tests.factories import BASE_TIME, order
from orders_etl_tests.fake_business_central import bc_time, sales_credit_memo, sales_invoice, sales_order
from orders_etl_tests.hostile import (
    NUMERIC_STRINGS,
    check_batch,
    empty_store,
    fuzz_settings,
    hostile_texts,
    json_values,
    moments,
    run_through_store,
)

SOURCE = "business_central"
AMOUNTS = st.one_of(
    st.sampled_from(["118.00", "0.00", "59.50"]).map(Decimal),
    st.sampled_from([Decimal("1E+2000000"), Decimal("9E+999999"), Decimal(10**20), Decimal("1E-999999")]),
    st.sampled_from([*NUMERIC_STRINGS, 10**20, float("nan"), float("inf")]),
)
ORDER_STATUSES = ["Draft", "In_x0020_Review", "Open", "Open", "Released"]
DOCUMENT_STATUSES = ["Draft", "Open", "Paid", "Paid", "Paid", "Canceled", "Corrective", "Sent"]
TIMES = ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00", "2024-03-01T10:00:00", "NaN"]


rarely = st.sampled_from([False] * 7 + [True])  # (integers() would favour the boundary)


def _hostile_fields(draw: st.DrawFn, doc: dict[str, Any], texts: st.SearchStrategy[str]) -> dict[str, Any]:
    """Hostile text where the mapping keeps text; now and then hostile amounts or corrupted fields."""
    if draw(st.booleans()):
        doc["customerNumber"] = draw(texts)
    if draw(st.booleans()):
        doc["externalDocumentNumber"] = draw(texts)
    if draw(rarely):
        doc["currencyCode"] = draw(texts)
    if draw(rarely):
        doc["totalAmountIncludingTax"] = draw(AMOUNTS)
    if draw(rarely):
        for name in draw(st.lists(st.sampled_from(sorted(doc)), min_size=1, max_size=2, unique=True)):
            if draw(st.booleans()):
                del doc[name]
            else:
                doc[name] = draw(json_values())
    return doc


@st.composite
def bundles(draw: st.DrawFn) -> RawRecord:
    texts = hostile_texts()
    number = draw(st.sampled_from(["SO1", "SO2", "SO3"]) | texts)  # few numbers: versions conflict
    modified = draw(st.sampled_from(TIMES)) if draw(rarely) else bc_time(draw(moments()))
    common = {"currency": draw(st.sampled_from([None, "USD"])), "modified": modified}
    order = None
    if draw(st.booleans()):
        order = sales_order(
            "SO",
            status=draw(st.sampled_from(ORDER_STATUSES)),
            fully_shipped=draw(st.booleans()),
            reference=draw(st.sampled_from(["", "#1001"])),
            **common,
        )
        order["number"] = number
        order = _hostile_fields(draw, order, texts)
    invoices = []
    for i in range(draw(st.integers(0 if order is not None else 1, 2))):
        invoice = sales_invoice(f"PSI-{i}", status=draw(st.sampled_from(DOCUMENT_STATUSES)), **common)
        invoice["orderNumber"] = number if order is not None or i else ""
        invoices.append(_hostile_fields(draw, invoice, texts))
    memos = [
        _hostile_fields(
            draw,
            sales_credit_memo(
                f"PSCM-{i}", invoice_number="PSI-0", status=draw(st.sampled_from(DOCUMENT_STATUSES)), **common
            ),
            texts,
        )
        for i in range(draw(st.integers(0, 2)))
    ]
    payload: Any = {
        "salesOrder": order,
        "salesInvoices": invoices,
        "salesCreditMemos": memos,
        "localCurrency": draw(texts | st.sampled_from([None, "USD"])) if draw(rarely) else "EUR",
    }
    if draw(rarely):
        payload = draw(json_values())  # not a bundle at all
    elif draw(rarely):
        payload[draw(st.sampled_from(sorted(payload)))] = draw(json_values())
    # Keyed and dated as the reader does it: order number, latest lastModifiedDateTime.
    return RawRecord(number.strip() or number, _latest_modification(_documents(payload)), payload)


def _documents(payload: Any) -> list[dict[str, Any]]:
    if not isinstance(payload, dict):
        return []
    order = payload.get("salesOrder")
    found = [order] if isinstance(order, dict) else []
    for name in ("salesInvoices", "salesCreditMemos"):
        if isinstance(payload.get(name), list):
            found += [doc for doc in payload[name] if isinstance(doc, dict)]
    return found


def check_texts_as_sent(outcome) -> None:
    """Each stored order's identifiers are the documents' own, only trimmed."""

    def text(value: Any) -> str:
        return value.strip() if isinstance(value, str) else ""

    for landed, item in outcome.pairs():
        if not isinstance(item, OrderRecord):
            continue
        order, invoices = landed.payload["salesOrder"], landed.payload["salesInvoices"]
        head = order or invoices[0]
        number = text(head["number"]) if order else (text(head.get("orderNumber")) or text(head["number"]))
        assert item.number.encode() == number.encode()
        assert item.customer_id == (text(head.get("customerNumber")) or None)


@fuzz_settings(120)
@given(records=st.lists(bundles(), max_size=8), ref_kind=st.sampled_from(["name", "id"]))
def test_any_bundles_end_stored_or_quarantined(
    store: OrderStore, records: list[RawRecord], ref_kind: str
) -> None:
    empty_store(store)
    run = functools.partial(normalize, ref_kind=ref_kind, resolve_names=store.shopify_ids_by_name)
    outcome = run_through_store(store, SOURCE, records, run)
    check_batch(store, SOURCE, outcome)
    check_texts_as_sent(outcome)


# ---------------------------------------------------------------------------------------
# The bugs the properties found, pinned down one by one


def _bundle(order: dict[str, Any] | None, invoices: list[dict[str, Any]]) -> RawRecord:
    payload = {"salesOrder": order, "salesInvoices": invoices, "salesCreditMemos": [], "localCurrency": "EUR"}
    documents = [d for d in [order, *invoices] if d]
    return RawRecord("SO1", _latest_modification(documents), payload)


def test_a_modification_time_beyond_year_9999_in_utc_is_rejected_not_a_crash() -> None:
    record = _bundle(sales_order("SO1", modified="9999-12-31T23:00:00-05:00"), [])
    assert record.updated_at is None  # the reader's dating used to raise OverflowError
    (item,) = normalize([record], resolve_names=dict)
    assert (
        isinstance(item, Reject) and "lastModifiedDateTime" in item.reason and "out of range" in item.reason
    )


def test_huge_amounts_on_several_invoices_are_rejected_not_a_decimal_overflow() -> None:
    invoices = [sales_invoice(f"PSI-{i}", order_number="SO1") for i in range(2)]
    for invoice in invoices:
        invoice["totalAmountIncludingTax"] = Decimal("9E+999999")  # summed, it overflowed
    (item,) = normalize([_bundle(None, invoices)], resolve_names=dict)
    assert (
        isinstance(item, Reject)
        and "totalAmountIncludingTax" in item.reason
        and "out of range" in item.reason
    )


def test_a_reference_no_store_can_hold_names_no_order(store: OrderStore) -> None:
    store.upsert("shopify", [order("5001", number="#1001")])
    assert store.shopify_ids_by_name(["a\x00b", "\ud800", "#1001"]) == {"#1001": "5001"}


def test_a_newer_erp_version_survives_an_older_one_that_resolves_elsewhere(store: OrderStore) -> None:
    """Duplicate keys, conflicting: the document's newest version (its reference removed) wins."""
    newer = order("SO1", number="SO1", updated_at=BASE_TIME + timedelta(hours=1))
    older = order("5001", number="SO1", updated_at=BASE_TIME)  # the same document, still referencing
    store.upsert(SOURCE, [newer])
    store.upsert(SOURCE, [older])  # a late re-delivery used to delete the newer row
    assert sorted(store.read_table("source_orders")["external_id"]) == ["5001", "SO1"]
    store.upsert(SOURCE, [order("5001", number="SO1", updated_at=BASE_TIME + timedelta(hours=2))])
    assert sorted(store.read_table("source_orders")["external_id"]) == ["5001"]  # resolved later: dropped


def test_an_order_keyed_on_a_reference_equal_to_another_documents_number_stays(store: OrderStore) -> None:
    """Reference kind id: document A refers to "1001"; document B's own number is "1001"."""
    a = order("1001", number="SO-A")  # keyed on its Shopify reference
    b = order("2002", number="1001")  # the ERP document numbered 1001, resolved elsewhere
    store.upsert(SOURCE, [a])
    store.upsert(SOURCE, [b])  # used to delete A: its key equals B's ERP number
    assert sorted(store.read_table("source_orders")["external_id"]) == ["1001", "2002"]
