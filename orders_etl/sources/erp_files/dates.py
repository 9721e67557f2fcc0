"""Dates and times as the export writes them, in the ERP's local time zone, made UTC.

Formats are ``strptime`` formats tried in order. A value without a time (a date-only
format) means midnight local time. A value that carries its own offset (``%z``) keeps it;
every other value is read in the dialect's IANA zone, so the offset follows summer time.

``strptime`` is slow (pure Python, ~10 µs), and a million-row export holds hundreds of
thousands of distinct timestamps, so a value in the strict form of a numeric format
(``%d.%m.%Y %H:%M``: every field at full width, ASCII digits) is read by a regular
expression instead, when no earlier format could read it (each earlier format's
``strptime`` pattern, widened, does not match the value). ``strptime`` would read such a
value to the same fields; anything else is left to ``strptime``. Parsed values are also
cached, bounded so that a million distinct timestamps cannot exhaust memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

CACHE_SIZE = 65_536
# Numeric directives and their strict (full-width) forms: strptime's own pattern for each
# tries the two-digit alternatives first, so it reads these to the same numbers.
_STRICT = {
    "Y": "([0-9]{4})",
    "m": "(0[1-9]|1[0-2])",
    "d": "(0[1-9]|[12][0-9]|3[01])",
    "H": "([01][0-9]|2[0-3])",
    "M": "([0-5][0-9])",
    "S": "([0-5][0-9])",
}
_FIELDS = "YmdHMS"  # datetime's argument order
# What strptime's pattern for a directive can match, widened (its patterns, Python 3.11:
# d "3[0-1]|[1-2]\d|0[1-9]|[1-9]| [1-9]", H "2[0-3]|[0-1]\d|\d", ...). Bounded, so that
# matching a hostile 10 kB cell stays linear. Other directives (names, %p, %Z): unknown.
_POSSIBLE = {
    **dict.fromkeys("dmHIMSUWVwuy", r"\s?\d{1,2}"),
    **dict.fromkeys("YG", r"\d{4}"),
    "f": r"\d{1,6}",
    "j": r"\d{1,3}",
    "z": r"(?:[+-][\d:.]{2,15}|z)",
}
_PART = re.compile(r"%(.?)|(\s+)|([^%\s]+)", re.DOTALL)


class _Shape:
    """One format as two patterns: ``strict`` (None unless the format is numeric) reads the
    full-width form; ``possible`` matches every text strptime could read with the format
    (None: a format with other directives, which may read anything)."""

    def __init__(self, fmt: str) -> None:
        strict: list[str] | None = []
        possible: list[str] | None = []
        order: list[str] = []
        for directive, space, literal in _PART.findall(fmt):
            if space:
                possible = None if possible is None else [*possible, r"\s+"]  # as strptime reads it
                strict = None if strict is None else [*strict, re.escape(space)]
            elif literal or directive == "%":
                text = literal or "%"
                possible = None if possible is None else [*possible, re.escape(text)]
                strict = None if strict is None else [*strict, re.escape(text)]
            else:
                widened = _POSSIBLE.get(directive)
                possible = None if possible is None or widened is None else [*possible, widened]
                if strict is not None and directive in _STRICT and directive not in order:
                    strict.append(_STRICT[directive])
                    order.append(directive)
                else:
                    strict = None
        if strict is not None and "".join(sorted(order, key=_FIELDS.index)) not in (
            "YmdHMS",
            "YmdHM",
            "YmdH",
            "Ymd",
        ):
            strict = None  # strptime's defaults (1900-01-01, minutes of an hourless time): rare
        self.possible = None if possible is None else re.compile("".join(possible), re.IGNORECASE)
        self.strict = None if strict is None else re.compile("".join(strict))
        # The strict pattern's groups in datetime's argument order (those absent are 0).
        self.groups = tuple(order.index(field) + 1 for field in _FIELDS if field in order)


class DateParser:
    def __init__(self, formats: Sequence[str], zone: ZoneInfo) -> None:
        self.formats = tuple(formats)
        self.zone = zone
        self._shapes = [_Shape(fmt) for fmt in self.formats]
        self.parse = lru_cache(maxsize=CACHE_SIZE)(self._parse)

    def _parse(self, text: str) -> datetime:
        """The instant in ``text`` as aware UTC; ValueError naming the formats tried."""
        stripped = text.strip()
        for shape in self._shapes:
            if shape.strict is not None and (found := shape.strict.fullmatch(stripped)) is not None:
                try:
                    parsed = datetime(*map(int, found.group(*shape.groups)), tzinfo=self.zone)
                except ValueError:  # e.g. 31.04.: strptime goes on to the next format
                    break
                return self._utc(parsed)
            if shape.possible is None or shape.possible.fullmatch(stripped) is not None:
                break  # strptime may read it with this format: it decides
        return self._parse_strptime(stripped)

    def _parse_strptime(self, stripped: str) -> datetime:
        """The reference: each format by ``strptime``, in order."""
        for fmt in self.formats:
            try:
                parsed = datetime.strptime(stripped, fmt)
            except ValueError:
                continue
            return self._utc(parsed)
        raise ValueError(f"matches none of the date formats {list(self.formats)}")

    def _utc(self, parsed: datetime) -> datetime:
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=self.zone)
        try:
            return parsed.astimezone(UTC)
        except OverflowError:  # 01.01.0001 00:30 in Berlin is before year 1 in UTC
            raise ValueError("is out of the representable range in UTC") from None
