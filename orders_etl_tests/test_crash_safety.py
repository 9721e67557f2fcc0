"""Crash safety: ``orders-etl sync`` SIGKILLed at many points, then run again to completion.

The real console script runs in a subprocess against the fake Shopify server (real HTTP, 300
orders in 30 short pages) and an ERP CSV export, into a SQLite file and into PostgreSQL.
The tests kill 20 syncs per store at deterministic points spread over the whole run: while Shopify
pages, while a source's orders are upserted, while the golden records are built, while the
reconciliation runs. Kills come in chains on one store (a crashed sync crashed again), and
every chain ends with a sync run to completion. Checked:

* after every kill, no high-water mark points past committed data: every order the clean
  run holds for a source with ``updated_at`` before that source's mark is in source_orders;
* after every chain, ``orders`` and ``source_orders`` equal those of a clean run (values,
  not write times), and the marks are the clean run's.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

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

DAY = ("--start", "2026-03-01", "--end", "2026-03-01")


@dataclass(frozen=True)
class Page:
    """Kill when the fake shop has served the ``n``-th orders page of this sync."""

    n: int


@dataclass(frozen=True)
class After:
    """Kill ``delay`` seconds after the progress line ``line`` is printed."""

    line: str
    delay: float = 0.0


@dataclass(frozen=True)
class At:
    """Kill ``seconds`` after the process started."""

    seconds: float


RAW_DONE = "done  shopify/raw_orders"
# 16 points, in 2 chains of 8: paging, upserts, golden records, reconciliation, report, time.
# With the 4 of the scheduled-sync test below, 20 kills per store.
KILL_POINTS = [
    Page(2),
    After("done  erp/raw_orders"),
    After(RAW_DONE, 0.02),
    After("done  checks on orders"),
    At(1.8),
    Page(17),
    After("done  shopify/source_orders"),
    After("done  checks on orders", 0.1),
    Page(9),
    After(RAW_DONE),
    After("done  erp/source_orders"),
    After("done  checks on orders", 0.05),
    At(2.2),
    After("done  orders"),
    Page(26),
    After("done  reconciliation"),
]
CHAIN = 8  # kills on one store before a sync is let run to completion


def killed_sync(env: dict[str, str], fake, point, errors: Path, args: tuple[str, ...] = DAY) -> int:
    """Start a sync, SIGKILL its process group at ``point``; the exit status (-9 if killed)."""
    process = start_sync(env, *args)
    on_page = fake.after_orders_page

    def kill() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    timers: list[threading.Timer] = []
    pages_before = fake.stats.operations["OrdersPage"]
    if isinstance(point, Page):

        def page_served(served: int) -> None:
            if on_page is not None:
                on_page(served)
            if served - pages_before >= point.n:
                kill()

        fake.after_orders_page = page_served
    elif isinstance(point, At):
        timers.append(threading.Timer(point.seconds, kill))
        timers[-1].start()
    try:

        def drain_stderr() -> None:
            errors.write_text(process.stderr.read())

        stderr_thread = threading.Thread(target=drain_stderr, daemon=True)
        stderr_thread.start()
        for line in process.stdout:  # read everything: a full pipe would stall the sync
            if isinstance(point, After) and point.line in line and not timers:
                timers.append(threading.Timer(point.delay, kill))
                timers[-1].start()
        status = process.wait(timeout=120)
        stderr_thread.join(timeout=10)
        return status
    finally:
        fake.after_orders_page = on_page
        for timer in timers:
            timer.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def assert_marks_cover_committed_data(url: str, reference: dict, point) -> None:
    marks, keys = marks_and_keys(url)
    for source, mark in marks.items():
        expected = {key for key, updated in reference[source].items() if updated < mark}
        missing = expected - keys.get(source, set())
        assert not missing, f"after kill at {point}: {source} mark {mark} but {len(missing)} orders missing"


@pytest.mark.timeout(240)
def test_sync_killed_at_16_points_loses_nothing_and_never_moves_a_mark_past_data(store_url, tmp_path):
    fake = shop(300)
    try:
        env = cli_env(store_url, fake.url, write_erp_export(tmp_path / "erp.csv"))
        clean = run_sync(env, *DAY)
        assert clean.returncode == 0, clean.stderr
        expected = content(store_url)
        reference = updated_keys(store_url)
        expected_marks = marks_and_keys(store_url)[0]
        assert len(expected["source_orders"]) == 420 and set(expected_marks) == {"shopify", "erp_files"}

        killed = 0
        for chain_start in range(0, len(KILL_POINTS), CHAIN):
            reset_store(store_url)
            for point in KILL_POINTS[chain_start : chain_start + CHAIN]:
                status = killed_sync(env, fake, point, tmp_path / "stderr.txt")
                assert status in (-signal.SIGKILL, 0), (point, (tmp_path / "stderr.txt").read_text())
                killed += status == -signal.SIGKILL
                assert_marks_cover_committed_data(store_url, reference, point)
            finished = run_sync(env, *DAY)
            assert finished.returncode == 0, finished.stderr
            assert content(store_url) == expected, f"chain from {KILL_POINTS[chain_start]}"
            assert marks_and_keys(store_url)[0] == expected_marks
        backend = store_url.split(":")[0]
        print(f"crash safety on {backend}: {killed} syncs killed mid-run, store equal after each chain")
        # Kills that came too late (the sync had finished) prove nothing: most must land.
        assert killed >= 14, f"only {killed} of {len(KILL_POINTS)} syncs were killed mid-run"
    finally:
        fake.stop()


EDIT_KILLS = [Page(4), After(RAW_DONE), After("done  erp/source_orders"), Page(15)]


def stored_versions(url: str) -> dict[str, datetime]:
    return updated_keys(url).get("shopify", {})


@pytest.mark.timeout(180)
def test_edits_between_and_during_crashed_scheduled_syncs_are_never_lost(store_url, tmp_path):
    """The way the hourly schedule runs: no range given (from the marks minus the overlap),
    on a store already synced, while the merchant keeps editing orders (before each sync and
    on every page served). After each kill, every order the server holds at a version
    updated before the Shopify mark is stored at that version. After a sync completes, the
    store equals a fresh store synced once from the server's final state.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    yesterday = (now - timedelta(days=1)).date().isoformat()
    fake = shop(200, step=timedelta(seconds=15), start=now - timedelta(hours=1))
    erp = write_erp_export(tmp_path / "erp.csv", 40, 2, (now - timedelta(hours=2)).replace(tzinfo=None))
    edits = iter(range(10_000))

    def edit(*_: object) -> None:
        n = next(edits)
        legacy_id = 5001 + (n * 53) % 200
        order = fake.orders[f"gid://shopify/Order/{legacy_id}"]
        total = Decimal(order["totalPriceSet"]["shopMoney"]["amount"]) + 1
        fake.update_order(legacy_id, totalPriceSet=money(total, order["currencyCode"]))

    def server_versions() -> dict[str, datetime]:
        return {o["legacyResourceId"]: datetime.fromisoformat(o["updatedAt"]) for o in fake.orders.values()}

    try:
        env = cli_env(store_url, fake.url, erp, ORDERS_ETL_START_DATE=yesterday)
        first = run_sync(env)
        assert first.returncode == 0, first.stderr
        killed = 0
        for point in EDIT_KILLS:
            for _ in range(5):
                edit()
            fake.after_orders_page = edit  # killed_sync replaces it for Page points
            status = killed_sync(env, fake, point, tmp_path / "stderr.txt", args=())
            killed += status == -signal.SIGKILL
            mark = marks_and_keys(store_url)[0]["shopify"]
            stored, server = stored_versions(store_url), server_versions()
            behind = [k for k, v in server.items() if v < mark and stored.get(k) != v]
            assert not behind, f"after kill at {point}: mark {mark}, {len(behind)} orders behind the server"
        fake.after_orders_page = None  # the merchant stops: the server's state is final
        finished = run_sync(env)
        assert finished.returncode == 0, finished.stderr
        assert killed == len(EDIT_KILLS)

        fresh = tmp_path / "fresh"
        fresh.mkdir()
        fresh_url = f"sqlite:///{fresh / 'orders.db'}" if store_url.startswith("sqlite") else store_url
        resynced = content(store_url)
        if fresh_url == store_url:
            reset_store(store_url)
        clean = run_sync(cli_env(fresh_url, fake.url, erp, ORDERS_ETL_START_DATE=yesterday))
        assert clean.returncode == 0, clean.stderr
        assert resynced == content(fresh_url)
        assert stored_versions(fresh_url) == {k: v for k, v in server_versions().items()}
    finally:
        fake.stop()
