"""Benchmark of the store's dedupe + upsert on SQLite and PostgreSQL (issue: foundation).

Generates N normalized orders (default 1,000,000: 900,000 unique keys plus 10 % older
duplicates, realistic field values and currencies) as a stream, and times, on each store:

* cold: dedupe + upsert into an empty store;
* rerun: the same stream again (everything unchanged);
* update: the stream with 10 % of the orders changed (newer ``updated_at``).

Each case prints wall seconds and the process's peak RSS, then the store is verified:
row count, distinct keys, and the exact sum of amounts per currency. The last line is one
JSON object. Orders are built without re-validation (they stand for what a normalizer has
already validated), so the figures are the store's, not pydantic's.

    python bench/bench_store.py [--n 1000000] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orders_etl.model import OrderRecord, OrderStatus, PaymentStatus
from orders_etl.store import OrderStore
from orders_etl.store.engine import create_store_engine

CURRENCIES = (("USD", 2), ("EUR", 2), ("JPY", 0), ("KWD", 3))
SHIPPING = ("fedex_ground", "ups_standard", "dhl_express", "usps_priority", None)
BASE = datetime(2025, 1, 1, tzinfo=UTC)
CHUNK = 50_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_FIELDS_SET = frozenset(OrderRecord.model_fields)


def _record(values: dict) -> OrderRecord:
    """An already-valid OrderRecord without re-validation (what model_construct does, minus
    its per-call overhead, which would otherwise dominate the figures)."""
    record = OrderRecord.__new__(OrderRecord)
    object.__setattr__(record, "__dict__", values)
    object.__setattr__(record, "__pydantic_fields_set__", _FIELDS_SET)
    object.__setattr__(record, "__pydantic_extra__", None)
    object.__setattr__(record, "__pydantic_private__", None)
    return record


def _order(key: int, version: int) -> OrderRecord:
    currency, exponent = CURRENCIES[key % len(CURRENCIES)]
    # A cheap deterministic spread of amounts per (key, version).
    cents = 100 + (key * 2_654_435_761 + version * 40_503) % 4_999_900
    total = Decimal(cents).scaleb(-exponent)
    return _record(
        {
            "external_id": str(5_000_000_000 + key),
            "number": f"#{1000 + key}",
            "created_at": BASE + timedelta(minutes=key),
            "currency": currency,
            "total_amount": total,
            "tax_amount": Decimal(cents // 11).scaleb(-exponent),
            "payment_status": PaymentStatus.CAPTURED if key % 7 else PaymentStatus.REFUNDED,
            "status": OrderStatus.SHIPPED if key % 3 else OrderStatus.DELIVERED,
            "shipping_method": SHIPPING[key % len(SHIPPING)],
            "tracking_number": f"1Z{key:012d}" if key % 3 else None,
            "customer_id": str(7_000_000 + key % 50_000),
            "refunded_amount": total if key % 7 == 0 else None,
            "payment_status_detail": "paid" if key % 7 else "refunded",
            "updated_at": BASE + timedelta(minutes=key, hours=1 + version),
            "deleted_at": None,
        }
    )


def stream(n: int, *, updated_fraction: float = 0.0, seed: int = 7) -> Iterator[list[OrderRecord]]:
    """N orders in chunks: 90 % unique keys, 10 % older duplicates of a key in the same chunk."""
    unique = n * 9 // 10
    update_rng = random.Random(seed)
    chunk: list[OrderRecord] = []
    emitted = 0
    for key in range(unique):
        version = 1
        if updated_fraction and update_rng.random() < updated_fraction:
            version = 2
        current = _order(key, version)
        chunk.append(current)
        emitted += 1
        if emitted < n and key % 9 == 0:
            older = _order(key, 0)  # an older version, sometimes before, sometimes after
            chunk.insert(len(chunk) - 1 if key % 2 else len(chunk), older)
            emitted += 1
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def expected_sums(n: int, updated_fraction: float) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for chunk in stream(n, updated_fraction=updated_fraction):
        newest: dict[str, OrderRecord] = {}
        for record in chunk:
            if record.external_id not in newest or record.updated_at > newest[record.external_id].updated_at:
                newest[record.external_id] = record
        for record in newest.values():
            sums[record.currency] = sums.get(record.currency, Decimal(0)) + record.total_amount
    return sums


def verify(store: OrderStore, unique: int, sums: dict[str, Decimal]) -> bool:
    total_sum = "decimal_sum" if store.engine.dialect.name == "sqlite" else "sum"
    with store.engine.connect() as conn:
        count, distinct = conn.execute(
            sa.text("SELECT COUNT(*), COUNT(DISTINCT external_id) FROM orders")
        ).one()
        got = {
            currency: Decimal(str(amount))
            for currency, amount in conn.execute(
                sa.text(f"SELECT currency, {total_sum}(total_amount) FROM orders GROUP BY currency")
            )
        }
    ok = count == distinct == unique and got == sums
    print(
        f"  verify: rows={count:,} distinct={distinct:,} sums_exact={got == sums}"
        f" -> {'OK' if ok else 'FAILED'}"
    )
    return ok


def run_case(store: OrderStore, name: str, n: int, updated_fraction: float = 0.0) -> float:
    started = time.perf_counter()

    def progress(index: int, counts) -> None:
        if index % 6 == 5:
            print(f"    chunk {index + 1}: {counts.as_dict()}", flush=True)

    counts = store.upsert_chunks("shopify", stream(n, updated_fraction=updated_fraction), on_chunk=progress)
    wall = time.perf_counter() - started
    print(f"  {name:<7} {wall:7.2f} s   peak RSS {peak_rss_mb():7.0f} MB   {counts.as_dict()}", flush=True)
    return wall


def bench(store: OrderStore, n: int) -> tuple[dict[str, float], bool]:
    unique = n * 9 // 10
    figures = {
        "cold": run_case(store, "cold", n),
        "rerun": run_case(store, "rerun", n),
    }
    ok = verify(store, unique, expected_sums(n, 0.0))
    figures["update"] = run_case(store, "update", n, updated_fraction=0.10)
    ok = verify(store, unique, expected_sums(n, 0.10)) and ok
    return figures, ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    print(f"bench_store: {args.n:,} input orders ({args.n * 9 // 10:,} unique)")
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite")
        sqlite_store = OrderStore(create_store_engine(f"sqlite:///{tmp}/bench.db"))
        sqlite, sqlite_ok = bench(sqlite_store, args.n)
        sqlite_store.dispose()

    print("PostgreSQL")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        url = sa.make_url(args.pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        pg_store = OrderStore(create_store_engine(url))
        pg, pg_ok = bench(pg_store, args.n)
        pg_store.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    result = {
        "n": args.n,
        "sqlite_cold_s": round(sqlite["cold"], 2),
        "sqlite_rerun_s": round(sqlite["rerun"], 2),
        "sqlite_update_s": round(sqlite["update"], 2),
        "pg_cold_s": round(pg["cold"], 2),
        "pg_rerun_s": round(pg["rerun"], 2),
        "pg_update_s": round(pg["update"], 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "verified": sqlite_ok and pg_ok,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
