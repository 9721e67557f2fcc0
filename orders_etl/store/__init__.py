"""The order store: one object over a SQLAlchemy engine (SQLite file or PostgreSQL).

Everything that reads or writes the store goes through :class:`OrderStore`, so assets,
the CLI and tests share one set of guarded operations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orders_etl.lists import in_lists
from orders_etl.model import OrderRecord, Reject, Source
from orders_etl.store import landing
from orders_etl.store.engine import create_store_engine, database_url_from_env, masked_url, reading
from orders_etl.store.landing import LandedInput, LandedRecord, RawRecord
from orders_etl.store.migrate import ensure_schema
from orders_etl.store.schema import ORDER_FIELDS, orders, source_orders
from orders_etl.store.upsert import DEFAULT_CHUNK_SIZE, UpsertCounts, upsert_frames, upsert_orders

__all__ = ["LandedInput", "LandedRecord", "OrderStore", "RawRecord", "UpsertCounts"]


class OrderStore:
    """The order store at ``url``; the schema is migrated to head on first use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        ensure_schema(engine)

    @classmethod
    def from_url(cls, url: str | None = None, **engine_kwargs: Any) -> OrderStore:
        return cls(create_store_engine(url or database_url_from_env(), **engine_kwargs))

    @property
    def masked_url(self) -> str:
        return masked_url(self.engine.url)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- normalized orders ------------------------------------------------------------

    def upsert(
        self,
        source: str | Source,
        records: Iterable[OrderRecord] | Iterable[Sequence[OrderRecord]],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_chunk: Callable[[int, UpsertCounts], None] | None = None,
    ) -> UpsertCounts:
        """Upsert orders (a flat iterable, chunked here) into source_orders and orders."""
        return upsert_orders(self.engine, source, in_lists(records, chunk_size), on_chunk=on_chunk)

    def upsert_chunks(
        self,
        source: str | Source,
        chunks: Iterable[Sequence[OrderRecord]],
        *,
        on_chunk: Callable[[int, UpsertCounts], None] | None = None,
    ) -> UpsertCounts:
        return upsert_orders(self.engine, source, chunks, on_chunk=on_chunk)

    def upsert_frames(
        self,
        source: str | Source,
        frames: Iterable[pd.DataFrame | pa.Table],
        *,
        on_chunk: Callable[[int, UpsertCounts], None] | None = None,
    ) -> UpsertCounts:
        """Upsert chunks given as frames of canonical text (``orders_etl.store.frames``):
        the columnar path, for inputs too large to build an OrderRecord per order."""
        return upsert_frames(self.engine, source, frames, on_chunk=on_chunk)

    def mark_deleted(self, source: str | Source, deleted: Mapping[str, datetime]) -> UpsertCounts:
        """Mark orders destroyed at the source: a new version with ``deleted_at`` set.

        The row is kept (analysts still see the order); its ``updated_at`` moves to the
        deletion time when that is later, so the usual newest-wins rule orders it against
        any other version. Keys the store has never seen are ignored.
        """
        source = Source(source).value
        if not deleted:
            return UpsertCounts()
        versions: list[OrderRecord] = []
        for record in self.source_records(source, list(deleted)):
            when = deleted[record.external_id]
            versions.append(
                record.model_copy(update={"deleted_at": when, "updated_at": max(record.updated_at, when)})
            )
        return self.upsert(source, versions)

    def source_records(self, source: str | Source, external_ids: Sequence[str]) -> list[OrderRecord]:
        source = Source(source).value
        columns = [source_orders.c.external_id, *(source_orders.c[f] for f in ORDER_FIELDS)]
        found: list[OrderRecord] = []
        with reading(self.engine).connect() as conn:
            for start in range(0, len(external_ids), 500):
                batch = external_ids[start : start + 500]
                rows = conn.execute(
                    sa.select(*columns).where(
                        source_orders.c.source == source, source_orders.c.external_id.in_(batch)
                    )
                )
                found.extend(OrderRecord.model_validate(dict(row._mapping)) for row in rows)
        return found

    def shopify_ids_by_name(self, names: Iterable[str]) -> dict[str, str]:
        """Shopify ``name`` (e.g. ``#1001``) -> numeric ``external_id``, for names the store knows."""
        # A name no store can hold (NUL, lone surrogate) names no stored order; querying with
        # it would fail (PostgreSQL refuses NUL, neither driver encodes a surrogate).
        wanted = sorted(name for name in set(names) if landing.storable_text(name) == name)
        if not wanted:
            return {}
        query, bound = names_query(self.engine.dialect.name, wanted)
        with reading(self.engine).connect() as conn:
            rows = conn.execute(query, {"source": Source.SHOPIFY.value, "names": bound})
            return {number: external_id for number, external_id in rows}

    # -- raw landing, rejects, cursors --------------------------------------------------

    def land_raw(
        self,
        source: str | Source,
        records: Iterable[RawRecord],
        *,
        run_id: str | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> int:
        return landing.land_raw(self.engine, Source(source).value, records, run_id=run_id, on_chunk=on_chunk)

    def land_rows(
        self,
        source: str | Source,
        rows: Iterable[landing.LandingRow],
        *,
        run_id: str | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> int:
        """:meth:`land_raw` of records already made rows (``landing.landing_row``)."""
        return landing.land_rows(self.engine, Source(source).value, rows, run_id=run_id, on_chunk=on_chunk)

    def count_landed(self, source: str | Source) -> int:
        """How many payloads ``source`` has in ``raw_orders``."""
        return landing.count_landed(self.engine, Source(source).value)

    def landed_whole(
        self, source: str | Source, fingerprint: str, start: datetime | None, end: datetime | None
    ) -> LandedInput | None:
        return landing.landed_whole(self.engine, Source(source).value, fingerprint, start, end)

    def landed_any(self, source: str | Source, start: datetime | None, end: datetime | None) -> bool:
        """Whether a run landed any input of ``source`` whole over a window holding this one."""
        return landing.landed_whole(self.engine, Source(source).value, None, start, end) is not None

    def remember_landed(
        self,
        source: str | Source,
        fingerprint: str,
        start: datetime | None,
        end: datetime | None,
        records: int,
        *,
        run_id: str | None = None,
    ) -> None:
        landing.remember_landed(
            self.engine, Source(source).value, fingerprint, start, end, records, run_id=run_id
        )

    def iter_raw(
        self,
        source: str | Source,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        pending: bool = False,
    ) -> Iterator[list[LandedRecord]]:
        return landing.iter_raw(self.engine, Source(source).value, start, end, pending=pending)

    def queue_again(
        self,
        source: str | Source,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        provisional_only: bool = False,
    ) -> int:
        return landing.queue_again(
            self.engine, Source(source).value, start, end, provisional_only=provisional_only
        )

    def forget_pending(self, source: str | Source, raw_ids: Sequence[int]) -> None:
        landing.forget_pending(self.engine, Source(source).value, raw_ids)

    def record_rejects(self, rejects: Iterable[Reject], *, run_id: str | None = None) -> int:
        return landing.record_rejects(self.engine, rejects, run_id=run_id)

    def high_water_mark(self, source: str | Source) -> datetime | None:
        return landing.high_water_mark(self.engine, Source(source).value)

    def advance_high_water_mark(
        self, source: str | Source, mark: datetime, *, run_id: str | None = None
    ) -> datetime:
        return landing.advance_high_water_mark(self.engine, Source(source).value, mark, run_id=run_id)

    # -- reading ------------------------------------------------------------------------

    def read_table(self, table: str | sa.Table, where: sa.ColumnElement[bool] | None = None) -> pd.DataFrame:
        """A whole table (or a filtered part) as a DataFrame with exact Decimal money."""
        table = orders.metadata.tables[table] if isinstance(table, str) else table
        query = sa.select(table)
        if where is not None:
            query = query.where(where)
        with reading(self.engine).connect() as conn:
            rows = conn.execute(query).all()
        return pd.DataFrame(rows, columns=[c.name for c in table.columns])

    def count(self, table: str) -> int:
        with reading(self.engine).connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()


def names_query(dialect: str, names: list[str]) -> tuple[sa.TextClause, object]:
    """Shopify orders by name, all the names in one parameter, one query: a query per few
    hundred names cost more than the lookups. Each dialect gets the form that is one index
    probe per name whatever the planner believes. SQLite: IN a JSON array (as a join it
    scanned every Shopify order per name: minutes at 100,000 orders). PostgreSQL: a LATERAL
    probe per name, fenced by OFFSET 0 (as a join, with statistics lagging a bulk load, it
    was merge-joined against every Shopify order, or looped over them: 1-4 s a call)."""
    if dialect == "postgresql":
        return sa.text(
            "SELECT so.number, so.external_id FROM unnest(CAST(:names AS text[])) AS n(name) "
            "CROSS JOIN LATERAL (SELECT number, external_id FROM source_orders "
            "WHERE source = :source AND number = n.name OFFSET 0) AS so"
        ), names
    return sa.text(
        "SELECT number, external_id FROM source_orders "
        "WHERE source = :source AND number IN (SELECT value FROM json_each(:names))"
    ), json.dumps(names)
