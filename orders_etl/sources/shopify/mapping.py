"""Shopify order node -> canonical :class:`OrderRecord`, exactly per DESIGN.md §4 (pure).

This is the record path, the definition of the mapping. :func:`normalize` tries the fast
path (``fast``: the same mapping for the ordinary shape of an order, at a few µs) first.

The input is the order node both the paging client and the bulk parser produce (see
``queries.ORDER_NODE``). Each record becomes an ``OrderRecord``, a ``Skipped`` (test
orders, unless asked for) or a ``Reject`` whose reason names the record, the Shopify field
and the value; no single record can stop the batch.

Choices where §4 leaves room (all deliberate):

* the amounts are shop money (``shopMoney``), and its currency must be the shop currency
  ``currencyCode``: a mismatch is rejected, never converted;
* ``delivered`` needs at least one fulfillment, all ``DELIVERED`` (none is not "every");
* the tracking number is the first number of the earliest fulfillment that has one;
* an unknown ``displayFinancialStatus`` / ``displayFulfillmentStatus`` is rejected with the
  reason rather than guessed (Shopify adds enum values; the table here must learn them).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, Protocol

from orders_etl.model import (
    InvalidOrder,
    OrderStatus,
    PaymentStatus,
    Reject,
    parse_order,
    snake_code,
)
from orders_etl.sources.base import Normalized, Skipped

SOURCE = "shopify"

PAYMENT_STATUS: dict[str, PaymentStatus | None] = {
    "PAID": PaymentStatus.CAPTURED,
    "AUTHORIZED": PaymentStatus.AUTHORIZED,
    "PARTIALLY_PAID": PaymentStatus.AUTHORIZED,
    "PARTIALLY_REFUNDED": PaymentStatus.CAPTURED,
    "REFUNDED": PaymentStatus.REFUNDED,
    "VOIDED": PaymentStatus.VOIDED,
    "EXPIRED": PaymentStatus.VOIDED,
    "PENDING": None,
}
# OrderDisplayFulfillmentStatus of the 2026-07 schema, plus FULFILLMENT_NOT_REQUIRED (newer).
FULFILLMENT_STATUSES = frozenset(
    {
        "UNFULFILLED",
        "PARTIALLY_FULFILLED",
        "FULFILLED",
        "RESTOCKED",
        "PENDING_FULFILLMENT",
        "OPEN",
        "IN_PROGRESS",
        "ON_HOLD",
        "SCHEDULED",
        "REQUEST_DECLINED",
        "FULFILLMENT_NOT_REQUIRED",
    }
)
_PROCESSING_FULFILLMENT = frozenset({"PARTIALLY_FULFILLED", "IN_PROGRESS"})
_PAID_ENOUGH_TO_SHIP = frozenset({PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED})
_NUMERIC_ID = re.compile(r"^[0-9]{1,20}$")
_GID = re.compile(r"^gid://shopify/(?P<type>[A-Za-z]+)/(?P<id>[0-9]+)$")


class KeyedRecord(Protocol):
    record_key: str
    payload: Any


# ---------------------------------------------------------------------------------------
# Shipping method lookup


class ShippingMethods:
    """Shipping line code/title -> snake_case carrier service code; unknowns slugified."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self._table: dict[str, str] = {}
        for key, value in table.items():
            if not isinstance(value, str) or not value or snake_code(value) != value:
                raise ValueError(f"shipping method {key!r} -> {value!r}: the code must be snake_case")
            folded = snake_code(key)
            if not folded:
                raise ValueError(f"shipping method key {key!r} has no letters or digits")
            self._table[folded] = value

    @classmethod
    def load(cls, overrides: Mapping[str, str] | None = None) -> ShippingMethods:
        """The packaged default table (``shipping_methods.toml``) with ``overrides`` on top."""
        text = resources.files(__package__).joinpath("shipping_methods.toml").read_text(encoding="utf-8")
        table = dict(tomllib.loads(text)["methods"])
        base = cls(table)
        if overrides:
            base._table.update(cls(overrides)._table)
        return base

    def code_for(self, code: str | None, title: str | None) -> str | None:
        for candidate in (code, title):
            if candidate:
                found = self._table.get(snake_code(candidate))
                if found:
                    return found
        text = (title or "").strip() or (code or "").strip()
        if not text:
            return None
        # A title with nothing ASCII in it (e.g. Japanese) slugifies to "": keep it as sent.
        return snake_code(text) or text


# ---------------------------------------------------------------------------------------
# Field access that names the field when the payload is not what Shopify sends


class _FieldProblem(Exception):
    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"field {field!r} = {_show(value)}: {reason}")


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


_MISSING = object()


class _Fields:
    """Reads a node by dotted path, remembering the path being read (for error reasons)."""

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = node
        self.current = "record"

    def get(self, path: str, *, required: bool = True) -> Any:
        self.current = path
        value: Any = self.node
        walked = []
        for part in path.split("."):
            walked.append(part)
            if value is None:
                break
            if not isinstance(value, dict):
                raise _FieldProblem(".".join(walked[:-1]), value, "is not an object")
            value = value.get(part, _MISSING)
            if value is _MISSING:
                if required:
                    raise _FieldProblem(path, None, "is required")
                return None
        if value is None and required:
            raise _FieldProblem(path, None, "is required")
        return value

    def text(self, path: str, *, required: bool = True) -> str | None:
        value = self.get(path, required=required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _FieldProblem(path, value, "must be a string")
        return value

    def time(self, path: str, *, required: bool = True) -> datetime | None:
        value = self.get(path, required=required)
        if value is None:
            return None
        try:
            return parse_time(value)
        except ValueError as exc:
            raise _FieldProblem(path, value, str(exc)) from None

    def numeric_id(self, path: str, *, required: bool = True) -> str | None:
        value = self.get(path, required=required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _FieldProblem(path, value, "must be a numeric id")
        text = str(value)
        if not _NUMERIC_ID.match(text):
            raise _FieldProblem(path, value, "must be a numeric id (legacyResourceId), not a gid")
        return text

    def amount(self, path: str, currency: str, *, required: bool = True) -> Decimal | str | None:
        """Shop money of a MoneyBag at ``path``; its currency must be the shop currency."""
        bag = self.get(path, required=required)
        if bag is None:
            return None
        money_currency = self.text(f"{path}.shopMoney.currencyCode")
        if money_currency != currency:
            raise _FieldProblem(
                f"{path}.shopMoney.currencyCode",
                money_currency,
                f"differs from the shop currency currencyCode {currency!r}",
            )
        value = self.get(f"{path}.shopMoney.amount")
        if isinstance(value, bool) or not isinstance(value, str | Decimal | int):
            raise _FieldProblem(f"{path}.shopMoney.amount", value, "must be a decimal string")
        return value


def parse_time(value: Any) -> datetime:
    """Shopify ``DateTime`` (ISO 8601 with zone) -> aware UTC ``datetime``."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("has no timezone (ambiguous)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is past the last representable day
        raise ValueError("is out of the representable range in UTC") from None


# ---------------------------------------------------------------------------------------
# The mapping


def _status(fields: _Fields, payment: PaymentStatus | None) -> OrderStatus:
    if fields.time("cancelledAt", required=False) is not None:
        return OrderStatus.CANCELLED
    fulfillments = _fulfillments(fields)
    if fulfillments and all(f.get("displayStatus") == "DELIVERED" for f in fulfillments):
        return OrderStatus.DELIVERED
    display = fields.text("displayFulfillmentStatus")
    if display not in FULFILLMENT_STATUSES:
        raise _FieldProblem("displayFulfillmentStatus", display, "is not a known fulfillment status")
    if display == "FULFILLED":
        return OrderStatus.SHIPPED
    if display in _PROCESSING_FULFILLMENT:
        return OrderStatus.PROCESSING
    if display == "UNFULFILLED" and payment in _PAID_ENOUGH_TO_SHIP:
        return OrderStatus.PROCESSING
    return OrderStatus.PENDING


def _fulfillments(fields: _Fields) -> list[dict[str, Any]]:
    value = fields.get("fulfillments", required=False) or []
    if not isinstance(value, list) or not all(isinstance(f, dict) for f in value):
        raise _FieldProblem("fulfillments", value, "must be a list of fulfillment objects")
    return value


def _tracking_number(fields: _Fields) -> str | None:
    fulfillments = _fulfillments(fields)
    dated = []
    for index, fulfillment in enumerate(fulfillments):
        fields.current = f"fulfillments[{index}].createdAt"
        created = fulfillment.get("createdAt")
        try:
            moment = parse_time(created) if created is not None else datetime.max.replace(tzinfo=UTC)
        except ValueError as exc:
            raise _FieldProblem(fields.current, created, str(exc)) from None
        dated.append((moment, index, fulfillment))
    for _, index, fulfillment in sorted(dated, key=lambda item: (item[0], item[1])):
        fields.current = f"fulfillments[{index}].trackingInfo"
        infos = fulfillment.get("trackingInfo") or []
        if not isinstance(infos, list):
            raise _FieldProblem(fields.current, infos, "must be a list")
        for info in infos:
            number = info.get("number") if isinstance(info, dict) else None
            if isinstance(number, str) and number.strip():
                return number.strip()
    return None


def _map_order(record_key: str, fields: _Fields, shipping: ShippingMethods, include_test: bool) -> Normalized:
    """One order node -> OrderRecord or Skipped; raises _FieldProblem / InvalidOrder."""
    is_test = fields.get("test", required=False)
    if is_test is not None and not isinstance(is_test, bool):
        raise _FieldProblem("test", is_test, "must be true or false")
    if is_test and not include_test:
        return Skipped(record_key, "test order")

    external_id = fields.numeric_id("legacyResourceId")
    gid = fields.text("id", required=False)
    if gid is not None:
        match = _GID.match(gid)
        if not match or match["type"] != "Order" or match["id"] != external_id:
            raise _FieldProblem("id", gid, f"is not the order gid of legacyResourceId {external_id}")
    currency = fields.text("currencyCode")
    assert currency is not None
    financial = fields.get("displayFinancialStatus", required=False)
    if financial is not None and financial not in PAYMENT_STATUS:
        raise _FieldProblem("displayFinancialStatus", financial, "is not a known financial status")
    payment = PAYMENT_STATUS[financial] if financial is not None else None
    shipping_line = fields.get("shippingLine", required=False)
    shipping_method = None
    if shipping_line is not None:
        shipping_method = shipping.code_for(
            fields.text("shippingLine.code", required=False),
            fields.text("shippingLine.title", required=False),
        )
    customer = fields.get("customer", required=False)

    mapped = {
        "external_id": external_id,
        "number": fields.text("name"),
        "created_at": fields.time("createdAt"),
        "updated_at": fields.time("updatedAt"),
        "currency": currency,
        "total_amount": fields.amount("totalPriceSet", currency),
        "tax_amount": fields.amount("totalTaxSet", currency, required=False),
        "refunded_amount": fields.amount("totalRefundedSet", currency, required=False),
        "payment_status": payment,
        "payment_status_detail": financial.lower() if isinstance(financial, str) else None,
        "status": _status(fields, payment),
        "shipping_method": shipping_method,
        "tracking_number": _tracking_number(fields),
        "customer_id": fields.numeric_id("customer.legacyResourceId") if customer is not None else None,
    }
    fields.current = "record"
    return parse_order(mapped, record_key=record_key)


def _problem_line_reason(payload: dict[str, Any]) -> str | None:
    """Reasons for the stand-ins the bulk reader yields for unusable lines."""
    if "_unparsed_line" in payload:
        text = str(payload.get("_unparsed_line"))
        return (
            f"bulk file line {payload.get('_line')} is not a JSON object "
            f"({payload.get('_error', 'unreadable')}): {_show(text)}"
        )
    if "_orphan_child_line" in payload:
        return (
            f"bulk file line {payload.get('_line')} is a child of {payload.get('_parentId')!r}, "
            "which is not in the file"
        )
    return None


def map_payload(key: str, payload: Any, shipping: ShippingMethods, include_test: bool) -> Normalized:
    """The record path: one landed payload (parsed JSON) -> OrderRecord | Reject | Skipped."""
    if not isinstance(payload, dict):
        return Reject(SOURCE, key, f"order {key!r}: payload {_show(payload)} is not a JSON object", payload)
    reason = _problem_line_reason(payload)
    if reason is not None:
        return Reject(SOURCE, key, reason, payload)
    fields = _Fields(payload)
    try:
        return _map_order(key, fields, shipping, include_test)
    except _FieldProblem as exc:
        return Reject(SOURCE, key, f"order {key!r}: {exc}", payload)
    except InvalidOrder as exc:
        return Reject(SOURCE, key, str(exc), payload)
    except Exception as exc:  # a shape nobody foresaw must cost one record, not the batch
        return Reject(
            SOURCE,
            key,
            f"order {key!r}: cannot map field {fields.current!r}: {type(exc).__name__}: {exc}",
            payload,
        )


def normalize(
    records: Iterable[KeyedRecord],
    *,
    shipping_methods: Mapping[str, str] | None = None,
    include_test: bool = False,
) -> Iterator[Normalized]:
    """Landed Shopify records -> OrderRow | OrderRecord | Reject | Skipped, one per record,
    in order.

    A record with its JSON ``text`` (a landed one) goes the fast path first (``fast``:
    an OrderRow, or a Skipped test order), which takes only the ordinary shape of an order;
    whatever it leaves goes the record path, on the parsed payload.
    """
    from orders_etl.sources.shopify.fast import FastMapping  # (fast imports this module)

    shipping = ShippingMethods.load(shipping_methods)
    fast = FastMapping(shipping, include_test)
    for record in records:
        key = str(record.record_key)
        text = getattr(record, "text", None)
        if text is not None and (item := fast(key, text)) is not None:
            yield item
            continue
        try:
            payload = record.payload
            if payload is None and text is not None:  # an ordinary bulk line: its text is its payload
                payload = json.loads(text, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:  # landed text that JSON cannot read back
            yield Reject(SOURCE, key, f"order {key!r}: the landed payload is not readable JSON: {exc}", text)
            continue
        yield map_payload(key, payload, shipping, include_test)
