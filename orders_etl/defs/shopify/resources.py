"""Where Shopify orders come from: the Admin GraphQL API, or a bulk-operation JSONL file.

Both resources offer the same two calls the assets use, ``reader()`` and ``normalize()``,
so the graph does not know which one it runs on (the file-backed one is the default when no
shop URL is configured, and what the bundled samples use). The source package is imported
inside the methods: the Dagster layer loads, and its tests run, without it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar

import dagster as dg

from orders_etl.model import Source

if TYPE_CHECKING:
    from orders_etl.defs.sync import ShopifyReader
    from orders_etl.sources.base import Normalized
    from orders_etl.store import LandedRecord


class ShopifySource(dg.ConfigurableResource, ABC):
    """Shopify orders: a reader of raw order payloads and deletions, and their mapping."""

    source: ClassVar[Source] = Source.SHOPIFY

    overlap_minutes: int = 60
    include_test_orders: bool = False

    @abstractmethod
    def reader(self) -> ShopifyReader: ...

    @property
    def source_label(self) -> str:
        """Where the orders come from, safe to show (no credential)."""
        return type(self).__name__

    def normalize(self, records: Iterable[LandedRecord]) -> Iterator[Normalized]:
        from orders_etl.sources.shopify import normalize

        return normalize(records, include_test=self.include_test_orders)


class ShopifyApiResource(ShopifySource):
    """Shopify Admin GraphQL API: an access token, or client credentials renewed before expiry."""

    shop_url: str
    api_version: str = "2026-10"
    access_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None

    @property
    def source_label(self) -> str:
        return f"Shopify Admin API {self.shop_url} ({self.api_version})"

    def reader(self) -> ShopifyReader:
        from orders_etl.sources.shopify import ShopifyApiReader

        # The asset widens the window by the configured overlap itself: no second overlap.
        return ShopifyApiReader(
            self.shop_url,
            access_token=self.access_token,
            client_id=self.client_id,
            client_secret=self.client_secret,
            api_version=self.api_version,
            overlap=timedelta(0),
        )


class ShopifyBulkFileResource(ShopifySource):
    """A Shopify bulk-operation JSONL result on disk (the bundled samples, or an export)."""

    path: str

    @property
    def source_label(self) -> str:
        return f"Shopify bulk file {self.path}"

    def reader(self) -> ShopifyReader:
        from orders_etl.sources.shopify import ShopifyBulkFileReader

        return ShopifyBulkFileReader(self.path)
