"""Progress lines: per chunk, at most one every few seconds, and the totals at the end."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest

from orders_etl.defs import sync
from orders_etl.model import Source
from orders_etl.store import OrderStore, RawRecord
from orders_etl.store.frames import canonical_text
from orders_etl_tests.factories import BASE_TIME, order


def test_a_line_due_is_logged_and_the_ones_within_the_interval_are_held_back() -> None:
    lines: list[str] = []
    progress = sync.ProgressLog(lines.append, interval=3600)
    progress("1 of 3")
    progress("2 of 3")
    progress("3 of 3")
    assert lines == ["1 of 3"]
    progress.flush()
    progress.flush()
    assert lines == ["1 of 3", "3 of 3"]


def test_with_no_interval_every_line_is_logged() -> None:
    lines: list[str] = []
    progress = sync.ProgressLog(lines.append, interval=0)
    for n in range(3):
        progress(f"{n}")
    progress.flush()
    assert lines == ["0", "1", "2"]


def test_a_normalize_logs_its_running_totals_and_ends_with_them(
    store: OrderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "NORMALIZE_BATCH", 1)  # three batches, three commits
    keys = ("1", "2", "3")
    store.land_raw("shopify", [RawRecord(key, BASE_TIME, {"key": key}) for key in keys])

    def normalize(records):
        for record in records:
            yield canonical_text(order(record.record_key, currency="USD"))

    @dg.asset
    def step(context) -> None:
        window = sync.SyncWindow(BASE_TIME, BASE_TIME + timedelta(days=1), timedelta(0), from_beginning=True)
        sync.normalize_window(context, store, Source.SHOPIFY, window, normalize)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([step], instance=instance)
    assert result.success
    lines = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.user_message.startswith("shopify: normalized")
    ]
    assert lines == [
        "shopify: normalized 1 records: 1 orders, 0 rejected, 0 skipped; "
        "upserted: inserted 1, updated 0, unchanged 0, stale 0",
        "shopify: normalized 3 records: 3 orders, 0 rejected, 0 skipped; "
        "upserted: inserted 3, updated 0, unchanged 0, stale 0",
    ]
