"""Shopify source: Admin GraphQL reader (paging, cost throttle, retries, auth, bulk operations,
deleted orders), a bulk-result file reader, and the mapping to the canonical Order.

Readers (plain Python, no Dagster):

* :class:`ShopifyApiReader` — the API; paging or a bulk operation chosen by window size;
* :class:`ShopifyBulkFileReader` — a bulk-result JSONL file (``SHOPIFY_BULK_FILE``).

Both have ``fetch(start, end, log)`` -> RawRecord and ``deleted(start, end, log)`` ->
(external_id, deleted_at); :func:`normalize` turns landed records into OrderRecord /
Reject / Skipped. The mapping module imports neither httpx nor Dagster.
"""

from orders_etl.sources.shopify.mapping import SOURCE, ShippingMethods, normalize
from orders_etl.sources.shopify.reader import FetchSummary, ShopifyApiReader, ShopifyBulkFileReader

__all__ = [
    "SOURCE",
    "FetchSummary",
    "ShippingMethods",
    "ShopifyApiReader",
    "ShopifyBulkFileReader",
    "normalize",
]
