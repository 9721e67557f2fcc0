"""Benchmark: a large ERP CSV export read, landed, normalized and upserted in bounded memory.

Generates an export in the European flavour (cp1252, ``;``, ``1.234,56``, ``dd.MM.yyyy``,
Europe/Berlin) into a temporary folder. Planted in the export: one truncated row per
100,000 and one unknown status per 50,000, which must come out as rejects; one customer
name in six holds stray quotes (``"Bau "Nord" KG"``), which the reader's slow path reads.
Then, timed phase by phase, as the ``erp`` steps of a sync do (without Dagster):

* ``read``: ``ErpFileReader.fetch`` alone, streamed;
* ``land``: read and land the raw records (``erp raw``);
* ``normalize``: the landing read back and normalized (Shopify names resolved through the
  store, which holds a Shopify order for every second name), nothing written;
* ``normalize_upsert``: the same, upserted in frames and rejects recorded (``erp
  normalize + upsert``).

The store is a temporary SQLite file unless ``--store URL`` names another (e.g. PostgreSQL;
it must be empty). Prints progress and each phase's seconds and µs per row, then as its last
line one JSON object::

    {"rows": ..., "read_s": ..., "land_s": ..., "normalize_s": ..., "normalize_upsert_s": ...,
     "wall_s": ..., "peak_rss_mb": ..., "rejected": ...}

``wall_s`` is ``land_s + normalize_upsert_s`` (the two steps of a sync); ``peak_rss_mb``
the process's peak resident memory. Exits with status 1 when the peak exceeds
``--max-rss-mb`` (1024 by default: the acceptance bound).

    PYTHONPATH=. python bench/bench_erp_csv.py [--rows 1000000] [--store URL]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa

from orders_etl.canonical import OrderRow
from orders_etl.model import Reject
from orders_etl.sources.base import batches
from orders_etl.sources.erp_files import ErpFileReader, load_dialect, normalize
from orders_etl.store import OrderStore
from orders_etl.store.frames import canonical_text, rows_to_table

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


class Phases:
    """Times phases and prints each one's seconds and microseconds per row."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.seconds: dict[str, float] = {}

    def run(self, name: str, work):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        result = work()
        seconds = self.seconds[name] = time.perf_counter() - began
        log(
            f"{name}: {seconds:.1f} s, {seconds / self.rows * 1e6:.1f} µs/row; "
            f"peak RSS so far {peak_rss_mb():.0f} MB"
        )
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--store", metavar="URL", help="an empty store to use (default: a temporary SQLite file)"
    )
    parser.add_argument("--max-rss-mb", type=float, default=1024.0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_erp_csv_") as folder:
        export = Path(folder) / "erp_orders.csv"
        dialect_path = Path(folder) / "dialect.toml"
        dialect_path.write_text(DIALECT, encoding="utf-8")
        began = time.perf_counter()
        generate(export, args.rows)
        log(f"export: {export.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - began:.1f} s")

        dialect = load_dialect(dialect_path)
        store = OrderStore.from_url(args.store or f"sqlite:///{Path(folder) / 'bench.db'}")
        store.upsert_frames("shopify", shopify_frames(args.rows))
        phases = Phases(args.rows)

        def read() -> int:
            records = ErpFileReader(export, dialect).fetch(None, None, log)
            return sum(1 for record in records if "error" in record.payload)

        def land() -> int:
            return store.land_raw("erp_files", ErpFileReader(export, dialect).fetch(None, None, log))

        def landed():  # type: ignore[no-untyped-def]
            return (
                record for chunk in store.iter_raw("erp_files") for record in chunk
            )  # streamed, as a sync

        def normalized(records):  # type: ignore[no-untyped-def]
            return normalize(records, dialect=dialect, resolve_names=store.shopify_ids_by_name)

        def normalize_only() -> collections.Counter[str]:
            return collections.Counter(type(item).__name__ for item in normalized(landed()))

        def normalize_upsert() -> tuple[int, int]:
            orders = rejected = 0

            def frames() -> Iterator[pa.Table]:
                nonlocal orders, rejected
                for batch in batches(normalized(landed()), 20_000):
                    store.record_rejects(batch.rejects)
                    rejected += len(batch.rejects)
                    rows = [*batch.rows, *map(canonical_text, batch.orders)]
                    orders += len(rows)
                    yield rows_to_table(rows)

            store.upsert_frames("erp_files", frames())
            return orders, rejected

        unreadable = phases.run("read", read)
        landed_count = phases.run("land", land)
        kinds = phases.run("normalize", normalize_only)
        orders, rejected = phases.run("normalize_upsert", normalize_upsert)
        store.dispose()

    peak = peak_rss_mb()
    fast = kinds[OrderRow.__name__] / max(orders, 1)
    log(
        f"{landed_count} records landed ({unreadable} unreadable rows); {orders} orders "
        f"({fast:.1%} by the fast path), {rejected} rejected ({kinds[Reject.__name__]} when only normalized)"
    )
    wall = phases.seconds["land"] + phases.seconds["normalize_upsert"]
    print(
        json.dumps(
            {"rows": args.rows}
            | {f"{name}_s": round(seconds, 1) for name, seconds in phases.seconds.items()}
            | {"wall_s": round(wall, 1), "peak_rss_mb": round(peak, 1), "rejected": rejected}
        )
    )
    return 0 if peak <= args.max_rss_mb else 1


if __name__ == "__main__":
    sys.exit(main())
