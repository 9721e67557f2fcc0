"""Benchmark: a large ERP CSV export read and normalized in bounded memory.

Generates an export in the European flavour (cp1252, ``;``, ``1.234,56``, ``dd.MM.yyyy``,
Europe/Berlin) into a temporary folder, then streams it through ``ErpFileReader`` and
``normalize`` (and, with ``--store URL``, upserts it and records the rejects). Planted in
the export: one truncated row per 100,000 and one unknown status per 50,000, which must come
out as rejects. Prints progress, then as its last line one JSON object:

    {"rows": ..., "wall_s": ..., "peak_rss_mb": ..., "rejected": ...}

``rows`` are the export's data rows, ``wall_s`` the time to read and normalize (and store)
them, excluding the generation; ``peak_rss_mb`` the process's peak resident memory. Exits
with status 1 when the peak exceeds ``--max-rss-mb`` (1024 by default: the acceptance bound).

    PYTHONPATH=. python bench/bench_erp_csv.py [--rows 1000000] [--store sqlite:///bench.db]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from orders_etl.model import OrderRecord, Reject
from orders_etl.sources.base import batches
from orders_etl.sources.erp_files import ErpFileReader, load_dialect, normalize
from orders_etl.store import OrderStore

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


def resolve_names(names: Iterable[str]) -> dict[str, str]:
    """Half the Shopify names are known (even numbers), as if the store held those orders."""
    found = {}
    for name in names:
        number = int(name.lstrip("#"))
        if number % 2 == 0:
            found[name] = str(SHOPIFY_ID_BASE + number)
    return found


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--store", metavar="URL", help="also upsert into this store (e.g. sqlite:///bench.db)"
    )
    parser.add_argument("--max-rss-mb", type=float, default=1024.0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_erp_csv_") as folder:
        export = Path(folder) / "erp_orders.csv"
        dialect_path = Path(folder) / "dialect.toml"
        dialect_path.write_text(DIALECT, encoding="utf-8")
        began = time.perf_counter()
        generate(export, args.rows)
        log(
            f"export: {export.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - began:.1f} s; "
            f"peak RSS so far {peak_rss_mb():.0f} MB"
        )

        dialect = load_dialect(dialect_path)
        store = OrderStore.from_url(args.store) if args.store else None
        orders = rejected = 0
        total = Decimal(0)
        began = time.perf_counter()
        records = ErpFileReader(export, dialect).fetch(None, None, log)
        normalized = normalize(records, dialect=dialect, resolve_names=resolve_names)
        if store is None:
            for item in normalized:
                if isinstance(item, OrderRecord):
                    orders += 1
                    total += item.total_amount
                elif isinstance(item, Reject):
                    rejected += 1
        else:
            for batch in batches(normalized):
                counts = store.upsert("erp_files", batch.orders)
                store.record_rejects(batch.rejects)
                orders += len(batch.orders)
                total += sum((o.total_amount for o in batch.orders), Decimal(0))
                rejected += len(batch.rejects)
                log(f"stored {orders} orders ({counts.inserted} new in this batch), {rejected} rejects")
            store.dispose()
        wall = time.perf_counter() - began

    peak = peak_rss_mb()
    log(f"{orders} orders (sum of totals {total}), {rejected} rejected, {args.rows / wall:,.0f} rows/s")
    print(
        json.dumps(
            {"rows": args.rows, "wall_s": round(wall, 1), "peak_rss_mb": round(peak, 1), "rejected": rejected}
        )
    )
    return 0 if peak <= args.max_rss_mb else 1


if __name__ == "__main__":
    sys.exit(main())
