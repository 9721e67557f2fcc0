"""The Shopify source's per-order Python work at scale: reading a bulk file, and normalizing.

Generates (before any timer, or reuses with ``--data``) a Shopify bulk-operation result of N
orders with the samples' generator (``data/samples/generate.py``), then measures:

* ``read``: ``ShopifyBulkFileReader.fetch`` over the whole file, every record consumed (what
  the ``shopify raw`` step does before the landing writes);
* ``normalize``: ``normalize`` over the records as landed (``LandedRecord`` with the landed
  text, built untimed in chunks of 100k so memory stays flat), every item consumed (what the
  ``shopify normalize`` step does before the store's frames and writes).

Prints per stage the seconds, µs per order (wall and CPU: the box may be shared) and how
many records took the fast path; the last line is one JSON object.

    python bench/bench_shopify_normalize.py [--n 1000000] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data" / "samples"))

import generate  # noqa: E402 (the samples' generator lives next to the samples)

from orders_etl.sources.shopify import ShopifyBulkFileReader, normalize  # noqa: E402
from orders_etl.store import LandedRecord, RawRecord  # noqa: E402
from orders_etl.store.landing import dump_payload  # noqa: E402

CHUNK = 100_000


class Timer:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def _report(stage: str, timer: Timer, count: int, detail: str) -> dict[str, float]:
    wall_us, cpu_us = timer.wall / count * 1e6, timer.cpu / count * 1e6
    print(
        f"{stage:10s} {count:>9,} records  {timer.wall:7.2f} s  {wall_us:6.2f} µs/order wall  "
        f"{cpu_us:6.2f} µs/order CPU  ({detail})"
    )
    return {
        f"{stage}_s": round(timer.wall, 2),
        f"{stage}_us": round(wall_us, 2),
        f"{stage}_cpu_us": round(cpu_us, 2),
    }


def _landed(records: Iterator[RawRecord]) -> Iterator[LandedRecord]:
    for raw_id, record in enumerate(records, start=1):
        text = record.text if record.text is not None else dump_payload(record.payload)
        yield LandedRecord(record.record_key, record.updated_at, raw_id=raw_id, text=text)


def run(path: Path) -> dict[str, float]:
    reader = ShopifyBulkFileReader(path)
    count = fast = 0
    with Timer() as read:
        for record in reader.fetch(None, None):
            count += 1
            fast += record.text is not None
    result = _report("read", read, count, f"{fast:,} ordinary lines kept as text")

    outcomes: Counter[str] = Counter()
    records = _landed(reader.fetch(None, None))
    normalized = Timer()
    while chunk := list(islice(records, CHUNK)):
        with normalized:
            items = list(normalize(chunk))
        outcomes.update(type(item).__name__ for item in items)
    detail = ", ".join(f"{n:,} {kind}" for kind, n in outcomes.most_common())
    result |= _report("normalize", normalized, sum(outcomes.values()), detail)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="orders (default %(default)s)")
    parser.add_argument("--data", type=Path, help="keep (and reuse) the generated file in DIR/<n>")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = (args.data or Path(scratch)) / str(args.n)
        path = folder / generate.SHOPIFY_FILE
        if not path.is_file():
            print(f"generating {args.n:,} orders in {folder} ...", flush=True)
            generate.write_samples(folder, args.n)
        print(json.dumps({"n": args.n, **run(path)}))


if __name__ == "__main__":
    main()
