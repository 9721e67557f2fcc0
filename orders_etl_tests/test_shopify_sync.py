"""Sync-level guarantees of the Shopify source, proven against the fake Admin API.

The cursor itself belongs to the Dagster layer; ``sync_once`` below does what it does with
the reader's contract (land, normalize, upsert, then advance the high-water mark to
``last_fetch.window_end`` only when the fetch completed), so the guarantees are shown end to
end on a real store.
"""

from __future__ import annotations

import traceback
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from orders_etl.sources.base import CredentialRejected, SourceError, batches
from orders_etl.sources.shopify import normalize
from orders_etl.store.frames import canonical_text, rows_to_table
from orders_etl_tests.fake_shopify import FakeShopify, Faults, api_reader, make_orders, node_key

START = datetime(2026, 3, 1, tzinfo=UTC)
TOKEN = "shpat_5ecr3t_t0ken_that_must_never_show_1f2e3d"


def sync_once(reader, store, log) -> None:
    """One sync as the Dagster layer runs it: the cursor moves only after everything is stored."""
    start = store.high_water_mark("shopify")
    records = list(reader.fetch(start, None, log))  # raises SourceError: nothing stored, cursor kept
    assert reader.last_fetch.complete
    store.land_raw("shopify", records)
    for batch in batches(normalize(records)):  # rows (fast mapping) and records, one frame
        store.upsert_frames("shopify", [rows_to_table([*batch.rows, *map(canonical_text, batch.orders)])])
        store.record_rejects(batch.rejects)
    store.mark_deleted("shopify", dict(reader.deleted(start, reader.last_fetch.window_end, log)))
    store.advance_high_water_mark("shopify", reader.last_fetch.window_end)


def test_ten_thousand_orders_through_twenty_percent_faults_arrive_exactly_once():
    orders = make_orders(10_000, start=START, step=timedelta(seconds=3))
    faults = Faults(rate=0.20, seed=2026, stall_s=1.0)
    with (
        FakeShopify(orders, faults=faults) as fake,
        api_reader(fake, timeout_s=0.5, max_attempts=10) as reader,
    ):
        records = list(reader.fetch(None, None, lambda _: None))
        served = {node_key(o): o for o in fake.orders.values()}
    keys = [r.record_key for r in records]
    assert len(keys) == len(set(keys))  # no duplicates
    assert set(keys) == set(served)  # exactly the server's orders
    assert all(r.payload == served[r.record_key] for r in records)  # and exactly their content
    assert reader.last_fetch.complete
    injected = sum(fake.stats.faults.values())
    assert injected >= 0.15 * fake.stats.graphql  # the faults really happened...
    assert set(fake.stats.faults) == set(faults.kinds)  # ...of every kind
    assert reader.client.stats.retries >= injected  # and each was retried


def test_cursor_moves_only_when_the_whole_window_is_stored(store):
    orders = make_orders(120, start=START)
    lines: list[str] = []
    with (
        FakeShopify(orders) as fake,
        api_reader(fake, max_attempts=3, now=lambda: START + timedelta(days=1)) as reader,
    ):
        fake.after_orders_page = lambda pages: fake.fail_next("503", times=50) if pages == 2 else None
        with pytest.raises(SourceError, match="failed 3 times"):
            sync_once(reader, store, lines.append)
        assert store.high_water_mark("shopify") is None  # retries spent: the run failed, cursor stays
        assert store.count("source_orders") == 0

        fake.after_orders_page = None
        fake.scripted.clear()
        sync_once(reader, store, lines.append)
    assert store.high_water_mark("shopify") == START + timedelta(days=1)
    expected = {node_key(o) for o in orders if not o["test"]}
    assert set(store.read_table("source_orders")["external_id"]) == expected


def test_orders_updated_while_paging_are_not_missed(store):
    """Orders change between pages; two consecutive syncs end with every order's newest version."""
    clock = {"now": START + timedelta(hours=1)}
    orders = make_orders(300, start=START, step=timedelta(seconds=10))  # updated over the first 50 min
    fake = FakeShopify(orders, now=lambda: clock["now"] + timedelta(seconds=5))
    changed = ["5010", "5150", "5290"]  # one already read, one being read around, one not yet read

    def merchant_edits(pages: int) -> None:
        if pages == 6:  # 150 of 300 orders read
            for legacy_id in changed:
                fake.update_order(legacy_id, displayFinancialStatus="REFUNDED")

    fake.after_orders_page = merchant_edits
    with fake, api_reader(fake, now=lambda: clock["now"], overlap=timedelta(minutes=5)) as reader:
        sync_once(reader, store, lambda _: None)
        first = store.read_table("source_orders").set_index("external_id")
        # After the first sync: 5010 was read before its edit (old version); 5290 was edited
        # before being read and left the window (it is now newer than the window's end).
        assert pd.isna(first.loc["5010", "payment_status"]) and "5290" not in first.index
        fake.after_orders_page = None
        clock["now"] += timedelta(minutes=10)
        sync_once(reader, store, lambda _: None)
        server = {node_key(o): o for o in fake.orders.values() if not o["test"]}
    stored = store.read_table("source_orders").set_index("external_id")
    assert set(stored.index) == set(server)
    for legacy_id in changed:
        assert stored.loc[legacy_id, "payment_status"] == "refunded", legacy_id
        assert stored.loc[legacy_id, "updated_at"] == datetime.fromisoformat(server[legacy_id]["updatedAt"])


def test_destroyed_orders_are_marked_deleted_not_dropped(store):
    orders = make_orders(10, start=START)
    orders = [o for o in orders if not o["test"]]
    clock = {"now": START + timedelta(days=1)}
    with FakeShopify(orders) as fake, api_reader(fake, now=lambda: clock["now"]) as reader:
        sync_once(reader, store, lambda _: None)
        deleted_at = START + timedelta(days=1, hours=2)
        fake.destroy_order(orders[3]["legacyResourceId"], at=deleted_at)
        other_events = [
            (1, "create", orders[4]["id"], "ORDER"),
            (2, "destroy", "gid://shopify/Product/9", "PRODUCT"),
        ]
        for number, action, subject, kind in other_events:
            fake.add_event(
                {
                    "id": f"gid://shopify/BasicEvent/{number}",
                    "action": action,
                    "createdAt": "2026-03-02T01:00:00Z",
                    "subjectId": subject,
                    "subjectType": kind,
                    "message": "not an order deletion",
                }
            )
        assert list(reader.deleted(START + timedelta(days=1), START + timedelta(days=2))) == [
            (orders[3]["legacyResourceId"], deleted_at)
        ]
        clock["now"] = START + timedelta(days=2)
        sync_once(reader, store, lambda _: None)
    table = store.read_table("orders").set_index("external_id")
    assert len(table) == len(orders)  # the row stays...
    assert table.loc[orders[3]["legacyResourceId"], "deleted_at"] == deleted_at  # ...marked deleted
    assert table["deleted_at"].notna().sum() == 1


def test_the_token_never_appears_in_logs_messages_or_reprs(store):
    lines: list[str] = []
    texts: list[str] = []
    orders = make_orders(60, start=START)
    orders[5]["name"] = None  # one reject, whose reason and payload are stored
    with FakeShopify(orders, access_token=TOKEN) as fake:
        with api_reader(fake, access_token=TOKEN) as reader:
            fake.scripted = ["503", "truncated", "cut_json"]
            sync_once(reader, store, lines.append)
            texts += [repr(reader), repr(reader.client), str(reader.last_fetch)]
            fake.fail_next("500", times=20)
            with pytest.raises(SourceError) as exhausted:
                api_reader(fake, access_token=TOKEN, max_attempts=2).client.execute("{ shop { id } }")
            texts += [str(exhausted.value), "".join(traceback.format_exception(exhausted.value))]
        with (
            api_reader(fake, access_token=TOKEN + "-revoked") as wrong,
            pytest.raises(CredentialRejected) as refused,
        ):
            list(wrong.fetch(None, None, lines.append))
        texts += [str(refused.value), "".join(traceback.format_exception(refused.value)), repr(wrong)]
    rejects = store.read_table("order_rejects")
    texts += (
        list(rejects["reason"]) + list(rejects["payload"]) + list(store.read_table("raw_orders")["payload"])
    )
    assert len(rejects) == 1 and any("retry" in line for line in lines)  # the paths really ran
    assert "SHOPIFY_ACCESS_TOKEN" in str(refused.value)
    for text in lines + texts:
        assert TOKEN not in text


def test_client_secret_and_issued_tokens_never_appear_either():
    secret = "cc-secret-do-not-print-77"
    fake = FakeShopify(make_orders(40, start=START), access_token=None, client_id="app", client_secret=secret)
    lines: list[str] = []
    with fake, api_reader(fake, client_id="app", client_secret=secret) as reader:
        fake.fail_next("502", 2)
        records = list(reader.fetch(None, None, lines.append))
        issued = list(fake.issued_tokens)
        texts = [repr(reader), repr(reader.client), repr(reader.client._auth), *lines]
    assert len(records) == 40 and issued
    for text in texts:
        assert secret not in text and all(token not in text for token in issued)


def test_every_non_test_order_is_stored_and_bad_ones_are_quarantined(store):
    orders = make_orders(200, start=START)
    orders[7]["totalPriceSet"]["shopMoney"]["amount"] = "12,00"
    orders[9]["legacyResourceId"] = "gid://shopify/Order/5010"
    with FakeShopify(orders) as fake, api_reader(fake) as reader:
        sync_once(reader, store, lambda _: None)
    rejects = store.read_table("order_rejects")
    assert sorted(rejects["record_key"]) == ["5008", "gid://shopify/Order/5010"]
    good = {node_key(o) for o in orders if not o["test"]} - {"5008", "gid://shopify/Order/5010"}
    assert set(store.read_table("source_orders")["external_id"]) == good
