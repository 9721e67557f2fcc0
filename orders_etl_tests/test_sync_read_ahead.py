"""On PostgreSQL a normalize fetches the next chunk of landed versions while it maps this
one: each fetch waits on the server, and the mapping would wait with it."""

from __future__ import annotations

import threading
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from orders_etl.defs import sync
from orders_etl.model import Source
from orders_etl.store import OrderStore, RawRecord, landing
from orders_etl.store.frames import canonical_text
from orders_etl.store.schema import orders
from orders_etl_tests.factories import BASE_TIME, order


@pytest.mark.postgres
def test_the_next_landed_chunk_is_fetched_while_one_is_mapped(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OrderStore.from_url(pg_url)
    keys = ("1", "2", "3")
    store.land_raw("shopify", [RawRecord(key, BASE_TIME, {"key": key}) for key in keys])
    second_fetched = threading.Event()  # (in the normalizing process, forked with all this)

    def one_at_a_time(source, start=None, end=None, *, pending=False):
        chunks = landing.iter_raw(
            store.engine, Source(source).value, start, end, pending=pending, chunk_size=1
        )
        for index, chunk in enumerate(chunks):
            if index == 1:
                second_fetched.set()
            yield chunk

    monkeypatch.setattr(store, "iter_raw", one_at_a_time)

    def normalize(records):
        for record in records:
            # The first record is mapped only once the second chunk has been fetched: read
            # one after the other, this would wait in vain.
            fetched = second_fetched.wait(10)
            tracking = "overlapped" if fetched else "one after the other"
            yield canonical_text(order(record.record_key, currency="USD", tracking_number=tracking))

    @dg.asset
    def step(context) -> None:
        window = sync.SyncWindow(BASE_TIME, BASE_TIME + timedelta(days=1), timedelta(0), from_beginning=True)
        sync.normalize_window(context, store, Source.SHOPIFY, window, normalize)

    try:
        assert dg.materialize([step], instance=dg.DagsterInstance.ephemeral()).success
        with store.engine.connect() as conn:
            tracking = dict(conn.execute(sa.select(orders.c.external_id, orders.c.tracking_number)).all())
    finally:
        store.dispose()
    assert tracking == dict.fromkeys(keys, "overlapped")
