"""Amounts written the way the export's locale writes them (``1.234,56``), parsed to Decimal.

Never through float. The grouping is checked, not just stripped: with thousands ``.`` the
text ``12.50`` is an error (a group of two digits), which is how a dialect that has the
two separators swapped shows itself instead of silently turning 12.50 into 1250.
"""

from __future__ import annotations

import re
from decimal import Decimal

# Spaces a locale may group digits with (French, Swiss): space, no-break, narrow no-break.
_SPACES = " \u00a0\u202f"


class AmountParser:
    """Parses amounts with one decimal separator and an optional thousands separator."""

    def __init__(self, decimal: str, thousands: str = "") -> None:
        self.decimal = decimal
        self.thousands = thousands
        self._ungroup = {ord(c): None for c in _SPACES + thousands} if thousands else {}
        d = re.escape(decimal)
        if thousands:
            t = f"[{re.escape(_SPACES)}]" if thousands in _SPACES else re.escape(thousands)
            integer = rf"(?:\d{{1,3}}(?:{t}\d{{3}})+|\d+)"
        else:
            integer = r"\d+"
        # A sign in front, or behind as some ERPs (SAP) write it; "(12,50)" is not accepted.
        self._pattern = re.compile(rf"(?P<lead>[+-]?)(?P<int>{integer})?(?:{d}(?P<frac>\d+))?(?P<trail>-?)")

    def parse(self, text: str) -> Decimal:
        """The amount in ``text``; ValueError saying what was expected when it is not one."""
        stripped = text.strip(_SPACES + "\t")
        match = self._pattern.fullmatch(stripped)
        if match is None or not (match["int"] or match["frac"]) or (match["lead"] and match["trail"]):
            grouping = f"thousands {self.thousands!r}" if self.thousands else "no thousands separator"
            raise ValueError(f"is not an amount with decimal {self.decimal!r} and {grouping}")
        integer = match["int"] or "0"
        if self._ungroup:
            integer = integer.translate(self._ungroup)
        negative = match["lead"] == "-" or match["trail"] == "-"
        return Decimal(f"{'-' if negative else ''}{integer}.{match['frac'] or ''}")
