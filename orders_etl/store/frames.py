"""Columnar chunks of normalized orders: the upsert's input, checked, hashed and deduped.

A *frame* is one chunk of orders as a pandas DataFrame (or an Arrow table) with the columns
:data:`FRAME_COLUMNS` (``external_id`` then the Order fields), every value in its **canonical
text** — exactly what the SQLite store keeps, and what PostgreSQL parses into NUMERIC /
timestamptz:

* money: the decimal amount at the currency's exponent (``12.30``, ``1500``, ``1.250``);
* time: UTC, fixed width ``YYYY-MM-DD HH:MM:SS.ffffff`` (text order = time order);
* enums: their values (``captured``, ``shipped``); missing values: null.

:func:`records_to_frame` turns validated :class:`~orders_etl.model.OrderRecord` objects into
a frame; a columnar normalizer or the benchmark may build frames directly.
:func:`prepare` checks a frame at the boundary (same rules as the model, vectorized, and an
error names the record, the field and the value), dedupes it and computes the content hash.
Everything here works column-wise in Arrow: at a million orders a chunk, per-record Python
would cost more than the database work.

The content hash is ``blake2b`` (128 bits, hex) of the UTF-8 of ``repr(texts)``, ``texts``
being the tuple of canonical texts of ``external_id`` and the Order fields in
:data:`FRAME_COLUMNS` order (``None`` for a null): an unambiguous encoding that depends on
nothing but the values, so a record hashes the same in every process and for both stores,
and the same as every version of this store has stored. It is computed column-wise here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from orders_etl.currencies import CURRENCY_EXPONENTS
from orders_etl.model import MAX_KEY_LENGTH, InvalidOrder, OrderRecord, OrderStatus, PaymentStatus
from orders_etl.store.schema import DATETIME_FIELDS, MONEY_FIELDS, ORDER_FIELDS
from orders_etl.store.types import hex_digests

FRAME_COLUMNS: tuple[str, ...] = ("external_id", *ORDER_FIELDS)
REQUIRED_COLUMNS = frozenset({"external_id", "number", "currency", "total_amount", "status", "updated_at"})
_KEY_COLUMNS = ("external_id", "number")
_FREE_TEXT_COLUMNS = ("shipping_method", "tracking_number", "customer_id", "payment_status_detail")
_ANY_TEXT_COLUMNS = frozenset(_KEY_COLUMNS + _FREE_TEXT_COLUMNS)
_ENUMS = {
    "status": pa.array([s.value for s in OrderStatus]),
    "payment_status": pa.array([s.value for s in PaymentStatus]),
}
# Canonical forms. Money: no sign, no leading zeros, below MAX_AMOUNT (10**15); the number
# of decimals is checked against the currency separately.
_MONEY_PATTERN = r"^(0|[1-9][0-9]{0,14})(\.[0-9]+)?$"
_DATETIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}$"
_CURRENCIES = pa.array(list(CURRENCY_EXPONENTS))
_EXPONENTS = pa.array(list(CURRENCY_EXPONENTS.values()), pa.int32())
# Text whose repr is itself between single quotes: printable ASCII but ' and \.
_PLAIN_REPR = r"^[\x20-\x26\x28-\x5b\x5d-\x7e]*$"
_END = 2**31 - 1  # a slice start past any text's end: replacing there appends
NO_KEY = "<no key>"  # how an InvalidOrder names a row without external_id


# ---------------------------------------------------------------------------------------
# Building frames


def _time_text(value: object) -> str | None:
    # Validated UTC: dropping "+00:00" from the ISO text leaves the fixed-width form.
    return None if value is None else value.isoformat(" ", "microseconds")[:-6]  # type: ignore[attr-defined]


def canonical_text(record: OrderRecord) -> tuple[str | None, ...]:
    """One record's canonical texts in FRAME_COLUMNS order; spelled out field by field
    because it runs once per order (a loop with per-field helpers costs twice as much)."""
    d = record.__dict__
    tax, refunded, payment = d["tax_amount"], d["refunded_amount"], d["payment_status"]
    return (
        d["external_id"],
        d["number"],
        _time_text(d["created_at"]),
        d["currency"],
        str(d["total_amount"]),
        None if tax is None else str(tax),
        None if payment is None else str(payment),
        str(d["status"]),
        d["shipping_method"],
        d["tracking_number"],
        d["customer_id"],
        None if refunded is None else str(refunded),
        d["payment_status_detail"],
        _time_text(d["updated_at"]),
        _time_text(d["deleted_at"]),
    )


def records_to_table(records: Iterable[OrderRecord]) -> pa.Table:
    """Validated records as an Arrow frame of canonical text (see the module docstring)."""
    return rows_to_table([canonical_text(record) for record in records])


def rows_to_table(rows: Sequence[tuple[str | None, ...]]) -> pa.Table:
    """Rows of canonical text in FRAME_COLUMNS order (``orders_etl.canonical.OrderRow``) as a frame."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(FRAME_COLUMNS)
    return pa.table(
        {
            name: pa.array(values, type=pa.string())
            for name, values in zip(FRAME_COLUMNS, columns, strict=True)
        }
    )


def records_to_frame(records: Iterable[OrderRecord]) -> pd.DataFrame:
    """Validated records as a pandas frame of canonical text (see the module docstring)."""
    return records_to_table(records).to_pandas()


def _as_table(frame: pd.DataFrame | pa.Table) -> pa.Table:
    """The frame as an Arrow table of single-chunk ``string`` columns in FRAME_COLUMNS order."""
    names = list(frame.column_names if isinstance(frame, pa.Table) else frame.columns)
    if sorted(names) != sorted(FRAME_COLUMNS):
        missing = sorted(set(FRAME_COLUMNS) - set(names))
        extra = sorted(set(names) - set(FRAME_COLUMNS))
        raise ValueError(f"an order frame has the columns {FRAME_COLUMNS}: missing {missing}, extra {extra}")
    if isinstance(frame, pd.DataFrame):
        frame = pa.Table.from_pandas(frame, preserve_index=False)
    columns = []
    for name in FRAME_COLUMNS:
        column = frame.column(name)
        text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        # An all-null column may come typed as null (or object, from pandas): any type will do.
        if not text and column.null_count != len(column):
            raise ValueError(f"order frame column {name!r} must hold canonical text, not {column.type}")
        columns.append(column.cast(pa.string()).combine_chunks())
    return pa.table(columns, names=list(FRAME_COLUMNS))


# ---------------------------------------------------------------------------------------
# Boundary checks


def _reject_first(table: pa.Table, bad: pa.Array | pa.ChunkedArray, field: str, problem: str) -> None:
    """Raise InvalidOrder for the first row flagged in ``bad`` (none: nothing to do).

    A null flag counts as fine: whether a value may be null is the "required" rule's call.
    """
    if not pc.any(bad).as_py():  # any() skips nulls
        return
    row = pc.index(pc.fill_null(bad, False), True).as_py()
    key = table.column("external_id")[row].as_py()
    value = table.column(field)[row].as_py()
    shown = repr(value) if value is None or len(value) <= 80 else repr(value[:77] + "...")
    raise InvalidOrder(NO_KEY if key is None else key, [f"field {field!r} = {shown}: {problem}"])


def validate(table: pa.Table) -> None:
    """The model's rules on canonical text, column by column; InvalidOrder names record, field, value."""
    for name in FRAME_COLUMNS:
        column = table.column(name)
        if name in REQUIRED_COLUMNS:
            _reject_first(table, column.is_null(), name, "is required")
        if name in _KEY_COLUMNS:
            _check_key(table, name)
        if name in _KEY_COLUMNS or name in _FREE_TEXT_COLUMNS:
            nul = pc.match_substring(column, "\x00")
            _reject_first(table, nul, name, "contains a NUL character, which the store cannot keep")
        if name in _ENUMS:
            outside = pc.and_(pc.invert(pc.is_in(column, value_set=_ENUMS[name])), column.is_valid())
            _reject_first(table, outside, name, "is not one of the allowed values")
        if name in DATETIME_FIELDS:
            malformed = pc.invert(pc.match_substring_regex(column, _DATETIME_PATTERN))
            _reject_first(table, malformed, name, "is not UTC time as YYYY-MM-DD HH:MM:SS.ffffff")
            _check_real_times(table, name)
    _check_money(table)


def _check_key(table: pa.Table, name: str) -> None:
    column = table.column(name)
    blank = pc.or_(pc.equal(pc.binary_length(column), 0), pc.utf8_is_space(column))
    _reject_first(table, blank, name, "must not be blank")
    # Bytes bound characters from above: count characters only when some value might be too long.
    if pc.any(pc.greater(pc.binary_length(column), MAX_KEY_LENGTH)).as_py():
        too_long = pc.greater(pc.utf8_length(column), MAX_KEY_LENGTH)
        _reject_first(table, too_long, name, f"is longer than {MAX_KEY_LENGTH} characters")


def _check_money(table: pa.Table) -> None:
    currency = table.column("currency")
    _reject_first(table, pc.invert(pc.is_in(currency, value_set=_CURRENCIES)), "currency",
                  "is not an ISO 4217 currency code")  # fmt: skip
    exponents = pc.take(_EXPONENTS, pc.index_in(currency, value_set=_CURRENCIES))
    for name in MONEY_FIELDS:
        column = table.column(name)
        malformed = pc.invert(pc.match_substring_regex(column, _MONEY_PATTERN))
        _reject_first(
            table, malformed, name, "is not a non-negative decimal amount below 10**15 in canonical form"
        )
        # Digits after the point (the text is ASCII here, so bytes are characters).
        point = pc.find_substring(column, ".")
        after_point = pc.subtract(pc.subtract(pc.binary_length(column), point), 1)
        decimals = pc.if_else(pc.equal(point, -1), 0, after_point)
        _reject_first(
            table, pc.not_equal(decimals, exponents), name, "does not have the currency's number of decimals"
        )


def _check_real_times(table: pa.Table, name: str) -> None:
    """Well-formed text can still name no instant (month 13): Arrow's parser finds those."""
    column = table.column(name)
    try:
        column.cast(pa.timestamp("us"))
    except pa.ArrowInvalid:
        for row, value in enumerate(column.to_pylist()):
            try:
                pa.array([value], pa.string()).cast(pa.timestamp("us"))
            except pa.ArrowInvalid:
                bad = np.zeros(len(column), dtype=bool)
                bad[row] = True
                _reject_first(table, pa.array(bad), name, "is not a real date and time")


# ---------------------------------------------------------------------------------------
# Hash and dedupe


def _quoted(column: pa.Array) -> pa.Array:
    """``'value'`` for every value (slice replacement: far cheaper than a join with scalars)."""
    return pc.binary_replace_slice(pc.binary_replace_slice(column, 0, 0, "'"), _END, _END, "'")


def content_hashes(table: pa.Table) -> pa.Array:
    """The content hash of every row (see the module docstring), as 32 hex digits.

    ``repr`` of a text of printable ASCII without quote or backslash is the text between
    single quotes, and of a null ``None``: that is built column-wise. A row with any other
    text (rare) gets ``repr`` itself, so the result is always exact.
    """
    columns = [table.column(name).combine_chunks() for name in FRAME_COLUMNS]
    texts = pc.binary_join_element_wise(*(pc.fill_null(_quoted(c), "None") for c in columns), ", ")
    texts = pc.binary_replace_slice(pc.binary_replace_slice(texts, 0, 0, "("), _END, _END, ")")
    # Only free text can be odd (the other columns passed stricter checks); one regex pass
    # over it all, space-separated (space is plain), is cheaper than one per column.
    free = (
        pc.fill_null(c, "") for n, c in zip(FRAME_COLUMNS, columns, strict=True) if n in _ANY_TEXT_COLUMNS
    )
    odd = pc.invert(pc.match_substring_regex(pc.binary_join_element_wise(*free, " "), _PLAIN_REPR))
    if pc.any(odd).as_py():
        rows = table.filter(odd).select(list(FRAME_COLUMNS)).to_pylist()
        exact = [repr(tuple(row[name] for name in FRAME_COLUMNS)) for row in rows]
        texts = pc.replace_with_mask(texts, odd, pa.array(exact, pa.string()))
    return pa.array(list(hex_digests(texts.cast(pa.binary()).to_pylist())), pa.string())


@dataclass(frozen=True)
class PreparedChunk:
    """A checked chunk: one row per ``external_id`` (sorted), with ``content_hash``."""

    table: pa.Table
    duplicates: int


def _pairwise(function: str, column: pa.Array) -> np.ndarray:
    """``function(row, next row)`` for every row but the last, as a numpy bool array."""
    return pc.call_function(function, [column.slice(0, len(column) - 1), column.slice(1)]).to_numpy(
        zero_copy_only=False
    )


def _in_key_order(table: pa.Table, key: str) -> pa.Table:
    """``table`` sorted by ``key`` (input usually is already: checking costs far less)."""
    if _pairwise("less_equal", table.column(key).combine_chunks()).all():
        return table
    return table.take(pc.sort_indices(table, [(key, "ascending")]))


def _newest_of_each_key(table: pa.Table) -> np.ndarray:
    """Per row (key-sorted table): is its ``updated_at`` the newest of its key's rows?"""
    same_as_previous = np.append(False, _pairwise("equal", table.column("external_id").combine_chunks()))
    if not same_as_previous.any():
        return np.ones(table.num_rows, dtype=bool)
    # Canonical UTC text parses to microseconds; the newest per key by a reduce over groups.
    updated = table.column("updated_at").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    starts = np.flatnonzero(~same_as_previous)
    newest = np.maximum.reduceat(updated, starts)
    return updated == np.repeat(newest, np.diff(np.append(starts, table.num_rows)))


def dedupe(table: pa.Table) -> PreparedChunk:
    """Newest version per key, in key order; a tie on ``updated_at`` goes to the larger hash.

    Only the versions that can win (newest ``updated_at`` of their key) are hashed.
    """
    if not table.num_rows:
        return PreparedChunk(table.append_column("content_hash", pa.array([], pa.string())), 0)
    table = _in_key_order(table, "external_id")
    candidates = table.filter(pa.array(_newest_of_each_key(table)))
    candidates = candidates.append_column("content_hash", content_hashes(candidates))
    keys = candidates.column("external_id").combine_chunks()
    if len(keys) > 1 and _pairwise("equal", keys).any():  # ties on updated_at: rare
        candidates = candidates.take(
            pc.sort_indices(candidates, [("external_id", "ascending"), ("content_hash", "ascending")])
        )
        last = np.append(~_pairwise("equal", candidates.column("external_id").combine_chunks()), True)
        candidates = candidates.filter(pa.array(last))
    return PreparedChunk(candidates.combine_chunks(), table.num_rows - candidates.num_rows)


def prepare(frame: pd.DataFrame | pa.Table) -> PreparedChunk:
    """Check a frame, then dedupe it (see the module docstring)."""
    table = _as_table(frame)
    validate(table)
    return dedupe(table)
