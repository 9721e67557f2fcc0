"""The 3-day backfill on PostgreSQL with the multiprocess executor: every step in its own
process, the two sources' landing steps in parallel, all writing one store.

Two such runs are started at once (a backfill launched twice): the store must end the
same as after one: one row per order, the newest version of each, ids minted once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest

from orders_etl.store import OrderStore
from orders_etl_tests import dagster_doubles as doubles

pytestmark = pytest.mark.postgres

MULTIPROCESS = {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}}


@pytest.fixture
def pg_store(monkeypatch: pytest.MonkeyPatch, pg_url: str, tmp_path: Path) -> OrderStore:
    # Step processes inherit the environment: that is how they find the store and the data.
    monkeypatch.setenv("ORDERS_ETL_DATABASE_URL", pg_url)
    monkeypatch.setenv(doubles.DATA_ENV, str(doubles.write_march(tmp_path / "sources.json")))
    store = OrderStore.from_url(pg_url)
    yield store
    store.dispose()


def run_range(instance: dg.DagsterInstance) -> dg.ExecutionResult:
    first, last = doubles.RANGE
    with dg.execute_job(
        dg.reconstructable(doubles.sync_orders_job),
        instance=instance,
        run_config=MULTIPROCESS,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    ) as result:
        return result.success, [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


@pytest.mark.timeout(300)
def test_range_backfill_on_postgres_with_multiprocess_executor(pg_store):
    with dg.instance_for_test() as instance:
        assert run_range(instance) == (True, [])
        doubles.assert_march_synced(pg_store)
        ids = pg_store.read_table("orders").set_index("external_id")["id"].to_dict()

        # The same backfill twice at once: concurrent writers over the same orders.
        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(lambda _: run_range(instance), range(2)))
        assert outcomes == [(True, []), (True, [])]

    doubles.assert_march_synced(pg_store)
    assert pg_store.read_table("orders").set_index("external_id")["id"].to_dict() == ids  # minted once
    assert pg_store.count("source_orders") == 4  # shopify 1001, 1002; ERP 1001 (SO-1), SO-2
