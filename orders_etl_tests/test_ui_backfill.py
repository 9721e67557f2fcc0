"""The UI path: ``dagster dev`` serves the project's ``workspace.yaml`` (what ``make dev``
runs), and a backfill launched the way the UI launches it (GraphQL ``launchPartitionBackfill``)
runs through the daemon into the store.

The test starts ``dagster dev`` (webserver, daemon, code server) on the repository's
``workspace.yaml`` with the file-backed sources on the bundled samples, a temporary
``DAGSTER_HOME`` and a temporary store, on 127.0.0.1 and a free port, in a process group of
its own; at the end it stops exactly that group and checks that none of its processes
survives. The store must
hold exactly what the plain readers and normalizers make of the same three days. The
backfill daemon works in 30-second ticks, so this takes a minute or two; timeouts are
generous for a busy 2-core CI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from orders_etl.sources.base import batches
from orders_etl.sources.erp_files import ErpFileReader, load_dialect
from orders_etl.sources.erp_files import normalize as normalize_erp
from orders_etl.sources.shopify import ShopifyBulkFileReader
from orders_etl.sources.shopify import normalize as normalize_shopify
from orders_etl.store import OrderStore
from orders_etl.store.frames import canonical_text, rows_to_table

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")
STARTUP_TIMEOUT = 240
BACKFILL_TIMEOUT = 480
ASSETS = [
    ["shopify", "raw_orders"],
    ["shopify", "source_orders"],
    ["erp", "raw_orders"],
    ["erp", "source_orders"],
    ["orders"],
    ["reconciliation"],
]
DAYS = ["2026-09-01", "2026-09-02", "2026-09-03"]
# The days plus the one-hour overlap on both sides (ORDERS_ETL_OVERLAP_MINUTES default).
WINDOW = (datetime(2026, 8, 31, 23, tzinfo=UTC), datetime(2026, 9, 4, 1, tzinfo=UTC))
SAMPLES = ROOT / "data" / "samples"
CHECKS = {
    "one_row_per_external_id",
    "money_sane",
    "currency_iso_4217",
    "reject_rate_under_threshold",
    "sync_is_fresh",
    "no_old_open_exceptions",
}

WORKSPACE_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation {
            repositories {
              jobs { name }
              schedules { name cronSchedule scheduleState { status } }
              assetNodes {
                assetKey { path }
                description
                kinds
                partitionDefinition { description }
                assetChecksOrError { ... on AssetChecks { checks { name } } }
              }
            }
          }
        }
      }
    }
  }
}
"""

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions error { message } }
    ... on PythonError { message }
  }
}
"""

RUNS = """
{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }
"""


# ##### FIXTURES


@dataclass
class DagsterDev:
    url: str
    process: subprocess.Popen
    log: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def fail(self, message: str) -> None:
        tail = self.log.read_text(errors="replace")[-4000:]
        pytest.fail(f"{message}\n--- dagster dev output (tail) ---\n{tail}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the group we started, then SIGKILL what is left; every member must be gone."""
    try:
        members = [process.pid, *(p.pid for p in psutil.Process(process.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        members = [process.pid]
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(members):
            time.sleep(0.5)
        if not _alive(members):
            break
    process.wait(timeout=10)
    assert not _alive(members), f"processes left running: {_alive(members)}"


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[tuple[DagsterDev, str]]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # Dequeue runs every second instead of every five: the test waits less, nothing else changes.
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n"
        "  module: dagster._core.run_coordinator\n"
        "  class: QueuedRunCoordinator\n"
        "  config:\n"
        "    dequeue_interval_seconds: 1\n"
        "telemetry:\n"
        "  enabled: false\n"
    )
    store_url = f"sqlite:///{tmp_path / 'orders.db'}"
    # The file-backed sources on the bundled samples, as on a fresh clone; the store is private.
    # (Run from a temporary directory, so no developer's .env is read.)
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("ORDERS_ETL_", "SHOPIFY_", "BC_", "ERP_"))
    }
    env = {
        **clean,
        "DAGSTER_HOME": str(home),
        "ORDERS_ETL_DATABASE_URL": store_url,
        "SHOPIFY_BULK_FILE": str(SAMPLES / "shopify_orders.jsonl"),
        "ERP_EXPORT_PATH": str(SAMPLES / "erp_orders.csv"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    port = free_port()
    log = tmp_path / "dagster_dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(DAGSTER), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop exactly that group
        )
    try:
        yield DagsterDev(f"http://127.0.0.1:{port}", process, log), store_url
    finally:
        stop_group(process)


def plain_sync(url: str, start: datetime, end: datetime) -> OrderStore:
    """The same window through the plain readers and normalizers, without Dagster."""
    store = OrderStore.from_url(url)
    store.land_raw("shopify", ShopifyBulkFileReader(SAMPLES / "shopify_orders.jsonl").fetch(start, end))
    landed = (record for chunk in store.iter_raw("shopify", start, end) for record in chunk)
    for batch in batches(normalize_shopify(landed)):
        store.record_rejects(batch.rejects)
        rows = [*batch.rows, *map(canonical_text, batch.orders)]  # (the fast mapping yields rows)
        store.upsert_frames("shopify", [rows_to_table(rows)])
    dialect = load_dialect(SAMPLES / "erp_orders.dialect.toml")
    store.land_raw("erp_files", ErpFileReader(SAMPLES / "erp_orders.csv", dialect).fetch(start, end))
    landed = (record for chunk in store.iter_raw("erp_files", start, end) for record in chunk)
    for batch in batches(normalize_erp(landed, dialect=dialect, resolve_names=store.shopify_ids_by_name)):
        store.record_rejects(batch.rejects)
        # As a sync upserts (defs/sync.py): fast mappings' rows and records' canonical text.
        store.upsert_frames("erp_files", [rows_to_table([*batch.rows, *map(canonical_text, batch.orders)])])
    return store


def comparable(store: OrderStore) -> dict[str, list[tuple]]:
    """The tables without what differs between two runs (ids minted, clocks, run ids)."""
    ignored = {"id", "synced_at", "raw_id", "fetched_at", "run_id", "first_seen_at", "last_seen_at"}
    tables = {}
    for name in ("raw_orders", "source_orders", "orders", "order_rejects"):
        frame = store.read_table(name)
        frame = frame[[c for c in frame.columns if c not in ignored]]
        tables[name] = sorted(tuple(map(str, row)) for row in frame.itertuples(index=False))
    return tables


def wait_until_loaded(dev: DagsterDev) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            dev.fail(f"dagster dev exited with {dev.process.returncode}")
        try:
            data = dev.graphql(WORKSPACE_QUERY)
        except httpx.HTTPError:
            time.sleep(1)
            continue
        entries = data["workspaceOrError"].get("locationEntries") or []
        if entries and entries[0]["loadStatus"] == "LOADED" and entries[0]["locationOrLoadError"]:
            return entries[0]
        time.sleep(1)
    dev.fail("the code location did not load in time")
    raise AssertionError  # unreachable: fail() raises


def wait_for_backfill(dev: DagsterDev, backfill_id: str) -> dict:
    deadline = time.monotonic() + BACKFILL_TIMEOUT
    while time.monotonic() < deadline:
        backfill = dev.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if backfill.get("status") in (
            "COMPLETED",
            "COMPLETED_SUCCESS",
            "COMPLETED_FAILED",
            "FAILED",
            "CANCELED",
        ):
            return backfill
        time.sleep(2)
    dev.fail(f"backfill {backfill_id} did not finish in {BACKFILL_TIMEOUT}s")
    raise AssertionError


# ##### TESTS


@pytest.mark.timeout(900)
def test_dagster_dev_serves_the_project_and_runs_a_ui_backfill(dagster_dev, tmp_path):
    dev, store_url = dagster_dev
    location = wait_until_loaded(dev)
    assert location["name"] == "orders_etl"
    assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location
    repository = location["locationOrLoadError"]["repositories"][0]

    nodes = {tuple(node["assetKey"]["path"]): node for node in repository["assetNodes"]}
    assert set(nodes) == {tuple(key) for key in ASSETS}
    for key, node in nodes.items():
        assert node["description"] and node["kinds"], key
    for key in ASSETS[:4]:  # the sources' assets are daily-partitioned; orders, reconciliation not
        assert "Daily" in nodes[tuple(key)]["partitionDefinition"]["description"]
    assert nodes[("orders",)]["partitionDefinition"] is None
    assert nodes[("reconciliation",)]["partitionDefinition"] is None
    checks = {c["name"] for node in nodes.values() for c in node["assetChecksOrError"].get("checks", [])}
    assert checks == CHECKS
    assert "sync_orders" in {job["name"] for job in repository["jobs"]}
    schedules = {s["name"]: s for s in repository["schedules"]}
    assert set(schedules) == {"sync_orders_current_day", "resync_previous_day"}
    assert schedules["sync_orders_current_day"]["cronSchedule"] == "5 * * * *"

    launched = dev.graphql(
        LAUNCH_BACKFILL,
        {
            "params": {
                "partitionNames": DAYS,
                "assetSelection": [{"path": key} for key in ASSETS],
                "fromFailure": False,
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill = wait_for_backfill(dev, launched["backfillId"])
    if backfill["status"] not in ("COMPLETED", "COMPLETED_SUCCESS"):
        dev.fail(f"backfill ended {backfill}")

    runs = dev.graphql(RUNS)["runsOrError"]["results"]
    assert runs and all(run["status"] == "SUCCESS" for run in runs), runs
    # Single-run backfill policy: the three days ran as one range run (then orders and
    # reconciliation, unpartitioned, once).
    range_start = {"key": "dagster/asset_partition_range_start", "value": DAYS[0]}
    assert len([run for run in runs if range_start in run["tags"]]) == 1, runs

    # The store holds exactly what the plain modules make of those days (plus the overlap).
    store = OrderStore.from_url(store_url)
    expected = plain_sync(f"sqlite:///{tmp_path / 'expected.db'}", WINDOW[0], WINDOW[1])
    try:
        synced, wanted = comparable(store), comparable(expected)
        assert wanted["source_orders"], "the window must hold sample orders"
        assert {row[0] for row in wanted["source_orders"]} == {"shopify", "erp_files"}
        for table in wanted:
            assert synced[table] == wanted[table], table
        assert store.count("reconciliation_exceptions") > 0
    finally:
        store.dispose()
        expected.dispose()
