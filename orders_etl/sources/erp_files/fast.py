"""The fast path of the ERP export source: ordinary rows read and mapped at a million a minute.

Why it exists: a million-row export must be read, landed and normalized in seconds, and the
record path costs tens of microseconds a row (the csv module fed line by line, a payload
encoded by ``json.dumps``, a pydantic ``OrderRecord`` per order). Almost every row of a real
export is ordinary, so the ordinary row takes a short road and everything else the record
path, unchanged, which says what is wrong in a reject.

How it stays equal to the slow path: it never decides anything the slow path would decide
differently; it only recognises what is *certainly* ordinary and defers the rest.

* Reading (``RecordReader.rows``, ``_FileRead._rows``): a line without quote character,
  NUL or undecodable byte, of the header's width, is split at the separator (which is all the
  csv parser would do with it); one with an order number and a readable ``updated_at`` is
  its raw record at once. Any other line goes through ``read``, as before.
* Landing: :func:`payload_text` is ``dump_payload``'s text (sorted keys, no spaces, non-ASCII
  as is) written by msgspec in C; for the reader's payloads (text and integers in dicts and
  lists) the two are equal character for character, so landed hashes do not change.
* Mapping (:class:`FastMapper`): the landed JSON text is decoded by msgspec into the expected
  shape; each cell must be in its ordinary form (an amount in the dialect's own notation with
  no sign, a known currency, status and payment words of the dialect, a date the dialect's
  formats read, keys within the model's limits, no NUL anywhere); the row is then written
  straight as the canonical texts the store keeps (``orders_etl.canonical.OrderRow``), the
  values the record path's ``parse_order`` + ``canonical_text`` would give. The first thing
  that is not ordinary returns ``None``: that record takes the record path.

``orders_etl_tests/test_erp_files_fast.py`` holds the proof: on ordinary and hostile rows,
and on the bundled samples, the fast path gives exactly the slow path's result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

import msgspec

from orders_etl.canonical import ROW_FIELDS, OrderRow, utc_text
from orders_etl.currencies import CURRENCY_EXPONENTS
from orders_etl.model import MAX_KEY_LENGTH, snake_code
from orders_etl.sources.erp_files.dates import DateParser
from orders_etl.sources.erp_files.dialect import Dialect, fold, resolve_columns
from orders_etl.store.landing import dump_payload

_ENCODER = msgspec.json.Encoder(order="sorted")


def payload_text(payload: dict[str, Any]) -> str | None:
    """``dump_payload(payload)``, written in C, for what the reader lands: dicts and lists of
    text and (64-bit) integers. None when msgspec cannot write it (a lone surrogate): the
    landing then writes it itself."""
    try:
        return _ENCODER.encode(payload).decode()
    except UnicodeEncodeError:
        return None


# ---------------------------------------------------------------------------------------
# Mapping


class _Payload(msgspec.Struct, forbid_unknown_fields=True):
    """What the reader lands for a row (``row``) or an order's group of rows (``rows``); an
    error record (``error``) or anything else fails to decode and takes the record path."""

    file: str
    line: int
    row: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    rows: list[dict[str, str]] | msgspec.UnsetType = msgspec.UNSET


_decode_any_layout = msgspec.json.Decoder(_Payload).decode
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)

# The canonical fields read from a row, in the order FastMapper unpacks them.
_CELLS = (
    "order_number",
    "created_at",
    "currency",
    "total_amount",
    "tax_amount",
    "refunded_amount",
    "status",
    "payment_status",
    "shipping_method",
    "tracking_number",
    "customer_id",
    "shopify_ref",
)
# An OrderRow is written positionally below: it must be in this order.
_ROW_ORDER = (
    "external_id",
    "number",
    "created_at",
    "currency",
    "total_amount",
    "tax_amount",
    "payment_status",
    "status",
    "shipping_method",
    "tracking_number",
    "customer_id",
    "refunded_amount",
    "payment_status_detail",
    "updated_at",
    "deleted_at",
)
assert ROW_FIELDS == _ROW_ORDER, "OrderRow's fields changed: update FastMapper"
_GID = re.compile(r"gid://shopify/Order/(\d+)")
_CACHE_SIZE = 65_536  # per cache of distinct cell texts: bounded whatever the export holds
_MAX_LAYOUTS = 16
_UNKNOWN = object()


@dataclass(slots=True)
class FastDraft:
    """An ordinary row mapped but for its ``external_id``, which waits for name resolution."""

    record: Any
    ref: str | None
    number: str
    rest: tuple[str | None, ...]  # the OrderRow after external_id


@dataclass(frozen=True, slots=True)
class _Layout:
    """One file layout (its header names): a decoder of exactly those rows, and where they
    hold each field.

    Rows are decoded into a Struct with one field per header (no dict, no per-row layout
    lookup); it refuses any other set of headers (a missing header, an unknown one), so a
    row decoded by a layout's decoder always has that layout.
    """

    decode: Callable[[str], Any]
    cells: Callable[[Any], tuple[str, ...]]  # the row's cells of _CELLS ("" for no column)
    has_refunded: bool

    @classmethod
    def of(cls, headers: tuple[str, ...], dialect: Dialect) -> _Layout:
        attribute = {header: f"c{index}" for index, header in enumerate(headers)}
        row = msgspec.defstruct(
            "Row",
            [(attribute[header], str) for header in headers],
            rename={attribute[header]: header for header in headers},
            forbid_unknown_fields=True,
            namespace={"no_column": ""},  # what a field without a column reads (not decoded)
        )
        payload = msgspec.defstruct(
            "Payload",
            [
                ("file", str),
                ("line", int),
                ("row", row | msgspec.UnsetType, msgspec.UNSET),  # type: ignore[operator]
                ("rows", list[row] | msgspec.UnsetType, msgspec.UNSET),  # type: ignore[valid-type]
            ],
            forbid_unknown_fields=True,
        )
        columns = resolve_columns(list(headers), dialect)
        getter = attrgetter(*(attribute[columns[f]] if f in columns else "no_column" for f in _CELLS))
        return cls(msgspec.json.Decoder(payload).decode, getter, "refunded_amount" in columns)


def _is_key(text: Any) -> bool:
    """``text`` passes the model's key rules (and holds no NUL or lone surrogate)."""
    if not isinstance(text, str) or len(text) > MAX_KEY_LENGTH or not text.strip() or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _money_parser(dialect: Dialect) -> Callable[[str, int], str | None]:
    """Amounts in the dialect's plain notation (``1.234,56``: no sign, no leading zero, ASCII
    digits, grouping by three) as canonical text at a currency's exponent; None otherwise,
    and for what the model refuses (≥ 10**15, digits past the exponent that are not zeros)."""
    decimal, thousands = re.escape(dialect.decimal), dialect.thousands
    if thousands:
        # The record path accepts any of the three spaces once the grouping is a space.
        spaces = " \u00a0\u202f"
        group = f"[{re.escape(spaces)}]" if thousands in spaces else re.escape(thousands)
        whole = rf"(0|[1-9][0-9]{{0,2}}(?:{group}[0-9]{{3}})+|[1-9][0-9]*)"
        ungroup = {ord(c): None for c in (spaces + thousands)}
    else:
        whole, ungroup = r"(0|[1-9][0-9]*)", {}
    match = re.compile(rf"{whole}(?:{decimal}([0-9]+))?").fullmatch
    zeros = "0" * 4

    def money(text: str, exponent: int) -> str | None:
        found = match(text)
        if found is None:
            return None
        digits, fraction = found.groups()
        if ungroup and not digits.isdigit():
            digits = digits.translate(ungroup)
        if len(digits) > 15:  # no leading zeros: 16 digits or more is ≥ 10**15
            return None
        if fraction is None:
            fraction = ""
        if len(fraction) > exponent:
            if fraction[exponent:].strip("0"):
                return None  # would need rounding: the record path says so
            fraction = fraction[:exponent]
        elif len(fraction) < exponent:
            fraction += zeros[: exponent - len(fraction)]
        return f"{digits}.{fraction}" if exponent else digits

    return money


class FastMapper:
    """Maps ordinary landed rows straight to canonical rows; ``None`` defers to the record path."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.money = _money_parser(dialect)
        self.dates = DateParser(dialect.date_formats, dialect.zone)
        self.by_id = dialect.shopify_ref_kind == "id"
        self.default_currency = dialect.default_currency
        self.default_exponent = CURRENCY_EXPONENTS[dialect.default_currency]
        self._layouts: list[_Layout] = []  # most recently used first
        # Distinct cell texts -> canonical values (only values the record path accepts).
        self._created: dict[str, str] = {}
        self._updated: dict[datetime, str] = {}
        self._status: dict[str, str] = {}
        self._payment: dict[str, tuple[str | None, str | None]] = {}
        self._shipping: dict[str, str] = {}

    # -- per layout and per distinct value ---------------------------------------------

    def _decoded(self, text: str) -> tuple[_Layout, Any] | None:
        """The landed row decoded by its layout's decoder (learning a new layout on the way);
        None for anything but a row of text cells (an error record, a crafted payload)."""
        for index, layout in enumerate(self._layouts):
            try:
                payload = layout.decode(text)
            except _DECODE_ERRORS:
                continue
            if index:
                self._layouts.insert(0, self._layouts.pop(index))
            return layout, payload
        try:
            payload = _decode_any_layout(text)
        except _DECODE_ERRORS:
            return None
        if payload.row is not msgspec.UNSET:
            row = payload.row
        elif payload.rows is not msgspec.UNSET and payload.rows:
            row = payload.rows[0]
        else:
            return None
        layout = _Layout.of(tuple(row), self.dialect)
        try:
            payload = layout.decode(text)
        except _DECODE_ERRORS:  # e.g. a group whose rows have different headers
            return None
        del self._layouts[_MAX_LAYOUTS - 1 :]  # a folder of exports has a handful of layouts
        self._layouts.insert(0, layout)
        return layout, payload

    def _date(self, text: str) -> str | None:
        found = self._created.get(text)
        if found is None:
            try:
                found = utc_text(self.dates.parse(text))
            except ValueError:
                return None
            if len(self._created) >= _CACHE_SIZE:
                self._created.clear()
            self._created[text] = found  # type: ignore[assignment]
        return found

    def _updated_text(self, moment: datetime | None) -> str | None:
        found = self._updated.get(moment)  # type: ignore[arg-type]
        if found is None:
            if moment is None or moment.tzinfo is None or moment.utcoffset() is None:
                return None  # naive: the record path refuses it
            if len(self._updated) >= _CACHE_SIZE:
                self._updated.clear()
            found = self._updated[moment] = utc_text(moment)  # type: ignore[assignment]
        return found

    def _status_value(self, cell: str) -> str | None:
        found = self._status.get(cell)
        if found is None:
            status = self.dialect.status_lookup.get(fold(cell))
            if status is None:
                return None
            if len(self._status) >= _CACHE_SIZE:
                self._status.clear()
            found = self._status[cell] = status.value
        return found

    def _payment_values(self, cell: str) -> tuple[str | None, str | None] | None:
        found = self._payment.get(cell)
        if found is None:
            text = cell.strip()
            status = self.dialect.payment_status_lookup.get(fold(text), _UNKNOWN)
            if status is _UNKNOWN:
                return None
            if len(self._payment) >= _CACHE_SIZE:
                self._payment.clear()
            value = None if status is None else status.value  # type: ignore[union-attr]
            found = self._payment[cell] = (value, text.lower() or None)
        return found

    def _shipping_code(self, text: str) -> str | None:
        found = self._shipping.get(text)
        if found is None:
            found = self.dialect.shipping_lookup.get(fold(text)) or snake_code(text) or text
            if "\x00" in found:  # a dialect's code the model refuses: the record path says so
                return None
            if len(self._shipping) >= _CACHE_SIZE:
                self._shipping.clear()
            self._shipping[text] = found
        return found

    # -- records -----------------------------------------------------------------------

    def draft(self, record: Any) -> FastDraft | None:
        """The record mapped but for its key, or None: the record path maps it."""
        text = record.text
        if text is None:  # a record not landed (yet): its text as it would land
            text = dump_payload(record.payload)
        if "\\u0000" in text:  # a NUL somewhere: not ordinary
            return None
        decoded = self._decoded(text)
        if decoded is None:
            return None
        layout, payload = decoded
        row = payload.row
        if row is msgspec.UNSET:
            rows = payload.rows
            if rows is msgspec.UNSET or not rows:
                return None
            row = rows[0]
        elif payload.rows is not msgspec.UNSET:
            return None
        (
            number,
            created,
            currency,
            total,
            tax,
            refunded,
            status,
            payment,
            shipping,
            tracking,
            customer,
            ref,
        ) = layout.cells(row)

        number = number.strip()
        if not number or len(number) > MAX_KEY_LENGTH:
            return None
        created = created.strip()
        created_text = None
        if created and (created_text := self._date(created)) is None:
            return None
        currency = currency.strip().upper()
        if currency:
            exponent = CURRENCY_EXPONENTS.get(currency)
            if exponent is None:
                return None
        else:
            currency, exponent = self.default_currency, self.default_exponent
        total_text = self.money(total.strip(), exponent)
        if total_text is None:
            return None
        tax = tax.strip()
        tax_text = None
        if tax and (tax_text := self.money(tax, exponent)) is None:
            return None
        refunded_text = None
        if layout.has_refunded:
            refunded = refunded.strip()
            # An empty cell of the credit-memo column: nothing refunded (zero, not unknown).
            refunded_text = self.money(refunded or "0", exponent)
            if refunded_text is None:
                return None
        status_text = self._status_value(status)
        if status_text is None:
            return None
        payment_texts = self._payment_values(payment)
        if payment_texts is None:
            return None
        shipping = shipping.strip()
        shipping_text = None
        if shipping and (shipping_text := self._shipping_code(shipping)) is None:
            return None
        updated_text = self._updated_text(record.updated_at)
        if updated_text is None:
            return None
        rest = (
            number,
            created_text,
            currency,
            total_text,
            tax_text,
            payment_texts[0],
            status_text,
            shipping_text,
            tracking.strip() or None,
            customer.strip() or None,
            refunded_text,
            payment_texts[1],
            updated_text,
            None,
        )
        return FastDraft(record, ref.strip() or None, number, rest)

    def finish(self, draft: FastDraft, resolved: dict[str, str]) -> OrderRow | None:
        """The row keyed on its Shopify order or its ERP number; None: the record path."""
        ref = draft.ref
        if ref is None:
            return OrderRow((draft.number, *draft.rest))
        if self.by_id:
            gid = _GID.fullmatch(ref)
            key = gid.group(1) if gid else ref
        else:
            key = resolved.get(ref, draft.number)
        if key is not draft.number and not _is_key(key):
            return None
        return OrderRow((key, *draft.rest))
