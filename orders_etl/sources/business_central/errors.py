"""Failures of one HTTP attempt that are worth another try (the retry loop catches these)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class TransientError(Exception):
    """5xx, timeout, reset, truncated or unreadable body: retry with backoff."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Throttled(TransientError):
    """HTTP 429: wait as long as the server asks (``Retry-After``) before the next try."""

    def __init__(self, retry_after: float | None) -> None:
        self.retry_after = retry_after
        shown = f"{retry_after:g} s" if retry_after is not None else "unspecified"
        super().__init__(f"HTTP 429 Too Many Requests (Retry-After: {shown})")


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
