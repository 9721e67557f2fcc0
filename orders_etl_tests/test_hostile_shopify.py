"""Hostile input through the Shopify source and the store (SQLite and PostgreSQL).

Two ways in: order nodes as the API reader hands them on (dicts, and whatever else a page's
``nodes`` list may hold), and raw lines of a bulk-operation JSONL file read by the file
reader. Either way every record ends stored, quarantined with a reason, or skipped as a
test order; nothing else in the batch is lost and stored text reads back byte for byte.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orders_etl.canonical import ROW_FIELDS, OrderRow
from orders_etl.model import OrderRecord, Reject, parse_order
from orders_etl.sources.base import Normalized
from orders_etl.sources.shopify import ShopifyBulkFileReader, normalize
from orders_etl.sources.shopify.mapping import FULFILLMENT_STATUSES, PAYMENT_STATUS, ShippingMethods
from orders_etl.sources.shopify.reader import raw_record
from orders_etl.store import LandedRecord, OrderStore, RawRecord
from orders_etl_tests.fake_shopify import fulfillment, iso, make_order
from orders_etl_tests.hostile import (
    NUMERIC_STRINGS,
    _long_text,
    canonical,
    check_batch,
    empty_store,
    fuzz_settings,
    hostile_texts,
    json_text,
    json_values,
    moments,
    run_through_store,
)

SOURCE = "shopify"
START = datetime(2026, 3, 1, tzinfo=UTC)
SHIPPING = ShippingMethods.load()
_VALID_AMOUNTS = {"USD": "100.00", "JPY": "1500", "KWD": "12.125"}
rarely = st.sampled_from([False] * 5 + [True])  # (integers() would favour the boundary)


@st.composite
def order_nodes(draw: st.DrawFn) -> dict[str, Any]:
    """A Shopify order node: valid at heart, with hostile text and some fields replaced."""
    texts = hostile_texts()
    legacy = draw(st.integers(5001, 5006))  # few ids: versions of one order conflict
    updated = draw(moments())
    currency = draw(st.sampled_from(sorted(_VALID_AMOUNTS)))
    node = make_order(
        legacy,
        updated_at=updated,
        currency=currency,
        financial=draw(st.sampled_from([*PAYMENT_STATUS, None])),
        fulfillment=draw(st.sampled_from(sorted(FULFILLMENT_STATUSES))),
        test=draw(st.booleans()) and draw(st.booleans()),
        total=_VALID_AMOUNTS[currency],
        tax=None,
        refunded="0",
        customer_id=draw(st.none() | st.integers(1, 10**12)),
        name=draw(texts) if draw(st.booleans()) else f"#{legacy}",
    )
    if draw(st.booleans()):
        node["shippingLine"] = {"code": draw(st.none() | texts), "title": draw(st.none() | texts)}
    if draw(st.booleans()):
        status = draw(st.sampled_from(["DELIVERED", "IN_TRANSIT"]))
        node["fulfillments"] = [fulfillment(status, updated, draw(texts))]
    if draw(rarely):
        amount = draw(st.sampled_from(NUMERIC_STRINGS) | st.sampled_from([10**20, Decimal("1E+20")]))
        node["totalPriceSet"]["shopMoney"]["amount"] = amount
    if draw(rarely):
        node["updatedAt"] = draw(
            st.sampled_from(["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00", "NaN", iso(updated)])
        )
    if draw(rarely):  # wrong types, arbitrary JSON or nothing at all where a field should be
        for name in draw(st.lists(st.sampled_from(sorted(node)), min_size=1, max_size=3, unique=True)):
            if draw(st.booleans()):
                del node[name]
            else:
                node[name] = draw(json_values())
    if draw(rarely):
        node[draw(st.sampled_from(["__parentId", "_unparsed_line", "extra"]))] = draw(json_values())
    return node


def _record_of(row: OrderRow) -> OrderRecord:
    """The order a row of the fast mapping stands for (check_batch compares OrderRecords;
    test_shopify_fast proves a row is the record path's order as canonical text)."""
    values: dict[str, Any] = dict(zip(ROW_FIELDS, row, strict=True))
    for name in ("created_at", "updated_at", "deleted_at"):
        if values[name] is not None:
            values[name] = datetime.fromisoformat(values[name]).replace(tzinfo=UTC)
    return parse_order(values)


def normalize_to_records(records: list[LandedRecord]) -> list[Normalized]:
    return [_record_of(item) if type(item) is tuple else item for item in normalize(records)]


batches = st.lists(st.one_of(order_nodes(), order_nodes(), order_nodes(), json_values()), max_size=10)


def as_paged(nodes: list[Any]) -> list[RawRecord]:
    """What the paging reader yields for a page holding ``nodes``."""
    return [
        raw_record(node) if isinstance(node, dict) else RawRecord(f"page:1:{i}", None, node)
        for i, node in enumerate(nodes, start=1)
    ]


def check_texts_as_sent(outcome) -> None:
    """Each stored order's texts are the node's, as the mapping policy says (number verbatim)."""
    for landed, item in outcome.pairs():
        if not isinstance(item, OrderRecord):
            continue
        node = landed.payload
        assert item.number.encode() == node["name"].encode()
        assert item.external_id == str(node["legacyResourceId"])
        trackings = [
            info["number"].strip()
            for f in node.get("fulfillments") or []
            for info in f.get("trackingInfo") or []
            if isinstance(info, dict) and isinstance(info.get("number"), str)
        ]
        assert item.tracking_number is None or item.tracking_number in trackings
        line = node.get("shippingLine")
        expected = SHIPPING.code_for(line.get("code"), line.get("title")) if line else None
        assert item.shipping_method == expected


def assert_keyless_records_keep_their_own_reject(outcome) -> None:
    """Records without an id of their own get made-up keys, which must not collide: one
    reject row per key means a shared key would keep only the last record's reject."""
    keyless = [r for r in outcome.landed if isinstance(r.payload, dict) and not _has_id(r.payload)]
    assert len({r.record_key for r in keyless}) == len({canonical(r.payload) for r in keyless})


def _has_id(node: dict[str, Any]) -> bool:
    return any(
        isinstance(node.get(name), str | int) and str(node[name]).strip()
        for name in ("legacyResourceId", "id")
    )


@fuzz_settings(150)
@given(nodes=batches)
def test_any_nodes_end_stored_or_quarantined(store: OrderStore, nodes: list[Any]) -> None:
    empty_store(store)
    outcome = run_through_store(store, SOURCE, as_paged(nodes), normalize_to_records)
    check_batch(store, SOURCE, outcome)
    assert_keyless_records_keep_their_own_reject(outcome)
    check_texts_as_sent(outcome)


# ---------------------------------------------------------------------------------------
# Raw bulk JSONL lines


@st.composite
def bulk_lines(draw: st.DrawFn) -> bytes:
    """One line of a bulk result file (without its line break), from good to garbage."""
    kind = draw(
        st.sampled_from(["node", "node", "node", "json", "bytes", "cut", "dup_key", "child", "blank"])
    )
    if kind in ("node", "cut", "dup_key"):
        node = draw(order_nodes())
        text = json_text(node, ensure_ascii=draw(st.booleans()))
        if kind == "cut":
            text = text[: draw(st.integers(0, len(text) - 1))]
        if kind == "dup_key":  # the same key twice, conflicting: JSON parsers keep the last
            text = '{"legacyResourceId": "5001", "name": "#first",' + text[1:]
        return text.encode("utf-8", "surrogatepass")
    if kind == "json":
        return json_text(draw(json_values()), ensure_ascii=draw(st.booleans())).encode(
            "utf-8", "surrogatepass"
        )
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "child":
        parent = draw(st.integers(5001, 5008))
        child = {
            "id": f"gid://shopify/LineItem/{draw(st.integers(1, 99))}",
            "__parentId": f"gid://shopify/Order/{parent}",
        }
        return json.dumps(child).encode()
    return draw(st.sampled_from([b"", b"   ", b"\t", b"\r"]))


def expected_records(data: bytes) -> int:
    """Records a bulk file must give (Shopify's format): every non-blank line, except the
    child lines (``__parentId``) joined to an object of the file."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append((line, json.loads(line, parse_float=Decimal)))
        except (ValueError, UnicodeDecodeError):
            parsed.append((line, None))
    ids = {
        value.get("id") for _, value in parsed if isinstance(value, dict) and isinstance(value.get("id"), str)
    }
    joined = sum(
        1
        for line, value in parsed
        if isinstance(value, dict)
        and b"__parentId" in line
        and isinstance(value.get("__parentId"), str)
        and value["__parentId"] in ids
    )
    return len(lines) - joined


@fuzz_settings(100)
@given(lines=st.lists(bulk_lines(), max_size=12), crlf=st.booleans())
def test_any_bulk_file_lines_end_stored_or_quarantined(
    store: OrderStore, lines: list[bytes], crlf: bool
) -> None:
    empty_store(store)
    data = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    with TemporaryDirectory() as folder:
        path = Path(folder) / "bulk.jsonl"
        path.write_bytes(data)
        reader = ShopifyBulkFileReader(path)
        sent = list(reader.fetch(None, None))
    assert reader.last_fetch is not None and reader.last_fetch.complete
    assert len(sent) == expected_records(data), "a line of the file was neither an order nor quarantined"
    outcome = run_through_store(store, SOURCE, sent, normalize_to_records)
    check_batch(store, SOURCE, outcome)
    check_texts_as_sent(outcome)


# ---------------------------------------------------------------------------------------
# The bugs the properties found, pinned down one by one


def test_a_timestamp_beyond_year_9999_in_utc_is_rejected_not_a_crash() -> None:
    node = make_order(5001, updated_at=START)
    node["updatedAt"] = "9999-12-31T23:00:00-05:00"  # year 10000 in UTC
    record = raw_record(node)  # the reader's keying used to raise OverflowError here
    assert record.updated_at is None
    (item,) = normalize([record])
    assert (
        isinstance(item, Reject)
        and "'updatedAt'" in item.reason
        and "out of the representable range" in item.reason
    )


def test_a_bulk_line_with_a_parent_id_that_is_not_a_string_is_not_lost(tmp_path: Path) -> None:
    node = make_order(5001, updated_at=START)
    lines = [
        json.dumps({**node, "__parentId": []}),
        '{"\\u005f_parentId": "gid://shopify/Order/1", "id": "x"}',
    ]
    path = tmp_path / "bulk.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = list(ShopifyBulkFileReader(path).fetch(None, None))
    assert [r.record_key for r in records] == ["5001", "x"]  # both used to vanish


def test_unstorable_keys_and_payloads_land_and_are_quarantined(store: OrderStore) -> None:
    long_key = _long_text(7)
    sent = [
        RawRecord("a\x00b", None, {"legacyResourceId": "a\x00b"}),  # NUL: PostgreSQL refuses it
        RawRecord("\ud800", None, {"name": "\ud800"}),  # a lone surrogate: no UTF-8 form
        RawRecord(long_key, None, {"legacyResourceId": long_key}),  # 10 kB: beyond a btree entry
        RawRecord("page:1:4", None, "'); DROP TABLE orders; --"),  # a bare string for an order
    ]
    outcome = run_through_store(store, SOURCE, sent, normalize_to_records)
    counts = check_batch(store, SOURCE, outcome)
    assert counts == {"records": 4, "stored": 0, "rejected": 4, "skipped": 0}
    keys = {r.record_key for r in outcome.landed}
    assert {"a\\x00b", "\\ud800", "page:1:4"} <= keys and len(keys) == 4
    assert all(len(key.encode()) <= 1_000 for key in keys)
    assert outcome.landed[3].payload == "'); DROP TABLE orders; --"


def test_records_without_an_id_do_not_share_one_reject(store: OrderStore) -> None:
    outcome = run_through_store(
        store, SOURCE, as_paged([{"name": "#1"}, {"name": "#2"}]), normalize_to_records
    )
    check_batch(store, SOURCE, outcome)
    assert store.count("order_rejects") == 2  # both used to be keyed "unknown": one row, one lost
