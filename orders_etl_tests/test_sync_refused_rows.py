"""A row of a fast mapping that the store's boundary checks refuse costs that order only:
the step quarantines it with the store's reason and normalizes the window again without it."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from orders_etl.canonical import ROW_INDEX
from orders_etl.defs import sync
from orders_etl.model import Source
from orders_etl.store import OrderStore, RawRecord
from orders_etl.store.frames import canonical_text
from orders_etl_tests.factories import BASE_TIME, order


def test_a_row_the_store_refuses_is_quarantined_and_the_others_are_stored(store: OrderStore) -> None:
    store.land_raw("shopify", [RawRecord(key, BASE_TIME, {"key": key}) for key in ("1", "2", "3")])

    def normalize(records):  # a (buggy) fast mapping: order 2's amount has too many decimals
        for record in records:
            row = list(canonical_text(order(record.record_key, currency="USD")))
            if record.record_key == "2":
                row[ROW_INDEX["total_amount"]] = "12.345"
            yield tuple(row)

    outcomes = []

    @dg.asset
    def step(context) -> None:
        window = sync.SyncWindow(BASE_TIME, BASE_TIME + timedelta(days=1), timedelta(0), from_beginning=True)
        outcomes.append(sync.normalize_window(context, store, Source.SHOPIFY, window, normalize))

    assert dg.materialize([step]).success
    assert sorted(store.read_table("source_orders")["external_id"]) == ["1", "3"]
    rejects = store.read_table("order_rejects")
    assert rejects["record_key"].tolist() == ["2"]
    assert "total_amount" in rejects["reason"].iloc[0] and "12.345" in rejects["reason"].iloc[0]
    assert outcomes[0].rejected == 1 and outcomes[0].counts.inserted + outcomes[0].counts.unchanged == 2
