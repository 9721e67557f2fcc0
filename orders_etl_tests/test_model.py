"""The Order model validates at the boundary: clear errors naming record, field and value."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from orders_etl.model import InvalidOrder, OrderRecord, parse_order, snake_code
from orders_etl_tests.factories import BASE_TIME, order


def _errors(**fields) -> str:
    with pytest.raises(InvalidOrder) as info:
        order("A-1", **fields)
    return str(info.value)


def test_field_names_and_enums_follow_the_design() -> None:
    expected = {
        "external_id", "number", "created_at", "currency", "total_amount", "tax_amount", "payment_status",
        "status", "shipping_method", "tracking_number", "customer_id", "refunded_amount",
        "payment_status_detail", "updated_at", "deleted_at",
    }  # fmt: skip
    assert set(OrderRecord.model_fields) == expected
    from orders_etl.model import OrderStatus, PaymentStatus

    assert [s.value for s in PaymentStatus] == ["authorized", "captured", "refunded", "voided"]
    assert [s.value for s in OrderStatus] == ["pending", "processing", "shipped", "delivered", "cancelled"]


@pytest.mark.parametrize(
    ("fields", "field", "value"),
    [
        ({"currency": "XYZ"}, "currency", "'XYZ'"),
        ({"currency": "usd"}, "currency", "'usd'"),
        ({"total_amount": "-1.00"}, "total_amount", "'-1.00'"),
        ({"total_amount": "twelve"}, "total_amount", "'twelve'"),
        ({"tax_amount": "NaN"}, "tax_amount", "'NaN'"),
        ({"total_amount": "Infinity"}, "total_amount", "'Infinity'"),
        ({"total_amount": "1e20"}, "total_amount", "'1e20'"),
        ({"total_amount": 10.5}, "total_amount", "10.5"),
        ({"status": "shipping"}, "status", "'shipping'"),
        ({"payment_status": "paid"}, "payment_status", "'paid'"),
        ({"number": "bad\x00number"}, "number", "'bad\\x00number'"),
        ({"updated_at": datetime(2026, 1, 1)}, "updated_at", "datetime"),
    ],
)
def test_bad_values_name_record_field_and_value(fields, field, value) -> None:
    message = _errors(**fields)
    assert message.startswith("order 'A-1': ")
    assert f"field {field!r}" in message
    assert value in message


def test_amount_needing_rounding_is_rejected_not_rounded() -> None:
    assert "more decimals than JPY allows (0)" in _errors(
        currency="JPY", total_amount="100.5", tax_amount="0"
    )
    assert "more decimals than USD allows (2)" in _errors(total_amount="10.005")


def test_amounts_keep_the_currency_exponent() -> None:
    assert str(order(1, currency="JPY", total_amount="1500", tax_amount="136.0").tax_amount) == "136"
    assert str(order(2, currency="USD", total_amount="12.3", tax_amount="0").total_amount) == "12.30"
    assert str(order(3, currency="KWD", total_amount="1.25", tax_amount="0.1").total_amount) == "1.250"
    assert order(4, total_amount="-0.00", tax_amount=None).total_amount == Decimal("0.00")
    assert str(order(4, total_amount="-0.00", tax_amount=None).total_amount) == "0.00"


def test_times_are_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    record = order(1, updated_at=datetime(2026, 3, 1, 14, 0, tzinfo=plus_two))
    assert record.updated_at == BASE_TIME
    assert record.updated_at.utcoffset() == timedelta(0)


def test_blank_key_is_rejected_with_the_callers_record_key() -> None:
    data = order(1).model_dump() | {"external_id": "  "}
    with pytest.raises(InvalidOrder, match=r"order 'line:7': field 'external_id' = '  ': must not be blank"):
        parse_order(data, record_key="line:7")


def test_missing_required_field_is_named() -> None:
    with pytest.raises(InvalidOrder, match="field 'status' is required"):
        parse_order(
            {
                "external_id": "9",
                "number": "9",
                "currency": "USD",
                "total_amount": "1",
                "updated_at": BASE_TIME,
            }
        )


def test_snake_code() -> None:
    assert snake_code("FedEx Ground®") == "fedex_ground"
    assert snake_code("  Économie -- Colissimo ") == "economie_colissimo"
