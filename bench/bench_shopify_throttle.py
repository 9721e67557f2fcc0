"""How close does a paging sync run to the shop's rate limit?

Runs the fake Admin API (real HTTP on 127.0.0.1) with a cost bucket refilling at R points/s,
syncs every order through ``ShopifyApiReader`` and compares the wall time with the time the
bucket makes unavoidable, ``total actual query cost / R``. A connector that waits too little
gets THROTTLED and retries; one that waits too much (or backs off blindly) is slow. Target:
``ratio <= 1.15`` with no order lost. The bucket starts full, as Shopify's does, so a ratio a
little under 1 is expected: the first ``maximumAvailable`` points are free.

    PYTHONPATH=. python bench/bench_shopify_throttle.py [--orders 3000] [--restore-rate 2000]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orders_etl.sources.shopify import ShopifyApiReader
from orders_etl_tests.fake_shopify import FakeShopify, make_orders, node_key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument(
        "--restore-rate", type=float, default=2000.0, help="points per second (Shopify Plus: 1000)"
    )
    parser.add_argument("--bucket", type=float, default=1000.0, help="maximumAvailable points")
    parser.add_argument("--page-size", type=int, default=None, help="orders per page (default: the reader's)")
    args = parser.parse_args()

    orders = make_orders(args.orders, seed=11)
    with FakeShopify(orders, restore_rate=args.restore_rate, maximum_available=args.bucket) as fake:
        options = {"page_size": args.page_size} if args.page_size else {}
        with ShopifyApiReader(
            fake.url, access_token=fake.access_token, bulk_threshold=10**9, **options
        ) as reader:
            started = time.monotonic()
            records = list(reader.fetch(None, None, lambda _: None))
            wall = time.monotonic() - started
        served = {node_key(order) for order in fake.orders.values()}
        stats = fake.stats

    keys = [record.record_key for record in records]
    theoretical = stats.cost_actual / args.restore_rate
    figures = {
        "orders": len(set(keys)),
        "requests": stats.graphql,
        "page_size": reader.page_size,
        "restore_rate": args.restore_rate,
        "maximum_available": args.bucket,
        "total_cost": stats.cost_actual,
        "theoretical_s": round(theoretical, 3),
        # The stricter floor: the bucket starts full, so its first points cost no waiting.
        "floor_after_full_bucket_s": round(max(stats.cost_actual - args.bucket, 0) / args.restore_rate, 3),
        "wall_s": round(wall, 3),
        "ratio": round(wall / theoretical, 3),
        "client_wait_s": round(reader.client.stats.throttle_wait_s, 3),
        "throttled_responses": stats.throttled,
        "duplicates": len(keys) - len(set(keys)),
        "lost": len(served - set(keys)),
    }
    for name, value in figures.items():
        print(f"{name:>20}: {value}")
    print(
        json.dumps(
            {
                k: figures[k]
                for k in ("orders", "theoretical_s", "wall_s", "ratio", "throttled_responses", "lost")
            }
        )
    )
    return 0 if figures["lost"] == 0 and figures["ratio"] <= 1.15 else 1


if __name__ == "__main__":
    raise SystemExit(main())
