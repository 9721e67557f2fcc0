"""Past one machine (README "Scaling out", docs/dagster.md): a 30-day backfill split into
three runs of ten days, launched at once as separate ``dagster job execute`` processes, each
with the multiprocess executor, on a Dagster instance whose storage is PostgreSQL (the
shipped ``dagster.yaml.example``: pools ``shopify_api`` and ``erp_api`` at one step at a
time across all runs), into a PostgreSQL order store.

The fake sources hold a month of orders: versions of one order spread over days and over
ranges (the newest must win whichever run commits last), versions at the ranges' edges
(landed by two runs, through the overlap), ties on ``updated_at``, test orders, rejects,
deletions, ERP documents that match, disagree with or miss their Shopify order, and
ERP-only documents.

The reference is the same three ranges run one after the other. Right after the concurrent
runs the store must equal it except on the documented cross-range links (an ERP document
naming a Shopify order that only another range lands; a Shopify deletion of an order only
another range lands): those resolve against what the store holds when the step runs. The
high-water marks may end lower, never past committed data. After the settle pass (the two
``source_orders`` steps, ``orders`` and ``reconciliation`` over the whole month: landed
payloads normalized again, no order fetched again) the store must equal the reference
everywhere but the columns that say when a row was written, the golden ``id`` (minted
independently in each store: one per ``external_id``, unique) and the exception ledger's
resolved history.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from orders_etl.definitions import ASSETS
from orders_etl.defs.partitions import daily_partitions
from orders_etl.defs.store.resources import StoreResource
from orders_etl.store import OrderStore
from orders_etl_tests import dagster_doubles as doubles
from orders_etl_tests.conftest import fresh_pg_url, postgres_dagster_home
from orders_etl_tests.crash_harness import ROOT, marks_and_keys, updated_keys

pytestmark = pytest.mark.postgres

MONTH = ("2026-01-01", "2026-01-30")  # the first partition on: the first range moves the cursors
RANGES = (("2026-01-01", "2026-01-10"), ("2026-01-11", "2026-01-20"), ("2026-01-21", "2026-01-30"))
OVERLAP = timedelta(minutes=60)  # the source resources' default overlap_minutes
# Step processes forked from a server that has imported the code location once, instead of
# each importing Dagster and orders_etl anew (named: Dagster preloads only itself for `-m`).
FORKSERVER = {"forkserver": {"preload_modules": ["orders_etl_tests.dagster_doubles"]}}
MULTIPROCESS = {"execution": {"config": {"multiprocess": {"max_concurrent": 2, "start_method": FORKSERVER}}}}
SETTLE = ("shopify__source_orders", "erp__source_orders", "orders", "reconciliation")
POOLS = {a.op.name: a.op.pool for a in ASSETS if a.op.pool}

_BEGIN = datetime(2026, 1, 1, tzinfo=UTC)
_LAST = datetime(2026, 1, 30, 23, tzinfo=UTC)  # no version after this: every one is in a range


# ---------------------------------------------------------------------------------------
# A month of orders


def _day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _fetches(index: int, when: datetime) -> bool:
    """Does run ``index`` fetch what changed at ``when``? Its days ± the overlap; the first
    run reads from the beginning."""
    first, last = RANGES[index]
    start = _day(first) - OVERLAP
    end = _day(last) + timedelta(days=1) + OVERLAP
    return (index == 0 or start <= when) and when < end


def _in_range(when: datetime, stored: list[datetime]) -> bool | None:
    """Does every run that fetches ``when`` also land a stored version of its order (True),
    none of them (False), or some but not all (None)?"""
    held = [any(_fetches(i, t) for t in stored) for i in range(len(RANGES)) if _fetches(i, when)]
    return True if all(held) else False if not any(held) else None


def _money(rng: random.Random, currency: str) -> tuple[str, str]:
    """(total, tax) as exact text at the currency's exponent; tax is 19 % included."""
    exponent = 0 if currency == "JPY" else 2
    total = Decimal(rng.randrange(500, 50_000)).scaleb(-exponent)
    tax = (total * 19 / 119).quantize(Decimal(1).scaleb(-exponent))
    return str(total), str(tax)


@dataclass
class Month:
    shopify: list[dict] = field(default_factory=list)
    erp: list[dict] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    # Keys (Shopify ids, ERP numbers) whose outcome depends on which run commits first.
    cross_range: set[str] = field(default_factory=set)


def month_of_orders(count: int = 150, seed: int = 20260101) -> Month:
    rng = random.Random(seed)
    month = Month()
    span = int((_LAST - _BEGIN).total_seconds())
    edges = [_day(first) for first, _ in RANGES[1:]]
    for i in range(count):
        oid = str(7001 + i)
        currency = ("EUR", "USD", "JPY")[i % 3]
        if i % 25 == 0:  # around a range's edge: landed by both runs, through the overlap
            created = edges[i // 25 % 2] - timedelta(minutes=rng.randrange(5, 55))
            times = [created, created + timedelta(minutes=rng.randrange(30, 100))]
        else:
            created = _BEGIN + timedelta(seconds=rng.randrange(span))
            times = [created]
            for _ in range(rng.choice((0, 1, 1, 2))):  # updated hours to days later
                later = times[-1] + timedelta(seconds=rng.randrange(3_600, 10 * 86_400))
                if later <= _LAST:
                    times.append(later)
        test = i % 40 == 3
        bad = {0} if i % 50 == 12 and len(times) > 1 else set(range(len(times))) if i % 50 == 11 else set()
        payments = ["authorized"] + ["captured"] * 3
        statuses = ["processing", "shipped", "delivered"]
        versions = []
        for n, when in enumerate(times):
            total, tax = _money(rng, currency)
            versions.append(
                doubles.shopify_order(
                    oid,
                    when.isoformat(),
                    total=total,
                    tax=tax,
                    currency="EURO" if n in bad else currency,  # rejected: not an ISO 4217 code
                    created_at=created.isoformat(),
                    payment=payments[n],
                    status=statuses[min(n, 2)],
                    test=test,
                )
            )
        if i % 30 == 7:  # two versions at the same second: the content hash decides, everywhere
            versions.append({**versions[-1], "total": str(Decimal(versions[-1]["total"]) + 1)})
        month.shopify += versions
        stored = [t for n, t in enumerate(times) if n not in bad]
        if test:
            continue
        if not stored:  # an ERP document naming an order that never normalized stays ERP-only
            month.erp.append(_erp(f"SO-{oid}", times[0] + timedelta(hours=2), versions[0], ref=f"#{oid}"))
            continue
        last = [v for n, v in enumerate(versions) if n not in bad][-1]
        if i % 20 == 5:  # deleted in Shopify soon after its last edit: the same run sees both
            deleted_at = stored[-1] + timedelta(minutes=rng.randrange(10, 50))
            month.deleted.append((oid, deleted_at.isoformat()))
            if not _in_range(deleted_at, stored):  # seen by two runs, one of which lands no version
                month.cross_range.add(oid)
        elif i % 25 == 9 and stored[-1] < _LAST - timedelta(days=8):
            # Deleted days later, in a range that lands no version of the order.
            deleted_at = stored[-1] + timedelta(days=rng.randrange(4, 8))
            if _in_range(deleted_at, stored) is False:
                month.deleted.append((oid, deleted_at.isoformat()))
                month.cross_range.add(oid)
        if rng.random() < 0.25:  # no ERP document: missing_in_erp
            continue
        number = f"SO-{oid}"
        for n, (when, version) in enumerate(
            (t, v) for k, (t, v) in enumerate(zip(times, versions, strict=False)) if k not in bad
        ):
            if n and rng.random() < 0.5:
                continue
            for _ in range(20):  # booked minutes after the Shopify edit, by a run that lands it
                booked = when + timedelta(minutes=rng.randrange(5, 50))
                if _in_range(booked, stored):
                    month.erp.append(_erp(number, booked, version, ref=f"#{oid}", rng=rng))
                    break
        if i % 15 == 4 and stored[-1] < _LAST - timedelta(days=6):
            # An invoice posted days later, in a range that lands no version of the order.
            booked = stored[-1] + timedelta(days=rng.randrange(3, 6), minutes=rng.randrange(120, 1_200))
            if _in_range(booked, stored) is False:
                month.erp.append(_erp(number, booked, last, ref=f"#{oid}", rng=rng))
                month.cross_range |= {oid, number}
    for n in range(12):  # ERP-only documents, two rejected
        when = _BEGIN + timedelta(seconds=rng.randrange(span))
        currency = "EURO" if n < 2 else "EUR"
        total, tax = _money(rng, "EUR")
        month.erp.append(
            doubles.erp_order(f"SO-9{n:03d}", when.isoformat(), total=total, tax=tax, currency=currency)
        )
    return month


def _erp(number: str, when: datetime, shopify: dict, *, ref: str, rng: random.Random | None = None) -> dict:
    """The ERP's copy of a Shopify version, booked at ``when``; now and then it disagrees."""
    values = {key: shopify[key] for key in ("total", "tax", "currency", "payment", "status")}
    roll = rng.random() if rng is not None else 1.0
    if roll < 0.07:
        total = Decimal(values["total"])  # one minor unit more: total_mismatch
        values["total"] = str(total + Decimal(1).scaleb(total.as_tuple().exponent))
    elif roll < 0.14:
        values["payment"] = "authorized" if values["payment"] == "captured" else "captured"
    return doubles.erp_order(number, when.isoformat(), ref=ref, created_at=shopify["created_at"], **values)


def write_month(path: Path) -> tuple[Path, Month]:
    month = month_of_orders()
    doubles.write_data(path, shopify=month.shopify, erp=month.erp, shopify_deleted=month.deleted)
    return path, month


# ---------------------------------------------------------------------------------------
# Running the ranges


def range_tags(first: str, last: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


@contextmanager
def pooled_dagster_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A Dagster home on PostgreSQL whose tables and pools exist before any run."""
    with postgres_dagster_home(home, monkeypatch):
        # Create Dagster's tables once (as `dagster instance migrate` does), and each pool's
        # limit (as `dagster instance concurrency set <pool> 1` does): two runs creating a
        # pool's row at once fail on PostgreSQL (docs/dagster.md, "Scaling out").
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for pool in sorted(set(POOLS.values())):
                instance.event_log_storage.set_concurrency_slots(pool, 1)
        yield home


def start_run(home: Path, config: Path, tags: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """``dagster job execute`` of ``sync_orders`` in a process of its own (as on another
    machine), on the instance in ``home``."""
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "job", "execute", "-m", "orders_etl_tests.dagster_doubles", "-j", "sync_orders",
        "-c", str(config), "--tags", json.dumps(tags), *args,
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": path}
    # Output to a file, not a pipe: a run blocked on a full pipe while it holds a pool slot
    # would stall the others. A group of its own, so a failed test stops it and its steps.
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextmanager
def stopped_on_exit(runs: list[subprocess.Popen]) -> Iterator[None]:
    try:
        yield
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()


def finish(run: subprocess.Popen, log: Path) -> None:
    assert run.wait(timeout=400) == 0, log.read_text(errors="replace")[-4000:]


def step_intervals(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """step key -> (STEP_START, STEP_SUCCESS) timestamps of one run."""
    started: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            intervals[event.step_key] = (started[event.step_key], record.timestamp)
    return intervals


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in edges:  # an end sorts before a start at the same instant
        running += change
        peak = max(peak, running)
    return peak


# ---------------------------------------------------------------------------------------
# Comparing stores

# Columns that say when or by which run a row was written, not what it holds.
WRITTEN = {"synced_at", "fetched_at", "first_seen_at", "last_seen_at", "run_id", "raw_id", "computed_at"}


def rows(store: OrderStore, table: str, *, drop: set[str] = frozenset(), without: set[str] = frozenset()):
    """The table as sorted rows of text, without the ``drop`` columns, nor rows whose
    ``external_id`` is in ``without``."""
    frame = store.read_table(table)
    if without and "external_id" in frame:
        frame = frame[~frame["external_id"].isin(without)]
    frame = frame.drop(columns=[c for c in frame.columns if c in WRITTEN | drop])
    return sorted(tuple(str(v) for v in row) for row in frame.itertuples(index=False))


def store_rows(store: OrderStore, without: set[str] = frozenset()) -> dict[str, list[tuple]]:
    """What the source steps leave, comparable between two stores."""
    return {
        "source_orders": rows(store, "source_orders", without=without),
        "orders": rows(store, "orders", drop={"id"}, without=without),
        # Which rejected version's payload a key keeps is the last writer's (docs: "Scaling out").
        "order_rejects": rows(store, "order_rejects", drop={"payload"}),
        "raw_orders": rows(store, "raw_orders", drop={"payload"}),
    }


def reconciliation_rows(store: OrderStore) -> dict[str, list[tuple]]:
    """The open exceptions and the summary. The ledger's resolved rows are its history: what
    each earlier reconciliation saw, which depends on the order the runs finished in."""
    exceptions = store.read_table("reconciliation_exceptions")
    open_exceptions = exceptions[exceptions["resolved_at"].isna()].drop(
        columns=["first_detected_at", "last_detected_at", "resolved_at"]
    )
    return {
        "open_exceptions": sorted(
            tuple(str(v) for v in row) for row in open_exceptions.itertuples(index=False)
        ),
        "reconciliation_summary": rows(store, "reconciliation_summary"),
    }


def assert_one_golden_row_per_order(store: OrderStore) -> None:
    golden = store.read_table("orders")
    assert golden["external_id"].is_unique
    assert golden["id"].is_unique and golden["id"].str.startswith("ord_").all()


# ---------------------------------------------------------------------------------------
# The test


@pytest.fixture
def reference_url() -> Iterator[str]:
    """A second PostgreSQL store (schema of its own) for the ranges run one after the other."""
    yield from fresh_pg_url()


@pytest.fixture
def reference(reference_url) -> Iterator[OrderStore]:
    store = OrderStore.from_url(reference_url)
    yield store
    store.dispose()


@pytest.fixture
def pg_store(pg_url) -> Iterator[OrderStore]:
    store = OrderStore.from_url(pg_url)
    yield store
    store.dispose()


@pytest.mark.timeout(600)
def test_thirty_days_in_three_concurrent_runs_equal_the_ranges_run_in_sequence(
    pg_url, pg_store, reference_url, reference, tmp_path, monkeypatch
):
    assert daily_partitions.start == _day(MONTH[0]), "run with ORDERS_ETL_START_DATE unset or 2026-01-01"
    data, month = write_month(tmp_path / "sources.json")
    assert len(month.cross_range) >= 4, month.cross_range  # the data holds the documented exception
    monkeypatch.setenv("ORDERS_ETL_DATABASE_URL", pg_url)  # step processes inherit it
    monkeypatch.setenv(doubles.DATA_ENV, str(data))
    monkeypatch.setenv("ORDERS_ETL_START_DATE", MONTH[0])

    # The reference: the three ranges one after the other, in-process (on an ephemeral
    # instance: a temporary SQLite one records events ten times slower).
    resources = doubles.double_resources(str(data), store=StoreResource(database_url=reference_url))
    for first, last in RANGES:
        assert dg.materialize(ASSETS, resources=resources, tags=range_tags(first, last)).success, first

    expected = store_rows(reference) | reconciliation_rows(reference)
    assert len(expected["source_orders"]) > 200 and expected["order_rejects"] and expected["open_exceptions"]
    expected_marks = marks_and_keys(reference_url)[0]
    reference_keys = updated_keys(reference_url)

    config = tmp_path / "multiprocess.json"  # JSON is YAML
    config.write_text(json.dumps(MULTIPROCESS))
    with pooled_dagster_home(tmp_path / "dagster_home", monkeypatch) as home:
        logs = [tmp_path / f"range-{n}.log" for n in range(len(RANGES))]
        runs = [start_run(home, config, range_tags(*days), logs[n]) for n, days in enumerate(RANGES)]
        with stopped_on_exit(runs):
            for run, log in zip(runs, logs, strict=True):
                finish(run, log)

        with dg.DagsterInstance.from_config(str(home)) as instance:
            records = instance.get_run_records()
            assert [r.dagster_run.status for r in records] == [dg.DagsterRunStatus.SUCCESS] * 3
            steps = [step_intervals(instance, r.dagster_run.run_id) for r in records]
        # The three runs were in flight at the same time...
        spans = [(min(s for s, _ in run.values()), max(e for _, e in run.values())) for run in steps]
        assert most_at_once(spans) == 3, spans
        # ... and no API pool ever had more than its one step running, across the runs.
        for pool in set(POOLS.values()):
            in_pool = [span for run in steps for key, span in run.items() if POOLS.get(key) == pool]
            assert len(in_pool) == 3 * list(POOLS.values()).count(pool), pool
            assert most_at_once(in_pool) == 1, (pool, in_pool)

        # Right after the runs: the reference, but for the cross-range links.
        assert_one_golden_row_per_order(pg_store)
        cross = month.cross_range
        assert store_rows(pg_store, without=cross) == store_rows(reference, without=cross)
        marks, keys = marks_and_keys(pg_url)
        assert marks.keys() == expected_marks.keys()
        for source, mark in marks.items():
            # A run that found the cursor short of its range left it there (docs: "Cursors"),
            # but never past data not yet committed.
            assert mark <= expected_marks[source]
            committed = {k for k, when in reference_keys[source].items() if when < mark}
            assert committed - cross <= keys[source], source

        # The settle pass: the month's landed payloads normalized again (no order fetched
        # again), the golden record merged, one reconciliation.
        in_process = tmp_path / "in_process.json"
        in_process.write_text(json.dumps({"execution": {"config": {"in_process": {}}}}))
        log = tmp_path / "settle.log"
        settle = start_run(home, in_process, range_tags(*MONTH), log, "-o", ",".join(SETTLE))
        with stopped_on_exit([settle]):
            finish(settle, log)

    assert_one_golden_row_per_order(pg_store)
    assert store_rows(pg_store) | reconciliation_rows(pg_store) == expected
    assert marks_and_keys(pg_url)[0] == expected_marks
