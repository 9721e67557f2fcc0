"""Normalizes Business Central order bundles (see ``reader.py``) to Orders (DESIGN.md §4).

Pure: no HTTP, no Dagster, no database (Shopify names are resolved through the
``resolve_names`` callable, a set at a time). Every bundle becomes an
:class:`~orders_etl.model.OrderRecord` or a :class:`~orders_etl.model.Reject` whose reason
names the document and field at fault; nothing raises on bad data.

* ``external_id``: the Shopify order the reference field points at (kind ``id``: the
  reference itself; kind ``name``: the resolved Shopify id, or the BC number when the name
  is unknown); without a reference, the BC order number (an ERP-origin order).
* ``number`` / ``customer_id``: the BC order number and customer number.
* ``status``: Draft / In Review -> pending, Open -> processing, fully shipped or posted
  (only invoices remain) -> shipped; any other order status is rejected.
* totals: the order's, or once it is posted its invoices', incl. tax and not netted;
  ``refunded_amount``: the posted credit memos; ``payment_status``: ``payment_status.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from orders_etl.model import (
    MAX_AMOUNT,
    InvalidOrder,
    OrderRecord,
    OrderStatus,
    Reject,
    Source,
    parse_order,
)
from orders_etl.sources.base import NameResolver
from orders_etl.sources.business_central import payment_status as ps

SOURCE = Source.BUSINESS_CENTRAL.value
RefKind = Literal["id", "name"]
DEFAULT_REF_FIELD = "externalDocumentNumber"
ZERO_GUID = "00000000-0000-0000-0000-000000000000"
# Enum members as the API spells them: "In Review" travels as its OData name In_x0020_Review.
ORDER_STATUSES = {
    "Draft": OrderStatus.PENDING,
    "In_x0020_Review": OrderStatus.PENDING,
    "In Review": OrderStatus.PENDING,
    "Open": OrderStatus.PROCESSING,
}
# Business Central writes an empty date as 0001-01-01.
_BLANK_DATE = "0001-01-01"
_SHOPIFY_GID = re.compile(r"^gid://shopify/Order/(\d+)$")


class BundleLike(Protocol):
    record_key: str
    payload: Any


class _Unmappable(ValueError):
    """A bundle that cannot become an Order; the message names document and field."""


@dataclass(frozen=True, slots=True)
class _Mapped:
    record_key: str
    payload: Any
    fields: dict[str, Any]
    number: str
    reference: str | None


def normalize(
    records: Iterable[BundleLike],
    *,
    ref_field: str = DEFAULT_REF_FIELD,
    ref_kind: RefKind = "name",
    resolve_names: NameResolver,
    chunk_size: int = 1_000,
) -> Iterator[OrderRecord | Reject]:
    """Map bundles to orders or rejects, resolving Shopify names one chunk at a time."""
    if ref_kind not in ("id", "name"):
        raise ValueError(f"BC_SHOPIFY_REF_KIND must be 'id' or 'name', not {ref_kind!r}")
    if not ref_field.strip():
        raise ValueError("BC_SHOPIFY_REF_FIELD is empty")
    chunk: list[BundleLike] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= chunk_size:
            yield from _normalize_chunk(chunk, ref_field, ref_kind, resolve_names)
            chunk = []
    if chunk:
        yield from _normalize_chunk(chunk, ref_field, ref_kind, resolve_names)


def _normalize_chunk(
    records: list[BundleLike], ref_field: str, ref_kind: RefKind, resolve_names: NameResolver
) -> Iterator[OrderRecord | Reject]:
    mapped = [_map(record.record_key, record.payload, ref_field) for record in records]
    resolved: dict[str, str] = {}
    if ref_kind == "name":
        names = {m.reference for m in mapped if isinstance(m, _Mapped) and m.reference}
        if names:
            resolved = dict(resolve_names(names))
    for item in mapped:
        if isinstance(item, Reject):
            yield item
            continue
        data = {**item.fields, "external_id": _external_id(item, ref_kind, resolved)}
        try:
            yield parse_order(data, record_key=item.record_key)
        except InvalidOrder as exc:
            yield Reject(SOURCE, item.record_key, str(exc), item.payload)


def _external_id(item: _Mapped, ref_kind: RefKind, resolved: dict[str, str]) -> str:
    if item.reference is None:
        return item.number  # an ERP-origin order
    if ref_kind == "id":
        # The Shopify id itself; a GraphQL gid is reduced to it (external_id is never the gid).
        match = _SHOPIFY_GID.match(item.reference)
        return match.group(1) if match else item.reference
    # A name no Shopify order carries stays keyed on the BC number (reported missing_in_shopify).
    return resolved.get(item.reference, item.number)


# ---------------------------------------------------------------------------------------
# One bundle


def _map(record_key: str, payload: Any, ref_field: str) -> _Mapped | Reject:
    try:
        return _map_bundle(record_key, payload, ref_field)
    except _Unmappable as exc:
        return Reject(SOURCE, record_key, f"order {record_key!r}: {exc}", payload)


def _map_bundle(record_key: str, payload: Any, ref_field: str) -> _Mapped:
    if not isinstance(payload, dict):
        raise _Unmappable(
            "payload is not a Business Central order bundle (an object with salesOrder, "
            "salesInvoices and salesCreditMemos)"
        )
    order = payload.get("salesOrder")
    if order is not None and not isinstance(order, dict):
        raise _Unmappable("salesOrder is not an object")
    invoices = _documents(payload, "salesInvoices")
    memos = _documents(payload, "salesCreditMemos")
    if order is None and not invoices:
        raise _Unmappable("the bundle holds neither a salesOrder nor a salesInvoice")
    local = payload.get("localCurrency")
    local = local.strip().upper() if isinstance(local, str) and local.strip() else None

    invoice_facts = [_invoice(doc, f"salesInvoices[{i}]") for i, doc in enumerate(invoices)]
    memo_facts = [_credit_memo(doc, f"salesCreditMemos[{i}]") for i, doc in enumerate(memos)]
    payment = ps.derive(invoice_facts, memo_facts)

    # A posted order is deleted from salesOrders: its invoices then stand for it.
    head = _from_order(order, local) if order is not None else _from_invoices(invoices, invoice_facts, local)
    documents = [("salesOrder", order)] if order is not None else []
    documents += [(f"salesInvoices[{i}]", doc) for i, doc in enumerate(invoices)]
    documents += [(f"salesCreditMemos[{i}]", doc) for i, doc in enumerate(memos)]
    # Refunds are compared with and summed against the invoices: one currency for all.
    for where, doc in documents:
        if (currency := _currency(doc, where, local)) != head["currency"]:
            raise _Unmappable(
                f"{where}.currencyCode = {currency!r} differs from the order's {head['currency']!r}"
            )
    updated_at = max(_modified(doc, where) for where, doc in documents)

    fields = {
        **head,
        "payment_status": payment.status,
        "payment_status_detail": payment.detail,
        "refunded_amount": payment.refunded_amount,
        "updated_at": updated_at,
    }
    number = head["number"]
    return _Mapped(record_key, payload, fields, number, _reference(order, invoices, ref_field, number))


def _from_order(order: dict, local: str | None) -> dict[str, Any]:
    where = "salesOrder"
    status = _status(order, where)
    if status not in ORDER_STATUSES:
        raise _Unmappable(
            f"{where}.status = {status!r}: not a Business Central sales order status "
            "(expected Draft, In_x0020_Review or Open)"
        )
    fully_shipped = order.get("fullyShipped")
    if fully_shipped is not None and not isinstance(fully_shipped, bool):
        raise _Unmappable(f"{where}.fullyShipped = {fully_shipped!r} is not a boolean")
    return {
        "number": _required_text(order, "number", where),
        "status": OrderStatus.SHIPPED if fully_shipped else ORDER_STATUSES[status],
        "currency": _currency(order, where, local),
        "total_amount": _money(order, "totalAmountIncludingTax", where),
        "tax_amount": _optional_money(order, "totalTaxAmount", where),
        "customer_id": _text(order.get("customerNumber")) or None,
        "created_at": _date(order, "orderDate", where),
    }


def _from_invoices(invoices: list[dict], facts: list[ps.Invoice], local: str | None) -> dict[str, Any]:
    """An order known only through its invoices: posted (the order is deleted) or invoice-only."""
    indexed = list(enumerate(zip(invoices, facts, strict=True)))
    posted = [(i, doc) for i, (doc, fact) in indexed if fact.state is not ps.InvoiceState.UNPOSTED]
    live = [
        (i, doc)
        for i, (doc, fact) in indexed
        if fact.state not in (ps.InvoiceState.UNPOSTED, ps.InvoiceState.CANCELED)
    ]
    # What the customer is charged: the invoices still standing; when all were cancelled,
    # what had been charged; before posting, the draft invoice itself.
    billed = live or posted or [(i, doc) for i, (doc, _fact) in indexed]
    # (Every document's currency is checked against this one by the caller.)
    currency = _currency(billed[0][1], f"salesInvoices[{billed[0][0]}]", local)
    total = Decimal(0)
    tax: Decimal | None = Decimal(0)
    for i, doc in billed:
        where = f"salesInvoices[{i}]"
        total += _money(doc, "totalAmountIncludingTax", where)
        doc_tax = _optional_money(doc, "totalTaxAmount", where)
        tax = None if tax is None or doc_tax is None else tax + doc_tax
    first = invoices[0]
    number = _text(first.get("orderNumber")) or _required_text(first, "number", "salesInvoices[0]")
    # The invoice API carries no order date: the earliest invoice date is the closest it has.
    dates = [d for i, doc in billed if (d := _date(doc, "invoiceDate", f"salesInvoices[{i}]")) is not None]
    return {
        "number": number,
        "status": OrderStatus.SHIPPED if posted else OrderStatus.PENDING,
        "currency": currency,
        "total_amount": total,
        "tax_amount": tax,
        "customer_id": _text(first.get("customerNumber")) or None,
        "created_at": min(dates, default=None),
    }


def _invoice(doc: dict, where: str) -> ps.Invoice:
    total = _money(doc, "totalAmountIncludingTax", where)
    remaining = _optional_money(doc, "remainingAmount", where)
    status = _status(doc, where)
    try:
        return ps.Invoice(ps.invoice_state(status, total, remaining), total, remaining)
    except ps.UnknownStatus as exc:
        raise _Unmappable(f"{where}.status = {exc}") from None


def _credit_memo(doc: dict, where: str) -> ps.CreditMemo:
    total = _money(doc, "totalAmountIncludingTax", where)
    try:
        return ps.CreditMemo(ps.credit_memo_state(_status(doc, where)), total)
    except ps.UnknownStatus as exc:
        raise _Unmappable(f"{where}.status = {exc}") from None


def _reference(order: dict | None, invoices: list[dict], ref_field: str, number: str) -> str | None:
    """The Shopify reference of the order, or None when it has none (an ERP-origin order)."""
    if ref_field == "number":
        # "Use Shopify Order No.": the BC order number is the Shopify name. Posted invoices
        # have numbers of their own, so the order's number is used, not the document's.
        return number
    documents = ([order] if order is not None else []) + invoices
    holding = [doc for doc in documents if ref_field in doc]
    if not holding:
        raise _Unmappable(
            f"field {ref_field!r} (BC_SHOPIFY_REF_FIELD) is absent from the order's documents; "
            "name a field the API returns (e.g. externalDocumentNumber or number)"
        )
    for doc in holding:
        value = doc.get(ref_field)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


# ---------------------------------------------------------------------------------------
# Field readers: each names the document and field it could not read


def _documents(payload: dict, key: str) -> list[dict]:
    value = payload.get(key, [])
    if not isinstance(value, list) or not all(isinstance(doc, dict) for doc in value):
        raise _Unmappable(f"{key} is not a list of documents")
    return value


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _required_text(doc: dict, field: str, where: str) -> str:
    value = _text(doc.get(field))
    if not value:
        raise _Unmappable(f"{where}.{field} is missing or empty")
    return value


def _status(doc: dict, where: str) -> str:
    value = doc.get("status")
    if not isinstance(value, str):
        raise _Unmappable(f"{where}.status is missing")
    return value


def _money(doc: dict, field: str, where: str) -> Decimal:
    amount = _optional_money(doc, field, where)
    if amount is None:
        raise _Unmappable(f"{where}.{field} is missing")
    return amount


def _optional_money(doc: dict, field: str, where: str) -> Decimal | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool | float):
        # A float has already lost the exact amount: payloads are parsed with parse_float=Decimal.
        raise _Unmappable(f"{where}.{field} = {value!r} is not an exact decimal amount")
    try:
        amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise _Unmappable(f"{where}.{field} = {value!r} is not a decimal amount") from None
    if not amount.is_finite() or amount < 0:
        raise _Unmappable(f"{where}.{field} = {value!r} must be a finite, non-negative amount")
    if amount >= MAX_AMOUNT:
        # Summing two such amounts (9E+999999) overflows Decimal; no order is this large.
        raise _Unmappable(f"{where}.{field} = {value!r} is out of range")
    return amount


def _currency(doc: dict, where: str, local: str | None) -> str:
    code = _text(doc.get("currencyCode")).upper()
    currency_id = _text(doc.get("currencyId")).lower()
    if code and currency_id != ZERO_GUID:
        return code
    # Business Central marks the company's own currency (LCY) with an all-zero currencyId;
    # its code comes back from General Ledger Setup's LCY Code, empty when none is set.
    if local is None:
        raise _Unmappable(
            f"{where}.currencyCode is {code or 'empty'!r} in the local currency, and no local currency is "
            "known: set BC_LOCAL_CURRENCY or the LCY Code in Business Central's General Ledger Setup"
        )
    if code and code != local:
        raise _Unmappable(
            f"{where}.currencyCode = {code!r} is the company's local currency (all-zero currencyId), "
            f"but the configured local currency is {local!r}: correct BC_LOCAL_CURRENCY"
        )
    return local


def _date(doc: dict, field: str, where: str) -> datetime | None:
    value = doc.get(field)
    if value is None or value in ("", _BLANK_DATE):
        return None
    try:
        day = date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        day = None
    if day is None:
        raise _Unmappable(f"{where}.{field} = {value!r} is not a date (YYYY-MM-DD)")
    # Business Central dates have no time of day or zone: taken as midnight UTC of that date.
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _modified(doc: dict, where: str) -> datetime:
    value = doc.get("lastModifiedDateTime")
    if not isinstance(value, str) or not value.strip():
        raise _Unmappable(f"{where}.lastModifiedDateTime is missing")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _Unmappable(f"{where}.lastModifiedDateTime = {value!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _Unmappable(f"{where}.lastModifiedDateTime = {value!r} has no timezone")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise _Unmappable(f"{where}.lastModifiedDateTime = {value!r} is out of range in UTC") from None
