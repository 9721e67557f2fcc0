"""The ``sync_orders`` job and the schedules that keep the store fresh.

Both schedules are off when first deployed (Dagster's default): switch them on in the UI
(Automation) or with ``dagster schedule start``; they need the daemon (``dagster dev`` runs
one; in production ``dagster-daemon run``). Times are UTC, like the partitions.
"""

from datetime import datetime, timedelta

import dagster as dg

from orders_etl.defs.partitions import daily_partitions
from orders_etl.settings import get_settings

SYNC_JOB = "sync_orders"

# Every asset and its checks: sources, golden record, then reconciliation, so each sync
# leaves a reconciliation that matches the store.
sync_orders = dg.define_asset_job(
    SYNC_JOB,
    selection=dg.AssetSelection.all(),
    description="Pull every source for the partition's day(s), normalize, merge the golden record, "
    "reconcile.",
)


def partition_of(when: datetime) -> str | None:
    """The daily partition holding ``when`` (None before the first partition)."""
    start = daily_partitions.start
    if when < start:
        return None
    return daily_partitions.get_partition_key_for_timestamp(when.timestamp())


@dg.schedule(
    name="sync_orders_current_day",
    job=sync_orders,
    cron_schedule=get_settings().sync_cron,
    execution_timezone="UTC",
    description="Sync today's partition (orders updated today) every hour (ORDERS_ETL_SYNC_CRON).",
)
def sync_current_day(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    when = context.scheduled_execution_time
    key = partition_of(when)
    if key is None:
        return dg.SkipReason(f"{when.isoformat()} is before the first partition")
    return dg.RunRequest(run_key=f"current-day-{when.isoformat()}", partition_key=key)


@dg.schedule(
    name="resync_previous_day",
    job=sync_orders,
    cron_schedule=get_settings().resync_cron,
    execution_timezone="UTC",
    description="Re-sync yesterday's partition once after midnight (ORDERS_ETL_RESYNC_CRON), "
    "catching updates made in its last hour.",
)
def resync_previous_day(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    when = context.scheduled_execution_time
    key = partition_of(when - timedelta(days=1))
    if key is None:
        return dg.SkipReason(f"the day before {when.isoformat()} is before the first partition")
    return dg.RunRequest(run_key=f"previous-day-{when.isoformat()}", partition_key=key)
