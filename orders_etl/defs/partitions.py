"""Daily partitions on the day (UTC) of an order's last update at its source.

``end_offset=1`` makes today's partition exist, so the hourly schedule can re-sync the
current day while it is still filling; the start date is ``ORDERS_ETL_START_DATE``.
"""

from __future__ import annotations

import dagster as dg

from orders_etl.settings import get_settings

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=get_settings().start_date.isoformat(), timezone="UTC", end_offset=1
)
