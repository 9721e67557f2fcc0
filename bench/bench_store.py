"""Benchmark of the store's dedupe + upsert on SQLite and PostgreSQL (issue: foundation).

Generates N normalized orders (default 1,000,000: 900,000 unique keys plus 10 % older
duplicates, realistic field values and currencies) as a stream of order frames, and times,
on each store, ``OrderStore.upsert_frames`` (the columnar entry point the pipeline's
``upsert`` also goes through):

* cold: dedupe + upsert into an empty store;
* rerun: the same stream again (everything unchanged);
* update: the stream with 10 % of the orders changed (newer ``updated_at``, new amounts).

Each chunk of input is built column-wise (Arrow), as canonical text, the way a columnar
normalizer hands frames to the store. The inputs are generated before the timers into Arrow
IPC files, and each case streams its file back a chunk at a time: the timed wall clock is
reading + dedupe + upsert, as when a sync replays what it landed. Each case prints wall
seconds, the process's peak RSS and the counts, then the store is verified: row count,
distinct keys, and the exact sum of amounts per currency, computed independently from the
generator's arithmetic, and the counts against what the generator planted. The last line
is one JSON object.

    python bench/bench_store.py [--n 1000000] [--only sqlite|postgresql]
                                [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orders_etl.store import OrderStore, UpsertCounts
from orders_etl.store.engine import create_store_engine

CURRENCIES = pa.array(["USD", "EUR", "JPY", "KWD"])
EXPONENTS = np.array([2, 2, 0, 3])
SHIPPING = pa.array(["fedex_ground", "ups_standard", "dhl_express", "usps_priority", None])
BASE = np.datetime64("2025-01-01T00:00:00", "us")
CHUNK = 50_000
UPDATED_FRACTION = 0.10
NO_TEXT = pa.scalar(None, pa.string())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cents(keys: np.ndarray, versions: np.ndarray) -> np.ndarray:
    """A cheap deterministic spread of amounts (minor units) per (key, version)."""
    return 100 + (keys * 2_654_435_761 + versions * 40_503) % 4_999_900


def _money(minor: np.ndarray, exponents: np.ndarray) -> pa.Array:
    """Minor units as the canonical decimal text at each row's exponent (``1234`` -> ``12.34``)."""
    scale = 10**exponents
    units = pc.cast(pa.array(minor // scale), pa.string())
    # minor % scale + scale has exactly exponent + 1 digits; dropping the leading 1 pads with zeros.
    fraction = pc.utf8_slice_codeunits(pc.cast(pa.array(minor % scale + scale), pa.string()), 1)
    return pc.if_else(pa.array(exponents == 0), units, pc.binary_join_element_wise(units, fraction, "."))


def _time(minutes: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(BASE + minutes.astype("timedelta64[m]")), pa.string())


def _orders(keys: np.ndarray, versions: np.ndarray) -> pa.Table:
    """Orders ``keys`` at ``versions`` (a later version: later updated_at, another amount)."""
    currency = keys % len(CURRENCIES)
    exponents = EXPONENTS[currency]
    cents = _cents(keys, versions)
    total = _money(cents, exponents)
    refunded = pa.array(keys % 7 == 0)
    delivered = pa.array(keys % 3 == 0)
    tracking = pc.binary_join_element_wise(
        "1Z", pc.utf8_lpad(pc.cast(pa.array(keys), pa.string()), 12, "0"), ""
    )
    return pa.table(
        {
            "external_id": pc.cast(pa.array(5_000_000_000 + keys), pa.string()),
            "number": pc.binary_join_element_wise("#", pc.cast(pa.array(1000 + keys), pa.string()), ""),
            "created_at": _time(keys),
            "currency": CURRENCIES.take(pa.array(currency)),
            "total_amount": total,
            "tax_amount": _money(cents // 11, exponents),
            "payment_status": pc.if_else(refunded, "refunded", "captured"),
            "status": pc.if_else(delivered, "delivered", "shipped"),
            "shipping_method": SHIPPING.take(pa.array(keys % len(SHIPPING))),
            "tracking_number": pc.if_else(delivered, NO_TEXT, tracking),
            "customer_id": pc.cast(pa.array(7_000_000 + keys % 50_000), pa.string()),
            "refunded_amount": pc.if_else(refunded, total, NO_TEXT),
            "payment_status_detail": pc.if_else(refunded, "refunded", "paid"),
            "updated_at": _time(keys + 60 * (1 + versions)),
            "deleted_at": pa.nulls(len(keys), pa.string()),
        }
    )


def _versions(n: int, updated_fraction: float, seed: int) -> np.ndarray:
    """Version of every unique key: 1, or 2 for the updated fraction (fixed by the seed)."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n * 9 // 10) < updated_fraction, 2, 1)


def frames(n: int, *, updated_fraction: float = 0.0, seed: int = 7) -> Iterator[pa.Table]:
    """N orders in chunks: 90 % unique keys, and for every 9th key an older version (0) in
    the same chunk, right before (odd key) or right after (even key) the current one."""
    unique = n * 9 // 10
    versions = _versions(n, updated_fraction, seed)
    older_total = n - unique
    per_chunk = CHUNK * 9 // 10
    for start in range(0, unique, per_chunk):
        keys = np.arange(start, min(start + per_chunk, unique), dtype=np.int64)
        older = keys[(keys % 9 == 0) & (keys // 9 < older_total)]  # exactly n orders in all
        slots = np.concatenate([np.ones(len(keys)), np.where(older % 2 == 1, 0, 2)])
        rows = np.lexsort((slots, np.concatenate([keys, older])))
        all_keys = np.concatenate([keys, older])[rows]
        all_versions = np.concatenate([versions[keys], np.zeros(len(older), dtype=versions.dtype)])[rows]
        yield _orders(all_keys, all_versions)


def expected_sums(n: int, updated_fraction: float) -> dict[str, Decimal]:
    """Per currency, the exact sum of the newest version of every order."""
    keys = np.arange(n * 9 // 10, dtype=np.int64)
    cents = _cents(keys, _versions(n, updated_fraction, seed=7))
    currency = keys % len(CURRENCIES)
    return {
        code: Decimal(int(cents[currency == i].sum())).scaleb(-int(EXPONENTS[i]))
        for i, code in enumerate(CURRENCIES.to_pylist())
    }


def verify(store: OrderStore, unique: int, sums: dict[str, Decimal]) -> bool:
    total_sum = "decimal_sum" if store.engine.dialect.name == "sqlite" else "sum"
    with store.engine.connect() as conn:
        count, distinct = conn.execute(
            sa.text("SELECT COUNT(*), COUNT(DISTINCT external_id) FROM orders")
        ).one()
        sources = conn.execute(sa.text("SELECT COUNT(*) FROM source_orders")).scalar_one()
        got = {
            currency: Decimal(str(amount))
            for currency, amount in conn.execute(
                sa.text(f"SELECT currency, {total_sum}(total_amount) FROM orders GROUP BY currency")
            )
        }
    ok = count == distinct == sources == unique and got == sums
    print(
        f"  verify: rows={count:,} distinct={distinct:,} source rows={sources:,} sums_exact={got == sums}"
        f" -> {'OK' if ok else 'FAILED'}"
    )
    return ok


def write_input(path: Path, n: int, updated_fraction: float) -> None:
    """The case's input, generated once into an Arrow IPC file (one record batch per chunk)."""
    with pa.OSFile(str(path), "wb") as sink:
        writer = None
        for table in frames(n, updated_fraction=updated_fraction):
            writer = writer or pa.ipc.new_file(sink, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()


def read_input(path: Path) -> Iterator[pa.Table]:
    """The input streamed back a chunk at a time (read, not memory-mapped: only the chunks
    in flight are held, as when a sync streams what it landed)."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(index)])


def run_case(store: OrderStore, name: str, path: Path) -> tuple[float, UpsertCounts]:
    started = time.perf_counter()
    counts = store.upsert_frames("shopify", read_input(path))
    wall = time.perf_counter() - started
    print(f"  {name:<7} {wall:7.2f} s   peak RSS {peak_rss_mb():7.0f} MB   {counts.as_dict()}", flush=True)
    return wall, counts


def bench(store: OrderStore, n: int, inputs: dict[float, Path]) -> tuple[dict[str, float], bool]:
    unique = n * 9 // 10
    duplicates = n - unique
    figures = {}
    figures["cold"], cold = run_case(store, "cold", inputs[0.0])
    figures["rerun"], rerun = run_case(store, "rerun", inputs[0.0])
    ok = verify(store, unique, expected_sums(n, 0.0))
    figures["update"], update = run_case(store, "update", inputs[UPDATED_FRACTION])
    ok = verify(store, unique, expected_sums(n, UPDATED_FRACTION)) and ok
    updated = int((_versions(n, UPDATED_FRACTION, seed=7) == 2).sum())
    expected_counts = [
        (cold, UpsertCounts(inserted=unique, stale=duplicates)),
        (rerun, UpsertCounts(unchanged=unique, stale=duplicates)),
        (update, UpsertCounts(updated=updated, unchanged=unique - updated, stale=duplicates)),
    ]
    counts_ok = all(got == want for got, want in expected_counts)
    print(f"  counts as expected: {counts_ok}")
    return figures, ok and counts_ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="run one store only")
    args = parser.parse_args()

    print(f"bench_store: {args.n:,} input orders ({args.n * 9 // 10:,} unique)")
    sqlite: dict[str, float] = {}
    pg: dict[str, float] = {}
    sqlite_ok = pg_ok = True
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        inputs = {fraction: Path(tmp) / f"input-{fraction}.arrow" for fraction in (0.0, UPDATED_FRACTION)}
        for fraction, path in inputs.items():
            write_input(path, args.n, fraction)
        print(f"input generated in {time.perf_counter() - started:.2f} s (before the timers)")

        if args.only != "postgresql":
            print("SQLite")
            sqlite_store = OrderStore(create_store_engine(f"sqlite:///{tmp}/bench.db"))
            sqlite, sqlite_ok = bench(sqlite_store, args.n, inputs)
            sqlite_store.dispose()

        if args.only != "sqlite":
            print("PostgreSQL")
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(args.pg_url)
            with admin.begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            try:
                url = sa.make_url(args.pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
                pg_store = OrderStore(create_store_engine(url))
                pg, pg_ok = bench(pg_store, args.n, inputs)
                pg_store.dispose()
            finally:
                with admin.begin() as conn:
                    conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
                admin.dispose()

    def figure(figures: dict[str, float], case: str) -> float | None:
        return round(figures[case], 2) if case in figures else None

    result = {
        "n": args.n,
        "sqlite_cold_s": figure(sqlite, "cold"),
        "sqlite_rerun_s": figure(sqlite, "rerun"),
        "sqlite_update_s": figure(sqlite, "update"),
        "pg_cold_s": figure(pg, "cold"),
        "pg_rerun_s": figure(pg, "rerun"),
        "pg_update_s": figure(pg, "update"),
        "peak_rss_mb": round(peak_rss_mb()),
        "verified": sqlite_ok and pg_ok,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
