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

from collections.abc import Iterator, Sequence
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


_ERP_SOURCES = [s.value for s in ERP_SOURCES]
_SOURCE_NAMES = np.array([Source.SHOPIFY.value, *_ERP_SOURCES, None], dtype=object)
# What is read per order. The source comes as a small integer (index into _SOURCE_NAMES, -1 for
# any other) and updated_at only where created_at is missing (its one use: the day fallback),
# which spares the driver millions of string objects.
_FIELDS = {
    "source": "CASE source "
    + " ".join(f"WHEN '{name}' THEN {i}" for i, name in enumerate(_SOURCE_NAMES[:-1]))
    + " ELSE -1 END",
    "external_id": "external_id",
    "currency": "currency",
    "created_at": "created_at",
    "updated_at": "CASE WHEN created_at IS NULL THEN updated_at END",
    "deleted_at": "deleted_at",
    "payment_status": "payment_status",
}


# Marks an amount the fast path cannot take (outside any valid amount's minor units).
_EXACT_PATH = -(2**62) - 1


def _money_sql(column: str, dialect: str) -> str:
    """Two SQL columns for one amount, computed by the database: its digits and its scale.

    The amount is ``digits × 10^-scale``. The store writes every amount at its currency's
    exponent, so the digits are its minor units and Python builds no Decimal per row.
    Anything unusual (exponent notation, too many digits) gives ``_EXACT_PATH`` as digits,
    and such an amount, like one whose scale is not its currency's exponent, is read again
    as Decimal and converted exactly.
    """
    if dialect == "sqlite":  # exact decimal text, e.g. '-12.30'
        odd = f"{column} GLOB '*[^0-9.-]*' OR {column} GLOB '?*-*' OR LENGTH({column}) > 18"
        digits = f"CAST(REPLACE({column}, '.', '') AS INTEGER)"
        scale = f"CASE WHEN INSTR({column}, '.') = 0 THEN 0 ELSE LENGTH({column}) - INSTR({column}, '.') END"
    else:  # NUMERIC keeps the scale it was given
        odd = f"scale({column}) > 4 OR abs({column}) >= 1e14"
        digits = f"({column} * power(10::numeric, scale({column})))::bigint"
        scale = f"scale({column})"
    return f"CASE WHEN {odd} THEN {_EXACT_PATH} ELSE {digits} END, {scale}"


def _load_sql(dialect: str) -> str:
    money = ", ".join(_money_sql(name, dialect) for name in MONEY_COLUMNS)
    # A full scan in table order: filtering on source here would make SQLite walk the
    # primary-key index instead; other sources (none today) are dropped in load_sides.
    return f"SELECT {', '.join(_FIELDS.values())}, {money} FROM source_orders"


def _utc(values: Sequence[Any], sqlite: bool) -> pd.DatetimeIndex:
    if sqlite:  # fixed-width UTC text, see orders_etl.store.types
        return pd.DatetimeIndex(pd.to_datetime(list(values), format=SQLITE_DATETIME_FORMAT)).tz_localize(
            "UTC"
        )
    return pd.DatetimeIndex(pd.to_datetime(list(values), utc=True)).as_unit("ns")


def _exact_units(
    store: OrderStore, keys: list[tuple[str, str]], name: str, exponents: np.ndarray
) -> np.ndarray:
    """Minor units of amounts outside the fast path, read as Decimal and converted exactly."""
    amounts = []
    with store.engine.connect() as conn:
        for source, external_id in keys:
            amounts.append(
                conn.execute(
                    sa.select(source_orders.c[name]).where(
                        source_orders.c.source == source, source_orders.c.external_id == external_id
                    )
                ).scalar_one()
            )
    return to_minor_units(amounts, exponents).to_numpy(dtype=np.int64)


def _chunk_frame(store: OrderStore, rows: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
    sqlite = store.engine.dialect.name == "sqlite"
    width = len(_FIELDS) + 2 * len(MONEY_COLUMNS)
    columns = list(zip(*rows, strict=True)) if rows else [()] * width
    fields = dict(zip(_FIELDS, columns, strict=False))
    currency = np.asarray(fields["currency"], dtype=object)
    exponents = currency_exponents(currency)
    frame = pd.DataFrame(
        {
            "source": _SOURCE_NAMES[np.asarray(fields["source"], dtype=np.int64)],
            "external_id": np.asarray(fields["external_id"], dtype=object),
            "currency": currency,
            "created_at": _utc(fields["created_at"], sqlite),
            "updated_at": _utc(fields["updated_at"], sqlite),
            "deleted_at": _utc(fields["deleted_at"], sqlite),
            "payment_status": np.asarray(fields["payment_status"], dtype=object),
        }
    )
    for k, name in enumerate(MONEY_COLUMNS):
        digits = pd.array(columns[len(_FIELDS) + 2 * k], dtype="Int64")
        scale = pd.array(columns[len(_FIELDS) + 2 * k + 1], dtype="Int64")
        absent = np.asarray(scale.isna(), dtype=bool)
        units = digits.to_numpy(dtype=np.int64, na_value=0)
        odd = (units == _EXACT_PATH) | (scale.to_numpy(dtype=np.int64, na_value=-1) != exponents)
        slow = np.flatnonzero(~absent & odd)
        if len(slow):
            keys = list(
                zip(frame["source"].to_numpy()[slow], frame["external_id"].to_numpy()[slow], strict=True)
            )
            units[slow] = _exact_units(store, keys, name, exponents[slow])
        frame[f"{name}_minor"] = pd.arrays.IntegerArray(np.where(absent, 0, units), absent)
    return frame


def _chunks(store: OrderStore) -> Iterator[pd.DataFrame]:
    """source_orders of both sides, streamed in chunks straight from the driver's cursor."""
    dialect = store.engine.dialect.name
    with store.engine.connect() as conn:
        driver = conn.connection.driver_connection
        if dialect == "sqlite":
            cursor = driver.cursor()  # type: ignore[union-attr]
        else:  # a server-side cursor: PostgreSQL sends the rows as they are fetched
            cursor = driver.cursor(name="orders_etl_reconciliation_load")  # type: ignore[union-attr]
        try:
            cursor.execute(_load_sql(dialect))
            while rows := cursor.fetchmany(LOAD_CHUNK_SIZE):
                yield _chunk_frame(store, rows)
        finally:
            cursor.close()


def load_sides(store: OrderStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Shopify side and the ERP side (Business Central and flat files) of source_orders."""
    shopify: list[pd.DataFrame] = [_chunk_frame(store, [])]
    erp: list[pd.DataFrame] = [_chunk_frame(store, [])]
    for chunk in _chunks(store):
        source = chunk["source"].to_numpy(dtype=object)
        shopify.append(chunk[source == Source.SHOPIFY.value])
        erp.append(chunk[np.isin(source, _ERP_SOURCES)])
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
