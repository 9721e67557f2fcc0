"""Two ``orders-etl sync`` processes at once on one store, on SQLite and on PostgreSQL.

The fake shop holds 300 orders over ten days (2026-03-01..10), the ERP export 120 documents
over the same days. Two shapes of collision, each as real console-script processes:

* two syncs of overlapping windows (03-01..06 and 03-04..10) started together;
* the hourly schedule firing during a long backfill: a one-day sync (03-08) started while a
  sync of all ten days is running.

Both must exit 0 (no "database is locked", no deadlock left unhandled), leave no duplicate
order, and leave ``orders`` and ``source_orders`` exactly as the same syncs run one after
the other (no lost update). A high-water mark may end lower than after the sequential runs
(a sync that started before the other's mark moved keeps it), never past committed data.
(Two runs of the same range through ``dagster job execute`` on PostgreSQL are in
test_assets_postgres.py.)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orders_etl.store.engine import create_store_engine
from orders_etl_tests.crash_harness import (
    cli_env,
    content,
    marks_and_keys,
    reset_store,
    run_sync,
    shop,
    start_sync,
    updated_keys,
    write_erp_export,
)
from orders_etl_tests.fake_shopify import money

OVERLAPPING = (
    ("--start", "2026-03-01", "--end", "2026-03-06"),
    ("--start", "2026-03-04", "--end", "2026-03-10"),
)
BACKFILL_AND_HOURLY = (
    ("--start", "2026-03-01", "--end", "2026-03-10"),
    ("--start", "2026-03-08", "--end", "2026-03-08"),
)


def run_together(
    env: dict[str, str], first: tuple[str, ...], second: tuple[str, ...]
) -> list[tuple[int, str]]:
    """Start ``first``; start ``second`` once the first has printed its opening line (it has
    opened the store and is about to run), so the two runs' work overlaps.
    """
    one = start_sync(env, *first)
    opening = one.stdout.readline()
    assert opening.startswith("orders-etl sync "), opening + one.stderr.read()
    two = start_sync(env, *second)
    results = []
    for process in (one, two):
        _out, err = process.communicate(timeout=180)
        results.append((process.returncode, err))
    return results


def duplicates(url: str) -> int:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT external_id FROM orders GROUP BY external_id HAVING COUNT(*) > 1")
            ).all()
            return len(rows)
    finally:
        engine.dispose()


@pytest.mark.timeout(240)
def test_two_syncs_at_once_equal_the_same_syncs_in_sequence(store_url, tmp_path):
    fake = shop(300, step=timedelta(minutes=48))  # ten days, 30 pages
    try:
        env = cli_env(store_url, fake.url, write_erp_export(tmp_path / "erp.csv", step_minutes=120))
        # Both pairs cover the ten days, and the sources do not change: run one after the
        # other, either pair leaves what one sync of the ten days leaves (checked for the
        # overlapping pair below).
        for window in OVERLAPPING:
            result = run_sync(env, *window)
            assert result.returncode == 0, result.stderr
        sequential = content(store_url)
        reference = updated_keys(store_url)
        sequential_marks = marks_and_keys(store_url)[0]
        assert len(sequential["orders"]) == 300
        assert BACKFILL_AND_HOURLY[0] == ("--start", "2026-03-01", "--end", "2026-03-10")

        for windows in (OVERLAPPING, BACKFILL_AND_HOURLY):
            reset_store(store_url)
            started = time.monotonic()
            for status, stderr in run_together(env, *windows):
                assert status == 0, stderr
                assert "database is locked" not in stderr and "deadlock" not in stderr.lower()
            assert time.monotonic() - started < 150
            assert duplicates(store_url) == 0
            assert content(store_url) == sequential, windows
            marks, keys = marks_and_keys(store_url)
            for source, mark in marks.items():
                assert mark <= sequential_marks[source]
                committed_before = {k for k, updated in reference[source].items() if updated < mark}
                assert committed_before <= keys[source], source
    finally:
        fake.stop()


def newest_landed_not_kept(url: str) -> tuple[int, list[tuple]]:
    """(rows compared, keys whose source_orders row is older than the newest version landed
    in raw_orders for that key).
    """
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT s.source, s.external_id, r.newest <> s.updated_at FROM source_orders s JOIN ("
                    " SELECT source, record_key, MAX(updated_at) AS newest FROM raw_orders"
                    " GROUP BY source, record_key) r"
                    " ON r.source = s.source AND r.record_key = s.external_id"
                )
            ).all()
            return len(rows), [tuple(row[:2]) for row in rows if row[2]]
    finally:
        engine.dispose()


@pytest.mark.timeout(180)
def test_orders_updated_while_two_syncs_run_keep_their_newest_version(store_url, tmp_path):
    """The merchant edits orders while both syncs page (one edit per page served, the clock
    after every original version and inside both windows): every order ends at the newest
    version any sync landed, and the edits the syncs saw are in the store.
    """
    clock = iter(range(1_000_000))
    moment = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)
    fake = shop(300, step=timedelta(minutes=48), now=lambda: moment + timedelta(seconds=next(clock)))
    edited: list[str] = []

    def edit(pages_served: int) -> None:
        legacy_id = 5001 + (pages_served * 37) % 300
        order = fake.orders[f"gid://shopify/Order/{legacy_id}"]
        total = Decimal(order["totalPriceSet"]["shopMoney"]["amount"]) + pages_served
        fake.update_order(legacy_id, totalPriceSet=money(total, order["currencyCode"]))
        edited.append(str(legacy_id))

    fake.after_orders_page = edit
    try:
        env = cli_env(store_url, fake.url, write_erp_export(tmp_path / "erp.csv", step_minutes=120))
        both_see_edits = (
            ("--start", "2026-03-01", "--end", "2026-03-10"),
            ("--start", "2026-03-06", "--end", "2026-03-10"),
        )
        for status, stderr in run_together(env, *both_see_edits):
            assert status == 0, stderr
    finally:
        fake.stop()
    assert len(edited) >= 20
    assert duplicates(store_url) == 0
    # Every Shopify order compared (ERP documents are keyed differently in raw_orders).
    assert newest_landed_not_kept(store_url) == (300, [])
    # An edit made after both syncs paged past it is for the next sync; none is newer than
    # the server, and most edits were seen.
    stored = updated_keys(store_url)["shopify"]
    current = 0
    for legacy_id in set(edited):
        server = datetime.fromisoformat(fake.orders[f"gid://shopify/Order/{legacy_id}"]["updatedAt"])
        assert stored[legacy_id] <= server
        current += stored[legacy_id] == server
    assert current >= len(set(edited)) // 2
