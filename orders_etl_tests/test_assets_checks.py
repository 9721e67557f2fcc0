"""The asset checks find what they look for: rows are planted in a synced store, then the
checks run through Dagster (as in the sync job) and their results are read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from orders_etl.definitions import ASSETS
from orders_etl.defs.orders.assets import orders
from orders_etl.defs.orders.checks import money_problems, orders_checks
from orders_etl.defs.reconciliation.assets import reconciliation
from orders_etl.model import Source
from orders_etl.store import OrderStore
from orders_etl.store.schema import orders as orders_table
from orders_etl_tests import dagster_doubles as doubles

# ##### FIXTURES


def sync_march(data: Path) -> None:
    result = dg.materialize(
        [*ASSETS, orders_checks],
        resources=doubles.double_resources(str(data)),
        tags={
            "dagster/asset_partition_range_start": doubles.RANGE[0],
            "dagster/asset_partition_range_end": doubles.RANGE[1],
        },
    )
    assert result.success


@pytest.fixture
def synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_url: str) -> tuple[OrderStore, Path]:
    monkeypatch.setenv("ORDERS_ETL_DATABASE_URL", store_url)
    data = doubles.write_march(tmp_path / "sources.json")
    sync_march(data)
    store = OrderStore.from_url(store_url)
    yield store, data
    store.dispose()


def run_checks(data: Path, *assets: dg.AssetsDefinition) -> dict[str, dg.AssetCheckEvaluation]:
    result = dg.materialize(
        [orders, orders_checks, *assets], resources=doubles.double_resources(str(data)), raise_on_error=False
    )
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def execute(store: OrderStore, statement: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement))


# ##### TESTS


def test_money_and_currency_checks_name_the_bad_orders(synced):
    store, data = synced
    checks = run_checks(data)
    assert checks["money_sane"].passed and checks["currency_iso_4217"].passed

    # Written behind the model's back, as a faulty migration or a manual fix could.
    execute(store, "UPDATE orders SET tax_amount = '13.00' WHERE external_id = '1001'")  # total 12.00
    execute(
        store,
        "UPDATE orders SET total_amount = '-5.00', payment_status = 'captured' WHERE external_id = 'SO-2'",
    )
    execute(
        store,
        "UPDATE orders SET total_amount = '-1.00', tax_amount = '-0.10', payment_status = 'refunded', "
        "currency = 'EURO' WHERE external_id = '1002'",
    )
    checks = run_checks(data)

    money = checks["money_sane"]
    assert not money.passed and money.severity == dg.AssetCheckSeverity.ERROR
    assert money.metadata["orders_with_problems"].value == 2  # a refunded negative total is allowed
    sample = money.metadata["sample"].value
    assert "| 1001 |" in sample and "tax_amount exceeds total_amount" in sample
    assert "| SO-2 |" in sample and "| 1002 |" not in sample
    currency = checks["currency_iso_4217"]
    assert not currency.passed and currency.metadata["invalid"].value == "'EURO' (1)"


def test_sync_freshness_follows_the_high_water_marks(synced):
    store, data = synced
    # The March range does not start at the first partition: no cursor was set.
    fresh = run_checks(data)["sync_is_fresh"]
    assert not fresh.passed and fresh.metadata["high_water_mark_shopify"].value == "never synced"

    now = datetime.now(UTC)
    store.advance_high_water_mark(Source.SHOPIFY, now)
    fresh = run_checks(data)["sync_is_fresh"]
    assert not fresh.passed  # the ERP has still never synced
    assert fresh.metadata["high_water_mark_erp_files"].value == "never synced"

    store.advance_high_water_mark(Source.ERP_FILES, now - timedelta(hours=1))
    assert run_checks(data)["sync_is_fresh"].passed


def test_reject_rate_warns_above_the_threshold(synced):
    store, data = synced
    rate = run_checks(data)["reject_rate_under_threshold"]
    # Shopify: 1 reject (1004) against 2 stored orders.
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.WARN
    assert rate.metadata["reject_rate_shopify"].value == pytest.approx(1 / 3, abs=1e-6)
    execute(store, "DELETE FROM order_rejects")
    assert run_checks(data)["reject_rate_under_threshold"].passed


def test_exceptions_open_too_long_warn(synced):
    store, data = synced
    assert run_checks(data, reconciliation)["no_old_open_exceptions"].passed
    old = (datetime.now(UTC) - timedelta(days=8)).strftime("%Y-%m-%d %H:%M:%S")
    dialect = store.engine.dialect.name
    stamp = f"'{old}.000000'" if dialect == "sqlite" else f"TIMESTAMPTZ '{old}+00'"
    execute(
        store, f"UPDATE reconciliation_exceptions SET first_detected_at = {stamp} WHERE external_id = 'SO-2'"
    )
    check = run_checks(data, reconciliation)["no_old_open_exceptions"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["open_too_long"].value == 1


@pytest.mark.postgres
def test_duplicate_golden_rows_fail_the_blocking_check_and_skip_reconciliation(pg_url, tmp_path, monkeypatch):
    monkeypatch.setenv("ORDERS_ETL_DATABASE_URL", pg_url)
    data = doubles.write_march(tmp_path / "sources.json")
    sync_march(data)
    store = OrderStore.from_url(pg_url)
    try:
        # Only possible without the unique constraint (e.g. a botched manual migration).
        execute(store, "ALTER TABLE orders DROP CONSTRAINT orders_external_id_key")
        columns = ", ".join(c.name for c in orders_table.columns if c.name != "id")
        execute(
            store,
            f"INSERT INTO orders (id, {columns}) SELECT 'ord_01DUPLICATE0000000000000000', {columns} "
            "FROM orders WHERE external_id = '1001'",
        )
        before = store.read_table("reconciliation_summary")["computed_at"].tolist()
        result = dg.materialize(
            [orders, orders_checks, reconciliation],
            resources=doubles.double_resources(str(data)),
            raise_on_error=False,
        )
        unique = {e.check_name: e for e in result.get_asset_check_evaluations()}["one_row_per_external_id"]
        assert not unique.passed and unique.metadata["duplicated_keys"].value == 1
        assert not result.success
        started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
        assert "orders_checks" in started and "reconciliation" not in started
        assert store.read_table("reconciliation_summary")["computed_at"].tolist() == before
    finally:
        store.dispose()


def test_money_check_decides_on_exact_amounts_where_floats_cannot_tell(synced):
    """The database pre-selects with floats; amounts 0.001 apart at 10**14 are equal as
    floats, and the exact comparison still finds the tax above the total."""
    store, _ = synced
    execute(
        store,
        "UPDATE orders SET currency = 'KWD', total_amount = '99999999999999.998', "
        "tax_amount = '99999999999999.999' WHERE external_id = '1001'",
    )
    execute(
        store,
        "UPDATE orders SET currency = 'KWD', total_amount = '99999999999999.999', "
        "tax_amount = '99999999999999.998' WHERE external_id = '1002'",
    )
    assert float("99999999999999.998") == float("99999999999999.999")
    problems = {problem.external_id: problem.problem for problem in money_problems(store)}
    assert problems == {"1001": "tax_amount exceeds total_amount"}
