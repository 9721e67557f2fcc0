"""The ``orders-etl`` console script, run as a user runs it (a subprocess from the venv).

``sync`` runs the real Dagster job over the real readers on the bundled samples (what
``make run`` does); failures of a source must end in one line on stderr, exit status 1 and
no cursor moved. Fast argument and settings errors run in-process against the doubles.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from orders_etl import cli
from orders_etl.model import Source
from orders_etl.store import OrderStore
from orders_etl_tests import dagster_doubles as doubles

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
ORDERS_ETL = Path(sys.executable).with_name("orders-etl")
# Variables a developer's shell might hold that would change what the CLI reads.
_CONFIG_PREFIXES = ("ORDERS_ETL_", "SHOPIFY_", "BC_", "ERP_", "DAGSTER_HOME")

# ##### FIXTURES


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [str(ORDERS_ETL), *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every table a sync writes, as sorted rows, to compare before and after."""
    store = OrderStore.from_url(url)
    try:
        with store.engine.connect() as conn:
            return {
                table: sorted(tuple(map(str, row)) for row in conn.execute(sa.text(f"SELECT * FROM {table}")))
                for table in ("raw_orders", "source_orders", "orders", "order_rejects", "sync_state")
            }
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def synced(tmp_path_factory) -> dict[str, object]:
    """One ``orders-etl sync`` of the samples with the defaults: what ``make run`` does."""
    base = tmp_path_factory.mktemp("synced")
    url = f"sqlite:///{base / 'orders.db'}"
    return {"result": run_cli("sync", ORDERS_ETL_DATABASE_URL=url), "url": url}


def copy_store(synced: dict, tmp_path: Path) -> str:
    """A private copy of the synced store (a test that writes must not change the others')."""
    source = Path(str(synced["url"]).removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        if source.with_name(source.name + suffix).exists():
            shutil.copy(source.with_name(source.name + suffix), tmp_path / ("orders.db" + suffix))
    return f"sqlite:///{tmp_path / 'orders.db'}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: nothing listens there


# ##### TESTS: sync on the samples (make run)


def test_sync_of_the_samples_prints_stages_summary_and_reconciliation(synced):
    result = synced["result"]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    today = datetime.now(UTC).date()
    assert out.startswith(f"orders-etl sync 2026-01-01..{today} (")
    for stage in ("shopify/raw_orders", "shopify/source_orders", "erp/raw_orders", "erp/source_orders"):
        assert f"done  {stage}" in out
    assert "done  orders" in out and "done  checks on orders" in out and "done  reconciliation" in out
    # The summary table: one row per source with its counts, read back from the store.
    store = OrderStore.from_url(str(synced["url"]))
    try:
        rows = {
            line.split()[0]: line.split()[1:]
            for line in out.splitlines()
            if line.startswith(("shopify ", "erp_"))
        }
        counts = store.read_table("source_orders")["source"].value_counts().to_dict()
        assert int(rows["shopify"][2]) == counts["shopify"]  # inserted
        assert int(rows["erp_files"][2]) == counts["erp_files"]
        open_count = store.count("reconciliation_exceptions")
        assert f"reconciliation: {open_count} open exceptions" in out
        assert "Reconciliation Shopify vs ERP" in out  # the report follows the summary

        # The sync is exactly the samples' planted differences, nothing more, nothing less.
        with store.engine.connect() as conn:
            found = sorted(
                conn.execute(sa.text("SELECT external_id, kind FROM reconciliation_exceptions")).all()
            )
        with (SAMPLES / "planted_differences.csv").open() as planted:
            expected = sorted((row["external_id"], row["kind"]) for row in csv.DictReader(planted))
        assert [tuple(row) for row in found] == expected
        # Cursors moved to (about) the run's start, for both sources.
        for source in (Source.SHOPIFY, Source.ERP_FILES):
            mark = store.high_water_mark(source)
            assert mark is not None and datetime.now(UTC) - mark < timedelta(minutes=10)
    finally:
        store.dispose()


def test_with_dagster_home_the_sync_is_one_range_run_recorded_there(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    result = run_cli(
        "sync",
        "--start",
        "2026-10-30",
        "--end",
        "2026-10-31",
        ORDERS_ETL_DATABASE_URL=url,
        DAGSTER_HOME=str(home),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1
        assert runs[0].job_name == "sync_orders" and runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert runs[0].tags["dagster/asset_partition_range_start"] == "2026-10-30"
        assert runs[0].tags["dagster/asset_partition_range_end"] == "2026-10-31"
        materialized = instance.get_materialized_partitions(dg.AssetKey(["shopify", "raw_orders"]))
        assert materialized == {"2026-10-30", "2026-10-31"}


def test_second_sync_starts_at_the_cursor_and_changes_nothing(synced, tmp_path):
    url = copy_store(synced, tmp_path)
    before = snapshot(url)
    result = run_cli("sync", ORDERS_ETL_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    # Cursor (now) minus the one-hour overlap: today, or yesterday just after midnight.
    first_day = (datetime.now(UTC) - timedelta(hours=1, minutes=5)).date()
    assert f"orders-etl sync {first_day}.." in result.stdout
    after = snapshot(url)
    for table in ("raw_orders", "source_orders", "orders", "order_rejects"):
        assert len(after[table]) == len(before[table]), table


def test_report_formats(synced):
    url = str(synced["url"])
    result = run_cli("report", "--format", "json", ORDERS_ETL_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    result = run_cli("report", "--format", "csv", "--since", "2026-10-01", ORDERS_ETL_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    header = next(csv.reader(io.StringIO(result.stdout)))
    assert header[0] == "external_id"


# ##### TESTS: failures


def test_unreachable_shopify_exits_1_with_one_line_and_moves_nothing(synced, tmp_path):
    url = copy_store(synced, tmp_path)
    before = snapshot(url)
    result = run_cli(
        "sync",
        ORDERS_ETL_DATABASE_URL=url,
        SHOPIFY_SHOP_URL=f"http://127.0.0.1:{closed_port()}",
        SHOPIFY_ACCESS_TOKEN="shpat_not-a-real-token-4242",
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("orders-etl: shopify: "), result.stderr
    assert "shpat_not-a-real-token-4242" not in result.stderr + result.stdout
    after = snapshot(url)
    assert after["sync_state"] == before["sync_state"]
    for table in ("source_orders", "orders", "order_rejects"):
        assert after[table] == before[table], table
    shopify_raw = [row for row in after["raw_orders"] if row[1] == "shopify"]
    assert shopify_raw == [row for row in before["raw_orders"] if row[1] == "shopify"]


def test_missing_erp_export_exits_1_and_keeps_the_erp_cursor(synced, tmp_path):
    url = copy_store(synced, tmp_path)
    before = OrderStore.from_url(url).high_water_mark(Source.ERP_FILES)
    result = run_cli(
        "sync",
        ORDERS_ETL_DATABASE_URL=url,
        ERP_EXPORT_PATH=str(tmp_path / "no-such-export.csv"),
        ERP_DIALECT_PATH=str(SAMPLES / "erp_orders.dialect.toml"),
    )
    assert result.returncode == 1
    missing = tmp_path / "no-such-export.csv"
    assert result.stderr.splitlines() == [
        f"orders-etl: erp_files: export path {missing} does not exist (set ERP_EXPORT_PATH)"
    ]
    store = OrderStore.from_url(url)
    assert store.high_water_mark(Source.ERP_FILES) == before
    store.dispose()


def test_unreachable_store_exits_1_with_one_line_and_no_password():
    url = f"postgresql+psycopg://etl:pw-secret-55@127.0.0.1:{closed_port()}/orders"
    result = run_cli("sync", ORDERS_ETL_DATABASE_URL=url)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "orders-etl: store: cannot open postgresql+psycopg://etl:***@"
    )
    assert "pw-secret-55" not in result.stderr + result.stdout


def test_bad_settings_and_arguments_exit_2_with_one_line(tmp_path):
    result = run_cli("sync", ORDERS_ETL_START_DATE="first of may")
    assert (result.returncode, result.stderr) == (
        2,
        "orders-etl: settings: ORDERS_ETL_START_DATE='first of may' is not a date (YYYY-MM-DD)\n",
    )
    result = run_cli("sync", SHOPIFY_SHOP_URL="https://acme.myshopify.com")
    assert result.returncode == 2 and result.stderr.startswith(
        "orders-etl: settings: SHOPIFY_SHOP_URL is set"
    )


def test_db_upgrade_prints_the_masked_url(pg_url):
    url = sa.make_url(pg_url).set(password="pw-secret-77").render_as_string(hide_password=False)
    result = run_cli("db", "upgrade", ORDERS_ETL_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert "pw-secret-77" not in result.stdout + result.stderr
    assert "postgres:***@127.0.0.1" in result.stdout and "at revision" in result.stdout


# ##### TESTS: in-process (doubles), the range rules


@pytest.fixture
def double_defs(tmp_path, monkeypatch) -> dg.Definitions:
    monkeypatch.setenv("ORDERS_ETL_DATABASE_URL", f"sqlite:///{tmp_path / 'orders.db'}")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    data = doubles.write_march(tmp_path / "sources.json")
    return doubles.build_defs(resources=doubles.double_resources(str(data)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2026-03-03", "--end", "2026-03-01"], "--start 2026-03-03 is after --end 2026-03-01"),
        (["--start", "2025-12-31"], "--start 2025-12-31 is before the first partition 2026-01-01"),
        (["--end", "2999-01-01"], "--end 2999-01-01 is in the future"),
    ],
)
def test_range_errors_exit_2(double_defs, capsys, args, message):
    assert cli.main(["sync", *args], defs=double_defs) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"orders-etl: {message}") and err.count("\n") == 1


def test_default_range_starts_at_the_oldest_cursor_minus_the_overlap(double_defs, capsys):
    assert cli.main(["sync", "--start", "2026-01-01", "--end", "2026-01-02"], defs=double_defs) == 0
    capsys.readouterr()
    # Both cursors are at 2026-01-03 01:00 (day 2's end plus the overlap): start 2026-01-03.
    assert cli.main(["sync", "--end", "2026-01-04"], defs=double_defs) == 0
    assert capsys.readouterr().out.startswith("orders-etl sync 2026-01-03..2026-01-04 (2 days)")


def test_failed_source_in_process_names_source_and_cause(double_defs, tmp_path, capsys):
    data = str(tmp_path / "sources.json")
    defs = doubles.build_defs(
        resources=doubles.double_resources(data, erp=doubles.FakeErp(data_path=data, unreachable=True))
    )
    assert cli.main(["sync", "--start", "2026-03-01", "--end", "2026-03-03"], defs=defs) == 1
    captured = capsys.readouterr()
    assert captured.err == "orders-etl: erp_files: cannot read /nonexistent/export.csv (no such file)\n"
    assert "source    " not in captured.out  # no summary table after a failure
    store = OrderStore.from_url(os.environ["ORDERS_ETL_DATABASE_URL"])
    assert store.high_water_mark(Source.ERP_FILES) is None
    store.dispose()


def test_progress_lines_count_each_stage(double_defs, capsys):
    assert cli.main(["sync", "--start", "2026-03-01", "--end", "2026-03-03"], defs=double_defs) == 0
    out = capsys.readouterr().out
    assert "done  shopify/raw_orders       fetched 5, landed 5" in out
    # 1001's two versions arrive in one batch: the older one counts as stale.
    assert "done  shopify/source_orders    inserted 2, updated 0, unchanged 0, stale 1, rejected 1" in out
    summary = next(line for line in out.splitlines() if line.startswith("shopify "))
    assert summary.split() == ["shopify", "5", "5", "2", "0", "0", "1", "1", "1", "1"]


def test_renormalize_maps_the_landed_versions_again(double_defs, capsys):
    days = ["--start", "2026-03-01", "--end", "2026-03-03"]
    assert cli.main(["sync", *days], defs=double_defs) == 0
    capsys.readouterr()
    # Unchanged: nothing new landed, nothing normalized.
    assert cli.main(["sync", *days], defs=double_defs) == 0
    assert (
        "done  shopify/source_orders    inserted 0, updated 0, unchanged 0, stale 0"
        in capsys.readouterr().out
    )
    # Asked to: every landed version again. 1001's newest is unchanged; its older version
    # and 1002 as landed (the store has it newer, marked deleted) are stale; 1004 rejected.
    assert cli.main(["sync", *days, "--renormalize"], defs=double_defs) == 0
    out = capsys.readouterr().out
    assert "done  shopify/source_orders    inserted 0, updated 0, unchanged 1, stale 2, rejected 1" in out


def test_first_sync_also_reads_orders_updated_before_the_start_date(tmp_path) -> None:
    # The samples span September and October 2026; partitions here start in October.
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    result = run_cli("sync", ORDERS_ETL_DATABASE_URL=url, ORDERS_ETL_START_DATE="2026-10-01")
    assert result.returncode == 0, result.stderr
    store = OrderStore.from_url(url)
    try:
        with store.engine.connect() as conn:
            september = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM source_orders "
                    "WHERE source = 'shopify' AND updated_at < '2026-10-01'"
                )
            ).scalar_one()
            total = conn.execute(
                sa.text("SELECT COUNT(*) FROM source_orders WHERE source = 'shopify'")
            ).scalar_one()
    finally:
        store.dispose()
    assert september > 0
    assert total == 290  # every non-test, well-formed sample order


def test_a_full_re_sync_leaves_the_same_store_same_ids(synced, tmp_path):
    """``make run`` twice: re-reading the whole history rewrites nothing and keeps every id."""
    url = copy_store(synced, tmp_path)
    before = snapshot(url)
    result = run_cli("sync", "--start", "2026-01-01", ORDERS_ETL_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    # The same files over the same range: neither is read again (landed_inputs).
    for stage in ("shopify/raw_orders", "erp/raw_orders"):
        assert re.search(rf"done  {stage} +input unchanged since run \w{{8}}: not read again", result.stdout)
    after = snapshot(url)
    # Every column of the orders (ids, values, synced_at) and of the raw landing is unchanged.
    for table in ("orders", "source_orders", "raw_orders"):
        assert after[table] == before[table], table
    # Rejects are the same records for the same reasons (only last_seen_at moves).
    assert [row[:3] for row in after["order_rejects"]] == [row[:3] for row in before["order_rejects"]]
