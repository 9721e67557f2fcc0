"""Shopify source: Admin GraphQL reader (paging, cost throttle, retries, auth, bulk operations,
deleted orders), a bulk-result file reader, and the mapping to the canonical Order.

Readers (plain Python, no Dagster):

* :class:`ShopifyApiReader` — the API; paging or a bulk operation chosen by window size;
* :class:`ShopifyBulkFileReader` — a bulk-result JSONL file (``SHOPIFY_BULK_FILE``).

Both have ``fetch(start, end, log)`` -> RawRecord and ``deleted(start, end, log)`` ->
(external_id, deleted_at); :func:`normalize` turns landed records into OrderRecord /
Reject / Skipped.

The readers are imported lazily, so ``from orders_etl.sources.shopify import normalize``
stays pure: it loads neither httpx nor Dagster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orders_etl.sources.shopify.mapping import SOURCE, ShippingMethods, normalize

if TYPE_CHECKING:
    from orders_etl.sources.shopify.reader import FetchSummary, ShopifyApiReader, ShopifyBulkFileReader

_READER_NAMES = ("FetchSummary", "ShopifyApiReader", "ShopifyBulkFileReader")

__all__ = [
    "SOURCE",
    "FetchSummary",
    "ShippingMethods",
    "ShopifyApiReader",
    "ShopifyBulkFileReader",
    "normalize",
]


def __getattr__(name: str) -> Any:
    if name in _READER_NAMES:
        from orders_etl.sources.shopify import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
