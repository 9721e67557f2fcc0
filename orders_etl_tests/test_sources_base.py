"""Batching a normalizer's output (orders_etl.sources.base.batches)."""

from __future__ import annotations

import gc
import weakref

from orders_etl.sources.base import Skipped, batches


def test_a_batch_handed_out_is_not_kept_alive_by_the_batching() -> None:
    # A normalize keeps a few batches in flight; the generator must not pin one more
    # while it waits to be asked for the next.
    stream = batches((Skipped(str(n), "test order") for n in range(10)), size=2)
    batch = next(stream)
    assert len(batch) == 2
    handed_out = weakref.ref(batch)
    del batch
    gc.collect()
    assert handed_out() is None
    assert sum(len(b) for b in stream) == 8  # and the rest still comes
