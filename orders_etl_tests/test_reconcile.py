"""orders_etl.reconcile: every kind with hand-built pairs, exact money, the rules of DESIGN.md §4."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest

from orders_etl.model import OrderRecord
from orders_etl.reconcile import (
    EXCEPTION_COLUMNS,
    KINDS,
    SUMMARY_COLUMNS,
    ReconcileConfig,
    from_minor_units,
    reconcile,
    to_minor_units,
)
from orders_etl.store.schema import EXCEPTION_KINDS, reconciliation_summary
from orders_etl_tests.factories import order

CREATED = datetime(2026, 10, 3, 8, 15, tzinfo=UTC)
NOW = datetime(2026, 11, 1, tzinfo=UTC)
# Per currency: a total, its tax, and one minor unit.
AMOUNTS = {
    "JPY": ("12800", "1164", Decimal("1")),
    "USD": ("100.00", "8.25", Decimal("0.01")),
    "KWD": ("12.345", "0.588", Decimal("0.001")),
}
REFUNDS = {"JPY": "3200", "USD": "25.00", "KWD": "3.086"}


def rec(external_id: str | int, **fields: Any) -> OrderRecord:
    """A valid normalized order (created 2026-10-03 08:15 UTC unless said otherwise)."""
    fields.setdefault("created_at", CREATED)
    fields.setdefault("refunded_amount", "0")  # stored at the currency's exponent: 0, 0.00, 0.000
    return order(external_id, **fields)


def frame(*records: OrderRecord, source: str | None = None) -> pd.DataFrame:
    """Orders as ``OrderStore.read_table('source_orders')`` hands them out (Decimal, aware UTC)."""
    rows = [r.model_dump(mode="python") for r in records]
    for row in rows:
        for key, value in row.items():
            if hasattr(value, "value"):  # enums as their text, as the store keeps them
                row[key] = value.value
        if source:
            row["source"] = source
    columns = ["external_id", *OrderRecord.model_fields, *(["source"] if source else [])]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))


def pair(shop: OrderRecord, erp: OrderRecord, **kwargs: Any):
    return reconcile(frame(shop), frame(erp), now=NOW, **kwargs)


def found(result) -> list[tuple[str, str]]:
    return list(zip(result.exceptions["external_id"], result.exceptions["kind"], strict=True))


def only_row(result, kind: str) -> dict[str, Any]:
    rows = result.exceptions[result.exceptions["kind"] == kind].to_dict("records")
    assert len(rows) == 1, result.exceptions
    return rows[0]


def money(currency: str, total: str, tax: str, **fields: Any) -> dict[str, Any]:
    return {"currency": currency, "total_amount": total, "tax_amount": tax, **fields}


# ---------------------------------------------------------------------------------------
# Agreement


def test_kinds_are_the_ledgers_kinds() -> None:
    assert KINDS == EXCEPTION_KINDS
    assert list(SUMMARY_COLUMNS) == [
        c.name for c in reconciliation_summary.columns if c.name != "computed_at"
    ]


@pytest.mark.parametrize("currency", AMOUNTS)
def test_identical_orders_are_matched(currency: str) -> None:
    total, tax, _ = AMOUNTS[currency]
    result = pair(rec(1, **money(currency, total, tax)), rec(1, **money(currency, total, tax)))
    assert result.exceptions.empty
    assert list(result.exceptions.columns) == list(EXCEPTION_COLUMNS)
    assert (result.matched, result.compared, result.pending_sync) == (1, 1, 0)


# ---------------------------------------------------------------------------------------
# Amounts, exact to one minor unit


@pytest.mark.parametrize("currency", AMOUNTS)
@pytest.mark.parametrize("sign", [1, -1])
def test_total_mismatch_of_one_minor_unit_is_exact(currency: str, sign: int) -> None:
    total, tax, unit = AMOUNTS[currency]
    erp_total = str(Decimal(total) - sign * unit)
    result = pair(rec(1, **money(currency, total, tax)), rec(1, **money(currency, erp_total, tax)))
    assert found(result) == [("1", "total_mismatch")]
    row = only_row(result, "total_mismatch")
    assert (row["currency"], row["shopify_value"], row["erp_value"]) == (currency, total, erp_total)
    assert type(row["difference"]) is Decimal and row["difference"] == sign * unit
    assert str(row["difference"]) == str(sign * unit)  # at the currency's exponent
    assert row["order_created_at"] == CREATED
    assert result.matched == 0


def test_one_cent_on_amounts_a_float_cannot_hold() -> None:
    # 9,999,999,999,999.99 has 15 significant digits: float arithmetic blurs the cent.
    result = pair(
        rec(1, total_amount="9999999999999.99", tax_amount="0.10"),
        rec(1, total_amount="9999999999999.98", tax_amount="0.10"),
    )
    assert only_row(result, "total_mismatch")["difference"] == Decimal("0.01")
    same = pair(
        rec(2, total_amount="0.30", tax_amount="0.10"), rec(2, total_amount="0.30", tax_amount="0.10")
    )
    assert same.exceptions.empty


@pytest.mark.parametrize("currency", AMOUNTS)
def test_tax_mismatch(currency: str) -> None:
    total, tax, unit = AMOUNTS[currency]
    result = pair(
        rec(7, **money(currency, total, tax)), rec(7, **money(currency, total, str(Decimal(tax) + unit)))
    )
    assert found(result) == [("7", "tax_mismatch")]
    assert only_row(result, "tax_mismatch")["difference"] == -unit


@pytest.mark.parametrize("currency", AMOUNTS)
def test_refund_mismatch(currency: str) -> None:
    total, tax, unit = AMOUNTS[currency]
    refund = REFUNDS[currency]
    shop = rec(3, **money(currency, total, tax, refunded_amount=refund))
    erp = rec(3, **money(currency, total, tax, refunded_amount=str(Decimal(refund) - unit)))
    result = pair(shop, erp)
    assert found(result) == [("3", "refund_mismatch")]
    row = only_row(result, "refund_mismatch")
    assert (row["shopify_value"], row["difference"]) == (refund, unit)


def test_a_refund_booked_on_both_sides_is_never_a_total_mismatch() -> None:
    # Totals before refunds on both sides; the refund is compared with the credit memo.
    shop = rec(4, total_amount="120.00", refunded_amount="120.00", payment_status="refunded")
    erp = rec(4, total_amount="120.00", refunded_amount="120.00", payment_status="refunded")
    partial_shop = rec(5, total_amount="80.00", refunded_amount="20.00", payment_status="captured")
    partial_erp = rec(5, total_amount="80.00", refunded_amount="20.00", payment_status="captured")
    result = reconcile(frame(shop, partial_shop), frame(erp, partial_erp), now=NOW)
    assert result.exceptions.empty and result.matched == 2


def test_a_side_that_does_not_report_refunds_or_tax_is_not_compared_on_them() -> None:
    shop = rec(6, total_amount="50.00", tax_amount="4.00", refunded_amount="10.00")
    erp = rec(6, total_amount="50.00", tax_amount=None, refunded_amount=None)
    assert pair(shop, erp).exceptions.empty
    assert pair(erp, shop).exceptions.empty


def test_several_kinds_on_one_order() -> None:
    shop = rec(8, total_amount="100.00", tax_amount="8.00", payment_status="captured")
    erp = rec(8, total_amount="101.00", tax_amount="9.00", payment_status=None)
    result = pair(shop, erp)
    assert found(result) == [("8", "total_mismatch"), ("8", "tax_mismatch"), ("8", "payment_status_mismatch")]
    assert result.matched == 0


# ---------------------------------------------------------------------------------------
# Payment status


@pytest.mark.parametrize(
    ("shopify", "erp", "mismatch"),
    [
        ("authorized", None, False),  # authorized, nothing paid yet in the ERP: normal
        ("authorized", "authorized", False),
        (None, None, False),
        ("captured", "captured", False),
        (None, "authorized", True),
        ("authorized", "captured", True),
        ("captured", None, True),
        ("refunded", "captured", True),
        ("voided", None, True),
        (None, "captured", True),
        ("captured", "voided", True),
    ],
)
def test_payment_status_rule(shopify: str | None, erp: str | None, mismatch: bool) -> None:
    result = pair(rec(9, payment_status=shopify), rec(9, payment_status=erp))
    assert found(result) == ([("9", "payment_status_mismatch")] if mismatch else [])
    if mismatch:
        row = only_row(result, "payment_status_mismatch")
        assert (row["shopify_value"], row["erp_value"], row["difference"]) == (shopify, erp, None)


# ---------------------------------------------------------------------------------------
# Currency


def test_currency_mismatch_compares_no_amounts() -> None:
    shop = rec(10, **money("USD", "100.00", "8.25", refunded_amount="5.00"))
    erp = rec(10, **money("EUR", "92.00", "14.69", refunded_amount="0.00"))
    result = pair(shop, erp)
    assert found(result) == [("10", "currency_mismatch")]
    row = only_row(result, "currency_mismatch")
    assert (row["currency"], row["shopify_value"], row["erp_value"], row["difference"]) == (
        "USD",
        "USD",
        "EUR",
        None,
    )


def test_currency_mismatch_still_compares_payment_status() -> None:
    result = pair(
        rec(11, currency="USD", payment_status="captured"), rec(11, currency="EUR", payment_status=None)
    )
    assert found(result) == [("11", "payment_status_mismatch"), ("11", "currency_mismatch")]


# ---------------------------------------------------------------------------------------
# Missing, grace period, deleted orders


def test_missing_on_either_side_puts_the_whole_order_at_stake() -> None:
    shopify = frame(rec(1), rec(2, **money("KWD", "1.250", "0.060")))
    erp = frame(rec(1), rec("SO-10001", **money("JPY", "5000", "455")))
    result = reconcile(shopify, erp, now=NOW)
    assert found(result) == [("2", "missing_in_erp"), ("SO-10001", "missing_in_shopify")]
    missing = only_row(result, "missing_in_erp")
    assert (missing["shopify_value"], missing["erp_value"], missing["difference"]) == (
        "1.250",
        None,
        Decimal("1.250"),
    )
    extra = only_row(result, "missing_in_shopify")
    assert (extra["currency"], extra["shopify_value"], extra["erp_value"]) == ("JPY", None, "5000")
    assert extra["difference"] == Decimal("-5000")
    assert (result.matched, result.shopify_orders, result.erp_orders) == (1, 2, 2)


def test_orders_inside_the_grace_period_are_pending_not_missing() -> None:
    now = datetime(2026, 10, 3, 12, 0, tzinfo=UTC)
    shopify = frame(
        rec("young", created_at=now - timedelta(hours=1, minutes=59)),
        rec("exactly", created_at=now - timedelta(hours=2)),
        rec("old", created_at=now - timedelta(days=3)),
    )
    erp = frame(rec("other"))
    result = reconcile(shopify, erp, now=now)
    assert sorted(found(result)) == [
        ("exactly", "missing_in_erp"),
        ("old", "missing_in_erp"),
        ("other", "missing_in_shopify"),
    ]
    assert list(result.pending["external_id"]) == ["young"]
    assert result.summary["pending_sync"].sum() == 1
    # The grace period is configurable: without one, the young order is missing too.
    strict = reconcile(shopify, erp, now=now, config=ReconcileConfig(grace=timedelta(0)))
    assert ("young", "missing_in_erp") in found(strict)
    assert strict.pending.empty


def test_grace_does_not_hide_an_order_the_erp_has_wrong() -> None:
    now = CREATED + timedelta(minutes=5)
    result = reconcile(frame(rec(1, total_amount="10.00")), frame(rec(1, total_amount="10.01")), now=now)
    assert found(result) == [("1", "total_mismatch")]


def test_an_order_only_present_as_a_posted_erp_invoice_is_matched() -> None:
    # Business Central deletes a sales order once posted; the source record then comes from the
    # invoice: status shipped, the invoice's number, payment captured.
    shop = rec(5_600_000_000_123, number="#1001", status="delivered", payment_status="captured")
    invoice = rec(5_600_000_000_123, number="PSI-103001", status="shipped", payment_status="captured")
    result = reconcile(frame(shop), frame(invoice, source="business_central"), now=NOW)
    assert result.exceptions.empty and result.matched == 1


def test_business_central_wins_over_a_flat_file_for_the_same_order() -> None:
    shop = frame(rec(1, total_amount="100.00"), rec(2, total_amount="100.00"))
    bc = frame(rec(1, total_amount="100.00"), rec(2, total_amount="99.00"), source="business_central")
    files = frame(rec(1, total_amount="98.00"), rec(2, total_amount="100.00"), source="erp_files")
    result = reconcile(shop, pd.concat([files, bc], ignore_index=True), now=NOW)
    assert found(result) == [("2", "total_mismatch")]
    assert only_row(result, "total_mismatch")["erp_value"] == "99.00"
    assert result.erp_orders == 2


def test_deleted_orders() -> None:
    gone = NOW - timedelta(days=1)
    shopify = frame(
        rec("deleted-only-in-shopify", deleted_at=gone),
        rec("deleted-but-booked", deleted_at=gone, total_amount="50.00"),
        rec("live"),
    )
    erp = frame(
        rec("deleted-but-booked", total_amount="40.00"),
        rec("live", deleted_at=gone),
        rec("erp-deleted-only", deleted_at=gone),
    )
    result = reconcile(shopify, erp, now=NOW)
    # Deleted in Shopify and unknown to the ERP: nothing to fix. Deleted in Shopify but booked:
    # still compared on its last known values. Deleted in the ERP: no longer in the books.
    assert found(result) == [("deleted-but-booked", "total_mismatch"), ("live", "missing_in_erp")]
    assert (result.deleted_in_shopify, result.shopify_orders, result.erp_orders) == (1, 2, 1)


# ---------------------------------------------------------------------------------------
# Tolerance


def test_tolerance_is_per_currency_in_minor_units() -> None:
    shopify = frame(
        rec("usd-1", total_amount="10.00"),
        rec("usd-2", total_amount="10.00", tax_amount="8.00"),
        rec("jpy", **money("JPY", "1000", "90")),
    )
    erp = frame(
        rec("usd-1", total_amount="10.01"),
        rec("usd-2", total_amount="10.02", tax_amount="7.99"),
        rec("jpy", **money("JPY", "1001", "90")),
    )
    exact = reconcile(shopify, erp, now=NOW)
    assert sorted(found(exact)) == [
        ("jpy", "total_mismatch"),
        ("usd-1", "total_mismatch"),
        ("usd-2", "tax_mismatch"),
        ("usd-2", "total_mismatch"),
    ]
    lenient = reconcile(shopify, erp, now=NOW, config=ReconcileConfig(tolerance_minor_units={"USD": 1}))
    assert found(lenient) == [("jpy", "total_mismatch"), ("usd-2", "total_mismatch")]


@pytest.mark.parametrize(
    "bad",
    [
        {"grace": timedelta(hours=-1)},
        {"tolerance_minor_units": {"usd": 1}},
        {"tolerance_minor_units": {"USD": 0.5}},
        {"tolerance_minor_units": {"USD": -1}},
        {"timezone": "Mars/Olympus"},
    ],
)
def test_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ReconcileConfig(**bad)


# ---------------------------------------------------------------------------------------
# Summary per day × currency


def test_summary_per_day_and_currency_never_adds_currencies() -> None:
    day1, day2 = CREATED, CREATED + timedelta(days=1)
    shopify = frame(
        rec("a", created_at=day1, total_amount="10.00"),
        rec("b", created_at=day1, total_amount="20.01"),
        rec("c", created_at=day1, **money("JPY", "1500", "136")),
        rec("d", created_at=day2, total_amount="5.00"),
    )
    erp = frame(
        rec("a", created_at=day1, total_amount="10.00"),
        rec("b", created_at=day1, total_amount="20.00"),
        rec("c", created_at=day1, **money("JPY", "1500", "136"), payment_status=None),
        rec("e", created_at=day2, total_amount="7.50"),
    )
    summary = reconcile(shopify, erp, now=NOW).summary
    rows = {(r["day"], r["currency"]): r for r in summary.to_dict("records")}
    assert list(rows) == [(date(2026, 10, 3), "JPY"), (date(2026, 10, 3), "USD"), (date(2026, 10, 4), "USD")]
    usd = rows[(date(2026, 10, 3), "USD")]
    assert (usd["shopify_orders"], usd["erp_orders"], usd["matched"], usd["total_mismatch"]) == (2, 2, 1, 1)
    assert (usd["shopify_total"], usd["erp_total"], usd["difference"]) == (
        Decimal("30.01"),
        Decimal("30.00"),
        Decimal("0.01"),
    )
    jpy = rows[(date(2026, 10, 3), "JPY")]
    assert (jpy["shopify_total"], jpy["payment_status_mismatch"], jpy["matched"]) == (Decimal("1500"), 1, 0)
    later = rows[(date(2026, 10, 4), "USD")]
    assert (later["missing_in_erp"], later["missing_in_shopify"], later["difference"]) == (
        1,
        1,
        Decimal("-2.50"),
    )
    assert all(type(v) is Decimal for c in ("shopify_total", "erp_total", "difference") for v in summary[c])


def test_summary_days_follow_the_configured_timezone() -> None:
    late = datetime(2026, 10, 3, 22, 30, tzinfo=UTC)  # already 4 October in Berlin
    shopify, erp = frame(rec(1, created_at=late)), frame(rec(1, created_at=late))
    assert list(reconcile(shopify, erp, now=NOW).summary["day"]) == [date(2026, 10, 3)]
    berlin = reconcile(shopify, erp, now=NOW, config=ReconcileConfig(timezone="Europe/Berlin"))
    assert list(berlin.summary["day"]) == [date(2026, 10, 4)]


def test_a_pair_counts_on_the_shopify_orders_day() -> None:
    # The ERP often knows only the date, in its own zone: midnight Berlin is the day before in UTC.
    shop = rec(1, created_at=datetime(2026, 10, 3, 8, 0, tzinfo=UTC))
    erp = rec(1, created_at=datetime(2026, 10, 2, 22, 0, tzinfo=UTC))
    summary = pair(shop, erp).summary
    assert list(summary["day"]) == [date(2026, 10, 3)]
    assert (summary["shopify_orders"][0], summary["erp_orders"][0]) == (1, 1)


def test_empty_sides() -> None:
    empty = frame()
    result = reconcile(empty, empty, now=NOW)
    assert result.exceptions.empty and result.summary.empty and result.matched == 0
    only_shopify = reconcile(frame(rec(1)), empty, now=NOW)
    assert found(only_shopify) == [("1", "missing_in_erp")]


# ---------------------------------------------------------------------------------------
# Input checks and money conversion


def test_money_given_in_minor_units_gives_the_same_result() -> None:
    shop = frame(rec(1, **money("KWD", "1.250", "0.060")), rec(2, total_amount="10.01"), rec(3))
    erp = frame(rec(1, **money("KWD", "1.251", "0.060")), rec(2, total_amount="10.00", tax_amount=None))
    as_decimal = reconcile(shop, erp, now=NOW)

    def minor(f: pd.DataFrame) -> pd.DataFrame:
        f = f.copy()
        exponents = f["currency"].map({"USD": 2, "KWD": 3}).to_numpy()
        for name in ("total_amount", "tax_amount", "refunded_amount"):
            f[f"{name}_minor"] = to_minor_units(f.pop(name), exponents)
        return f

    as_minor = reconcile(minor(shop), minor(erp), now=NOW)
    pd.testing.assert_frame_equal(as_decimal.exceptions, as_minor.exceptions)
    pd.testing.assert_frame_equal(as_decimal.summary, as_minor.summary)


def test_minor_unit_conversion_is_exact_both_ways() -> None:
    exponents = np.array([0, 2, 3, 2, 2])
    values = [Decimal("12800"), Decimal("0.01"), "1.250", None, 7]
    units = to_minor_units(values, exponents)
    assert units.tolist() == [12800, 1, 1250, pd.NA, 700]
    back = from_minor_units([12800, 1, 1250, -5], [0, 2, 3, 2])
    assert [str(d) for d in back] == ["12800", "0.01", "1.250", "-0.05"]


@pytest.mark.parametrize(
    ("value", "exponent", "message"),
    [
        (Decimal("10.001"), 2, "more decimals"),
        ("1.5", 0, "more decimals"),
        (1.5, 2, "float"),
        (Decimal("NaN"), 2, "finite"),
        (Decimal("Infinity"), 2, "exactly"),
        ("12,5x", 2, "not a decimal"),
        (Decimal("1E+20"), 2, "exactly"),
    ],
)
def test_amounts_that_cannot_be_held_exactly_are_refused(value: Any, exponent: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_minor_units([value], np.array([exponent]))


def test_inputs_are_checked() -> None:
    good = frame(rec(1))
    with pytest.raises(ValueError, match="more than once"):
        reconcile(frame(rec(1), rec(1)), good, now=NOW)
    with pytest.raises(ValueError, match="more than once"):
        reconcile(good, frame(rec(1), rec(1)), now=NOW)
    with pytest.raises(ValueError, match="twice from one source"):
        reconcile(good, frame(rec(1), rec(1), source="erp_files"), now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        reconcile(good, good, now=datetime(2026, 11, 1))
    naive = good.assign(created_at=good["created_at"].dt.tz_localize(None))
    with pytest.raises(ValueError, match="naive"):
        reconcile(naive, good, now=NOW)
    with pytest.raises(ValueError, match="unknown values"):
        reconcile(good.assign(payment_status="paid"), good, now=NOW)
    with pytest.raises(ValueError, match="ISO 4217"):
        reconcile(good.assign(currency="XYZ"), good, now=NOW)
    with pytest.raises(ValueError, match="float"):
        reconcile(good.assign(total_amount=[10.0]), good, now=NOW)
    with pytest.raises(ValueError, match="lacks columns"):
        reconcile(good.drop(columns="tax_amount"), good, now=NOW)


def test_reconcile_is_pure_logic() -> None:
    code = (
        "import sys, orders_etl.reconcile\n"
        "print(sorted(m for m in ('dagster', 'httpx', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
