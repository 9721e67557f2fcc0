"""render_report: the summary and the open exceptions with age, in table, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from orders_etl.model import OrderRecord
from orders_etl.report import EXCEPTION_FIELDS, render_report
from orders_etl.store import OrderStore
from orders_etl.store.reconciliation import AGING_BUCKETS, aging_bucket, run_reconciliation
from orders_etl_tests.factories import order

RUN = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
OCT3 = datetime(2026, 10, 3, 8, 15, tzinfo=UTC)
OCT20 = datetime(2026, 10, 20, 9, 0, tzinfo=UTC)


def rec(external_id: str, **fields: Any) -> OrderRecord:
    fields.setdefault("created_at", OCT3)
    fields.setdefault("refunded_amount", "0")
    return order(external_id, **fields)


@pytest.fixture
def reconciled(store: OrderStore) -> OrderStore:
    store.upsert("shopify", [
        rec("1", total_amount="100.00"),
        rec("2", currency="KWD", total_amount="1.250", tax_amount="0.060"),
        rec("3", currency="JPY", total_amount="12800", tax_amount="1164", created_at=OCT20),
        rec("4", payment_status="captured", created_at=OCT20),
        rec("5"),
    ])  # fmt: skip
    store.upsert("erp_files", [
        rec("1", total_amount="100.01"),
        rec("3", currency="JPY", total_amount="12800", tax_amount="1163", created_at=OCT20),
        rec("4", payment_status=None, created_at=OCT20),
        rec("5"),
    ])  # fmt: skip
    run_reconciliation(store, now=RUN)
    return store


EXPECTED = {
    ("1", "total_mismatch"),
    ("2", "missing_in_erp"),
    ("3", "tax_mismatch"),
    ("4", "payment_status_mismatch"),
}


@pytest.mark.parametrize(
    ("age", "bucket"),
    [
        (0, "0–1 d"),
        (0.99, "0–1 d"),
        (1, "1–7 d"),
        (6.99, "1–7 d"),
        (7, "7–30 d"),
        (29.99, "7–30 d"),
        (30, ">30 d"),
    ],
)
def test_aging_buckets(age: float, bucket: str) -> None:
    assert aging_bucket(age) == bucket
    assert bucket in AGING_BUCKETS


def test_csv_lists_exactly_the_open_exceptions_with_exact_amounts(reconciled: OrderStore) -> None:
    text = render_report(reconciled, fmt="csv", now=RUN + timedelta(days=8))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(EXCEPTION_FIELDS)
    assert {(r["external_id"], r["kind"]) for r in rows} == EXPECTED
    by_id = {r["external_id"]: r for r in rows}
    assert (by_id["1"]["shopify_value"], by_id["1"]["erp_value"], by_id["1"]["difference"]) == (
        "100.00",
        "100.01",
        "-0.01",
    )
    assert (by_id["2"]["difference"], by_id["3"]["difference"]) == ("1.250", "1")
    assert {r["aging"] for r in rows} == {"7–30 d"} and {r["age_days"] for r in rows} == {"8.00"}
    assert by_id["4"]["number"] == "#4" and by_id["1"]["order_created_at"] == "2026-10-03T08:15:00+00:00"


def test_json_has_per_currency_totals_aging_and_daily_rows(reconciled: OrderStore) -> None:
    report = json.loads(render_report(reconciled, fmt="json", now=RUN + timedelta(hours=12)))
    assert {(e["external_id"], e["kind"]) for e in report["open_exceptions"]} == EXPECTED
    per_currency = {row["currency"]: row for row in report["per_currency"]}
    assert set(per_currency) == {"JPY", "KWD", "USD"}
    usd = per_currency["USD"]
    # Amounts stay exact decimal strings, never JSON floats.
    assert (usd["shopify_total"], usd["erp_total"], usd["difference"]) == ("300.00", "300.01", "-0.01")
    assert (usd["shopify_orders"], usd["erp_orders"], usd["matched"], usd["total_mismatch"]) == (3, 3, 1, 1)
    assert report["aging"]["tax_mismatch"] == {"0–1 d": 1, "1–7 d": 0, "7–30 d": 0, ">30 d": 0}
    assert sum(sum(kinds.values()) for kinds in report["aging"].values()) == 4
    assert {(d["day"], d["currency"]) for d in report["daily"]} == {
        ("2026-10-03", "USD"),
        ("2026-10-03", "KWD"),
        ("2026-10-20", "JPY"),
        ("2026-10-20", "USD"),
    }
    assert report["computed_at"] == RUN.isoformat()


def test_since_keeps_later_orders_only(reconciled: OrderStore) -> None:
    report = json.loads(render_report(reconciled, fmt="json", since=date(2026, 10, 10), now=RUN))
    assert {(e["external_id"], e["kind"]) for e in report["open_exceptions"]} == {
        ("3", "tax_mismatch"),
        ("4", "payment_status_mismatch"),
    }
    assert {d["day"] for d in report["daily"]} == {"2026-10-20"}
    assert report["since"] == "2026-10-10"


def test_table_for_a_terminal(reconciled: OrderStore) -> None:
    text = render_report(reconciled, now=RUN + timedelta(days=40))
    assert "computed 2026-11-01 06:00 UTC" in text
    lines = text.splitlines()
    usd = next(line for line in lines if line.startswith("USD "))
    assert usd.split() == ["USD", "3", "3", "300.00", "300.01", "-0.01", "1", "0", "2"]
    tax = next(line for line in lines if line.startswith("tax_mismatch "))
    assert tax.split() == ["tax_mismatch", "0", "0", "0", "1", "1"]
    listed = [line.split()[:3] for line in lines if line.startswith(("1 ", "2 ", "3 ", "4 "))]
    assert sorted((i, k) for i, _, k in listed) == sorted(EXPECTED)


def test_nothing_reconciled_yet(store: OrderStore) -> None:
    assert "No reconciliation results yet" in render_report(store)
    assert render_report(store, fmt="csv").splitlines() == [",".join(EXCEPTION_FIELDS)]
    assert json.loads(render_report(store, fmt="json"))["open_exceptions"] == []


def test_unknown_format_is_refused(store: OrderStore) -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        render_report(store, fmt="xml")  # type: ignore[arg-type]
