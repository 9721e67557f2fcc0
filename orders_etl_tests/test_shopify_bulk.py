"""Bulk operations: the JSONL parser (child lines joined), the file reader, and the API round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orders_etl.model import OrderRecord, Reject
from orders_etl.sources.base import CredentialRejected, SourceError
from orders_etl.sources.shopify import ShopifyBulkFileReader, normalize
from orders_etl.sources.shopify.bulk import BulkFileStats, iter_bulk_file
from orders_etl.store import RawRecord
from orders_etl.store.landing import load_payload
from orders_etl_tests.fake_shopify import FakeShopify, api_reader, make_order, make_orders, node_key

START = datetime(2026, 3, 1, tzinfo=UTC)


def write_lines(path: Path, lines: list[object]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def order_line(legacy_id: int, minutes: int = 0) -> dict:
    return make_order(legacy_id, updated_at=START + timedelta(minutes=minutes))


def sent_payload(record: RawRecord) -> object:
    """What a fetched record lands: an ordinary bulk line comes as its text, as received."""
    return record.payload if record.text is None else load_payload(record.text)


def test_child_lines_are_joined_to_their_parent_wherever_they_are(tmp_path):
    o1, o2 = order_line(1), order_line(2)
    fo = {"id": "gid://shopify/FulfillmentOrder/31", "status": "CLOSED", "__parentId": o1["id"]}
    lines = [
        # groupObjects=false: a child may come before its parent
        {"id": "gid://shopify/LineItem/12", "name": "Mug", "quantity": 2, "__parentId": o1["id"]},
        o1,
        {"id": "gid://shopify/LineItem/21", "name": "Tee", "quantity": 1, "__parentId": o2["id"]},
        o2,
        {"id": "gid://shopify/FulfillmentOrderLineItem/311", "totalQuantity": 2, "__parentId": fo["id"]},
        fo,
        {"id": "gid://shopify/LineItem/11", "name": "Pen", "quantity": 5, "__parentId": o1["id"]},
        {"__typename": "Refund", "id": "gid://shopify/Refund/91", "__parentId": o2["id"]},
        "",
    ]
    stats = BulkFileStats()
    items = list(iter_bulk_file(write_lines(tmp_path / "r.jsonl", lines), stats))
    assert [item.line for item in items] == [2, 4]
    first, second = items[0].node, items[1].node
    assert [li["name"] for li in first["lineItems"]] == ["Mug", "Pen"]  # in line order
    assert "__parentId" not in first["lineItems"][0]
    grandchild = {"id": "gid://shopify/FulfillmentOrderLineItem/311", "totalQuantity": 2}
    assert first["fulfillmentOrders"] == [
        {"id": fo["id"], "status": "CLOSED", "fulfillmentOrderLineItems": [grandchild]}
    ]
    assert second["lineItems"][0]["name"] == "Tee" and second["refunds"][0]["id"].endswith("/91")
    assert first["totalPriceSet"] == o1["totalPriceSet"]  # the parent itself is untouched
    assert (stats.objects, stats.children, stats.roots) == (8, 6, 2)


def test_children_listed_inline_and_as_lines_end_up_in_one_list(tmp_path):
    parent = order_line(1)
    parent["fulfillments"] = [
        {
            "displayStatus": "DELIVERED",
            "createdAt": "2026-03-01T00:00:00Z",
            "deliveredAt": None,
            "trackingInfo": [],
        }
    ]
    child = {
        "id": "gid://shopify/Fulfillment/8",
        "displayStatus": "IN_TRANSIT",
        "createdAt": "2026-03-02T00:00:00Z",
        "deliveredAt": None,
        "trackingInfo": [{"number": "Z9", "company": "DHL"}],
        "__parentId": parent["id"],
    }
    (item,) = list(iter_bulk_file(write_lines(tmp_path / "r.jsonl", [parent, child])))
    assert [f["displayStatus"] for f in item.node["fulfillments"]] == ["DELIVERED", "IN_TRANSIT"]


def test_malformed_and_orphan_lines_are_handed_on_not_dropped(tmp_path):
    lines = [
        order_line(1),
        '{"id": "gid://shopify/Order/2", "legacyResourceId": "2", "name": "#10',  # cut mid-line
        "[1, 2, 3]",
        {"id": "gid://shopify/LineItem/7", "__parentId": "gid://shopify/Order/404"},
        order_line(3),
    ]
    items = list(iter_bulk_file(write_lines(tmp_path / "r.jsonl", lines)))
    assert [(i.line, i.problem is None) for i in items] == [
        (1, True),
        (2, False),
        (3, False),
        (5, True),
        (4, False),
    ]
    assert items[1].problem["_unparsed_line"].startswith('{"id": "gid://shopify/Order/2"')
    assert items[1].problem["_line"] == 2 and "JSONDecodeError" in items[1].problem["_error"]
    assert items[4].problem["_parentId"] == "gid://shopify/Order/404"


def test_bulk_file_reader_filters_the_window_and_quarantines_bad_lines(tmp_path):
    test_order = order_line(4, minutes=30)
    test_order["test"] = True
    lines = [
        order_line(1, minutes=0),
        order_line(2, minutes=60),
        order_line(3, minutes=120),
        test_order,
        "{oops",
    ]
    reader = ShopifyBulkFileReader(write_lines(tmp_path / "shopify_orders.jsonl", lines))
    window = list(reader.fetch(START + timedelta(minutes=60), START + timedelta(minutes=120)))
    assert [r.record_key for r in window] == [
        "2",
        "line:5",
    ]  # half-open; a bad line cannot be placed, so it is kept
    everything = list(reader.fetch(None, None))
    assert [r.record_key for r in everything] == ["1", "2", "3", "4", "line:5"]
    assert reader.last_fetch.complete and reader.last_fetch.max_updated_at == START + timedelta(minutes=120)
    assert list(reader.deleted(None, None)) == []
    items = list(normalize(everything))
    assert [type(i).__name__ for i in items] == [
        "tuple",  # ordinary lines: the fast mapping (an OrderRow)
        "tuple",
        "tuple",
        "Skipped",
        "Reject",
    ]
    assert items[4].record_key == "line:5" and "bulk file line 5 is not a JSON object" in items[4].reason


def test_missing_bulk_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="SHOPIFY_BULK_FILE"):
        list(ShopifyBulkFileReader(tmp_path / "nope.jsonl").fetch(None, None))


def test_fake_bulk_output_with_nested_connections_round_trips(tmp_path):
    """A real-shaped result (the fake flattens connections as Shopify does) parses back."""
    orders = make_orders(20, start=START)
    for index, order in enumerate(orders):
        items = [
            {"id": f"gid://shopify/LineItem/{index}{n}", "name": f"item {n}", "quantity": n} for n in (1, 2)
        ]
        order["lineItems"] = {"edges": [{"node": item} for item in items]}
    query = (
        "{ orders { edges { node { id legacyResourceId "
        "lineItems(first: 5) { edges { node { id name quantity } } } } } } }"
    )
    with FakeShopify(orders, bulk_children_first=True) as fake:
        operation = fake.run_bulk(query)["bulkOperation"]
        while fake.poll_bulk(operation["id"])["status"] != "COMPLETED":
            pass
        path = tmp_path / "bulk.jsonl"
        path.write_bytes(fake.bulk_results["1"])
    raw = path.read_text().splitlines()
    assert len(raw) == 60 and sum('"__parentId"' in line for line in raw) == 40
    assert '"__parentId"' in raw[0]  # children first: the parser must not rely on order
    parsed = [item.node for item in iter_bulk_file(path)]
    assert [n["legacyResourceId"] for n in parsed] == [o["legacyResourceId"] for o in orders]
    assert all([li["quantity"] for li in n["lineItems"]] == [1, 2] for n in parsed)


# ---------------------------------------------------------------------------------------
# Bulk operations through the API


def bulk_reader(fake, **overrides):
    return api_reader(fake, bulk_threshold=100, **overrides)


def test_large_window_is_read_with_a_bulk_operation_end_to_end():
    orders = make_orders(400, start=START)
    with FakeShopify(orders) as fake:
        with bulk_reader(fake) as reader:
            lines: list[str] = []
            records = list(reader.fetch(None, None, lines.append))
        with api_reader(fake) as pager:
            paged = list(pager.fetch(None, None))
    assert reader.last_fetch.mode == "bulk" and reader.last_fetch.complete
    assert any("reading them by a bulk operation (bulk threshold 100)" in line for line in lines)
    assert pager.last_fetch.mode == "paging"
    assert {r.record_key: sent_payload(r) for r in records} == {r.record_key: r.payload for r in paged}
    assert len(records) == 400 and fake.stats.downloads == 1
    # The result URL is a storage host: the shop's token must not travel there.
    assert all("x-shopify-access-token" not in headers for headers in fake.download_headers)
    items = list(normalize(records))
    stored = sum(type(i) is tuple or isinstance(i, OrderRecord) for i in items)  # rows and records
    assert stored == sum(not o["test"] for o in orders)


def test_bulk_waits_for_an_operation_already_running():
    with FakeShopify(make_orders(150, start=START), bulk_busy=2) as fake, bulk_reader(fake) as reader:
        lines: list[str] = []
        records = list(reader.fetch(None, None, lines.append))
    assert len(records) == 150
    assert sum("already running" in line for line in lines) == 2


def test_failed_bulk_operation_falls_back_to_paging_not_to_partial_data():
    fake = FakeShopify(make_orders(150, start=START), bulk_outcome="FAILED", bulk_error_code="TIMEOUT")
    with fake, bulk_reader(fake) as reader:
        lines: list[str] = []
        records = list(reader.fetch(None, None, lines.append))
    assert len({r.record_key for r in records}) == 150
    assert reader.last_fetch.mode == "paging (bulk failed)" and reader.last_fetch.complete
    assert any("FAILED (TIMEOUT)" in line and "partial data is not used" in line for line in lines)
    assert fake.stats.downloads == 0


def test_bulk_access_denied_names_the_missing_scope():
    fake = FakeShopify(make_orders(150, start=START), bulk_outcome="FAILED", bulk_error_code="ACCESS_DENIED")
    with fake, bulk_reader(fake) as reader, pytest.raises(CredentialRejected, match="read_orders"):
        list(reader.fetch(None, None))


@pytest.mark.parametrize("fault", ["truncated", "short", "503"])
def test_cut_or_failed_download_is_retried(fault):
    with FakeShopify(make_orders(150, start=START)) as fake, bulk_reader(fake) as reader:
        fake.download_faults = [fault]
        records = list(reader.fetch(None, None))
    assert len(records) == 150 and fake.stats.downloads == 2
    assert reader.client.stats.retries == 1


def test_result_with_fewer_objects_than_reported_fails_the_window():
    with FakeShopify(make_orders(150, start=START)) as fake, bulk_reader(fake) as reader:
        honest = fake.poll_bulk

        def overstating(operation_id):
            operation = honest(operation_id)
            if operation and operation["status"] == "COMPLETED":
                operation["objectCount"] = "151"
            return operation

        fake.poll_bulk = overstating
        with pytest.raises(SourceError, match="incomplete"):
            list(reader.fetch(None, None))
        assert reader.last_fetch.complete is False


def test_small_window_pages_instead(tmp_path):
    with FakeShopify(make_orders(150, start=START)) as fake, bulk_reader(fake) as reader:
        lines: list[str] = []
        records = list(reader.fetch(START, START + timedelta(minutes=10), lines.append))
    assert len(records) == 30 and reader.last_fetch.mode == "paging"
    assert any("30 orders updated in" in line and "by paging" in line for line in lines)
    assert {node_key(r.payload) for r in records} == {r.record_key for r in records}
    assert not any(isinstance(i, Reject) for i in normalize(records))
