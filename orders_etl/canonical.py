"""Normalized orders as rows of canonical text: the form a mapping hands the store in bulk.

A mapping that handles millions of records cannot afford an ``OrderRecord`` (pydantic) per
order: at a million orders that alone costs tens of seconds. So a source's fast mapping
yields an ``OrderRow`` instead, the order's values as the canonical texts the store
keeps (``orders_etl.store.frames``: money at the currency's exponent, UTC time as
``YYYY-MM-DD HH:MM:SS.ffffff``, enum values), in :data:`ROW_FIELDS` order. The store checks
every column of a chunk with the model's rules at its boundary, so a row is held to the
same rules as a record.

A fast mapping takes only the ordinary shape of a record and leaves everything unusual to
the record path (``parse_order``), which names the field and the value in a reject: the
helpers here return ``None`` for any value they do not fully understand, never a guess.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from orders_etl.store.frames import FRAME_COLUMNS

# Spelled out, not taken from the store: the fast mappings build rows positionally in this
# order, so a change of the store's columns must fail here, at import, not put values in
# the wrong columns.
ROW_FIELDS: tuple[str, ...] = (
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
if ROW_FIELDS != FRAME_COLUMNS:  # pragma: no cover - a guard for whoever changes the columns
    raise ImportError(f"the store's columns are now {FRAME_COLUMNS}: update ROW_FIELDS and the fast mappings")
ROW_INDEX = {name: index for index, name in enumerate(ROW_FIELDS)}


# One normalized order as canonical texts in ROW_FIELDS order. A plain tuple, not a
# subclass: the garbage collector untracks tuples of strings, never instances of a tuple
# subclass, and rescanning a batch of rows held alive cost ~2.5 µs per order.
OrderRow = tuple[str | None, ...]


def utc_text(moment: datetime | None) -> str | None:
    """An aware datetime as canonical UTC text (``2026-09-03 13:47:20.000000``)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(" ", "microseconds")[:-6]


# ISO 8601 in UTC as Shopify and most APIs write it; any other form takes the slow path.
_ISO_UTC = re.compile(
    r"([1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))"
    r"T((?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9])(?:\.([0-9]{1,6}))?(?:Z|\+00:00)"
)


def iso_utc_text(text: str) -> str | None:
    """``2026-09-03T13:47:20Z`` (or ``+00:00``, with up to 6 decimals) as canonical UTC
    text; ``None`` for anything else, including a day the month does not have."""
    match = _ISO_UTC.fullmatch(text)
    if match is None:
        return None
    day, clock, fraction = match.groups()
    if day[8:] > "28":  # the 29th to 31st exist only in some months
        try:
            datetime.fromisoformat(day)
        except ValueError:
            return None
    return f"{day} {clock}.{(fraction or '').ljust(6, '0')}"


_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,14})(?:\.([0-9]+))?")


def money_text(text: str, exponent: int) -> str | None:
    """A plain decimal amount as canonical text at ``exponent`` decimals (``12.3`` -> ``12.30``
    for USD); ``None`` for anything else (a sign, an exponent, spaces, ≥ 10**15, or digits
    past the currency's exponent that are not zeros: rounding is the record path's error)."""
    match = _AMOUNT.fullmatch(text)
    if match is None:
        return None
    whole, decimals = match.groups()
    decimals = decimals or ""
    if len(decimals) > exponent:
        if decimals[exponent:].strip("0"):
            return None
        decimals = decimals[:exponent]
    decimals = decimals.ljust(exponent, "0")
    return f"{whole}.{decimals}" if exponent else whole
