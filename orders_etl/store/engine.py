"""Engines for the order store: SQLite tuned for concurrent writers, PostgreSQL via psycopg 3.

SQLite notes (why each setting):
* WAL lets analysts read while a sync writes; ``busy_timeout`` makes a second writer wait
  for the lock instead of failing with "database is locked".
* Every transaction starts with ``BEGIN IMMEDIATE``: a writer takes the write lock before
  it reads what it is about to overwrite, so two syncs cannot interleave a read-compare-
  write and lose an update (pysqlite's default deferred BEGIN would let them). Pure reads
  go through :func:`reading`, whose deferred transactions take no write lock: a process
  streaming rows out of the store can write to it at the same time.
* A thread of the process checkpoints the WAL after writing commits, off the writer's path
  (``checkpoints.py``).
* ``decimal_sum(x)`` sums money text exactly (SQLite's own SUM goes through float).
"""

from __future__ import annotations

import os
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import Pool

from orders_etl.store.checkpoints import WalCheckpointer

DEFAULT_DATABASE_URL = "sqlite:///data/orders.db"
SQLITE_BUSY_TIMEOUT_MS = 120_000


def database_url_from_env() -> str:
    return os.environ.get("ORDERS_ETL_DATABASE_URL") or DEFAULT_DATABASE_URL


def masked_url(url: str | sa.URL) -> str:
    """The URL with its password replaced by ``***``: the only form that may be logged."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL may still hold a secret: show nothing of it
        return "<unparsable database URL>"


class _DecimalSum:
    """SQLite aggregate: exact sum of decimal text (NULLs ignored, like SUM)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        if value is None:
            return
        amount = Decimal(str(value))
        self.total = amount if self.total is None else self.total + amount

    def finalize(self) -> str | None:
        return None if self.total is None else str(self.total)


# A new store's page. Fixed when the file is created (an existing store keeps its own):
# a sync writes about a kilobyte of payload per order version, and landing 200,000 of them
# took the writer a quarter less CPU on 16 KiB pages than on SQLite's default 4 KiB.
# bench_e2e, 1M orders, alternating: 74.6 and 71.7 s cold at 16 KiB, 79.2 and 78.8 s at 4.
SQLITE_PAGE_SIZE = 16 * 1024
SQLITE_WRITE_CACHE_KIB = 16 * 1024
SQLITE_READ_CACHE_KIB = 8 * 1024


def _configure_sqlite(engine: Engine) -> None:
    database = engine.url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        checkpointer = WalCheckpointer(database)

        @event.listens_for(engine, "commit")
        def _on_commit(connection: sa.Connection) -> None:
            if not connection.get_execution_options().get(_READ_ONLY, False):
                checkpointer.committed()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Take transaction control away from pysqlite so that BEGIN IMMEDIATE below is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # Before WAL: in a WAL file the page size can no longer change.
        cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Not MEMORY: then SQLite also keeps every statement journal in memory, whole, and a
        # statement that updates orders scattered over the tables (an update run) journals
        # the original of every page it touches: ~70 MB per upsert statement at 300,000
        # orders, growing with the store. On file, a journal spills past 64 KiB, and staging
        # tables and sorts past the temp cache, to the OS cache: measured no slower.
        cursor.execute("PRAGMA temp_store = FILE")
        # Checkpoint the WAL every 10,000 pages instead of 1,000 (160 MB of 16 KiB pages; a
        # store made before with 4 KiB pages: 40 MB): a bulk load of payloads then spends a
        # quarter less time copying pages and syncing the file. Every 40 and every 160 MB
        # measured the same (300k orders, 4 KiB pages), and the 16 KiB pages were measured
        # with this setting. Now the bound for when checkpoints.py's thread falls behind.
        cursor.execute("PRAGMA wal_autocheckpoint = 10000")
        cursor.close()
        dbapi_connection.create_aggregate("decimal_sum", 1, _DecimalSum)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        # Page cache per connection: writes probe indexes all over, reads mostly scan once
        # (a cache would only hold memory). Sized per transaction because a pooled
        # connection serves both; the bound keeps a sync's memory flat at any size. A write
        # cache fills only once the store outgrows it, so its size is memory that appears at
        # scale: a 1M-order update run peaked about 40 MB higher with 64 MiB than with
        # 16 MiB, which measured no slower (the OS caches the file's pages anyway).
        cache_kib = SQLITE_READ_CACHE_KIB if read_only else SQLITE_WRITE_CACHE_KIB
        connection.exec_driver_sql(f"PRAGMA cache_size = -{cache_kib}")
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: sqlite3.Connection | None, _record: Any) -> None:
        # An idle pooled connection keeps the pages of its last transaction: after writes,
        # up to the whole write cache, per connection. Its cache is stale anyway once
        # another connection writes, so an idle one keeps no more than a reader's.
        if dbapi_connection is not None:
            dbapi_connection.execute(f"PRAGMA cache_size = -{SQLITE_READ_CACHE_KIB}")


def create_store_engine(url: str | sa.URL | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` (default: ``ORDERS_ETL_DATABASE_URL`` or the local SQLite file)."""
    sa_url = make_url(url or database_url_from_env())
    if sa_url.get_backend_name() == "sqlite":
        database = sa_url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(sa_url, **kwargs)
        _configure_sqlite(engine)
        return engine
    if sa_url.get_backend_name() == "postgresql" and sa_url.get_driver_name() in ("psycopg2", ""):
        # psycopg 3 is the driver we ship and the one with COPY from Python iterables.
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(sa_url, **kwargs)


_READ_ONLY = "orders_etl_read_only"


def reading(engine: Engine) -> Engine:
    """The same engine for read-only work: on SQLite its transactions take no write lock."""
    return engine.execution_options(**{_READ_ONLY: True})


# Pools a forked process inherited: kept referenced, so never closed there (see below).
_INHERITED_POOLS: list[Pool] = []


def own_connections_after_fork(engine: Engine) -> None:
    """In a forked process: ``engine`` connects anew from here on.

    The pooled connections it inherited are the parent's (its sockets, its SQLite file
    handles): the child must neither use them nor close them (SQLite: never carry an open
    connection across ``fork()``). The inherited pool is kept referenced until the process
    ends, so no garbage collection closes its connections here (a forked process of
    ``multiprocessing`` ends without running finalizers).
    """
    _INHERITED_POOLS.append(engine.pool)
    engine.dispose(close=False)


def plan_for_key_probes(conn: Connection) -> None:
    """PostgreSQL: the statements of this transaction look up at most a chunk of keys in a
    unique index (the upsert's joins, the queue's delete).

    Fresh staging tables have no statistics, and a big load outruns autovacuum's, so the
    planner would hash-join the whole of ``source_orders`` for every chunk (seconds per
    million rows). Nested loops over the indexes cost what the chunk costs, whatever the
    table's size; JIT compiling statements that run once per chunk is pure overhead.
    The settings end with the transaction.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
        conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
