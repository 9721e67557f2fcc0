"""The raw step lands its input as one stream, so the landing carries what each chunk found
to the next: a first load looks up only its first chunk, a changed export every chunk.

The real asset over a real bulk file into a real store (SQLite and PostgreSQL); the key
lookup is counted where the landing calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from orders_etl.defs.shopify.assets import shopify_raw_orders
from orders_etl.defs.shopify.resources import ShopifyBulkFileResource
from orders_etl.defs.store.resources import StoreResource
from orders_etl.store import landing
from orders_etl.store.landing import LANDING_CHUNK_SIZE

ORDERS = 2 * LANDING_CHUNK_SIZE + 1  # three chunks
WHOLE_RANGE = ("2026-08-31", "2026-11-01")


def write_bulk_file(path: Path, edited: int | None = None) -> None:
    """``ORDERS`` orders of a bulk result, one per line; ``edited``: that one a day later."""
    with path.open("w", encoding="utf-8") as out:
        for n in range(ORDERS):
            updated = "2026-09-02T00:00:00Z" if n == edited else "2026-09-01T00:00:00Z"
            node = {
                "id": f"gid://shopify/Order/{n + 1}",
                "legacyResourceId": str(n + 1),
                "updatedAt": updated,
            }
            out.write(json.dumps(node) + "\n")


def land(path: Path, url: str) -> dict[str, Any]:
    result = dg.materialize(
        [shopify_raw_orders],
        resources={
            "store": StoreResource(database_url=url),
            "shopify": ShopifyBulkFileResource(path=str(path)),
        },
        tags={
            "dagster/asset_partition_range_start": WHOLE_RANGE[0],
            "dagster/asset_partition_range_end": WHOLE_RANGE[1],
        },
    )
    event = result.get_asset_materialization_events()[0]  # (a range run: one per day, alike)
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_a_first_load_looks_up_only_its_first_chunk(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[int] = []
    real = landing._landed_before

    def counted(conn: Any, source: str, keys: list[str]) -> set[tuple[str, str]]:
        looked_up.append(len(keys))
        return real(conn, source, keys)

    monkeypatch.setattr(landing, "_landed_before", counted)
    path = tmp_path / "shopify_orders.jsonl"
    write_bulk_file(path)

    first = land(path, store_url)
    assert (first["fetched"], first["landed"]) == (ORDERS, ORDERS)
    # A step that landed each chunk by a call of its own looked every chunk up: three.
    # PostgreSQL sends the second chunk while the first is in flight, its outcome unknown.
    in_flight_first = 2 if store_url.startswith("postgresql") else 1
    assert looked_up == [LANDING_CHUNK_SIZE] * in_flight_first

    # The export again with one order changed: each chunk holds versions landed before, so
    # each is looked up and only the changed version is sent.
    looked_up.clear()
    write_bulk_file(path, edited=ORDERS // 2)
    again = land(path, store_url)
    assert (again["fetched"], again["landed"]) == (ORDERS, 1)
    assert looked_up == [LANDING_CHUNK_SIZE, LANDING_CHUNK_SIZE, 1]
