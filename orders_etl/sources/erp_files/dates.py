"""Dates and times as the export writes them, in the ERP's local time zone, made UTC.

Formats are ``strptime`` formats tried in order. A value without a time (a date-only
format) means midnight local time. A value that carries its own offset (``%z``) keeps it;
every other value is read in the dialect's IANA zone, so the offset follows summer time.

``strptime`` is slow (pure Python) and export dates repeat a lot, so parsed values are
cached per parser, bounded so that a million distinct timestamps cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

CACHE_SIZE = 65_536


class DateParser:
    def __init__(self, formats: Sequence[str], zone: ZoneInfo) -> None:
        self.formats = tuple(formats)
        self.zone = zone
        self.parse = lru_cache(maxsize=CACHE_SIZE)(self._parse)

    def _parse(self, text: str) -> datetime:
        """The instant in ``text`` as aware UTC; ValueError naming the formats tried."""
        stripped = text.strip()
        for fmt in self.formats:
            try:
                parsed = datetime.strptime(stripped, fmt)
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=self.zone)
            try:
                return parsed.astimezone(UTC)
            except OverflowError:  # 01.01.0001 00:30 in Berlin is before year 1 in UTC
                raise ValueError("is out of the representable range in UTC") from None
        raise ValueError(f"matches none of the date formats {list(self.formats)}")
