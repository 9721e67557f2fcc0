"""The shipped Dagster instance (dagster.yaml.example) on PostgreSQL: a pool of one slot is
taken by one step at a time however many runs claim it at the same moment."""

from __future__ import annotations

import threading

import dagster as dg
import pytest
from dagster._core.storage.event_log.base import EventLogStorage

from orders_etl.defs.instance_storage import PostgresEventLogStorage
from orders_etl_tests.conftest import postgres_dagster_home

pytestmark = pytest.mark.postgres

CLAIMERS = 4
ROUNDS = 50
POOL = "shopify_api"
STEP = "shopify__raw_orders"


def claim_at_once(storages: list[EventLogStorage], runs: list[str]) -> list[bool]:
    """Each storage claims the pool's slot for its run's Shopify step, all at one moment."""
    claimed = [False] * len(storages)
    start = threading.Barrier(len(storages))

    def claim(n: int) -> None:
        start.wait()
        claimed[n] = storages[n].claim_concurrency_slot(POOL, runs[n], STEP).is_claimed

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(storages))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return claimed


def test_the_shipped_instance_uses_the_atomic_claim(tmp_path, monkeypatch):
    with (
        postgres_dagster_home(tmp_path / "dagster_home", monkeypatch) as home,
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        assert type(instance.event_log_storage) is PostgresEventLogStorage


@pytest.mark.timeout(120)
def test_runs_claiming_a_pool_of_one_at_the_same_moment_get_one_slot(tmp_path, monkeypatch):
    """Dagster 1.13's own claim gave the slot to two of four claimers in 28 rounds of 100 on
    this machine (orders_etl/defs/instance_storage.py)."""
    with postgres_dagster_home(tmp_path / "dagster_home", monkeypatch) as home:
        # One instance per claimer, each with connections of its own, as separate run workers.
        instances = [dg.DagsterInstance.from_config(str(home)) for _ in range(CLAIMERS)]
        try:
            storages = [instance.event_log_storage for instance in instances]
            storages[0].set_concurrency_slots(POOL, 1)
            for round_ in range(ROUNDS):
                runs = [f"run-{round_}-{n}" for n in range(CLAIMERS)]
                claimed = claim_at_once(storages, runs)
                # The losers are told to wait, as when the pool is full; one step got the slot.
                assert sum(claimed) == 1, (round_, claimed)
                holders = storages[0].get_concurrency_info(POOL).claimed_slots
                assert [(slot.run_id, slot.step_key) for slot in holders] == [
                    (runs[claimed.index(True)], STEP)
                ]
                for run in runs:
                    storages[0].free_concurrency_slots_for_run(run)
        finally:
            for instance in instances:
                instance.dispose()
