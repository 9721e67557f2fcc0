"""The high-water mark never moves backwards when two syncs advance it at the same moment.

Deterministic interleaving: a first sync's transaction has moved the mark to T2 and not yet
committed when a second sync advances it to the earlier T1. On PostgreSQL (READ COMMITTED)
the second one's read still sees the old mark T0 and its write waits for the first's row
lock; once the first commits, the second's write must not put T1 over T2. On SQLite the
second waits for the write lock before it reads.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import sqlalchemy as sa

from orders_etl.model import Source
from orders_etl.store.schema import sync_state

T0 = datetime(2026, 3, 1, tzinfo=UTC)
T1 = datetime(2026, 3, 7, 1, tzinfo=UTC)
T2 = datetime(2026, 3, 11, 1, tzinfo=UTC)


def test_a_concurrent_advance_to_an_earlier_mark_does_not_move_it_back(store):
    store.advance_high_water_mark(Source.SHOPIFY, T0)
    second: list[datetime] = []
    with store.engine.connect() as first:
        first.begin()
        first.execute(
            sa.update(sync_state).where(sync_state.c.source == "shopify").values(high_water_mark=T2)
        )
        racer = threading.Thread(
            target=lambda: second.append(store.advance_high_water_mark(Source.SHOPIFY, T1)), daemon=True
        )
        racer.start()
        time.sleep(0.5)  # the second advance has read (PostgreSQL) and now waits on the lock
        assert racer.is_alive()
        first.commit()
    racer.join(timeout=30)
    assert not racer.is_alive()
    assert store.high_water_mark(Source.SHOPIFY) == T2
    assert second == [T2]  # it reports the mark as it is, not the one it asked for
