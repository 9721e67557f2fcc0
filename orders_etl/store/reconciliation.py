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

Both sides are streamed from ``source_orders`` a range of ``external_id`` at a time and
compared range by range (:class:`orders_etl.reconcile.Reconciler`); each range's exceptions
go to a staging table, merged into the ledger set-based at the end. Memory stays flat
whatever the number of orders.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orders_etl.model import ERP_SOURCES, Source
from orders_etl.reconcile import (
    DEFAULT_CONFIG,
    KINDS,
    MONEY_COLUMNS,
    MONEY_KINDS,
    ReconcileConfig,
    Reconciler,
    currency_exponents,
    to_minor_units,
)
from orders_etl.store import OrderStore
from orders_etl.store.engine import reading
from orders_etl.store.schema import orders, reconciliation_exceptions, reconciliation_summary
from orders_etl.store.types import SQLITE_DATETIME_FORMAT, UtcDateTime, sqlite_money

# source_orders rows per chunk (both sides): a chunk's frames take some 30 MB.
LOAD_CHUNK_ROWS = 100_000
WORST_LIMIT = 10
# Aging of open exceptions, by time since first detected: [0, 1) d, [1, 7) d, [7, 30) d, ≥ 30 d.
AGING_BUCKETS: tuple[str, ...] = ("0–1 d", "1–7 d", "7–30 d", ">30 d")
_AGING_EDGES_DAYS = (1, 7, 30)
_PG_LEDGER_LOCK = 7_310_452_008
_CANONICAL_TIME = "YYYY-MM-DD HH24:MI:SS.US"  # PostgreSQL's spelling of SQLITE_DATETIME_FORMAT
_LEAN_PAGE_CACHE = -8192  # KiB (SQLite's unit for a negative cache_size): 8 MiB
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
    worst: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # set after the commit

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
# Loading both sides, a key range at a time


_ERP_SOURCES = [s.value for s in ERP_SOURCES]
# What is read per order, in this order. updated_at only where created_at is missing (its one
# use: the day of an order without creation time); deleted_at only matters for being set.
_TEXT_COLUMNS = ("external_id", "currency", "payment_status")
_TIME_COLUMNS = ("created_at", "updated_at", "deleted_at")
_COLUMNS = ("external_id", "currency", *_TIME_COLUMNS, "payment_status", *MONEY_COLUMNS)


def _csv_options(dialect: str) -> dict[str, Any]:
    """How Arrow reads the lines the database renders (see _select_sql): every text between
    single quotes (doubled inside), so any external_id survives, and NULL bare, so the text
    'NULL' stays text. Times: SQLite's canonical UTC text, or PostgreSQL's own with +00."""
    time = pa.timestamp("us") if dialect == "sqlite" else pa.timestamp("us", tz="UTC")
    types = dict.fromkeys(_TIME_COLUMNS, time)
    return {
        "read_options": pa_csv.ReadOptions(column_names=list(_COLUMNS)),
        "parse_options": pa_csv.ParseOptions(quote_char="'", newlines_in_values=True),
        "convert_options": pa_csv.ConvertOptions(
            column_types={name: types.get(name, pa.string()) for name in _COLUMNS},
            null_values=["NULL"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    }


def _select_sql(dialect: str) -> str:
    """The query rendering one source's (``source``) rows of one key range (``{where}``) as
    CSV lines.

    Text, because building a Python object per value is what costs most at millions of
    orders: the database writes the lines in C and Arrow parses them in C++. Amounts come as
    decimal text; times as SQLite's canonical UTC text, or as PostgreSQL writes them in UTC
    (the reader's transaction sets TimeZone and DateStyle; to_char would cost a third more).
    """
    when = "CASE WHEN created_at IS NULL THEN updated_at END"
    values = ", ".join(["external_id", "currency", "created_at", when, "deleted_at", "payment_status"])
    values += ", " + ", ".join(MONEY_COLUMNS)
    if dialect == "sqlite":
        # printf's %Q quotes text as SQL does ('it''s') and writes NULL bare. All lines come as
        # one value: the driver builds one bytes object instead of one object per value.
        line = f"printf('{','.join(['%Q'] * len(_COLUMNS))}', {values})"
        return (
            f"SELECT CAST(group_concat({line}, char(10)) AS BLOB) FROM source_orders "
            "WHERE source = :source AND {where}"
        )
    select = f"SELECT {values} FROM source_orders WHERE source = %(source)s AND {{where}}"
    quoted = ", ".join(_TEXT_COLUMNS)  # numbers and times never hold a quote, nor spell NULL
    return f"COPY ({select}) TO STDOUT WITH (FORMAT csv, QUOTE '''', NULL 'NULL', FORCE_QUOTE ({quoted}))"


_INT64_DIGITS = 18  # decimal digits that always fit in int64


def _minor_units(texts: pa.Array, exponents: np.ndarray) -> pd.arrays.IntegerArray:
    """Decimal texts as integers of their currency's minor unit, exactly (null stays null).

    An amount spelled as the store writes it (digits, and a point before as many decimals
    as its currency has) is converted column-wise: its digits are its minor units. Any
    other spelling (other decimals, exponent notation, a sign) goes through Decimal, and is
    refused if it cannot be held exactly, by :func:`~orders_etl.reconcile.to_minor_units`.
    """
    absent = texts.is_null().to_numpy(zero_copy_only=False)
    digits = pc.replace_substring(texts, ".", "", max_replacements=1)
    point = pc.fill_null(pc.find_substring(texts, "."), -1).to_numpy()
    length = pc.fill_null(pc.binary_length(texts), 0).to_numpy()
    decimals = np.where(point < 0, 0, length - point - 1)
    fast = (
        pc.fill_null(pc.ascii_is_decimal(digits), False).to_numpy(zero_copy_only=False)
        & (length - (point >= 0) <= _INT64_DIGITS)
        & (decimals == exponents)
    )
    units = np.zeros(len(texts), dtype=np.int64)
    units[fast] = pc.cast(digits.filter(pa.array(fast)), pa.int64()).to_numpy()
    slow = ~absent & ~fast
    if slow.any():
        amounts = texts.filter(pa.array(slow)).to_pylist()
        units[slow] = to_minor_units(amounts, exponents[slow]).to_numpy(dtype=np.int64)
    return pd.arrays.IntegerArray(units, absent)


def _exponents(currency: pa.Array) -> np.ndarray:
    """Each row's currency exponent (ValueError for an unknown or missing currency)."""
    if currency.null_count:
        raise ValueError("currency is missing on some rows")
    encoded = currency.dictionary_encode()
    return currency_exponents(encoded.dictionary.to_numpy(zero_copy_only=False))[encoded.indices.to_numpy()]


def _utc(times: pa.ChunkedArray) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(times.to_pandas())
    return index.tz_localize("UTC") if index.tz is None else index


def _frame(table: pa.Table) -> pd.DataFrame:
    """Parsed lines of one side as the frame ``reconcile`` takes (money as ``<name>_minor``)."""
    exponents = _exponents(table["currency"].combine_chunks())
    return pd.DataFrame(
        {
            "external_id": table["external_id"].to_pandas(),
            "currency": table["currency"].to_pandas(),
            **{name: _utc(table[name]) for name in _TIME_COLUMNS},
            "payment_status": table["payment_status"].to_pandas(),
            **{
                f"{name}_minor": _minor_units(table[name].combine_chunks(), exponents)
                for name in MONEY_COLUMNS
            },
        }
    )


@contextmanager
def _lean_page_cache(conn: Connection) -> Iterator[None]:
    """On SQLite, a small page cache on ``conn`` for the duration.

    The store's connections keep a large page cache (see :mod:`orders_etl.store.engine`),
    which the upsert gains from. Reconciliation reads each page about once: there a large
    cache only holds memory, as much as the store is large, up to that size.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    size = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size = {_LEAN_PAGE_CACHE}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(size)}")


class _ChunkReader:
    """Reads source_orders a key range of about ``chunk_rows`` rows at a time, all in one
    snapshot of the store: one read transaction, on a connection of its own.

    Ranges split on ``external_id``, so every record of an order, on either side, falls in
    the same chunk, as :class:`~orders_etl.reconcile.Reconciler` requires. Each range's end
    is looked up in the ``external_id`` index just before the range is read.
    """

    def __init__(self, store: OrderStore, chunk_rows: int) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.engine = store.engine
        self.chunk_rows = chunk_rows
        self.select = _select_sql(self.engine.dialect.name)
        self.csv_options = _csv_options(self.engine.dialect.name)
        self.conn: Connection | None = None
        self.stack = ExitStack()  # closes what open() opened, in reverse
        self.low: str | None = None  # where the next range starts (None: at the first key)
        self.done = False

    def open(self) -> None:
        if self.engine.dialect.name == "sqlite":  # deferred: a snapshot, and no write lock
            conn = reading(self.engine).connect()
        else:
            conn = self.engine.connect().execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        self.conn = self.stack.enter_context(conn)
        self.stack.enter_context(conn.begin())
        self.stack.enter_context(_lean_page_cache(conn))
        if self.engine.dialect.name == "postgresql":  # times as 2026-10-03 08:15:00.5+00
            conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
            conn.exec_driver_sql("SET LOCAL DateStyle = 'ISO, YMD'")

    def close(self) -> None:
        self.stack.close()

    def next(self) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """The next chunk, as Shopify and ERP frames; None once every range was read."""
        if self.done or self.conn is None:
            return None
        after = "" if self.low is None else "WHERE external_id > :low "
        high = self.conn.execute(
            sa.text(f"SELECT external_id FROM source_orders {after}ORDER BY external_id LIMIT 1 OFFSET :n"),
            {"low": self.low, "n": self.chunk_rows},
        ).scalar()
        # One source at a time: its rows of the range lie together in the primary key's order,
        # which SQLite reads a fifth faster than the mix of all sources.
        sides = {
            source: self._read(source, self.low, high) for source in (Source.SHOPIFY.value, *_ERP_SOURCES)
        }
        self.low, self.done = high, high is None
        erp = pd.concat([sides[source].assign(source=source) for source in _ERP_SOURCES], ignore_index=True)
        return sides[Source.SHOPIFY.value], erp

    def _read(self, source: str, low: str | None, high: str | None) -> pd.DataFrame:
        """The rows of ``source`` with ``low <= external_id < high`` (None: unbounded)."""
        assert self.conn is not None
        bounds = {"low": low, "high": high}
        sqlite = self.engine.dialect.name == "sqlite"
        where = " AND ".join(
            f"external_id {op} {':' + name if sqlite else f'%({name})s'}"
            for name, op in (("low", ">="), ("high", "<"))
            if bounds[name] is not None
        )
        select = self.select.format(where=where or "true")
        params = {"source": source, **{name: value for name, value in bounds.items() if value is not None}}
        if sqlite:
            lines = self.conn.execute(sa.text(select), params).scalar()
        else:
            buffer = bytearray()
            driver = self.conn.connection.driver_connection
            with driver.cursor() as cursor, cursor.copy(select, params) as copy:  # type: ignore[union-attr]
                for block in copy:
                    buffer += block
            lines = bytes(buffer)
        # No line at all: one empty line, which Arrow reads as no row.
        return _frame(pa_csv.read_csv(io.BytesIO(lines or b"\n"), **self.csv_options))


def _chunks(store: OrderStore, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Both sides of source_orders, chunk by chunk (see :class:`_ChunkReader`).

    The chunks are read on a worker thread, one ahead: the database's and Arrow's work,
    which release the GIL, overlap the comparison of the chunk before on the caller's thread.
    The reader's connection lives and dies on that one thread.
    """
    reader = _ChunkReader(store, chunk_rows)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="orders-etl-reconcile") as worker:
        try:
            worker.submit(reader.open).result()
            upcoming = worker.submit(reader.next)
            while (chunk := upcoming.result()) is not None:
                upcoming = worker.submit(reader.next)
                yield chunk
        finally:
            worker.submit(reader.close).result()


def load_sides(store: OrderStore, *, chunk_rows: int = LOAD_CHUNK_ROWS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole Shopify side and ERP side of source_orders, in memory (tests, small stores)."""
    shopify, erp = zip(*_chunks(store, chunk_rows), strict=True)
    return pd.concat(shopify, ignore_index=True), pd.concat(erp, ignore_index=True)


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


def _fill_staging(conn: Connection, exceptions: pd.DataFrame) -> None:
    """Add one chunk's exceptions to staging_exceptions."""
    if exceptions.empty:
        return
    names = ", ".join(_LEDGER_FIELDS)
    driver = conn.connection.driver_connection
    created = exceptions["order_created_at"]
    if conn.dialect.name == "sqlite":
        texts = created.dt.strftime(SQLITE_DATETIME_FORMAT).astype(object).where(created.notna(), None)
        differences = [sqlite_money(d) for d in exceptions["difference"]]
    else:
        texts = [None if pd.isna(t) else t.to_pydatetime() for t in created]
        differences = exceptions["difference"]
    rows = zip(
        exceptions["external_id"],
        exceptions["kind"],
        exceptions["currency"],
        texts,
        exceptions["shopify_value"],
        exceptions["erp_value"],
        differences,
        strict=True,
    )
    if conn.dialect.name == "sqlite":
        driver.executemany(  # type: ignore[union-attr]
            f"INSERT INTO staging_exceptions ({names}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )
    else:
        with (
            driver.cursor() as cursor,  # type: ignore[union-attr]
            cursor.copy(f"COPY staging_exceptions ({names}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)


def _merge_ledger(conn: Connection, staged: int, now: datetime) -> tuple[int, int, int]:
    """Merge this run's exceptions (the ``staged`` rows of staging_exceptions) into the
    ledger, set-based; returns (new, resolved, reopened)."""
    if conn.dialect.name == "postgresql":
        # A temporary table has no statistics until analyzed: without them the planner
        # guesses its size and may pick a nested loop over the whole ledger.
        conn.exec_driver_sql("ANALYZE staging_exceptions")
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
    return staged - known, resolved, reopened


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


_TIMES = ("order_created_at", "first_detected_at", "last_detected_at")


def _time_text(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """A time column as the store's canonical UTC text: what SQLite holds, and what
    PostgreSQL is asked to write (whatever the session's TimeZone and DateStyle)."""
    if dialect == "sqlite":
        return sa.type_coerce(column, sa.Text())
    return sa.func.to_char(sa.func.timezone("UTC", column), _CANONICAL_TIME)


def open_longer_than(store: OrderStore, *, now: datetime, max_age: timedelta) -> tuple[int, float]:
    """How many exceptions are open since longer than ``max_age``, and the oldest one's age
    in days (0 when none): counted by the database, not read row by row."""
    e = reconciliation_exceptions
    query = sa.select(sa.func.count(), sa.func.min(e.c.first_detected_at)).where(
        e.c.resolved_at.is_(None), e.c.first_detected_at < now - max_age
    )
    with reading(store.engine).connect() as conn:
        count, oldest = conn.execute(query).one()
    return count, (now - oldest).total_seconds() / 86_400 if count else 0.0


def open_exceptions(store: OrderStore, *, now: datetime, since: date | None = None) -> pd.DataFrame:
    """Open ledger rows with the order number, age in days and aging bucket.

    ``since`` keeps the orders created on or after that day (UTC); exceptions whose order
    has no creation time are always kept. Sorted by kind, then oldest first.
    """
    e = reconciliation_exceptions
    if since is None:
        return _open_exceptions(store, now)
    start = datetime(since.year, since.month, since.day, tzinfo=UTC)
    return _open_exceptions(store, now, sa.or_(e.c.order_created_at.is_(None), e.c.order_created_at >= start))


def _open_exceptions(store: OrderStore, now: datetime, *where: sa.ColumnElement[bool]) -> pd.DataFrame:
    """open_exceptions(), of the open ledger rows that also meet ``where``."""
    e = reconciliation_exceptions
    # Times are read as text and parsed column-wise below: a datetime object per value costs
    # seconds at tens of thousands of open exceptions.
    dialect = store.engine.dialect.name
    raw = {name: _time_text(e.c[name], dialect).label(name) for name in _TIMES}
    query = (
        sa.select(
            e.c.external_id,
            orders.c.number,
            e.c.kind,
            e.c.currency,
            raw["order_created_at"],
            e.c.shopify_value,
            e.c.erp_value,
            e.c.difference,
            raw["first_detected_at"],
            raw["last_detected_at"],
        )
        .select_from(e.outerjoin(orders, orders.c.external_id == e.c.external_id))
        .where(e.c.resolved_at.is_(None), *where)
    )
    with store.engine.connect() as conn, _lean_page_cache(conn):
        rows = conn.execute(query).all()
    columns = [c.name for c in query.selected_columns]
    # Plain tuples: pandas probes each Row for attributes, which costs more than the query.
    frame = pd.DataFrame(list(map(tuple, rows)), columns=columns).astype({"difference": object})
    for name in _TIMES:
        utc = pd.to_datetime(frame[name].astype(object), format=SQLITE_DATETIME_FORMAT)
        frame[name] = utc.dt.tz_localize("UTC").dt.as_unit("us")
    # Whole microseconds over 10**6, as timedelta.total_seconds() computes them: the same floats.
    microseconds = (pd.Timestamp(now).as_unit("us") - frame["first_detected_at"]).to_numpy().astype(np.int64)
    ages = microseconds / 10**6 / 86_400
    frame["age_days"] = pd.Series(ages, dtype="float64").round(2)
    frame["aging"] = np.asarray(AGING_BUCKETS, dtype=object)[
        np.searchsorted(_AGING_EDGES_DAYS, ages, side="right")
    ]
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


def _worst_open_exceptions(store: OrderStore, now: datetime, limit: int) -> pd.DataFrame:
    """``worst_exceptions(open_exceptions(store, now=now), limit)``, without reading every
    open exception: only those that can be among the worst are read.

    In worst_exceptions' order, the rows of one currency and kind come largest difference
    first, then oldest first, then by external_id (age only ever breaks ties the same way
    as first_detected_at). So whatever makes the first ``limit`` rows is among the first
    ``limit`` of its currency and kind in that order, which the database finds.
    """
    if store.engine.dialect.name == "sqlite":
        # Text: the ledger writes each difference at its currency's exponent, where the
        # longer magnitude is the larger and equal lengths compare as text.
        magnitude = "ltrim(difference, '-')"
        largest_first = f"length({magnitude}) DESC, {magnitude} DESC"
    else:
        largest_first = "abs(difference) DESC"
    ranked = (
        "SELECT external_id, kind, ROW_NUMBER() OVER (PARTITION BY currency, kind, difference IS NULL "
        f"ORDER BY {largest_first}, first_detected_at, external_id) AS place "
        "FROM reconciliation_exceptions WHERE resolved_at IS NULL"
    )
    candidates = sa.text(f"SELECT external_id, kind FROM ({ranked}) AS ranked WHERE place <= :limit")
    candidates = candidates.bindparams(limit=limit).columns(external_id=sa.Text(), kind=sa.Text())
    e = reconciliation_exceptions
    frame = _open_exceptions(store, now, sa.tuple_(e.c.external_id, e.c.kind).in_(candidates))
    return worst_exceptions(frame, limit)


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
    chunk_rows: int = LOAD_CHUNK_ROWS,
) -> ReconciliationOutcome:
    """Reconcile the whole store, update the ledger and replace the summary (one transaction).

    Both sides are streamed in chunks of about ``chunk_rows`` source_orders rows, split on
    ``external_id`` (see :class:`_ChunkReader`): memory stays flat whatever the store's size.
    Each chunk's exceptions go to a staging table; the ledger is merged from it at the end.
    """
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    # The write lock (SQLite) or the ledger's advisory lock (PostgreSQL) is taken before
    # anything is read: two runs at once reconcile one after the other, the later one from a
    # state that includes the earlier one's ledger and every upsert committed before it, so
    # the last ledger written is never based on an older read.
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LEDGER_LOCK})
        outcome = _reconcile_locked(store, conn, now, config, chunk_rows)
    return dataclasses.replace(outcome, worst=_worst_open_exceptions(store, now, worst_limit))


def _reconcile_locked(
    store: OrderStore, conn: Connection, now: datetime, config: ReconcileConfig, chunk_rows: int
) -> ReconciliationOutcome:
    run = Reconciler(now=now, config=config)
    at_stake: dict[str, Decimal] = {}
    staged = 0
    with _lean_page_cache(conn), closing(_chunks(store, chunk_rows)) as chunks:
        _create_staging(conn)
        for shopify, erp in chunks:
            exceptions = run.add(shopify, erp).exceptions
            _fill_staging(conn, exceptions)
            staged += len(exceptions)
            # An order's exceptions are all in one chunk, so its largest difference is too.
            for currency, amount in amount_at_stake(exceptions).items():
                at_stake[currency] = at_stake.get(currency, Decimal(0)) + amount
        new, resolved, reopened = _merge_ledger(conn, staged, now)
        _write_summary(conn, run.summary(), now)
    return ReconciliationOutcome(
        now=now,
        counts=dict(run.counts),
        amount_at_stake=dict(sorted(at_stake.items())),
        open=staged,
        new=new,
        resolved=resolved,
        reopened=reopened,
        matched=run.matched,
        pending_sync=run.pending_sync,
        shopify_orders=run.shopify_orders,
        erp_orders=run.erp_orders,
    )
