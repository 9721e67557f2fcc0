"""run_reconciliation on SQLite and PostgreSQL: the ledger's lifecycle, the summary, the views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from orders_etl.model import OrderRecord
from orders_etl.reconcile import ReconcileConfig, reconcile
from orders_etl.store import OrderStore
from orders_etl.store import reconciliation as recon
from orders_etl.store.reconciliation import load_sides, run_reconciliation
from orders_etl.store.schema import reconciliation_exceptions, reconciliation_summary
from orders_etl_tests.factories import order

CREATED = datetime(2026, 10, 3, 8, 15, tzinfo=UTC)
NEXT_DAY = CREATED + timedelta(days=1)
DAY1 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)


def rec(external_id: str | int, version: int = 0, **fields: Any) -> OrderRecord:
    """An order; ``version`` moves updated_at so that a later upsert replaces it."""
    fields.setdefault("created_at", CREATED)
    fields.setdefault("refunded_amount", "0")
    fields.setdefault("updated_at", CREATED + timedelta(hours=version))
    return order(external_id, **fields)


def ledger(store: OrderStore) -> dict[tuple[str, str], dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(reconciliation_exceptions)).mappings().all()
    return {(r["external_id"], r["kind"]): dict(r) for r in rows}


def test_ledger_lifecycle_across_three_runs(store: OrderStore) -> None:
    store.upsert("shopify", [rec("A", total_amount="100.00"), rec("B", payment_status="captured"), rec("C")])
    store.upsert(
        "business_central", [rec("A", total_amount="99.99"), rec("B", payment_status=None), rec("C")]
    )

    # Run 1: both problems detected.
    first = run_reconciliation(store, now=DAY1)
    assert (first.new, first.resolved, first.reopened, first.open) == (2, 0, 0, 2)
    assert first.counts["total_mismatch"] == 1 and first.counts["payment_status_mismatch"] == 1
    assert first.matched == 1
    rows = ledger(store)
    assert set(rows) == {("A", "total_mismatch"), ("B", "payment_status_mismatch")}
    a = rows[("A", "total_mismatch")]
    assert (a["first_detected_at"], a["last_detected_at"], a["resolved_at"]) == (DAY1, DAY1, None)
    assert (a["shopify_value"], a["erp_value"], a["difference"]) == ("100.00", "99.99", Decimal("0.01"))

    # Run 2: A still open (its values refreshed), B fixed in the ERP -> resolved.
    store.upsert(
        "business_central", [rec("A", 1, total_amount="99.98"), rec("B", 1, payment_status="captured")]
    )
    second = run_reconciliation(store, now=DAY2)
    assert (second.new, second.resolved, second.reopened, second.open) == (0, 1, 0, 1)
    rows = ledger(store)
    a, b = rows[("A", "total_mismatch")], rows[("B", "payment_status_mismatch")]
    assert (a["first_detected_at"], a["last_detected_at"], a["resolved_at"]) == (DAY1, DAY2, None)
    assert (a["erp_value"], a["difference"]) == ("99.98", Decimal("0.02"))
    assert (b["first_detected_at"], b["last_detected_at"], b["resolved_at"]) == (DAY1, DAY1, DAY2)

    # Run 3: B breaks again -> reopened, history kept; A fixed -> resolved; C new.
    store.upsert(
        "business_central", [rec("A", 2, total_amount="100.00"), rec("B", 2, payment_status="refunded")]
    )
    store.upsert("shopify", [rec("C", 1, tax_amount="8.01")])
    third = run_reconciliation(store, now=DAY3)
    assert (third.new, third.resolved, third.reopened, third.open) == (1, 1, 1, 2)
    rows = ledger(store)
    a, b, c = (
        rows[("A", "total_mismatch")],
        rows[("B", "payment_status_mismatch")],
        rows[("C", "tax_mismatch")],
    )
    assert (a["last_detected_at"], a["resolved_at"]) == (DAY2, DAY3)
    assert (b["first_detected_at"], b["last_detected_at"], b["resolved_at"]) == (DAY1, DAY3, None)
    assert b["erp_value"] == "refunded"
    assert (c["first_detected_at"], c["resolved_at"]) == (DAY3, None)
    assert len(rows) == 3  # one row per (external_id, kind), ever


def test_summary_is_replaced_and_outcome_reports_money_at_stake(store: OrderStore) -> None:
    store.upsert("shopify", [
        rec("usd-1", total_amount="100.00"),
        rec("usd-2", total_amount="50.00", tax_amount="4.00"),
        rec("kwd", currency="KWD", total_amount="1.250", tax_amount="0.060"),
        rec("jpy", currency="JPY", total_amount="5000", tax_amount="455", created_at=NEXT_DAY),
    ])  # fmt: skip
    store.upsert("erp_files", [
        rec("usd-1", total_amount="100.00"),
        rec("usd-2", total_amount="49.50", tax_amount="3.50"),
        rec("jpy", currency="JPY", total_amount="5000", tax_amount="455", created_at=NEXT_DAY),
        rec("SO-1", currency="KWD", total_amount="2.000", tax_amount="0.100"),
    ])  # fmt: skip
    outcome = run_reconciliation(store, now=DAY1)
    # usd-2 has a total and a tax mismatch: counted once, at its largest difference.
    assert outcome.amount_at_stake == {"KWD": Decimal("3.250"), "USD": Decimal("0.50")}
    assert outcome.as_dict()["amount_at_stake"] == {"KWD": "3.250", "USD": "0.50"}
    assert (outcome.shopify_orders, outcome.erp_orders, outcome.matched) == (4, 4, 2)
    summary = store.read_table(reconciliation_summary)
    assert len(summary) == 3 and set(summary["computed_at"]) == {DAY1}
    usd = summary[summary["currency"] == "USD"].iloc[0]
    assert (usd["shopify_total"], usd["erp_total"], usd["difference"]) == (
        Decimal("150.00"),
        Decimal("149.50"),
        Decimal("0.50"),
    )
    assert (usd["total_mismatch"], usd["tax_mismatch"], usd["matched"]) == (1, 1, 1)

    # The next run replaces the summary: the JPY order now falls on the same day as the rest.
    store.upsert("shopify", [rec("jpy", 1, currency="JPY", total_amount="5000", tax_amount="455")])
    store.upsert("erp_files", [rec("jpy", 1, currency="JPY", total_amount="5000", tax_amount="455")])
    run_reconciliation(store, now=DAY2)
    summary = store.read_table(reconciliation_summary)
    assert sorted(summary["currency"]) == ["JPY", "KWD", "USD"]
    assert set(summary["day"]) == {CREATED.date()} and set(summary["computed_at"]) == {DAY2}


def test_worst_exceptions_rank_each_currency_by_amount(store: OrderStore) -> None:
    store.upsert("shopify", [
        rec("u1", total_amount="10.00"),
        rec("u2", total_amount="500.00"),
        rec("j1", currency="JPY", total_amount="1000", tax_amount="90"),
        rec("p1", payment_status="captured"),
    ])  # fmt: skip
    store.upsert("business_central", [
        rec("u1", total_amount="9.00"),
        rec("u2", total_amount="100.00"),
        rec("j1", currency="JPY", total_amount="990", tax_amount="90"),
        rec("p1", payment_status=None),
    ])  # fmt: skip
    outcome = run_reconciliation(store, now=DAY1, worst_limit=3)
    assert list(outcome.worst["external_id"]) == ["j1", "u2", "u1"]
    table = outcome.worst_markdown()
    assert table.splitlines()[0].startswith("| external_id | number | kind |")
    assert "| u2 | #u2 | total_mismatch | USD |" in table
    assert len(table.splitlines()) == 2 + 3


def test_erp_precedence_and_deleted_orders_in_the_store(store: OrderStore) -> None:
    store.upsert("shopify", [rec(1, total_amount="10.00"), rec(2), rec(3)])
    store.upsert("erp_files", [rec(1, total_amount="12.00"), rec(2), rec(3)])
    store.upsert("business_central", [rec(1, total_amount="10.00")])
    store.mark_deleted("shopify", {"2": DAY1 - timedelta(days=1)})
    store.mark_deleted("erp_files", {"3": DAY1 - timedelta(days=1)})
    outcome = run_reconciliation(store, now=DAY1)
    # 1: Business Central's record wins and agrees; 2: deleted in Shopify, compared as last
    # known (agrees); 3: deleted in the ERP, so missing there.
    assert set(ledger(store)) == {("3", "missing_in_erp")}
    assert outcome.matched == 2


def test_loading_from_the_store_matches_reading_the_table(store: OrderStore) -> None:
    records = [
        rec(f"s{i}", currency=cur, total_amount=amount, tax_amount=None if i % 3 else tax, payment_status=pay)
        for i, (cur, amount, tax, pay) in enumerate(
            [
                ("USD", "12.30", "1.00", "captured"),
                ("JPY", "1500", "136", None),
                ("KWD", "1.250", "0.005", None),
            ]
            * 4
        )
    ]
    store.upsert("shopify", records)
    store.upsert(
        "erp_files", [r.model_copy(update={"total_amount": r.total_amount + 1}) for r in records[:3]]
    )
    store.upsert("business_central", records[3:8])
    shopify, erp = load_sides(store)
    assert set(shopify.columns) >= {"total_amount_minor", "tax_amount_minor", "refunded_amount_minor"}
    assert sorted(shopify["external_id"]) == sorted(r.external_id for r in records)
    table = store.read_table("source_orders")
    by_table = reconcile(
        table[table["source"] == "shopify"], table[table["source"] != "shopify"], now=DAY1
    ).exceptions
    by_loader = reconcile(shopify, erp, now=DAY1).exceptions
    pd.testing.assert_frame_equal(by_table, by_loader)
    assert len(by_loader) > 3


def test_a_failed_write_leaves_ledger_and_summary_as_they_were(store: OrderStore, monkeypatch) -> None:
    store.upsert("shopify", [rec(1, total_amount="10.00")])
    store.upsert("erp_files", [rec(1, total_amount="10.01")])
    run_reconciliation(store, now=DAY1)
    before = (store.read_table(reconciliation_exceptions), store.read_table(reconciliation_summary))
    store.upsert("erp_files", [rec(1, 1, total_amount="10.00"), rec("SO-9")])

    def broken(*_args: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(recon, "_write_summary", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_reconciliation(store, now=DAY2)
    pd.testing.assert_frame_equal(store.read_table(reconciliation_exceptions), before[0])
    pd.testing.assert_frame_equal(store.read_table(reconciliation_summary), before[1])


def test_grace_period_in_a_run(store: OrderStore) -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    store.upsert("shopify", [rec("fresh", created_at=now - timedelta(minutes=30)), rec("late")])
    outcome = run_reconciliation(store, now=now)
    assert set(ledger(store)) == {("late", "missing_in_erp")}
    assert outcome.pending_sync == 1
    run_reconciliation(store, now=now, config=ReconcileConfig(grace=timedelta(minutes=10)))
    assert set(ledger(store)) == {("late", "missing_in_erp"), ("fresh", "missing_in_erp")}


def test_analyst_views_show_open_exceptions_with_age(store: OrderStore) -> None:
    store.upsert("shopify", [rec(i, total_amount="10.00") for i in range(4)])
    store.upsert("erp_files", [rec(i, total_amount="10.00") for i in range(4)])
    real_now = datetime.now(UTC)  # the views age exceptions against the database's clock
    # One more order goes wrong at each run: first detected 40, 10, 3 and 0.5 days ago.
    for step, (age, external_id) in enumerate(((40, "0"), (10, "1"), (3, "2"), (0.5, "3")), start=1):
        store.upsert("erp_files", [rec(external_id, step, total_amount="10.01")])
        run_reconciliation(store, now=real_now - timedelta(days=age))
    with store.engine.connect() as conn:
        view = conn.execute(
            sa.text("SELECT external_id, kind, number, aging, age_days FROM reconciliation_open_exceptions")
        ).all()
        aging = conn.execute(
            sa.text("SELECT aging, exceptions FROM reconciliation_aging ORDER BY aging")
        ).all()
        daily = conn.execute(
            sa.text("SELECT currency, exceptions, total_mismatch FROM reconciliation_daily")
        ).all()
    buckets = {external_id: bucket for external_id, _, _, bucket, _ in view}
    assert buckets == {"0": ">30 d", "1": "7–30 d", "2": "1–7 d", "3": "0–1 d"}
    assert {number for _, _, number, _, _ in view} == {"#0", "#1", "#2", "#3"}
    assert sorted(aging) == sorted([(">30 d", 1), ("7–30 d", 1), ("1–7 d", 1), ("0–1 d", 1)])
    assert daily == [("USD", 4, 4)]


def test_amounts_stored_off_their_exponent_are_still_read_exactly(store: OrderStore) -> None:
    # The store always writes amounts at the currency's exponent; a row written by hand may not.
    store.upsert(
        "shopify", [rec("a", total_amount="12.30"), rec("b", total_amount="10.00", tax_amount="1.50")]
    )
    update = "UPDATE source_orders SET {} = :amount WHERE external_id = :id"
    with store.engine.begin() as conn:  # text, so that PostgreSQL keeps the scale it is given
        conn.execute(sa.text(update.format("total_amount")), {"amount": "12.3", "id": "a"})
        conn.execute(sa.text(update.format("tax_amount")), {"amount": "15E-1", "id": "b"})
    shopify, _ = load_sides(store)
    units = dict(
        zip(
            shopify["external_id"],
            zip(shopify["total_amount_minor"], shopify["tax_amount_minor"], strict=True),
            strict=True,
        )
    )
    assert units == {"a": (1230, 800), "b": (1000, 150)}
