"""Ops signals: a failed sync is visible where operators look, with a cause they can act on.

One ``orders-etl sync`` with DAGSTER_HOME set, in which both sources fail: the fake shop
refuses the access token (HTTP 401) and the ERP export path does not exist. The CLI exits 1
with one line on stderr; the run is recorded as failed in DAGSTER_HOME's run storage, each
failed step carries a one-line ``<source>: <cause>`` naming what to fix (and the same
``source``/``cause`` as metadata), and the run failure names the failed steps. No high-water
mark moved. And ``report`` and ``db upgrade`` on an unreachable store fail as ``sync`` does:
one line with the URL masked, exit 1.
"""

from __future__ import annotations

import subprocess

import dagster as dg
import pytest

from orders_etl_tests.crash_harness import (
    ORDERS_ETL,
    cli_env,
    debug_dagster_home,
    marks_and_keys,
    run_sync,
    shop,
)
from orders_etl_tests.test_cli import closed_port

FAILURE_PREFIX = "dagster._core.definitions.events.Failure: "


@pytest.mark.timeout(120)
def test_failed_sync_leaves_a_failed_run_with_one_line_causes(sqlite_url, tmp_path):
    home = debug_dagster_home(tmp_path / "dagster_home")
    fake = shop(20, access_token="shpat_the_shops_current_token")
    missing = tmp_path / "exports" / "erp_orders.csv"
    try:
        env = cli_env(sqlite_url, fake.url, missing, DAGSTER_HOME=str(home))
        result = run_sync(env, "--start", "2026-03-01", "--end", "2026-03-01", cwd=tmp_path)
    finally:
        fake.stop()
    assert fake.stats.unauthorized > 0

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("orders-etl: "), result.stderr
    cli_source, cli_cause = result.stderr.removeprefix("orders-etl: ").rstrip("\n").split(": ", 1)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
        events = [r.dagster_event for r in instance.all_logs(run.run_id) if r.dagster_event is not None]
    failures = {e.step_key: e.event_specific_data for e in events if e.event_type_value == "STEP_FAILURE"}
    assert set(failures) == {"shopify__raw_orders", "erp__raw_orders"}
    causes = {}
    for step, data in failures.items():
        message = data.error.message
        assert message.startswith(FAILURE_PREFIX) and message.count("\n") <= 1, message
        line = message.removeprefix(FAILURE_PREFIX).strip()
        metadata = {k: v.value for k, v in data.user_failure_data.metadata.items()}
        assert line == f"{metadata['source']}: {metadata['cause']}"
        assert metadata["source"].startswith(step.split("__")[0])  # the step's own source
        causes[metadata["source"]] = metadata["cause"]
    # What to fix is in the line: the refused credential's variable, the missing path's.
    assert "SHOPIFY_ACCESS_TOKEN" in causes["shopify"] and "401" in causes["shopify"]
    assert causes["erp_files"] == f"export path {missing} does not exist (set ERP_EXPORT_PATH)"
    assert causes[cli_source] == cli_cause  # the CLI prints one of the recorded causes, verbatim

    [run_failure] = [e for e in events if e.event_type_value == "PIPELINE_FAILURE"]
    assert "shopify__raw_orders" in run_failure.message and "erp__raw_orders" in run_failure.message
    assert marks_and_keys(sqlite_url) == ({}, {})  # nothing committed, no mark moved


@pytest.mark.parametrize("command", [("report",), ("db", "upgrade")], ids=["report", "db-upgrade"])
def test_unreachable_store_is_one_masked_line_for_every_command(command, tmp_path):
    url = f"postgresql+psycopg://etl:pwSECRETops_3c1@127.0.0.1:{closed_port()}/orders"
    result = subprocess.run(
        [str(ORDERS_ETL), *command],
        cwd=tmp_path,
        env=cli_env(url, None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr  # no traceback
    assert result.stderr.startswith(
        f"orders-etl: store: cannot open {url.replace('pwSECRETops_3c1', '***')}: "
    )
    assert "pwSECRETops_3c1" not in result.stdout + result.stderr
