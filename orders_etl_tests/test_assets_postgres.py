"""The 3-day backfill on PostgreSQL with the multiprocess executor: every step in its own
process, the two sources' landing steps in parallel, all writing one store.

Then the same range twice at once, each run in its own ``dagster job execute`` process (a
backfill launched twice; in-process executor, as the concurrency under test is between the
runs): the store must end as after one run: one row per order, the newest version of each,
ids minted once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from orders_etl.definitions import ASSETS
from orders_etl.store import OrderStore
from orders_etl_tests import dagster_doubles as doubles
from orders_etl_tests.conftest import postgres_dagster_home

pytestmark = pytest.mark.postgres

MULTIPROCESS = {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}}
ROOT = Path(__file__).resolve().parents[1]
RANGE_TAGS = {
    "dagster/asset_partition_range_start": doubles.RANGE[0],
    "dagster/asset_partition_range_end": doubles.RANGE[1],
}


@pytest.fixture
def pg_store(monkeypatch: pytest.MonkeyPatch, pg_url: str, tmp_path: Path) -> OrderStore:
    # Step processes inherit the environment: that is how they find the store and the data.
    monkeypatch.setenv("ORDERS_ETL_DATABASE_URL", pg_url)
    monkeypatch.setenv(doubles.DATA_ENV, str(doubles.write_march(tmp_path / "sources.json")))
    store = OrderStore.from_url(pg_url)
    yield store
    store.dispose()


def run_range(instance: dg.DagsterInstance) -> tuple[bool, list[str | None]]:
    with dg.execute_job(
        dg.reconstructable(doubles.sync_orders_job),
        instance=instance,
        run_config=MULTIPROCESS,
        tags=RANGE_TAGS,
    ) as result:
        return result.success, [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def start_cli_run(home: Path, config: Path) -> subprocess.Popen:
    """``dagster job execute`` of the range in a process of its own, on the shared instance."""
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "job", "execute", "-m", "orders_etl_tests.dagster_doubles", "-j", "sync_orders",
        "-c", str(config), "--tags", json.dumps(RANGE_TAGS),
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": path}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.timeout(400)
def test_range_backfill_on_postgres_with_multiprocess_executor(pg_store, tmp_path):
    with dg.instance_for_test() as instance:
        assert run_range(instance) == (True, [])
    doubles.assert_march_synced(pg_store)
    ids = pg_store.read_table("orders").set_index("external_id")["id"].to_dict()

    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.from_config(str(home)):
        pass  # create the instance's storage once (as `dagster instance migrate` does), not in a race
    config = tmp_path / "run_config.json"  # JSON is YAML
    config.write_text(json.dumps({"execution": {"config": {"in_process": {}}}}))
    runs = [start_cli_run(home, config) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0].decode(errors="replace") for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]

    doubles.assert_march_synced(pg_store)
    assert pg_store.read_table("orders").set_index("external_id")["id"].to_dict() == ids  # minted once
    assert pg_store.count("source_orders") == 4  # Shopify 1001, 1002; ERP 1001 (SO-1), SO-2


@pytest.mark.timeout(300)
def test_production_dagster_yaml_runs_the_graph_on_postgres(pg_url, tmp_path, monkeypatch):
    """dagster.yaml.example, as shipped: Dagster's storage in a PostgreSQL database of its own."""
    monkeypatch.setenv("ORDERS_ETL_DATABASE_URL", pg_url)
    with (
        postgres_dagster_home(tmp_path / "dagster_home", monkeypatch) as home,
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        data = doubles.write_march(tmp_path / "sources.json")
        result = dg.materialize(
            ASSETS, resources=doubles.double_resources(str(data)), instance=instance, tags=RANGE_TAGS
        )
        assert result.success
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
    store = OrderStore.from_url(pg_url)
    doubles.assert_march_synced(store)
    store.dispose()
