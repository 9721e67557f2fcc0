"""Failures of one HTTP attempt that are worth another try (the retry loop catches these)."""

from __future__ import annotations


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
