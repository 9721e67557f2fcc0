"""The fast paths of the Shopify source give what the record paths give, or step aside.

* mapping (``sources/shopify/fast.py``): for any landed text, the fast result is the record
  path's order as canonical text (``canonical_text(OrderRecord)``), or its skip; wherever
  the record path rejects, the fast path returns None (and ``normalize`` then gives the
  record path's reject, reason and all);
* bulk reader: an ordinary line is keyed and dated as its parsed node would be, and its
  landed text reads back as that node.

Orders are generated around the ordinary shape, each field now and then replaced by a
variant at or past the edge of a rule (times, amounts, ids, statuses, fulfillments...), and
written as JSON in several ways; the hostile nodes of ``test_hostile_shopify`` run too.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from orders_etl.canonical import OrderRow, iso_utc_text
from orders_etl.model import OrderRecord, Reject
from orders_etl.sources.base import Skipped
from orders_etl.sources.shopify import ShopifyBulkFileReader, bulk, normalize
from orders_etl.sources.shopify.fast import FastMapping, _time
from orders_etl.sources.shopify.mapping import (
    FULFILLMENT_STATUSES,
    PAYMENT_STATUS,
    ShippingMethods,
    map_payload,
)
from orders_etl.sources.shopify.reader import raw_record
from orders_etl.store import LandedRecord
from orders_etl.store.frames import canonical_text, rows_to_table, validate
from orders_etl.store.landing import load_payload
from orders_etl_tests.hostile import canonical, fuzz_settings, hostile_texts, json_text, json_values
from orders_etl_tests.test_hostile_shopify import bulk_lines, order_nodes

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "shopify_orders.jsonl"
SHIPPING = ShippingMethods.load()
KEY = "landed-key"


def agreed(text: str, include_test: bool = False) -> tuple[Any, Any]:
    """(fast result, record path result) for one landed text; fails if they disagree."""
    fast = FastMapping(SHIPPING, include_test)(KEY, text)
    try:
        payload = load_payload(text)
    except ValueError:
        assert fast is None, "the fast path mapped a text JSON cannot read"
        return fast, None
    slow = map_payload(KEY, payload, SHIPPING, include_test)
    if isinstance(slow, OrderRecord):
        assert fast is None or fast == OrderRow(canonical_text(slow)), (fast, canonical_text(slow))
    elif isinstance(slow, Skipped):
        assert fast is None or fast == slow
    else:
        assert isinstance(slow, Reject)
        assert fast is None, f"the fast path mapped what the record path rejects: {slow.reason}"
    if currently_in_test_context():
        event(f"{type(slow).__name__} {'fast' if fast is not None else 'deferred'}")
    return fast, slow


# ---------------------------------------------------------------------------------------
# Orders around the ordinary shape


def moment_texts() -> st.SearchStrategy[Any]:
    ordinary = st.integers(0, 10**6).map(
        lambda minutes: (datetime(2024, 2, 27, tzinfo=UTC) + timedelta(minutes=minutes)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    )
    edges = st.sampled_from(
        [
            "2024-02-29T10:00:00Z",  # a leap day
            "2023-02-29T10:00:00Z",  # not one
            "2000-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-12-31T23:59:59Z",
            "2026-09-03T13:47:20+00:00",
            "2026-09-03T13:47:20.5Z",
            "2026-09-03T13:47:20.123456Z",
            "2026-09-03T13:47:20.1234567Z",
            "2026-09-03T15:47:20+02:00",
            "2026-09-03T13:47:20-00:00",
            "2026-09-03T13:47:20z",
            "2026-09-03t13:47:20Z",
            "2026-09-03 13:47:20Z",
            "2026-09-03T13:47:20",
            "2026-09-03T24:00:00Z",
            "2026-09-03T23:59:60Z",
            "2026-09-03",
            "0999-12-31T23:59:59Z",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999999Z",  # the record path's "no createdAt"
            "9999-12-31T23:00:00-05:00",
            "２０２６-09-03T13:47:20Z",
            "2026-09-03T13:47:20Z\n",
            "",
            "NaN",
        ]
    )
    return st.one_of(ordinary, ordinary, edges, st.sampled_from([None, 0, 1.5, True, [], {}]))


def amount_texts(exponent: int) -> st.SearchStrategy[Any]:
    plain = st.integers(0, 10**9).map(lambda n: str(Decimal(n).scaleb(-exponent)))
    edges = st.sampled_from(
        [
            "0",
            "0.0",
            "0.00",
            "0.000",
            "0.0000",
            "12",
            "12.3",
            "12.30",
            "12.345",
            "12.3000000",
            "12.3450",
            "999999999999999",
            "999999999999999.99",
            "1000000000000000",
            "012",
            "1.",
            ".5",
            "-0",
            "-1.00",
            "+1",
            "1e3",
            "1E+2",
            " 12.50 ",
            "12,50",
            "１２",
            "NaN",
            "Infinity",
            "",
        ]
    )
    return st.one_of(plain, plain, edges, st.sampled_from([12, 0, Decimal("12.5"), True, None, []]))


def ids() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(1, 10**15).map(str),
        st.integers(1, 10**15).map(str),
        st.sampled_from(["0", "007", "123\n", " 123", "", "-1", "12a", "１２３", "9" * 20, "9" * 21]),
        st.sampled_from([123, 0, True, None, 1.5, ["1"]]),
    )


def maybe(draw: st.DrawFn, value: Any, variants: st.SearchStrategy[Any], odds: int = 6) -> Any:
    """``value`` most of the time, else a variant."""
    return draw(variants) if draw(st.integers(0, odds - 1)) == 0 else value


def tracking_infos() -> st.SearchStrategy[Any]:
    numbers = st.one_of(
        st.sampled_from(["1Z999", " 1Z999 ", "   ", "", "a\x00b", "\u3000X\u3000", None, 5]), hostile_texts()
    )
    info = st.fixed_dictionaries({"number": numbers, "company": st.just("UPS")})
    return st.one_of(
        st.just([]),
        st.lists(info, max_size=2),
        st.sampled_from([None, [{}], ["1Z"], [None], "x", {"number": "1Z"}]),
    )


@st.composite
def fulfillment_nodes(draw: st.DrawFn) -> Any:
    return {
        "displayStatus": draw(st.sampled_from(["DELIVERED", "DELIVERED", "IN_TRANSIT", "FAILURE", None, 1])),
        "createdAt": draw(st.one_of(moment_texts(), st.sampled_from(["2026-03-01T00:00:00Z"] * 3))),
        "deliveredAt": None,
        "trackingInfo": draw(tracking_infos()),
    }


CURRENCIES = {"USD": 2, "JPY": 0, "KWD": 3, "CLF": 4, "EUR": 2}


@st.composite
def ordinary_orders(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """(order node, whether every field was left ordinary)."""
    legacy = str(draw(st.integers(1, 10**13)))
    currency = draw(st.sampled_from(sorted(CURRENCIES)))
    exponent = CURRENCIES[currency]

    def bag(amount: Any, money_currency: str = currency) -> dict[str, Any]:
        return {
            "shopMoney": {"amount": amount, "currencyCode": money_currency},
            "presentmentMoney": {"amount": "1.00", "currencyCode": "EUR"},
        }

    ordinary_amount = st.integers(0, 10**7).map(lambda n: str(Decimal(n).scaleb(-exponent)))
    times = st.integers(0, 10**6).map(
        lambda m: (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    node: dict[str, Any] = {
        "id": f"gid://shopify/Order/{legacy}",
        "legacyResourceId": legacy,
        "name": draw(st.sampled_from(["#1001", "#1002", "Bestellung 7", "注文 12", "A" * 255])),
        "createdAt": draw(times),
        "updatedAt": draw(times),
        "cancelledAt": draw(st.sampled_from([None, None, None, "2026-02-01T00:00:00Z"])),
        "test": False,
        "currencyCode": currency,
        "presentmentCurrencyCode": "EUR",
        "displayFinancialStatus": draw(st.sampled_from([*PAYMENT_STATUS, None])),
        "displayFulfillmentStatus": draw(st.sampled_from(sorted(FULFILLMENT_STATUSES))),
        "totalPriceSet": bag(draw(ordinary_amount)),
        "totalTaxSet": draw(st.none() | ordinary_amount.map(bag)),
        "totalRefundedSet": bag(draw(ordinary_amount)),
        "shippingLine": draw(
            st.sampled_from(
                [
                    None,
                    {"code": "Standard", "title": "Standard Shipping", "source": "shopify"},
                    {"code": None, "title": "DHL Express Worldwide"},
                    {"code": "custom", "title": "Abholung im Laden"},
                    {"code": None, "title": "お急ぎ便"},
                    {},
                ]
            )
        ),
        "fulfillments": [
            {
                "displayStatus": draw(st.sampled_from(["DELIVERED", "IN_TRANSIT"])),
                # few times: fulfillments created at the same moment keep their order
                "createdAt": draw(st.sampled_from(["2026-03-01T00:00:00Z", "2026-02-01T10:00:00Z", None])),
                "deliveredAt": None,
                "trackingInfo": draw(st.sampled_from([[], [{"number": f" 1Z{index} ", "company": "UPS"}]])),
            }
            for index in range(draw(st.integers(0, 3)))
        ],
        "customer": draw(
            st.sampled_from([None, {"id": "gid://shopify/Customer/7", "legacyResourceId": "7100003663"}])
        ),
    }
    before = canonical(node)
    if draw(st.booleans()):
        return node, True

    # Now and then a field at or past the edge of a rule.
    for name in ("createdAt", "updatedAt", "cancelledAt"):
        node[name] = maybe(draw, node[name], moment_texts(), odds=12)
    node["legacyResourceId"] = maybe(draw, node["legacyResourceId"], ids(), odds=12)
    node["id"] = maybe(
        draw,
        node["id"],
        st.sampled_from(
            [
                None,
                f"gid://shopify/Order/{legacy}\n",
                f"gid://shopify/Customer/{legacy}",
                "gid://shopify/Order/1",
                7,
            ]
        ),
        odds=12,
    )
    node["name"] = maybe(
        draw,
        node["name"],
        st.one_of(st.sampled_from(["", "  ", "\u2003", "a\x00", "A" * 256, None, 5]), hostile_texts()),
    )
    node["test"] = maybe(draw, node["test"], st.sampled_from([True, None, "true", 1]), odds=8)
    node["currencyCode"] = maybe(draw, currency, st.sampled_from(["usd", "XYZ", "", None, "EUR"]), odds=12)
    for name in ("totalPriceSet", "totalTaxSet", "totalRefundedSet"):
        if draw(st.integers(0, 5)) == 0:
            node[name] = draw(
                st.one_of(
                    amount_texts(exponent).map(bag),
                    st.sampled_from(["EUR", "usd", None]).map(lambda c: bag("1", c)),
                    st.sampled_from(
                        [None, {}, {"shopMoney": None}, {"shopMoney": {"amount": "1"}}, [], "1.00"]
                    ),
                )
            )
    node["displayFinancialStatus"] = maybe(
        draw, node["displayFinancialStatus"], st.sampled_from(["paid", "FOO", "", 1]), odds=12
    )
    node["displayFulfillmentStatus"] = maybe(
        draw,
        node["displayFulfillmentStatus"],
        st.sampled_from(["fulfilled", "DELIVERED", None, "", 1]),
        odds=12,
    )
    if draw(st.integers(0, 3)) == 0:
        node["fulfillments"] = draw(
            st.one_of(
                st.lists(fulfillment_nodes(), max_size=3), st.sampled_from([None, False, {}, "x", [None]])
            )
        )
    node["shippingLine"] = maybe(
        draw,
        node["shippingLine"],
        st.one_of(
            st.fixed_dictionaries(
                {"code": st.none() | hostile_texts(), "title": st.none() | hostile_texts()}
            ),
            st.sampled_from([{"code": 5}, {"title": "\x00"}, {"title": "  "}, [], "Standard"]),
        ),
    )
    node["customer"] = maybe(
        draw,
        node["customer"],
        st.one_of(ids().map(lambda i: {"legacyResourceId": i}), st.sampled_from([{}, [], "7", {"id": "x"}])),
        odds=12,
    )
    for name in sorted(node):
        if draw(st.integers(0, 40)) == 0:
            del node[name]
    if draw(st.integers(0, 15)) == 0:
        node[draw(st.sampled_from(["_unparsed_line", "_orphan_child_line", "__parentId", "extra"]))] = draw(
            json_values()
        )
    return node, canonical(node) == before


WRITINGS = ("compact", "ascii", "unicode", "indented", "duplicate", "escaped_key")


def written(node: Any, how: str) -> str:
    """``node`` as JSON text, written one of several ways a source or the landing writes it."""
    if how == "compact":
        return json.dumps(node, separators=(",", ":"), sort_keys=True, default=str)
    if how == "indented":
        return json.dumps(node, indent=2, default=str)
    text = json_text(node, ensure_ascii=how != "unicode")
    if how == "duplicate" and text.startswith("{") and text != "{}":
        # The same key twice, the first one conflicting: JSON parsers keep the last (and
        # msgspec checks both: a first value of the wrong type sends it to the record path).
        return '{"legacyResourceId": "1", "name": "#first", "test": "conflicting", ' + text[1:]
    if how == "escaped_key":
        return text.replace('"name"', '"n\\u0061me"')
    return text


@fuzz_settings(400)
@given(data=st.data(), include_test=st.booleans())
def test_fast_mapping_agrees_with_the_record_path(data: st.DataObject, include_test: bool) -> None:
    node, ordinary = data.draw(ordinary_orders())
    how = data.draw(st.sampled_from(WRITINGS))
    fast, slow = agreed(written(node, how), include_test)
    if ordinary and how != "duplicate" and isinstance(slow, OrderRecord):
        assert fast is not None, "an ordinary order took the record path"


@fuzz_settings(200)
@given(data=st.data())
def test_fast_mapping_agrees_on_hostile_nodes(data: st.DataObject) -> None:
    node = data.draw(st.one_of(order_nodes(), json_values()))
    agreed(written(node, data.draw(st.sampled_from(WRITINGS))))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        '"order"',
        "{}",
        '{"legacyResourceId": NaN}',
        '{"legacyResourceId": "1", "name": "\\ud800"}',
        "\ufeff{}",
        '{"legacyResourceId": "1", "big": ' + "7" * 5000 + "}",  # json.loads refuses it
        "[" * 5000 + "]" * 5000,
        '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
    ],
)
def test_unusual_texts_take_the_record_path(text: str) -> None:
    assert FastMapping(SHIPPING, False)(KEY, text) is None


def test_shopify_times_are_canonical_exactly_when_the_general_rule_says_so() -> None:
    """The one-regex case of ``_time`` (leap years and month lengths spelt out) against
    ``iso_utc_text``, every day of the years around the edges of the calendar rules."""
    years = [*range(1000, 1005), *range(1896, 2105), *range(2396, 2405), *range(9995, 10000)]
    years += [century * 100 for century in range(10, 100)]  # 29 February of every century
    checked = 0
    for year in years:
        for month in range(1, 13):
            for day in range(1, 33):
                text = f"{year:04d}-{month:02d}-{day:02d}T23:59:59Z"
                assert _time(text) == iso_utc_text(text), text
                checked += 1
    assert checked > 80_000 and _time("2024-02-29T00:00:00Z") and not _time("2100-02-29T00:00:00Z")


def test_normalize_gives_the_record_path_reject_when_the_fast_path_steps_aside() -> None:
    node = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])
    node["totalPriceSet"]["shopMoney"]["amount"] = "12.345678"
    landed = LandedRecord("5600000000487", None, raw_id=1, text=json.dumps(node))
    (item,) = normalize([landed])
    assert (
        isinstance(item, Reject)
        and "total_amount" in item.reason
        and item.payload == load_payload(landed.text)
    )


def test_a_landed_text_json_cannot_read_is_rejected_not_a_crash() -> None:
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (item,) = normalize([LandedRecord("k", None, raw_id=1, text=deep)])
    assert isinstance(item, Reject) and "not readable JSON" in item.reason


def test_every_sample_order_takes_the_fast_path_and_equals_the_record_path() -> None:
    outcomes: Counter[str] = Counter()
    rows = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        fast, slow = agreed(line)
        outcomes[f"{type(slow).__name__} {'fast' if fast is not None else 'deferred'}"] += 1
        if type(fast) is tuple:
            rows.append(fast)
    # Every order and test order of the samples is ordinary: only the planted bad ones defer.
    assert outcomes == {
        "OrderRecord fast": 290,
        "Skipped fast": 6,
        "Reject deferred": 3,
        "NoneType deferred": 1,
    }
    validate(rows_to_table(rows))  # and the store's boundary takes every row


def test_normalize_yields_rows_for_landed_samples() -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    landed = [LandedRecord(str(i), None, raw_id=i, text=line) for i, line in enumerate(lines)]
    items = list(normalize(landed))
    assert Counter(type(item).__name__ for item in items) == {"tuple": 290, "Skipped": 6, "Reject": 4}


# ---------------------------------------------------------------------------------------
# Bulk reader


def _read(path: Path, *, fast: bool) -> list[Any]:
    if fast:
        return list(ShopifyBulkFileReader(path).fetch(None, None))
    with mock.patch.object(bulk, "_ordinary", lambda raw: None):  # every line by the dict path
        return list(ShopifyBulkFileReader(path).fetch(None, None))


def _as_landed(record: Any) -> tuple[str, datetime | None, str]:
    payload = record.payload if record.text is None else load_payload(record.text)
    return record.record_key, record.updated_at, canonical(payload)


@fuzz_settings(150)
@given(
    lines=st.lists(
        st.one_of(
            bulk_lines(), ordinary_orders().map(lambda o: json_text(o[0]).encode("utf-8", "surrogatepass"))
        ),
        max_size=12,
    )
)
def test_bulk_reader_fast_lines_land_as_their_nodes_would(tmp_path_factory: Any, lines: list[bytes]) -> None:
    path = tmp_path_factory.mktemp("bulk") / "bulk.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    fast, slow = _read(path, fast=True), _read(path, fast=False)
    assert [_as_landed(r) for r in fast] == [_as_landed(r) for r in slow]
    for record in fast:
        if record.text is not None:
            assert record.payload is None and "\n" not in record.text
            event("ordinary line")


def test_ordinary_bulk_lines_are_landed_as_received(tmp_path: Path) -> None:
    lines = SAMPLE.read_bytes().splitlines()
    path = tmp_path / "bulk.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    records = list(ShopifyBulkFileReader(path).fetch(None, None))
    assert len(records) == len(lines)
    by_text = [r for r in records if r.text is not None]
    assert len(by_text) == len(lines) - 1  # the planted line that is not JSON takes the dict path
    for record in by_text:
        node = json.loads(record.text)
        expected = raw_record(load_payload(record.text))
        assert record.text.encode() in lines and (record.record_key, record.updated_at) == (
            expected.record_key,
            expected.updated_at,
        )
        assert record.record_key == node["legacyResourceId"]


def test_a_bulk_line_with_an_integer_too_long_for_json_takes_the_dict_path(tmp_path: Path) -> None:
    path = tmp_path / "bulk.jsonl"
    path.write_text('{"legacyResourceId": "1", "big": ' + "7" * 5000 + "}\n", encoding="utf-8")
    (record,) = ShopifyBulkFileReader(path).fetch(None, None)
    assert record.record_key == "line:1" and "Exceeds the limit" in record.payload["_error"]


def test_a_bulk_line_nested_too_deep_is_quarantined_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "bulk.jsonl"
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n", encoding="utf-8")
    (record,) = ShopifyBulkFileReader(path).fetch(None, None)
    assert record.record_key == "line:1" and "RecursionError" in record.payload["_error"]
