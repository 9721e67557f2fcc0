"""ERP export rows -> canonical orders (DESIGN.md §4, ERP mapping policy). Pure: no I/O.

A row's cells arrive as text exactly as read; here they are parsed with the dialect's
separators, formats, time zone and vocabularies. Every problem of a row is reported at
once, in a reject whose reason names the file, the line, the field and its column.

Keying: the row's Shopify reference decides the order's ``external_id``. With
``shopify_ref_kind = "id"`` the reference is the Shopify order id (a ``gid://`` is reduced
to its number); with ``"name"`` (e.g. ``#1001``) the names are resolved to Shopify ids in
one call per chunk of rows, and a name that resolves to nothing keys the order on its ERP
number, as does a row without a reference (an ERP-only order).

This module is the record path: every rule, every reject reason. Ordinary rows are mapped
by the fast path (``fast.py``) to the same result, as canonical text; this path maps what
the fast path leaves to it, and is the reference the fast path is tested against.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from orders_etl.canonical import OrderRow
from orders_etl.currencies import is_iso_currency
from orders_etl.lists import in_lists
from orders_etl.model import InvalidOrder, OrderRecord, Reject, parse_order, snake_code
from orders_etl.sources.base import NameResolver
from orders_etl.sources.erp_files.dates import DateParser
from orders_etl.sources.erp_files.dialect import Dialect, fold, resolve_columns
from orders_etl.sources.erp_files.fast import FastMapper
from orders_etl.sources.erp_files.numbers import AmountParser
from orders_etl.sources.erp_files.reader import SOURCE

# Records per call of the name resolver. The store queries 500 names at a time whatever the
# call, so small chunks cost no more queries; and they keep a chunk's drafts young, which
# the garbage collector scans cheaply (20,000 cost 15 % more than 2,000).
CHUNK_SIZE = 2_000
_GID = re.compile(r"gid://shopify/Order/(\d+)")
_FIELD = re.compile(r"^field '(\w+)'")


class RawLike(Protocol):
    """A raw record as the reader yields it or as the store lands it (RawRecord, LandedRecord)."""

    @property
    def record_key(self) -> str: ...
    @property
    def updated_at(self) -> datetime | None: ...
    @property
    def payload(self) -> Any: ...
    @property
    def text(self) -> str | None: ...  # the payload's landed JSON text, when known


@dataclass(slots=True)
class _Draft:
    """A row whose cells all parsed, waiting for its Shopify reference to be resolved."""

    record_key: str
    where: str
    payload: Any
    fields: dict[str, Any]
    columns: dict[str, str]
    ref: str | None


def _where(payload: Any) -> str:
    if isinstance(payload, dict):
        return f"{payload.get('file', '<unknown file>')} line {payload.get('line', '?')}"
    return "<payload not from the erp_files reader>"


class _Mapper:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.amounts = AmountParser(dialect.decimal, dialect.thousands)
        self.dates = DateParser(dialect.date_formats, dialect.zone)
        self._columns: dict[tuple[str, ...], dict[str, str]] = {}

    def columns(self, row: dict[str, str]) -> dict[str, str]:
        headers = tuple(row)
        found = self._columns.get(headers)
        if found is None:
            if len(self._columns) > 64:  # a folder of exports has a handful of layouts
                self._columns.clear()
            found = self._columns[headers] = resolve_columns(list(headers), self.dialect)
        return found

    def draft(self, record: RawLike) -> _Draft | Reject:
        payload = record.payload
        where = _where(payload)
        if isinstance(payload, dict) and "error" in payload:
            return Reject(SOURCE, record.record_key, f"{where}: {payload['error']}", payload)
        try:
            row = payload["row"] if "row" in payload else payload["rows"][0]
            if not isinstance(row, dict):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            return Reject(SOURCE, record.record_key, f"{where}: payload holds no row", payload)
        columns = self.columns(row)
        problems: list[str] = []
        fields: dict[str, Any] = {}

        def label(field: str) -> str:
            column = columns.get(field)
            if column is None:
                return f"field {field!r} (no column among {self.dialect.columns.get(field, [])})"
            return f"field {field!r} (column {column!r})"

        def cell(field: str) -> str | None:
            column = columns.get(field)
            return None if column is None else str(row.get(column, "")).strip()

        def parse(field: str, parser: Any, text: str) -> Any:
            try:
                return parser(text)
            except ValueError as exc:
                problems.append(f"{label(field)} = {text!r}: {exc}")
                return None

        number = cell("order_number") or ""
        fields["number"] = number
        if not number:
            problems.append(f"{label('order_number')} is empty")

        created = cell("created_at")
        fields["created_at"] = parse("created_at", self.dates.parse, created) if created else None

        currency = (cell("currency") or "").upper()
        if currency and not is_iso_currency(currency):
            problems.append(f"{label('currency')} = {currency!r}: not an ISO 4217 code")
        fields["currency"] = currency or self.dialect.default_currency

        total = cell("total_amount")
        if not total:
            problems.append(f"{label('total_amount')} is empty")
        else:
            fields["total_amount"] = parse("total_amount", self.amounts.parse, total)
        tax = cell("tax_amount")
        fields["tax_amount"] = parse("tax_amount", self.amounts.parse, tax) if tax else None
        # No credit-memo column: refunds unknown (null). The column with an empty cell: none booked.
        refunded = cell("refunded_amount")
        if refunded is None:
            fields["refunded_amount"] = None
        else:
            fields["refunded_amount"] = (
                parse("refunded_amount", self.amounts.parse, refunded) if refunded else Decimal(0)
            )

        status = cell("status") or ""
        if fold(status) in self.dialect.status_lookup:
            fields["status"] = self.dialect.status_lookup[fold(status)]
        else:
            known = sorted(self.dialect.status_map)
            problems.append(f"{label('status')} = {status!r}: not in status_map {known}")

        payment = cell("payment_status") or ""
        if fold(payment) in self.dialect.payment_status_lookup:
            fields["payment_status"] = self.dialect.payment_status_lookup[fold(payment)]
        else:
            known = sorted(self.dialect.payment_status_map)
            problems.append(f"{label('payment_status')} = {payment!r}: not in payment_status_map {known}")
        fields["payment_status_detail"] = payment.lower() or None

        shipping = cell("shipping_method")
        if shipping:
            code = self.dialect.shipping_lookup.get(fold(shipping)) or snake_code(shipping)
            fields["shipping_method"] = code or shipping  # a title with no letters is kept, not dropped
        fields["tracking_number"] = cell("tracking_number") or None
        fields["customer_id"] = cell("customer_id") or None

        fields["updated_at"] = record.updated_at
        if record.updated_at is None:
            problems.append("the record has no updated_at")

        if problems:
            reason = f"{where}: order {number!r}: " + "; ".join(problems)
            return Reject(SOURCE, record.record_key, reason, payload)
        return _Draft(record.record_key, where, payload, fields, columns, cell("shopify_ref") or None)

    def external_id(self, draft: _Draft, resolved: dict[str, str]) -> str:
        ref, number = draft.ref, draft.fields["number"]
        if ref is None:
            return number
        if self.dialect.shopify_ref_kind == "id":
            gid = _GID.fullmatch(ref)
            return gid.group(1) if gid else ref
        return resolved.get(ref, number)

    def finish(self, draft: _Draft, resolved: dict[str, str]) -> OrderRecord | Reject:
        data = draft.fields | {"external_id": self.external_id(draft, resolved)}
        try:
            return parse_order(data, draft.record_key)
        except InvalidOrder as exc:
            problems = [self._with_column(p, draft.columns) for p in exc.problems]
            reason = f"{draft.where}: order {draft.fields['number']!r}: " + "; ".join(problems)
            return Reject(SOURCE, draft.record_key, reason, draft.payload)

    @staticmethod
    def _with_column(problem: str, columns: dict[str, str]) -> str:
        match = _FIELD.match(problem)
        if match and match.group(1) in columns:
            return f"{problem[: match.end()]} (column {columns[match.group(1)]!r}){problem[match.end() :]}"
        return problem


def normalize(
    records: Iterable[RawLike],
    *,
    dialect: Dialect,
    resolve_names: NameResolver,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[OrderRow | OrderRecord | Reject]:
    """Each raw record as an order or a ``Reject``, in input order, streaming.

    An ordinary row comes as an ``OrderRow`` (the fast path, ``fast.py``), any other as the
    record path makes it: an ``OrderRecord`` or a ``Reject`` naming what is wrong.
    """
    return _normalize(records, dialect, resolve_names, chunk_size, FastMapper(dialect))


def _normalize(
    records: Iterable[RawLike],
    dialect: Dialect,
    resolve_names: NameResolver,
    chunk_size: int,
    fast: FastMapper | None,
) -> Iterator[OrderRow | OrderRecord | Reject]:
    """:func:`normalize`; without ``fast``, every record by the record path (the reference
    the fast path is tested against)."""
    mapper = _Mapper(dialect)
    for chunk in in_lists(records, chunk_size):
        quick = fast.drafts(chunk) if fast is not None else [None] * len(chunk)
        # The record path drafts what the fast path did not take.
        drafts = [mapper.draft(r) if d is None else d for r, d in zip(chunk, quick, strict=True)]
        names = {d[0] for d in drafts if type(d) is tuple} | {d.ref for d in drafts if type(d) is _Draft}
        names.discard(None)
        resolved = resolve_names(names) if names and dialect.shopify_ref_kind == "name" else {}
        keys = fast.keys(resolved) if fast is not None else {}
        for record, draft in zip(chunk, drafts, strict=True):
            if type(draft) is tuple:
                row = fast.finish(draft, keys)  # type: ignore[union-attr]
                if row is not None:
                    yield row
                    continue
                draft = mapper.draft(record)  # a key the model refuses: the record path says so
            yield draft if isinstance(draft, Reject) else mapper.finish(draft, resolved)  # type: ignore[arg-type]
