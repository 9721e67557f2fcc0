"""Properties of reconcile over generated datasets (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from orders_etl.currencies import exponent_of
from orders_etl.reconcile import ReconcileConfig, reconcile

NOW = datetime(2027, 1, 1, tzinfo=UTC)
# Pairs of currencies with the same exponent, so a swapped code keeps valid amounts.
SAME_EXPONENT = {"JPY": "KRW", "KRW": "JPY", "USD": "EUR", "EUR": "USD", "KWD": "BHD", "BHD": "KWD"}
PAYMENTS = [None, "authorized", "captured", "refunded", "voided"]


def _amount(units: int, currency: str) -> Decimal:
    return Decimal(units).scaleb(-exponent_of(currency))


@st.composite
def orders(draw: st.DrawFn) -> list[dict]:
    count = draw(st.integers(0, 25))
    ids = draw(
        st.lists(
            st.text("0123456789SOB-#", min_size=1, max_size=12), min_size=count, max_size=count, unique=True
        )
    )
    rows = []
    for external_id in ids:
        currency = draw(st.sampled_from(sorted(SAME_EXPONENT)))
        total = draw(st.integers(0, 10**14))
        rows.append(
            {
                "external_id": external_id,
                "currency": currency,
                "created_at": draw(
                    st.datetimes(datetime(2020, 1, 1), datetime(2026, 12, 1), timezones=st.just(UTC))
                ),
                "total_amount": _amount(total, currency),
                "tax_amount": draw(
                    st.none() | st.integers(0, total).map(lambda u, c=currency: _amount(u, c))
                ),
                "refunded_amount": draw(
                    st.none() | st.integers(0, total).map(lambda u, c=currency: _amount(u, c))
                ),
                "payment_status": draw(st.sampled_from(PAYMENTS)),
                "deleted_at": draw(st.none() | st.just(datetime(2026, 12, 15, tzinfo=UTC))),
            }
        )
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    columns = ["external_id", "currency", "created_at", "total_amount", "tax_amount", "refunded_amount"]
    columns += ["payment_status", "deleted_at"]
    frame = pd.DataFrame(rows, columns=columns)
    for name in ("total_amount", "tax_amount", "refunded_amount"):
        frame[name] = frame[name].astype(object)
    return frame


@settings(max_examples=100, deadline=None)
@given(orders(), st.sampled_from(["UTC", "Europe/Berlin", "Asia/Tokyo"]))
def test_a_dataset_reconciled_with_itself_is_all_matched(rows: list[dict], timezone: str) -> None:
    data = _frame(rows)
    result = reconcile(data, data.copy(), now=NOW, config=ReconcileConfig(timezone=timezone))
    live = sum(r["deleted_at"] is None for r in rows)
    assert result.exceptions.empty
    assert (result.matched, result.compared, result.pending_sync) == (live, live, 0)
    summary = result.summary
    assert summary["matched"].sum() == live
    assert (summary["shopify_orders"] == summary["erp_orders"]).all()
    assert (summary["shopify_total"] == summary["erp_total"]).all()
    assert all(d == 0 for d in summary["difference"])


@settings(max_examples=120, deadline=None)
@given(orders(), st.data())
def test_one_planted_difference_is_found_exactly(rows: list[dict], data: st.DataObject) -> None:
    live = [i for i, r in enumerate(rows) if r["deleted_at"] is None]
    if not live:
        return
    k = data.draw(st.sampled_from(live))
    change = data.draw(
        st.sampled_from(["total", "tax", "refund", "payment", "currency", "no_erp", "no_shopify"])
    )
    shop = [dict(r) for r in rows]
    erp = [dict(r) for r in rows]
    target = erp[k]
    currency = target["currency"]
    external_id = target["external_id"]
    if change in ("total", "tax", "refund"):
        field = {"total": "total_amount", "tax": "tax_amount", "refund": "refunded_amount"}[change]
        if target[field] is None:
            target[field] = shop[k][field] = _amount(0, currency)
        delta = data.draw(st.integers(1, 10**6))
        target[field] += _amount(delta, currency)
        expected = [(external_id, f"{change}_mismatch", -_amount(delta, currency))]
    elif change == "payment":
        before = shop[k]["payment_status"]
        choices = [p for p in PAYMENTS if p != before and not (before == "authorized" and p is None)]
        target["payment_status"] = data.draw(st.sampled_from(choices))
        expected = [(external_id, "payment_status_mismatch", None)]
    elif change == "currency":
        target["currency"] = SAME_EXPONENT[currency]
        expected = [(external_id, "currency_mismatch", None)]
    elif change == "no_erp":
        del erp[k]
        expected = [(external_id, "missing_in_erp", shop[k]["total_amount"])]
    else:
        del shop[k]
        expected = [(external_id, "missing_in_shopify", -erp[k]["total_amount"])]
    result = reconcile(_frame(shop), _frame(erp), now=NOW + timedelta(days=1))
    got = list(
        zip(
            result.exceptions["external_id"],
            result.exceptions["kind"],
            result.exceptions["difference"],
            strict=True,
        )
    )
    assert got == expected
    assert result.matched == len(live) - 1
