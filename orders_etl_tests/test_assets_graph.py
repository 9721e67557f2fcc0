"""The asset graph run through Dagster (materialize / the sync_orders job) on a real store.

Sources are the doubles of ``dagster_doubles`` (same contract as the real readers); the
graph, the store and the checks are the real ones. Assertions read the store back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from orders_etl.definitions import ASSETS
from orders_etl.defs.orders.checks import orders_checks
from orders_etl.model import Source
from orders_etl.store import OrderStore
from orders_etl_tests import dagster_doubles as doubles

# ##### FIXTURES


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return doubles.write_march(tmp_path / "sources.json")


@pytest.fixture
def env_store(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> OrderStore:
    # The doubles' store resource reads ORDERS_ETL_DATABASE_URL, like the real one.
    monkeypatch.setenv("ORDERS_ETL_DATABASE_URL", sqlite_url)
    store = OrderStore.from_url(sqlite_url)
    yield store
    store.dispose()


NORMALIZE_STEPS = ("shopify__source_orders", "erp__source_orders")


def materialize(data: Path, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ASSETS, orders_checks], resources=doubles.double_resources(str(data)), instance=instance, **kwargs
    )


def range_tags(first: str, last: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def table(store: OrderStore, name: str, source: str | None = None) -> dict[str, dict]:
    frame = store.read_table(name)
    if source is not None:
        frame = frame[frame["source"] == source]
    return {row["external_id"]: row for row in frame.to_dict("records")}


def metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in events[0].materialization.metadata.items()}


# ##### TESTS


def test_three_day_range_in_one_run(data, env_store):
    with dg.instance_for_test() as instance:
        result = materialize(data, instance, tags=range_tags(*doubles.RANGE))
        assert result.success
        # One run covered the range: every partitioned asset is materialized for each day.
        for key in ("shopify/raw_orders", "shopify/source_orders", "erp/raw_orders", "erp/source_orders"):
            assert instance.get_materialized_partitions(dg.AssetKey.from_user_string(key)) == {
                "2026-03-01",
                "2026-03-02",
                "2026-03-03",
            }
        assert len(instance.get_runs()) == 1

    shopify = table(env_store, "source_orders", "shopify")
    assert set(shopify) == {"1001", "1002"}  # 1003 test order skipped, 1004 rejected, 1005 outside
    assert shopify["1001"]["total_amount"] == Decimal("12.00")  # newest version won
    assert shopify["1002"]["deleted_at"] == datetime(2026, 3, 3, 12, tzinfo=UTC)

    golden = table(env_store, "orders")
    assert set(golden) == {"1001", "1002", "SO-2"}  # SO-1 resolved to Shopify order 1001
    assert golden["1001"]["origin"] == "shopify" and golden["SO-2"]["origin"] == "erp_files"
    assert env_store.read_table("order_rejects")["record_key"].tolist() == ["1004"]

    shopify_meta = metadata(result, "shopify/source_orders")
    assert shopify_meta["dagster/row_count"] == 2
    assert (shopify_meta["rejected"], shopify_meta["skipped"], shopify_meta["deleted"]) == (1, 1, 1)
    assert metadata(result, "shopify/raw_orders")["fetched"] == 5
    assert metadata(result, "orders")["dagster/row_count"] == 3
    assert "| 1001 |" in metadata(result, "orders")["preview"]
    reconciliation = metadata(result, "reconciliation")
    assert reconciliation["open_exceptions"] == env_store.count("reconciliation_exceptions")

    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["one_row_per_external_id"].passed and checks["currency_iso_4217"].passed
    assert checks["money_sane"].passed
    # 1 of 3 Shopify records rejected: above the 2 % default, a warning.
    assert not checks["reject_rate_under_threshold"].passed
    assert checks["reject_rate_under_threshold"].severity == dg.AssetCheckSeverity.WARN


def test_one_partition_then_rerun_is_idempotent(data, env_store):
    with dg.instance_for_test() as instance:
        first = materialize(data, instance, partition_key="2026-03-02")
        assert first.success
        # The window is the day plus the overlap: 1002 and the test order 1003; SO-1's
        # reference #1001 is not in the store yet, so it is keyed on its ERP number.
        assert set(table(env_store, "source_orders", "shopify")) == {"1002"}
        assert set(table(env_store, "source_orders", "erp_files")) == {"SO-1"}
        before = {name: env_store.read_table(name) for name in ("raw_orders", "source_orders", "orders")}

        again = materialize(data, instance, partition_key="2026-03-02")
        assert again.success
        # Nothing new landed, so nothing is normalized again.
        assert metadata(again, "shopify/raw_orders")["landed"] == 0
        counts = metadata(again, "shopify/source_orders")
        assert (counts["inserted"], counts["updated"], counts["unchanged"]) == (0, 0, 0)
        # Asked to, the window is normalized again from raw_orders: the same orders.
        renormalized = materialize(
            data,
            instance,
            partition_key="2026-03-02",
            run_config={"ops": {name: {"config": {"renormalize": True}} for name in NORMALIZE_STEPS}},
        )
        assert renormalized.success
        counts = metadata(renormalized, "shopify/source_orders")
        assert (counts["inserted"], counts["updated"], counts["unchanged"]) == (0, 0, 1)
        assert env_store.count("raw_orders_pending") == 0
        for name, frame in before.items():
            after = env_store.read_table(name)
            assert after.drop(columns=["synced_at"], errors="ignore").equals(
                frame.drop(columns=["synced_at"], errors="ignore")
            ), name


def test_an_erp_order_resolves_once_its_shopify_order_is_synced_later(data, env_store):
    with dg.instance_for_test() as instance:
        # 2026-03-02 alone: SO-1 refers to #1001, not in the store yet: keyed on SO-1.
        assert materialize(data, instance, partition_key="2026-03-02").success
        assert set(table(env_store, "source_orders", "erp_files")) == {"SO-1"}
        # 2026-03-03 brings order 1001 (and nothing for SO-1's day).
        assert materialize(data, instance, partition_key="2026-03-03").success
        # 2026-03-02 again: SO-1's payload is unchanged, so nothing new landed, yet it is
        # normalized again because it is still keyed on its ERP number: now it resolves.
        again = materialize(data, instance, partition_key="2026-03-02")
        assert metadata(again, "erp/raw_orders")["landed"] == 0
    erp = table(env_store, "source_orders", "erp_files")
    assert set(erp) == {"1001", "SO-2"}
    assert "SO-1" not in table(env_store, "orders")  # no phantom ERP-only order left behind


def test_cursor_moves_only_over_contiguous_days(tmp_path, env_store):
    data = doubles.write_data(
        tmp_path / "sources.json",
        shopify=[doubles.shopify_order("1", "2026-01-01T08:00:00+00:00")],
        erp=[doubles.erp_order("SO-1", "2026-01-02T08:00:00+00:00")],
    )
    with dg.instance_for_test() as instance:
        # A later day first: no sync has reached it from the start, the cursor stays unset.
        assert materialize(data, instance, partition_key="2026-01-05").success
        assert env_store.high_water_mark(Source.SHOPIFY) is None
        # The first day: the cursor moves to the window's end (day + one hour of overlap).
        assert materialize(data, instance, partition_key="2026-01-01").success
        assert env_store.high_water_mark(Source.SHOPIFY) == datetime(2026, 1, 2, 1, tzinfo=UTC)
        assert env_store.high_water_mark(Source.ERP_FILES) == datetime(2026, 1, 2, 1, tzinfo=UTC)
        # The next day joins on: the cursor follows.
        assert materialize(data, instance, partition_key="2026-01-02").success
        assert env_store.high_water_mark(Source.SHOPIFY) == datetime(2026, 1, 3, 1, tzinfo=UTC)
        # Day 4 leaves a gap (day 3 never synced): the cursor does not jump over it.
        assert materialize(data, instance, partition_key="2026-01-04").success
        assert env_store.high_water_mark(Source.SHOPIFY) == datetime(2026, 1, 3, 1, tzinfo=UTC)


def test_unreachable_source_fails_without_moving_anything(data, env_store):
    resources = doubles.double_resources(
        str(data), shopify=doubles.FakeShopify(data_path=str(data), unreachable=True)
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*ASSETS, orders_checks],
            resources=resources,
            instance=instance,
            partition_key="2026-01-01",
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "shopify__raw_orders"
    assert failure.event_specific_data.user_failure_data.description.startswith("shopify: cannot connect")
    # No step retried a SourceError (the reader already did): exactly one attempt.
    assert (
        sum(
            e.event_type_value == "STEP_START" and e.step_key == "shopify__raw_orders"
            for e in result.all_events
        )
        == 1
    )
    assert env_store.count("source_orders") == 0 and env_store.count("sync_state") == 0
    with env_store.engine.connect() as conn:
        shopify_raw = conn.execute(
            sa.text("SELECT COUNT(*) FROM raw_orders WHERE source = 'shopify'")
        ).scalar()
    assert shopify_raw == 0
