"""OData v4 query text for the Business Central API: literals, time windows, key batches.

Pure string building, no HTTP, so the filters the reader sends are easy to test and read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

# Keeps a filter's URL well under the 2,048-character query-string limit of common front
# ends (IIS, gateways) even after percent-encoding roughly doubles the punctuation.
MAX_FILTER_CHARS = 1_000


def quote(value: str) -> str:
    """An OData string literal: single quotes, an embedded quote doubled."""
    return "'" + value.replace("'", "''") + "'"


def datetime_literal(moment: datetime) -> str:
    """A DateTimeOffset literal in UTC at the API's millisecond precision (unquoted)."""
    if moment.tzinfo is None:
        raise ValueError("a filter time must be timezone-aware")
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def modified_between(since: datetime | None, until: datetime | None) -> str | None:
    """``lastModifiedDateTime`` in the half-open window ``[since, until)``; None = unbounded."""
    clauses = []
    if since is not None:
        clauses.append(f"lastModifiedDateTime ge {datetime_literal(since)}")
    if until is not None:
        clauses.append(f"lastModifiedDateTime lt {datetime_literal(until)}")
    return " and ".join(clauses) or None


def any_of(field: str, values: Iterable[str], max_chars: int = MAX_FILTER_CHARS) -> Iterator[str]:
    """Filters ``field eq 'a' or field eq 'b' ...`` covering ``values``, each at most ``max_chars``.

    ``or`` chains work on every Business Central version; the shorter ``in (...)`` operator
    only exists since 2024 release wave 1, and on-premises servers may be older.
    """
    clauses: list[str] = []
    length = 0
    for value in values:
        clause = f"{field} eq {quote(value)}"
        added = len(clause) + (4 if clauses else 0)  # " or "
        if clauses and length + added > max_chars:
            yield " or ".join(clauses)
            clauses, length = [], 0
            added = len(clause)
        clauses.append(clause)
        length += added
    if clauses:
        yield " or ".join(clauses)
