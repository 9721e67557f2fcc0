"""PostgreSQL: what landing payloads costs the server with keys in the database's collation
(as before migration 0006) and compared byte by byte (``COLLATE "C"``, since 0006).

For each of ``--reps`` rounds, and each collation in turn (interleaved, so that a slower minute
of the machine weighs on both), it makes a fresh store in a new PostgreSQL schema (for the
database's collation, the landing's key columns set back to it) and lands N
payloads under ERP-like keys (``SO-100001``…) and then N under Shopify ids
(``gid://shopify/Order/…``), in random key order, through ``land_rows``; it prints the wall
and the local server's CPU seconds of each landing. The last line is one JSON object with
the medians::

    {"default": {"erp_server_s": …, "shopify_server_s": …}, "C": {…}}

    python bench/bench_pg_keys.py [--size 300000] [--reps 4]
                                  [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Run it against databases of other collations (``CREATE DATABASE … LOCALE_PROVIDER icu
ICU_LOCALE 'en-US' TEMPLATE template0``) with ``--pg-url``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from bench_e2e import DEFAULT_PG_URL, ServerCpu, _store_url, local_postgres_server

from orders_etl.store import migrate
from orders_etl.store.engine import create_store_engine
from orders_etl.store.landing import LandingRow, land_rows
from orders_etl.store.types import sqlite_datetime

COLLATIONS = ("default", "C")  # the database's, then byte order
# The key columns the landing writes and looks up: migration 0006's, of the landing's tables.
_KEYS = importlib.import_module("orders_etl.store.migrations.versions.0006_keys_compare_bytewise").KEYS
LANDING_KEYS = {table: _KEYS[table] for table in ("raw_orders", "raw_orders_pending")}
PAYLOAD_PADDING = 600  # about the size of a landed Shopify order


def landing_rows(source: str, size: int, rng: random.Random) -> list[LandingRow]:
    ids = list(range(size))
    rng.shuffle(ids)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    rows = []
    for i in ids:
        key = f"SO-{100_000 + i}" if source == "erp" else f"gid://shopify/Order/{5_600_000_000_000 + i}"
        text = json.dumps({"id": key, "note": "x" * PAYLOAD_PADDING})
        rows.append((key, sqlite_datetime(start + timedelta(seconds=i)), text))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300_000)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    postmaster = local_postgres_server(args.pg_url)
    if postmaster is None:
        raise SystemExit(f"no PostgreSQL server of this machine at {sa.make_url(args.pg_url)!r}")
    server_cpu = ServerCpu(postmaster)
    rng = random.Random(1)
    inputs = {source: landing_rows(source, args.size, rng) for source in ("erp", "shopify")}
    figures: dict[str, dict[str, list[float]]] = {collation: {} for collation in COLLATIONS}
    for rep in range(args.reps):
        for collation in COLLATIONS:
            with _store_url("postgresql", Path(), args.pg_url) as url:
                engine = create_store_engine(url)
                try:
                    migrate.upgrade(engine)
                    with engine.begin() as conn:
                        for table, columns in LANDING_KEYS.items():
                            for column in columns:
                                alter = f'ALTER COLUMN {column} TYPE text COLLATE "{collation}"'
                                conn.exec_driver_sql(f"ALTER TABLE {table} {alter}")
                    line = []
                    for source, rows in inputs.items():
                        cpu, start = server_cpu(), time.perf_counter()
                        land_rows(engine, source, iter(rows))
                        wall, server = time.perf_counter() - start, server_cpu() - cpu
                        figures[collation].setdefault(f"{source}_server_s", []).append(server)
                        line.append(f"{source} {wall:5.2f} s, server CPU {server:5.2f} s")
                    print(f"round {rep + 1}, collation {collation:>7}: {' | '.join(line)}", flush=True)
                finally:
                    engine.dispose()
    medians = {
        collation: {name: round(statistics.median(values), 2) for name, values in by_name.items()}
        for collation, by_name in figures.items()
    }
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
