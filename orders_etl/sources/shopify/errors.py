"""Failure kinds inside the Shopify client (the public ones live in ``sources/base.py``)."""

from __future__ import annotations

from collections.abc import Iterable

SOURCE = "shopify"


class TransientError(Exception):
    """A failure worth retrying: 5xx, timeout, reset, truncated or unreadable body."""


class BulkOperationFailed(Exception):
    """A bulk operation ended FAILED/CANCELED/EXPIRED; the caller reads the window another way."""

    def __init__(self, status: str, error_code: str | None, object_count: int, partial_data: bool) -> None:
        self.status = status
        self.error_code = error_code
        self.object_count = object_count
        self.partial_data = partial_data
        super().__init__(
            f"bulk operation {status}"
            + (f" ({error_code})" if error_code else "")
            + f" after {object_count} objects"
            + (", partial data offered" if partial_data else "")
        )


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced: messages quoting a server never leak one."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<secret>")
    return text
