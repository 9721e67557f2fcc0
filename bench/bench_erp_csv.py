"""Benchmark: a large ERP CSV export read, landed, normalized and upserted in bounded memory.

Generates an export in the European flavour (cp1252, ``;``, ``1.234,56``, ``dd.MM.yyyy``,
Europe/Berlin) into a temporary folder. Planted in the export: one truncated row per
100,000 and one unknown status per 50,000, which must come out as rejects; one customer
name in six holds stray quotes (``"Bau "Nord" KG"``), which the reader's slow path reads.
Then phase by phase, each in a fresh process as Dagster runs each step (without Dagster):

* ``read``: ``ErpFileReader.fetch`` alone, streamed;
* ``land``: read and land the raw records (the ``erp raw`` step);
* ``normalize``: the landing read back and normalized (Shopify names resolved through the
  store, which holds a Shopify order for every second name), nothing written;
* ``normalize_upsert``: the same, upserted in frames and rejects recorded (the ``erp
  normalize + upsert`` step);
* ``mapping``: the mapping alone, the store left out: the first 200,000 rows landed in
  memory, normalized with the names resolved from a dict (``mapping_us_per_row``: CPU).

The store is a temporary SQLite file unless ``--store URL`` names another (e.g. PostgreSQL;
it must be empty). Prints each phase's seconds, CPU seconds (all threads: on a shared
machine the steadier figure) and peak memory, then as its last line one JSON object::

    {"rows": ..., "read_s": ..., "land_s": ..., "normalize_s": ..., "normalize_upsert_s": ...,
     "read_cpu_s": ..., ..., "mapping_us_per_row": ..., "wall_s": ..., "peak_rss_mb": ...,
     "rejected": ...}

``wall_s`` is ``land_s + normalize_upsert_s`` (the two steps of a sync); ``peak_rss_mb``
the largest peak resident memory of a phase's process. Exits with status 1 when it exceeds
``--max-rss-mb`` (1024 by default: the acceptance bound).

    PYTHONPATH=. python bench/bench_erp_csv.py [--rows 1000000] [--store URL]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from orders_etl.canonical import OrderRow
from orders_etl.model import OrderRecord
from orders_etl.sources.base import Normalized, batches
from orders_etl.sources.erp_files import Dialect, ErpFileReader, load_dialect, normalize
from orders_etl.store import LandedRecord, OrderStore
from orders_etl.store.frames import canonical_text, rows_to_table
from orders_etl.store.landing import dump_payload

DIALECT = """\
encoding = "cp1252"
separator = ";"
quotechar = '"'
decimal = ","
thousands = "."
date_formats = ["%d.%m.%Y %H:%M", "%d.%m.%Y"]
timezone = "Europe/Berlin"
default_currency = "EUR"
shopify_ref_kind = "name"

[columns]
order_number = ["Document No."]
shopify_ref = ["External Document No."]
created_at = ["Order Date"]
updated_at = ["Last Modified"]
currency = ["Currency Code"]
total_amount = ["Amount Including VAT"]
tax_amount = ["VAT Amount"]
refunded_amount = ["Credit Memo Amount"]
status = ["Status"]
payment_status = ["Payment Status"]
shipping_method = ["Shipment Method"]
tracking_number = ["Package Tracking No."]
customer_id = ["Customer No."]

[status_map]
"Open" = "processing"
"Released" = "processing"
"Shipped" = "shipped"
"Cancelled" = "cancelled"

[payment_status_map]
"Open" = ""
"Paid" = "captured"
"Refunded" = "refunded"
"""
HEADER = (
    "Document No.;External Document No.;Order Date;Last Modified;Currency Code;Amount Including VAT;"
    "VAT Amount;Credit Memo Amount;Status;Payment Status;Shipment Method;Package Tracking No.;"
    "Customer No.;Customer Name\r\n"
)
NAMES = ("Müller GmbH", "Société Générale", "Øresund ApS", "Smith & Co", "Bäckerei Groß", '"Bau "Nord" KG"')
STATUSES = ("Open", "Released", "Shipped", "Cancelled")
PAYMENTS = ("Open", "Paid", "Paid", "Refunded")
METHODS = ("DHL Paket", "UPS Standard", "DPD Classic", "Abholung")
SHOPIFY_ID_BASE = 5_000_000_000_000


def log(message: str) -> None:
    print(message, flush=True)


def european(cents: int) -> str:
    """12345678 -> '123.456,78'."""
    return f"{cents // 100:,}".replace(",", ".") + f",{cents % 100:02d}"


def generate(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, 8, 0)
    with path.open("w", encoding="cp1252", newline="") as out:
        out.write(HEADER)
        for n in range(1, rows + 1):
            if n % 250_000 == 0:
                log(f"generating row {n}")
            if n % 100_000 == 0:
                out.write(f"SO-{n:07d};#{1000 + n};01.02.2024\r\n")  # truncated row
                continue
            created = start + timedelta(minutes=n // 3)
            modified = created + timedelta(hours=rng.randrange(1, 48))
            cents = rng.randrange(500, 2_500_000)
            status = "Teilgeliefert" if n % 50_000 == 0 else STATUSES[n % 4]
            payment = PAYMENTS[n % 4]
            refund = european(cents) if payment == "Refunded" else ""
            out.write(
                f"SO-{n:07d};{'' if n % 10 == 0 else f'#{1000 + n}'};{created:%d.%m.%Y};"
                f"{modified:%d.%m.%Y %H:%M};{'USD' if n % 7 == 0 else ''};{european(cents)};"
                f"{european(cents * 19 // 119)};{refund};{status};{payment};{METHODS[n % 4]};"
                f"00340434{n:012d};C{n % 50_000:05d};{NAMES[n % len(NAMES)]}\r\n"
            )


def shopify_frames(rows: int) -> Iterator[pa.Table]:
    """The Shopify orders the store holds: one for every second name of the export."""
    chunk: list[tuple[str | None, ...]] = []
    updated = "2024-01-01 00:00:00.000000"
    for n in range(2, rows + 1, 2):
        key, name = str(SHOPIFY_ID_BASE + 1000 + n), f"#{1000 + n}"
        # external_id, number, created_at, currency, total, tax, payment, status, ... updated_at
        chunk.append((key, name, None, "EUR", "10.00", None, None, "processing", *[None] * 5, updated, None))
        if len(chunk) == 100_000:
            yield rows_to_table(chunk)
            chunk = []
    if chunk:
        yield rows_to_table(chunk)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------
# The phases, each run in a fresh process (as Dagster runs each step): its time, its CPU
# time (all threads; on a shared machine the fairer figure) and its own peak memory.


def _read(store: OrderStore, export: Path, dialect: Dialect) -> dict[str, int]:
    records = ErpFileReader(export, dialect).fetch(None, None, log)
    return {"unreadable": sum(1 for record in records if "error" in record.payload)}


def _land(store: OrderStore, export: Path, dialect: Dialect) -> dict[str, int]:
    return {"landed": store.land_raw("erp_files", ErpFileReader(export, dialect).fetch(None, None, log))}


def _normalized(store: OrderStore, dialect: Dialect) -> Iterator[Normalized]:
    landed = (record for chunk in store.iter_raw("erp_files") for record in chunk)  # streamed, as a sync
    return normalize(landed, dialect=dialect, resolve_names=store.shopify_ids_by_name)


def _normalize(store: OrderStore, export: Path, dialect: Dialect) -> dict[str, int]:
    kinds = collections.Counter(type(item).__name__ for item in _normalized(store, dialect))
    return {"fast": kinds[OrderRow.__name__], "records": kinds[OrderRecord.__name__]}


def _normalize_upsert(store: OrderStore, export: Path, dialect: Dialect) -> dict[str, int]:
    """As ``defs/sync.normalize_window``: batches of rows upserted as frames, rejects recorded."""
    counts = {"orders": 0, "rejected": 0}

    def frames() -> Iterator[pa.Table]:
        for batch in batches(_normalized(store, dialect), 20_000):
            store.record_rejects(batch.rejects)
            rows = [*batch.rows, *map(canonical_text, batch.orders)]
            counts["orders"] += len(rows)
            counts["rejected"] += len(batch.rejects)
            yield rows_to_table(rows)

    store.upsert_frames("erp_files", frames())
    return counts


MAPPING_ROWS = 200_000


def _mapping(store: OrderStore, export: Path, dialect: Dialect) -> dict[str, int]:
    """The mapping alone: the first rows, landed in memory (untimed), normalized with the
    names resolved from a dict. What the source costs, without the store's reads."""
    records = itertools.islice(ErpFileReader(export, dialect).fetch(), MAPPING_ROWS)
    landed = [
        LandedRecord(r.record_key, r.updated_at, raw_id=0, text=r.text or dump_payload(r.payload))
        for r in records
    ]
    known = {f"#{1000 + n}": str(SHOPIFY_ID_BASE + 1000 + n) for n in range(2, len(landed) + 1, 2)}

    def resolve_names(names: Iterable[str]) -> dict[str, str]:
        return {name: known[name] for name in names if name in known}

    began, cpu = time.perf_counter(), time.process_time()
    collections.deque(normalize(landed, dialect=dialect, resolve_names=resolve_names), maxlen=0)
    return {
        "mapped": len(landed),
        "mapping_s": time.perf_counter() - began,
        "mapping_cpu_s": time.process_time() - cpu,
    }


def _seed(store: OrderStore, export: Path, dialect: Dialect) -> dict[str, int]:
    rows = sum(1 for _ in export.open(encoding=dialect.encoding)) - 1
    store.upsert_frames("shopify", shopify_frames(rows))
    return {}


PHASES = {
    "seed": _seed,
    "read": _read,
    "land": _land,
    "normalize": _normalize,
    "normalize_upsert": _normalize_upsert,
    "mapping": _mapping,
}


def run_phase(name: str, export: Path, dialect_path: Path, url: str) -> dict[str, Any]:
    """One phase in this (fresh) process: its figures and its counts."""
    dialect = load_dialect(dialect_path)
    store = OrderStore.from_url(url)
    began, cpu = time.perf_counter(), time.process_time()
    counts = PHASES[name](store, export, dialect)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    store.dispose()
    return {"s": seconds, "cpu_s": cpu_seconds, "peak_rss_mb": peak_rss_mb(), **counts}


def in_fresh_process(name: str, *args: Any) -> dict[str, Any]:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(run_phase, name, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--store", metavar="URL", help="an empty store to use (default: a temporary SQLite file)"
    )
    parser.add_argument("--max-rss-mb", type=float, default=1024.0)
    args = parser.parse_args(argv)

    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_erp_csv_") as folder:
        export = Path(folder) / "erp_orders.csv"
        dialect_path = Path(folder) / "dialect.toml"
        dialect_path.write_text(DIALECT, encoding="utf-8")
        began = time.perf_counter()
        generate(export, args.rows)
        log(f"export: {export.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - began:.1f} s")
        url = args.store or f"sqlite:///{Path(folder) / 'bench.db'}"
        for name in PHASES:
            figures[name] = phase = in_fresh_process(name, export, dialect_path, url)
            if name == "mapping":  # (its own timing: the rows held in memory, mapped)
                rows = phase["mapped"]
                phase["s"], phase["cpu_s"] = phase["mapping_s"], phase["mapping_cpu_s"]
            else:
                rows = args.rows
            log(
                f"{name}: {phase['s']:.1f} s ({phase['s'] / rows * 1e6:.1f} µs/row), "
                f"CPU {phase['cpu_s']:.1f} s ({phase['cpu_s'] / rows * 1e6:.1f} µs/row), "
                f"peak RSS {phase['peak_rss_mb']:.0f} MB"
            )

    normalized, stored = figures["normalize"], figures["normalize_upsert"]
    log(
        f"{figures['land']['landed']} records landed ({figures['read']['unreadable']} unreadable rows); "
        f"{stored['orders']} orders ({normalized['fast'] / max(stored['orders'], 1):.1%} by the fast path), "
        f"{stored['rejected']} rejected"
    )
    measured = {name: phase for name, phase in figures.items() if name != "seed"}
    peak = max(phase["peak_rss_mb"] for phase in measured.values())
    print(
        json.dumps(
            {"rows": args.rows}
            | {f"{name}_s": round(phase["s"], 1) for name, phase in measured.items()}
            | {f"{name}_cpu_s": round(phase["cpu_s"], 1) for name, phase in measured.items()}
            | {
                "mapping_us_per_row": round(
                    figures["mapping"]["cpu_s"] / figures["mapping"]["mapped"] * 1e6, 2
                )
            }
            | {
                "wall_s": round(figures["land"]["s"] + stored["s"], 1),
                "peak_rss_mb": round(peak, 1),
                "rejected": stored["rejected"],
            }
        )
    )
    return 0 if peak <= args.max_rss_mb else 1


if __name__ == "__main__":
    sys.exit(main())
