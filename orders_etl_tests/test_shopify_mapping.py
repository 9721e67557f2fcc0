"""Shopify order node -> canonical Order: every row of DESIGN.md §4, rejects, test orders."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from orders_etl.canonical import OrderRow
from orders_etl.model import OrderRecord, OrderStatus, PaymentStatus, Reject
from orders_etl.sources.base import Skipped
from orders_etl.sources.shopify import ShippingMethods, normalize
from orders_etl.store import LandedRecord, RawRecord
from orders_etl.store.frames import canonical_text
from orders_etl_tests.fake_shopify import fulfillment, make_order

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def shopify_example_1001() -> dict:
    """Shopify's own example order #1001 (REST docs fixture, 2026-07) in the GraphQL node shape.

    598.94 charged at checkout, 199.65 left after returns (currentTotalPriceSet), 11.94 tax,
    partially refunded, one fulfillment shipped with USPS tracking 1Z1234512345123456.
    """
    node = make_order(
        450789469,
        updated_at=datetime.fromisoformat("2008-01-10T11:00:00-05:00"),
        currency="USD",
        financial="PARTIALLY_REFUNDED",
        fulfillment="FULFILLED",
        fulfillments=[
            {
                "displayStatus": "FAILURE",
                "createdAt": "2025-07-02T11:29:59-05:00",
                "deliveredAt": None,
                "trackingInfo": [{"number": "1Z1234512345123456", "company": "USPS"}],
            }
        ],
        total="598.94",
        tax="11.94",
        refunded="399.29",
        shipping={"code": "Free Shipping", "title": "Free Shipping", "source": "shopify"},
        customer_id=207119551,
        name="#1001",
    )
    node["createdAt"] = "2008-01-10T11:00:00-05:00"
    node["updatedAt"] = "2008-01-10T11:00:00-05:00"
    # A real node queried with more fields would carry this; the mapping must not use it.
    node["currentTotalPriceSet"] = {
        "shopMoney": {"amount": "199.65", "currencyCode": "USD"},
        "presentmentMoney": {"amount": "199.65", "currencyCode": "USD"},
    }
    return node


def one(node: dict, key: str | None = None, **kwargs) -> OrderRecord | Reject | Skipped:
    key = key or str(node.get("legacyResourceId"))
    (item,) = list(normalize([RawRecord(key, None, node)], **kwargs))
    return item


def order(**kwargs) -> dict:
    kwargs.setdefault("updated_at", T0)
    return make_order(kwargs.pop("legacy_id", 5001), **kwargs)


def test_shopify_example_order_maps_every_field():
    item = one(shopify_example_1001())
    assert isinstance(item, OrderRecord), item
    assert item.external_id == "450789469"  # legacyResourceId, never the gid
    assert item.number == "#1001"
    assert item.created_at == datetime(2008, 1, 10, 16, 0, tzinfo=UTC)  # -05:00 stored in UTC
    assert item.updated_at == datetime(2008, 1, 10, 16, 0, tzinfo=UTC)
    assert item.currency == "USD"
    assert item.total_amount == Decimal("598.94")  # totalPriceSet, not currentTotalPriceSet (199.65)
    assert item.tax_amount == Decimal("11.94")
    assert item.refunded_amount == Decimal("399.29")
    assert item.payment_status is PaymentStatus.CAPTURED
    assert item.payment_status_detail == "partially_refunded"
    assert item.status is OrderStatus.SHIPPED
    assert item.shipping_method == "free_shipping"
    assert item.tracking_number == "1Z1234512345123456"
    assert item.customer_id == "207119551"


@pytest.mark.parametrize(
    ("financial", "payment", "detail"),
    [
        ("PAID", PaymentStatus.CAPTURED, "paid"),
        ("AUTHORIZED", PaymentStatus.AUTHORIZED, "authorized"),
        ("PARTIALLY_PAID", PaymentStatus.AUTHORIZED, "partially_paid"),
        ("PARTIALLY_REFUNDED", PaymentStatus.CAPTURED, "partially_refunded"),
        ("REFUNDED", PaymentStatus.REFUNDED, "refunded"),
        ("VOIDED", PaymentStatus.VOIDED, "voided"),
        ("EXPIRED", PaymentStatus.VOIDED, "expired"),
        ("PENDING", None, "pending"),
        (None, None, None),
    ],
)
def test_payment_status_table(financial, payment, detail):
    item = one(order(financial=financial))
    assert isinstance(item, OrderRecord), item
    assert item.payment_status == payment
    assert item.payment_status_detail == detail


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        # cancelledAt wins over everything, even delivered fulfillments
        (
            {
                "cancelled_at": T0,
                "fulfillment": "FULFILLED",
                "fulfillments": [fulfillment("DELIVERED", T0, "T1")],
            },
            OrderStatus.CANCELLED,
        ),
        (
            {
                "fulfillment": "FULFILLED",
                "fulfillments": [fulfillment("DELIVERED", T0, "T1"), fulfillment("DELIVERED", T0, "T2")],
            },
            OrderStatus.DELIVERED,
        ),
        # one of two delivered: not every fulfillment -> FULFILLED -> shipped
        (
            {
                "fulfillment": "FULFILLED",
                "fulfillments": [fulfillment("DELIVERED", T0, "T1"), fulfillment("IN_TRANSIT", T0, "T2")],
            },
            OrderStatus.SHIPPED,
        ),
        (
            {"fulfillment": "FULFILLED", "fulfillments": [fulfillment("IN_TRANSIT", T0, "T1")]},
            OrderStatus.SHIPPED,
        ),
        ({"fulfillment": "PARTIALLY_FULFILLED"}, OrderStatus.PROCESSING),
        ({"fulfillment": "IN_PROGRESS"}, OrderStatus.PROCESSING),
        ({"fulfillment": "UNFULFILLED", "financial": "PAID"}, OrderStatus.PROCESSING),
        ({"fulfillment": "UNFULFILLED", "financial": "AUTHORIZED"}, OrderStatus.PROCESSING),
        ({"fulfillment": "UNFULFILLED", "financial": "PARTIALLY_REFUNDED"}, OrderStatus.PROCESSING),
        ({"fulfillment": "UNFULFILLED", "financial": "PENDING"}, OrderStatus.PENDING),
        ({"fulfillment": "UNFULFILLED", "financial": None}, OrderStatus.PENDING),
        ({"fulfillment": "UNFULFILLED", "financial": "VOIDED"}, OrderStatus.PENDING),
        ({"fulfillment": "ON_HOLD", "financial": "PAID"}, OrderStatus.PENDING),
        ({"fulfillment": "SCHEDULED", "financial": "PAID"}, OrderStatus.PENDING),
        # no fulfillment at all is not "every fulfillment delivered"
        ({"fulfillment": "FULFILLED", "fulfillments": []}, OrderStatus.SHIPPED),
    ],
)
def test_status_policy(changes, status):
    item = one(order(**changes))
    assert isinstance(item, OrderRecord), item
    assert item.status is status


def test_amounts_are_shop_money_at_the_currency_exponent():
    for currency, total, tax, expected in [
        ("JPY", "12345", "1122", Decimal("12345")),
        ("KWD", "12.345", "1.122", Decimal("12.345")),
        ("EUR", "10.50", "1.68", Decimal("10.50")),
    ]:
        item = one(order(currency=currency, total=total, tax=tax, refunded="0", presentment="USD"))
        assert isinstance(item, OrderRecord), item
        assert item.currency == currency  # shop currency, not presentment
        assert item.total_amount == expected
        assert str(item.total_amount) == total
    # Shopify writes JPY amounts as "12345.0": the same amount, kept at exponent 0.
    node = order(currency="JPY", total="12345", tax="0", refunded="0")
    node["totalPriceSet"]["shopMoney"]["amount"] = "12345.0"
    item = one(node)
    assert isinstance(item, OrderRecord) and str(item.total_amount) == "12345"


def test_presentment_money_is_never_used():
    node = order(currency="USD", total="100.00", tax="8.00", presentment="EUR")
    assert node["totalPriceSet"]["presentmentMoney"]["amount"] == "110.00"
    item = one(node)
    assert isinstance(item, OrderRecord)
    assert (item.currency, item.total_amount, item.tax_amount) == ("USD", Decimal("100.00"), Decimal("8.00"))


def test_null_tax_and_missing_customer_and_shipping():
    item = one(order(tax=None, customer_id=None, shipping=None))
    assert isinstance(item, OrderRecord), item
    assert item.tax_amount is None and item.customer_id is None and item.shipping_method is None


def test_tracking_number_of_the_earliest_fulfillment_with_one():
    fulfillments = [
        fulfillment("IN_TRANSIT", T0 + timedelta(days=1), "LATER"),
        fulfillment("DELIVERED", T0, "EARLIEST"),
        fulfillment("IN_TRANSIT", T0 - timedelta(days=1), None),  # earliest, but no number
    ]
    item = one(order(fulfillment="FULFILLED", fulfillments=fulfillments))
    assert isinstance(item, OrderRecord)
    assert item.tracking_number == "EARLIEST"


def test_shipping_lookup_overrides_and_slug_fallback():
    def line(code, title):
        return {"code": code, "title": title, "source": None}

    cases = [
        (line("FEDEX_GROUND", "FedEx Ground"), None, "fedex_ground"),
        (line("03", "UPS Ground"), None, "ups_ground"),  # the title when the code is unknown
        (line(None, "Hand-delivered by Bicycle®"), None, "hand_delivered_by_bicycle"),
        (line("custom-7", "Hand-delivered"), {"custom-7": "bike_courier"}, "bike_courier"),
        (line(None, "FedEx Ground"), {"FedEx Ground": "fedex_ground_special"}, "fedex_ground_special"),
        (line(None, "ヤマト運輸"), None, "ヤマト運輸"),  # no ASCII slug: kept as sent, not dropped
    ]
    for shipping, overrides, expected in cases:
        item = one(order(shipping=shipping), shipping_methods=overrides)
        assert isinstance(item, OrderRecord), item
        assert item.shipping_method == expected, shipping


def test_shipping_table_rejects_codes_that_are_not_snake_case():
    with pytest.raises(ValueError, match="snake_case"):
        ShippingMethods.load({"Express": "Express Mail"})


def test_test_orders_are_skipped_unless_asked_for():
    node = order(test=True)
    assert one(node) == Skipped("5001", "test order")
    assert isinstance(one(node, include_test=True), OrderRecord)


def _broken(mutate) -> dict:
    node = order()
    mutate(node)
    return node


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda n: n.pop("legacyResourceId"), "legacyResourceId"),
        (lambda n: n.update(legacyResourceId="gid://shopify/Order/5001"), "legacyResourceId"),
        (lambda n: n.update(id="gid://shopify/Order/999"), "'id'"),
        (lambda n: n.update(name=None), "name"),
        (lambda n: n.update(updatedAt="yesterday"), "updatedAt"),
        (lambda n: n.update(createdAt="2026-05-04T12:00:00"), "createdAt"),  # no zone
        (lambda n: n.update(currencyCode="XYZ"), "currency"),
        (lambda n: n["totalPriceSet"]["shopMoney"].update(amount="12,50"), "total_amount"),
        (lambda n: n["totalPriceSet"]["shopMoney"].update(amount="-1.00"), "total_amount"),
        (
            lambda n: n["totalPriceSet"]["shopMoney"].update(amount="1.005"),
            "total_amount",
        ),  # USD has 2 decimals
        (
            lambda n: n["totalPriceSet"]["shopMoney"].update(currencyCode="EUR"),
            "totalPriceSet.shopMoney.currencyCode",
        ),
        (lambda n: n.update(totalPriceSet=None), "totalPriceSet"),
        (lambda n: n.update(totalTaxSet="8.00"), "totalTaxSet"),
        (lambda n: n.update(displayFinancialStatus="SETTLED"), "displayFinancialStatus"),
        (lambda n: n.update(displayFulfillmentStatus="TELEPORTED"), "displayFulfillmentStatus"),
        (lambda n: n.update(fulfillments={"edges": []}), "fulfillments"),
        (lambda n: n.update(cancelledAt="soon"), "cancelledAt"),
        (lambda n: n.update(test="no"), "test"),
        (lambda n: n.update(customer={"id": "gid://shopify/Customer/7"}), "customer.legacyResourceId"),
        (lambda n: n.update(shippingLine="Standard"), "shippingLine"),
        (lambda n: n.update(name="#1\x00"), "number"),
    ],
)
def test_unmappable_records_are_rejected_naming_the_field(mutate, field):
    node = _broken(mutate)
    item = one(node, key="5001")
    assert isinstance(item, Reject), item
    assert item.source == "shopify" and item.record_key == "5001"
    assert field in item.reason, item.reason
    assert item.payload == node


def test_a_bad_record_never_stops_the_batch():
    good = [order(legacy_id=i) for i in (1, 2, 3)]
    records = [
        RawRecord("1", None, good[0]),
        RawRecord(
            "line:9",
            None,
            {"_unparsed_line": '{"id": "gid://shopify/Order/4", "na', "_line": 9, "_error": "x"},
        ),
        RawRecord("2", None, good[1]),
        RawRecord("odd", None, ["not", "an", "object"]),
        RawRecord("x", None, {"legacyResourceId": "77", "fulfillments": [{"trackingInfo": [42]}]}),
        LandedRecord("3", None, good[2], raw_id=12),  # landed: the fast mapping, the same order as a row
    ]
    items = list(normalize(records))
    assert [type(i).__name__ for i in items] == [
        "OrderRecord",
        "Reject",
        "OrderRecord",
        "Reject",
        "Reject",
        "tuple",
    ]
    assert items[5] == OrderRow(canonical_text(one(good[2], key="3")))
    assert "line 9 is not a JSON object" in items[1].reason
    assert "not a JSON object" in items[3].reason
    assert items[4].record_key == "x" and "77" not in items[4].record_key


def test_unexpected_shapes_name_the_field_being_read():
    node = order(fulfillment="FULFILLED", fulfillments=[fulfillment("IN_TRANSIT", T0, "T1")])
    node["fulfillments"][0]["trackingInfo"] = [{"number": ["not", "text"]}, {"number": "OK1"}]
    item = one(node)
    assert isinstance(item, OrderRecord) and item.tracking_number == "OK1"
    node["fulfillments"][0]["trackingInfo"] = "1Z999"
    item = one(node)
    assert isinstance(item, Reject) and "fulfillments[0].trackingInfo" in item.reason


def test_normalize_is_pure_and_repeatable():
    node = shopify_example_1001()
    before = copy.deepcopy(node)
    first = list(normalize([RawRecord("450789469", None, node)]))
    second = list(normalize([RawRecord("450789469", None, node)]))
    assert first == second and node == before


def test_the_mapping_imports_neither_httpx_nor_dagster():
    code = (
        "import sys\n"
        "from orders_etl.sources.shopify import normalize\n"
        "import orders_etl.sources.shopify.mapping\n"
        "print(sorted(m for m in ('httpx', 'dagster', 'tenacity') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"
