"""Dagster's PostgreSQL event log, with a pool slot that two runs cannot both take.

dagster.yaml.example names this class as the instance's event log storage. Dagster 1.13 claims
a pool slot by selecting a free slot row ``FOR UPDATE SKIP LOCKED`` and then updating it by id,
as two statements on an autocommit connection: the row lock ends with the select, and two runs
claiming together both select the same free slot and both update it. Both steps then run, and
a pool of one lets two clients at an API. Three runs of the scaling-out test starting at once
met it; four claimers of a pool of one, all at one moment, met it in 28 rounds of 100, and
``orders_etl_tests/test_instance_storage.py`` fails on Dagster's own claim.

The claim below takes the slot only while it is still free, in the update itself, so the
slot row is the semaphore Dagster means it to be: a step that loses the race is told BLOCKED
and tries again later, as it does when the pool is full.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from dagster._core.storage.event_log.schema import ConcurrencySlotsTable
from dagster._serdes import ConfigurableClassData
from dagster._utils.concurrency import ConcurrencySlotStatus
from dagster_postgres.event_log import PostgresEventLogStorage as DagsterPostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config


class PostgresEventLogStorage(DagsterPostgresEventLogStorage):
    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresEventLogStorage:
        # dagster-postgres builds its own class here, whichever class dagster.yaml names.
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def _claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str
    ) -> ConcurrencySlotStatus:
        slots = ConcurrencySlotsTable.c
        free_slot = (
            sa.select(slots.id)
            .where(
                slots.concurrency_key == concurrency_key, slots.step_key.is_(None), slots.deleted.is_(False)
            )
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        # One statement: the subquery's row lock holds until the update has written the claim,
        # and a row another run claimed meanwhile no longer matches `step_key IS NULL`.
        claim = (
            ConcurrencySlotsTable.update()
            .where(slots.id == free_slot)
            .values(run_id=run_id, step_key=step_key)
        )
        with self.index_connection() as conn:
            claimed = conn.execute(claim).rowcount
        return ConcurrencySlotStatus.CLAIMED if claimed else ConcurrencySlotStatus.BLOCKED
