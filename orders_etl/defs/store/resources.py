"""The order store as a Dagster resource: every asset reads and writes through it."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from orders_etl.store import OrderStore
from orders_etl.store.engine import masked_url


class StoreResource(dg.ConfigurableResource):
    """The order store (SQLAlchemy URL: SQLite file or PostgreSQL); migrated on first use.

    One engine per step: opened when the step starts, disposed when it ends, so a step
    process never holds connections it no longer needs (PostgreSQL connection budget).
    """

    database_url: str

    _store: OrderStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = OrderStore.from_url(self.database_url)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None

    @property
    def store(self) -> OrderStore:
        if self._store is None:  # used outside a run (e.g. called directly in a test)
            self._store = OrderStore.from_url(self.database_url)
        return self._store

    @property
    def masked_url(self) -> str:
        """The URL as it may be shown: password replaced by ``***``."""
        return masked_url(self.database_url)
