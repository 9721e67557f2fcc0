"""The schedules: which partition each one syncs, when, and that they start switched off."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from orders_etl import definitions
from orders_etl.defs.schedules import resync_previous_day, sync_current_day


@pytest.mark.parametrize(
    ("when", "partition"),
    [
        (datetime(2026, 3, 2, 0, 5, tzinfo=UTC), "2026-03-02"),
        (datetime(2026, 3, 2, 23, 5, tzinfo=UTC), "2026-03-02"),
        (datetime(2026, 1, 1, 0, 5, tzinfo=UTC), "2026-01-01"),
    ],
)
def test_hourly_sync_targets_the_current_day(when, partition):
    request = sync_current_day(dg.build_schedule_context(scheduled_execution_time=when))
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == partition
    assert request.run_key == f"current-day-{when.isoformat()}"


@pytest.mark.parametrize(
    ("when", "partition"),
    [
        (datetime(2026, 3, 2, 0, 30, tzinfo=UTC), "2026-03-01"),
        (datetime(2026, 3, 1, 0, 30, tzinfo=UTC), "2026-02-28"),
    ],
)
def test_resync_targets_the_previous_day(when, partition):
    request = resync_previous_day(dg.build_schedule_context(scheduled_execution_time=when))
    assert isinstance(request, dg.RunRequest) and request.partition_key == partition


def test_before_the_first_partition_the_schedules_skip():
    when = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)  # the day before is 2025-12-31
    assert isinstance(
        resync_previous_day(dg.build_schedule_context(scheduled_execution_time=when)), dg.SkipReason
    )
    early = datetime(2025, 12, 31, 23, 5, tzinfo=UTC)
    assert isinstance(
        sync_current_day(dg.build_schedule_context(scheduled_execution_time=early)), dg.SkipReason
    )


def test_schedules_run_the_sync_job_hourly_and_after_midnight_switched_off():
    current = definitions.defs.resolve_schedule_def("sync_orders_current_day")
    previous = definitions.defs.resolve_schedule_def("resync_previous_day")
    assert (current.cron_schedule, previous.cron_schedule) == ("5 * * * *", "30 0 * * *")
    assert current.job_name == previous.job_name == "sync_orders"
    assert current.execution_timezone == previous.execution_timezone == "UTC"
    # Off until someone switches them on (UI or `dagster schedule start`): no surprise syncs.
    assert current.default_status == previous.default_status == dg.DefaultScheduleStatus.STOPPED


def test_cron_expressions_come_from_the_environment(monkeypatch):
    from orders_etl.settings import load_settings

    settings = load_settings({"ORDERS_ETL_SYNC_CRON": "*/15 * * * *", "ORDERS_ETL_RESYNC_CRON": "0 2 * * *"})
    assert (settings.sync_cron, settings.resync_cron) == ("*/15 * * * *", "0 2 * * *")
