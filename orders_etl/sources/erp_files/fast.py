"""The fast path of the ERP export source: ordinary rows read, landed and mapped cheaply.

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
* Dates (``dates.py``): a value in the full-width form of a numeric format is read by a
  pattern instead of ``strptime``, when no earlier format could read it.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from operator import attrgetter
from typing import Any

import msgspec

from orders_etl.canonical import OrderRow, utc_text
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
_GID = re.compile(r"gid://shopify/Order/(\d+)")
_CACHE_SIZE = 65_536  # per cache of distinct cell texts: bounded whatever the export holds
_MAX_LAYOUTS = 16
_UNKNOWN = object()


# A row mapped but for its external_id: the OrderRow's values, the row's Shopify reference
# (or None) standing in for external_id until finish(). (One tuple of text: the garbage
# collector stops tracking it at its first pass; pairs or lists it would scan again and again.)
Draft = tuple[str | None, ...]


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
            gc=False,  # text only: no cycles, and a million fewer objects for the collector
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
            gc=False,
        )
        columns = resolve_columns(list(headers), dialect)
        getter = attrgetter(*(attribute[columns[f]] if f in columns else "no_column" for f in _CELLS))
        return cls(msgspec.json.Decoder(payload).decode, getter, "refunded_amount" in columns)


def _is_key(text: Any) -> bool:
    """``text`` passes the model's key rules (and holds no NUL or lone surrogate)."""
    if type(text) is not str or len(text) > MAX_KEY_LENGTH or not text.strip() or "\x00" in text:
        return False
    if text.isascii():
        return True
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
    spaces = " \u00a0\u202f"  # the record path takes any of them once the grouping is a space
    if thousands:
        group = f"[{re.escape(spaces)}]" if thousands in spaces else re.escape(thousands)
        whole = rf"(0|[1-9][0-9]{{0,2}}(?:{group}[0-9]{{3}})+|[1-9][0-9]*)"
    else:
        whole = r"(0|[1-9][0-9]*)"
    match = re.compile(rf"{whole}(?:{decimal}([0-9]+))?").fullmatch
    separators = tuple(spaces) if thousands in spaces else (thousands,)
    # Zero, the most frequent amount (taxes, refunds), without the pattern: "0", "0,00", ...
    zeros = {"0", *(f"0{dialect.decimal}{'0' * n}" for n in range(1, 9))}
    zero = {exponent: "0." + "0" * exponent if exponent else "0" for exponent in range(5)}

    def money(text: str, exponent: int) -> str | None:
        if text in zeros:
            return zero[exponent]
        found = match(text)
        if found is None:
            return None
        digits, fraction = found.groups()
        if thousands:
            for separator in separators:
                digits = digits.replace(separator, "")
        if len(digits) > 15:  # no leading zeros: 16 digits or more is ≥ 10**15
            return None
        if fraction is None:
            fraction = ""
        if len(fraction) != exponent:
            if len(fraction) > exponent:
                if fraction[exponent:].strip("0"):
                    return None  # would need rounding: the record path says so
                fraction = fraction[:exponent]
            else:
                fraction += "0000"[: exponent - len(fraction)]
        return digits + "." + fraction if exponent else digits

    return money


class FastMapper:
    """Maps ordinary landed rows straight to canonical rows; ``None`` defers to the record path.

    Works a chunk at a time (:meth:`drafts`, then :meth:`finish` once the chunk's Shopify
    names are resolved): the loop over a chunk's records is the hot spot of a million-row
    sync, so it is written out in one function, with what it uses bound to locals.
    """

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
        self._days: dict[date, str] = {}  # UTC days and times of day, as canonical text
        self._times: dict[time, str] = {}
        self._status: dict[str, str] = {}
        self._payment: dict[str, tuple[str | None, str | None]] = {}
        self._shipping: dict[str, str] = {}

    # -- per layout and per distinct value (the misses of the caches) -----------------

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

    @staticmethod
    def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[key] = value
        return value

    def _date(self, text: str) -> str | None:
        try:
            return self._remember(self._created, text, utc_text(self.dates.parse(text)))
        except ValueError:
            return None

    def _updated_text(self, moment: datetime | None) -> str | None:
        """``utc_text(moment)``: its UTC day and time of day, each text cached (formatting a
        datetime costs a microsecond; a million updates fall on a few thousand minutes)."""
        if moment is None or moment.tzinfo is None or moment.utcoffset() is None:
            return None  # naive: the record path refuses it
        if moment.tzinfo is not UTC:
            try:
                moment = moment.astimezone(UTC)
            except OverflowError:  # (year 1 east of Greenwich): whatever the record path says
                return None
        day, clock = moment.date(), moment.time()
        day_text = self._days.get(day) or self._remember(self._days, day, day.isoformat() + " ")
        clock_text = self._times.get(clock) or self._remember(
            self._times, clock, clock.isoformat("microseconds")
        )
        return day_text + clock_text

    def _status_value(self, cell: str) -> str | None:
        status = self.dialect.status_lookup.get(fold(cell))
        return None if status is None else self._remember(self._status, cell, status.value)

    def _payment_values(self, cell: str) -> tuple[str | None, str | None] | None:
        text = cell.strip()
        status = self.dialect.payment_status_lookup.get(fold(text), _UNKNOWN)
        if status is _UNKNOWN:
            return None
        value = None if status is None else status.value  # type: ignore[union-attr]
        return self._remember(self._payment, cell, (value, text.lower() or None))

    def _shipping_code(self, text: str) -> str | None:
        code = self.dialect.shipping_lookup.get(fold(text)) or snake_code(text) or text
        if "\x00" in code:  # a dialect's code the model refuses: the record path says so
            return None
        return self._remember(self._shipping, text, code)

    # -- a chunk of records --------------------------------------------------------------

    def drafts(self, records: Sequence[Any]) -> list[Draft | None]:
        """Each record mapped but for its ``external_id`` (:data:`Draft`); None where the
        record path must map it."""
        out: list[Draft | None] = []
        append = out.append
        money = self.money
        exponents, default_currency, default_exponent = (
            CURRENCY_EXPONENTS,
            self.default_currency,
            self.default_exponent,
        )
        created_get, updated_text = self._created.get, self._updated_text
        status_get, payment_get, shipping_get = self._status.get, self._payment.get, self._shipping.get
        for record in records:
            text = record.text
            if text is None:  # a record not landed (yet): its text as it would land
                text = dump_payload(record.payload)
            if "\\u0000" in text:  # a NUL somewhere: not ordinary
                append(None)
                continue
            layouts = self._layouts
            try:
                layout = layouts[0]
                payload = layout.decode(text)
            except (IndexError, *_DECODE_ERRORS):
                decoded = self._decoded(text)
                if decoded is None:
                    append(None)
                    continue
                layout, payload = decoded
            row = payload.row
            if row is msgspec.UNSET:
                row = payload.rows[0] if payload.rows else None  # (UNSET and [] are false)
            elif payload.rows is not msgspec.UNSET:
                row = None
            if row is None:
                append(None)
                continue
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

            # Each value in the form the record path would give it, or the record path.
            number = number.strip()
            if not number or len(number) > MAX_KEY_LENGTH:
                append(None)
                continue
            created = created.strip()
            if created:
                created = created_get(created) or self._date(created)
                if created is None:
                    append(None)
                    continue
            else:
                created = None
            currency = currency.strip().upper()
            if currency:
                exponent = exponents.get(currency)
                if exponent is None:
                    append(None)
                    continue
            else:
                currency, exponent = default_currency, default_exponent
            total = money(total.strip(), exponent)
            tax = tax.strip()
            tax = money(tax, exponent) if tax else ""
            # No credit-memo column: refunds unknown (""). An empty cell of it: nothing refunded.
            refunded = money(refunded.strip() or "0", exponent) if layout.has_refunded else ""
            status = status_get(status) or self._status_value(status)
            payment = payment_get(payment) or self._payment_values(payment)
            if total is None or tax is None or refunded is None or status is None or payment is None:
                append(None)
                continue
            shipping = shipping.strip()
            if shipping:
                shipping = shipping_get(shipping) or self._shipping_code(shipping)
                if shipping is None:
                    append(None)
                    continue
            # A record read back from SQLite holds its time as the very text wanted here.
            updated = getattr(record, "updated_text", None) or updated_text(record.updated_at)
            if updated is None:
                append(None)
                continue
            draft = (
                ref.strip() or None,  # external_id's place: the reference, until finish()
                number,
                created,
                currency,
                total,
                tax or None,
                payment[0],
                status,
                shipping or None,
                tracking.strip() or None,
                customer.strip() or None,
                refunded or None,
                payment[1],
                updated,
                None,
            )
            append(draft)
        return out

    def keys(self, resolved: dict[str, str]) -> dict[str, str | None]:
        """Resolved Shopify names -> the order's key (None: an id the model refuses as key)."""
        return {name: key if _is_key(key) else None for name, key in resolved.items()}

    def finish(self, draft: Draft, keys: dict[str, str | None]) -> OrderRow | None:
        """The row keyed on its Shopify order, else its ERP number; None: the record path
        (a key the model refuses)."""
        ref = draft[0]
        if ref is None:
            key = draft[1]  # (an ERP-only order: keyed on its number)
        elif self.by_id:
            if len(ref) > MAX_KEY_LENGTH:
                return None
            gid = _GID.fullmatch(ref)
            key = gid.group(1) if gid else ref
        # A name no Shopify order has: keyed on the ERP number.
        elif (key := keys.get(ref, draft[1])) is None:
            return None
        return OrderRow((key, *draft[1:]))
