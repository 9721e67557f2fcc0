"""Reconciliation against the store: load both sides, compare, keep the ledger (DESIGN.md §5).

:func:`run_reconciliation` reconciles the *whole* store every time (not one window): only a
full comparison can tell that an exception seen yesterday is gone today. It writes, in one
transaction:

* ``reconciliation_exceptions``, the ledger: one row per (external_id, kind), ever. A new
  problem gets ``first_detected_at``; every run that still sees it moves
  ``last_detected_at`` and refreshes its values; a run that no longer sees it sets
  ``resolved_at``; if it comes back, ``resolved_at`` is cleared again (reopened) and
  ``first_detected_at`` keeps the history.
* ``reconciliation_summary``, replaced: the per day × currency summary of this run.

Loading streams ``source_orders`` in chunks and keeps each order in a compact form (money as
integer minor units, see :mod:`orders_etl.reconcile`), so a store of millions of orders is
reconciled in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orders_etl.model import ERP_SOURCES, Source
from orders_etl.reconcile import (
    DEFAULT_CONFIG,
    KINDS,
    MONEY_COLUMNS,
    MONEY_KINDS,
    ReconcileConfig,
    ReconcileResult,
    currency_exponents,
    reconcile,
    to_minor_units,
)
from orders_etl.store import OrderStore
from orders_etl.store.schema import (
    orders,
    reconciliation_exceptions,
    reconciliation_summary,
    source_orders,
)
from orders_etl.store.types import SQLITE_DATETIME_FORMAT, UtcDateTime, sqlite_datetime, sqlite_money

LOAD_CHUNK_SIZE = 50_000
WORST_LIMIT = 10
# Aging of open exceptions, by time since first detected: [0, 1) d, [1, 7) d, [7, 30) d, ≥ 30 d.
AGING_BUCKETS: tuple[str, ...] = ("0–1 d", "1–7 d", "7–30 d", ">30 d")
_AGING_EDGES_DAYS = (1, 7, 30)
_PG_LEDGER_LOCK = 7_310_452_008
_LEDGER_FIELDS = (
    "external_id",
    "kind",
    "currency",
    "order_created_at",
    "shopify_value",
    "erp_value",
    "difference",
)
_LOADED = (
    "source",
    "external_id",
    "currency",
    "created_at",
    "updated_at",
    "deleted_at",
    "payment_status",
    *MONEY_COLUMNS,
)


@dataclass(frozen=True)
class ReconciliationOutcome:
    """What a run found and changed; ``as_dict()`` is ready for Dagster metadata or JSON."""

    now: datetime
    counts: dict[str, int]  # open exceptions per kind after this run
    amount_at_stake: dict[str, Decimal]  # per currency (see amount_at_stake())
    open: int
    new: int
    resolved: int
    reopened: int
    matched: int
    pending_sync: int
    shopify_orders: int
    erp_orders: int
    worst: pd.DataFrame = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "computed_at": self.now.isoformat(),
            "shopify_orders": self.shopify_orders,
            "erp_orders": self.erp_orders,
            "matched": self.matched,
            "pending_sync": self.pending_sync,
            "open": self.open,
            "new": self.new,
            "resolved": self.resolved,
            "reopened": self.reopened,
            "counts": dict(self.counts),
            "amount_at_stake": {currency: str(amount) for currency, amount in self.amount_at_stake.items()},
        }

    def worst_markdown(self) -> str:
        """The worst open exceptions as a markdown table (for Dagster metadata)."""
        return markdown_table(self.worst)


# ---------------------------------------------------------------------------------------
# Loading both sides


def _raw(column: sa.Column) -> sa.ColumnElement[Any]:
    # Skip the per-row Python type processing (strptime on SQLite): the chunk is converted
    # column-wise below, which is what makes loading millions of rows affordable.
    return sa.type_coerce(column, sa.String).label(column.name)


def _utc(values: list[Any], sqlite: bool) -> pd.DatetimeIndex:
    if sqlite:  # fixed-width UTC text, see orders_etl.store.types
        return pd.DatetimeIndex(pd.to_datetime(values, format=SQLITE_DATETIME_FORMAT)).tz_localize("UTC")
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns")


def _chunk_frame(rows: list[Any], sqlite: bool) -> pd.DataFrame:
    columns = {name: list(values) for name, values in zip(_LOADED, zip(*rows, strict=True), strict=False)}
    if not rows:
        columns = {name: [] for name in _LOADED}
    currency = np.asarray(columns["currency"], dtype=object)
    exponents = currency_exponents(currency)
    frame = pd.DataFrame(
        {
            "source": np.asarray(columns["source"], dtype=object),
            "external_id": np.asarray(columns["external_id"], dtype=object),
            "currency": currency,
            "created_at": _utc(columns["created_at"], sqlite),
            "updated_at": _utc(columns["updated_at"], sqlite),
            "deleted_at": _utc(columns["deleted_at"], sqlite),
            "payment_status": np.asarray(columns["payment_status"], dtype=object),
        }
    )
    for name in MONEY_COLUMNS:
        frame[f"{name}_minor"] = to_minor_units(np.asarray(columns[name], dtype=object), exponents)
    return frame


def _chunks(store: OrderStore) -> Iterator[pd.DataFrame]:
    sources = [Source.SHOPIFY.value, *(s.value for s in ERP_SOURCES)]
    query = sa.select(*(_raw(source_orders.c[name]) for name in _LOADED)).where(
        source_orders.c.source.in_(sources)
    )
    sqlite = store.engine.dialect.name == "sqlite"
    with store.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=LOAD_CHUNK_SIZE).execute(query)
        for rows in result.partitions():
            yield _chunk_frame(rows, sqlite)


def load_sides(store: OrderStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Shopify side and the ERP side (Business Central and flat files) of source_orders."""
    sqlite = store.engine.dialect.name == "sqlite"
    shopify: list[pd.DataFrame] = [_chunk_frame([], sqlite)]
    erp: list[pd.DataFrame] = [_chunk_frame([], sqlite)]
    for chunk in _chunks(store):
        is_shopify = (chunk["source"] == Source.SHOPIFY.value).to_numpy()
        shopify.append(chunk[is_shopify])
        erp.append(chunk[~is_shopify])
    return (
        pd.concat(shopify, ignore_index=True).drop(columns="source"),
        pd.concat(erp, ignore_index=True),
    )


# ---------------------------------------------------------------------------------------
# Writing the ledger and the summary


def _create_staging(conn: Connection) -> None:
    sqlite = conn.dialect.name == "sqlite"
    when, money = ("TEXT", "TEXT") if sqlite else ("TIMESTAMPTZ", "NUMERIC")
    columns = (
        "external_id TEXT NOT NULL, kind TEXT NOT NULL, currency TEXT, "
        f"order_created_at {when}, shopify_value TEXT, erp_value TEXT, difference {money}, "
        "PRIMARY KEY (external_id, kind)"
    )
    if sqlite:
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS staging_exceptions ({columns})")
        conn.exec_driver_sql("DELETE FROM staging_exceptions")
    else:
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS staging_exceptions ({columns}) ON COMMIT DELETE ROWS"
        )


def _ledger_rows(exceptions: pd.DataFrame) -> Iterator[tuple[Any, ...]]:
    created = [None if pd.isna(t) else t.to_pydatetime() for t in exceptions["order_created_at"]]
    yield from zip(
        exceptions["external_id"],
        exceptions["kind"],
        exceptions["currency"],
        created,
        exceptions["shopify_value"],
        exceptions["erp_value"],
        exceptions["difference"],
        strict=True,
    )


def _fill_staging(conn: Connection, exceptions: pd.DataFrame) -> None:
    names = ", ".join(_LEDGER_FIELDS)
    driver = conn.connection.driver_connection
    if conn.dialect.name == "sqlite":
        rows = (
            (ext, kind, cur, sqlite_datetime(created), shop, erp, sqlite_money(diff))
            for ext, kind, cur, created, shop, erp, diff in _ledger_rows(exceptions)
        )
        driver.executemany(  # type: ignore[union-attr]
            f"INSERT INTO staging_exceptions ({names}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )
    else:
        with (
            driver.cursor() as cursor,  # type: ignore[union-attr]
            cursor.copy(f"COPY staging_exceptions ({names}) FROM STDIN") as copy,
        ):
            for row in _ledger_rows(exceptions):
                copy.write_row(row)


def _write_ledger(conn: Connection, exceptions: pd.DataFrame, now: datetime) -> tuple[int, int, int]:
    """Merge this run's exceptions into the ledger; returns (new, resolved, reopened)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LEDGER_LOCK})
    _create_staging(conn)
    _fill_staging(conn, exceptions)
    known, reopened = conn.execute(
        sa.text(
            "SELECT COUNT(*), COUNT(r.resolved_at) FROM staging_exceptions AS s "
            "JOIN reconciliation_exceptions AS r ON r.external_id = s.external_id AND r.kind = s.kind"
        )
    ).one()
    now_param = sa.bindparam("now", type_=UtcDateTime())
    refreshed = ("currency", "order_created_at", "shopify_value", "erp_value", "difference")
    # first_detected_at is only ever written on insert: a reopened problem keeps its history.
    conn.execute(
        sa.text(
            f"INSERT INTO reconciliation_exceptions ({', '.join(_LEDGER_FIELDS)}, "
            "first_detected_at, last_detected_at, resolved_at) "
            f"SELECT {', '.join(_LEDGER_FIELDS)}, :now, :now, NULL FROM staging_exceptions WHERE true "
            "ORDER BY external_id, kind "
            "ON CONFLICT (external_id, kind) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in refreshed)
            + ", last_detected_at = excluded.last_detected_at, resolved_at = NULL"
        ).bindparams(now_param),
        {"now": now},
    )
    resolved = conn.execute(
        sa.text(
            "UPDATE reconciliation_exceptions SET resolved_at = :now "
            "WHERE resolved_at IS NULL AND NOT EXISTS (SELECT 1 FROM staging_exceptions AS s "
            "WHERE s.external_id = reconciliation_exceptions.external_id "
            "AND s.kind = reconciliation_exceptions.kind)"
        ).bindparams(now_param),
        {"now": now},
    ).rowcount
    return len(exceptions) - known, resolved, reopened


def _write_summary(conn: Connection, summary: pd.DataFrame, now: datetime) -> None:
    conn.execute(sa.delete(reconciliation_summary))
    if len(summary):
        rows = [
            {**{k: (int(v) if isinstance(v, np.integer) else v) for k, v in row.items()}, "computed_at": now}
            for row in summary.to_dict("records")
        ]
        conn.execute(sa.insert(reconciliation_summary), rows)


# ---------------------------------------------------------------------------------------
# Reading the ledger back


def aging_bucket(age_days: float) -> str:
    """The aging bucket of an exception open for ``age_days`` days."""
    for edge, label in zip(_AGING_EDGES_DAYS, AGING_BUCKETS, strict=False):
        if age_days < edge:
            return label
    return AGING_BUCKETS[-1]


def open_exceptions(store: OrderStore, *, now: datetime, since: date | None = None) -> pd.DataFrame:
    """Open ledger rows with the order number, age in days and aging bucket.

    ``since`` keeps the orders created on or after that day (UTC); exceptions whose order
    has no creation time are always kept. Sorted by kind, then oldest first.
    """
    e = reconciliation_exceptions
    query = (
        sa.select(
            e.c.external_id,
            orders.c.number,
            e.c.kind,
            e.c.currency,
            e.c.order_created_at,
            e.c.shopify_value,
            e.c.erp_value,
            e.c.difference,
            e.c.first_detected_at,
            e.c.last_detected_at,
        )
        .select_from(e.outerjoin(orders, orders.c.external_id == e.c.external_id))
        .where(e.c.resolved_at.is_(None))
    )
    if since is not None:
        start = datetime(since.year, since.month, since.day, tzinfo=UTC)
        query = query.where(sa.or_(e.c.order_created_at.is_(None), e.c.order_created_at >= start))
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    columns = [c.name for c in query.selected_columns]
    frame = pd.DataFrame(rows, columns=columns).astype({"difference": object})
    ages = [(now - first).total_seconds() / 86_400 for first in frame["first_detected_at"]]
    frame["age_days"] = pd.Series(ages, dtype="float64").round(2)
    frame["aging"] = [aging_bucket(age) for age in ages]
    kind_rank = frame["kind"].map({k: i for i, k in enumerate(KINDS)})
    return (
        frame.assign(_rank=kind_rank)
        .sort_values(["_rank", "first_detected_at", "external_id"], kind="stable")
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


def worst_exceptions(frame: pd.DataFrame, limit: int = WORST_LIMIT) -> pd.DataFrame:
    """The ``limit`` worst open exceptions.

    Amounts in different currencies cannot be ranked against each other without an exchange
    rate, so each currency's largest difference comes first, then each one's second largest,
    and so on; exceptions without an amount (payment status, currency) follow, oldest first.
    """
    with_amount: dict[str, list[tuple[Decimal, float, int]]] = {}
    without_amount: list[tuple[float, int]] = []
    for row, (currency, difference, age) in enumerate(
        zip(frame["currency"], frame["difference"], frame["age_days"], strict=True)
    ):
        if difference is None or pd.isna(difference):
            without_amount.append((-age, row))
        else:
            with_amount.setdefault(currency, []).append((-abs(difference), -age, row))
    ranked: list[tuple[int, str, Decimal, float, int]] = []
    for currency, items in with_amount.items():
        ranked += [(rank, currency, *item) for rank, item in enumerate(sorted(items))]
    order = [row for *_, row in sorted(ranked)] + [row for _, row in sorted(without_amount)]
    return frame.iloc[order[:limit]].reset_index(drop=True)


def markdown_table(frame: pd.DataFrame) -> str:
    """A small DataFrame as a GitHub markdown table (no extra dependency)."""
    if frame.empty:
        return "_none_"

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
            return ""
        if isinstance(value, datetime | pd.Timestamp):
            return value.strftime("%Y-%m-%d %H:%M")
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def amount_at_stake(exceptions: pd.DataFrame) -> dict[str, Decimal]:
    """Per currency: for each order, its largest absolute money difference, summed.

    One order with a total and a tax mismatch is counted once (tax is part of the total).
    """
    money = exceptions[exceptions["kind"].isin(MONEY_KINDS) & exceptions["difference"].notna()]
    largest: dict[tuple[str, str], Decimal] = {}
    for external_id, currency, difference in zip(
        money["external_id"], money["currency"], money["difference"], strict=True
    ):
        key = (currency, external_id)
        largest[key] = max(largest.get(key, Decimal(0)), abs(difference))
    totals: dict[str, Decimal] = {}
    for (currency, _), amount in sorted(largest.items()):
        totals[currency] = totals.get(currency, Decimal(0)) + amount
    return totals


# ---------------------------------------------------------------------------------------
# The run


def run_reconciliation(
    store: OrderStore,
    *,
    now: datetime | None = None,
    config: ReconcileConfig = DEFAULT_CONFIG,
    worst_limit: int = WORST_LIMIT,
) -> ReconciliationOutcome:
    """Reconcile the whole store, update the ledger and replace the summary (one transaction)."""
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    shopify, erp = load_sides(store)
    result: ReconcileResult = reconcile(shopify, erp, now=now, config=config)
    del shopify, erp  # the compact frames are the largest thing held; free them before writing
    with store.engine.begin() as conn:
        new, resolved, reopened = _write_ledger(conn, result.exceptions, now)
        _write_summary(conn, result.summary, now)
    opened = open_exceptions(store, now=now)
    return ReconciliationOutcome(
        now=now,
        counts=result.counts,
        amount_at_stake=amount_at_stake(result.exceptions),
        open=len(result.exceptions),
        new=new,
        resolved=resolved,
        reopened=reopened,
        matched=result.matched,
        pending_sync=result.pending_sync,
        shopify_orders=result.shopify_orders,
        erp_orders=result.erp_orders,
        worst=worst_exceptions(opened, worst_limit),
    )
