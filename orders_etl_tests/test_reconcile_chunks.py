"""run_reconciliation streams the store a range of external_id at a time: where the ranges fall
never changes a result (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_etl.currencies import exponent_of
from orders_etl.model import OrderRecord
from orders_etl.reconcile import KINDS, MONEY_KINDS, ReconcileConfig, reconcile
from orders_etl.store import OrderStore
from orders_etl.store import reconciliation as recon
from orders_etl.store.engine import create_store_engine
from orders_etl.store.reconciliation import open_exceptions, run_reconciliation, worst_exceptions
from orders_etl.store.schema import (
    orders,
    reconciliation_exceptions,
    reconciliation_summary,
    source_orders,
)
from orders_etl_tests.factories import order

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CREATED = datetime(2026, 10, 3, 22, 30, tzinfo=UTC)
# Keys that a line of CSV text could get wrong: quotes, separators, line breaks, the word NULL.
ODD_IDS = ["it's", 'say "hi", then\nleave', "NULL", "ünïcødé €", " padded ", "a,b", "back\\slash"]
CURRENCIES = ["USD", "JPY", "KWD"]
PAYMENTS = [None, "authorized", "captured", "refunded", "voided"]
ALL_AT_ONCE = 1_000_000


def rec(external_id: str, **fields: Any) -> OrderRecord:
    fields.setdefault("created_at", CREATED)
    fields.setdefault("refunded_amount", "0")
    fields.setdefault("updated_at", CREATED + timedelta(hours=1))
    return order(external_id, **fields)


def amount(units: int, currency: str) -> str:
    return str(Decimal(units).scaleb(-exponent_of(currency)))


def reset(store: OrderStore) -> None:
    with store.engine.begin() as conn:
        for table in (reconciliation_exceptions, reconciliation_summary, orders, source_orders):
            conn.execute(sa.delete(table))


def results(store: OrderStore, chunk_rows: int, **kwargs: Any) -> dict[str, Any]:
    """One run from an empty ledger: the outcome and what it wrote."""
    with store.engine.begin() as conn:
        conn.execute(sa.delete(reconciliation_exceptions))
    outcome = run_reconciliation(store, now=NOW, chunk_rows=chunk_rows, **kwargs)
    ledger = store.read_table(reconciliation_exceptions).sort_values(["external_id", "kind"])
    summary = store.read_table(reconciliation_summary).sort_values(["day", "currency"])
    return {
        "outcome": outcome.as_dict(),
        "worst": outcome.worst,
        "ledger": ledger.reset_index(drop=True),
        "summary": summary.reset_index(drop=True),
    }


def assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got["outcome"] == expected["outcome"]
    for name in ("worst", "ledger", "summary"):
        pd.testing.assert_frame_equal(got[name], expected[name])


def assert_as_in_memory(store: OrderStore, got: dict[str, Any], config: ReconcileConfig) -> None:
    """The store's run found what the in-memory reconcile() finds on the whole table."""
    table = store.read_table(source_orders)
    whole = reconcile(
        table[table["source"] == "shopify"], table[table["source"] != "shopify"], now=NOW, config=config
    )
    expected = whole.exceptions.sort_values(["external_id", "kind"]).reset_index(drop=True)

    def values(frame: pd.DataFrame, column: str) -> list[Any]:
        return [None if pd.isna(v) else v for v in frame[column]]

    for column in ("external_id", "kind", "currency", "shopify_value", "erp_value", "difference"):
        assert values(got["ledger"], column) == values(expected, column), column
    summary = got["summary"].drop(columns="computed_at")
    pd.testing.assert_frame_equal(summary, whole.summary, check_dtype=False)


def test_the_chunk_size_changes_nothing(store: OrderStore) -> None:
    shop, bc, files = [], [], []
    for i, external_id in enumerate([*ODD_IDS, *(f"{n:04d}" for n in range(40))], start=4):
        currency = CURRENCIES[i % 3]
        total = amount(10_000 + 37 * i, currency)
        fields = {
            "currency": currency,
            "total_amount": total,
            "tax_amount": amount(900 + i, currency),
            "refunded_amount": amount(0, currency),
            "payment_status": PAYMENTS[i % 5],
            # Some orders without creation time: counted on the day of their last update.
            "created_at": None if i % 11 == 0 else CREATED + timedelta(hours=7 * i),
        }
        if i % 13 != 1:  # else missing in the ERP (or pending, when recent)
            if i % 13 == 2:
                fields["created_at"] = NOW - timedelta(minutes=20)
            shop.append(rec(external_id, **fields))
        if i % 13 not in (1, 2, 3):  # 3: only in Shopify... and deleted there below
            erp = dict(fields)
            if i % 7 == 4:
                erp["total_amount"] = amount(10_001 + 37 * i, currency)
            if i % 7 == 5:
                erp["payment_status"] = "voided" if fields["payment_status"] != "voided" else None
            if i % 9 == 6:
                erp["tax_amount"] = None  # not reported: not compared
            bc.append(rec(external_id, **erp))
            if i % 5 == 0:  # a flat-file copy that Business Central's record overrides
                files.append(rec(external_id, **{**erp, "total_amount": amount(1, currency)}))
        if i % 13 == 3:
            shop.append(rec(external_id, **fields))
    bc += [rec(f"SO-{n}", total_amount="12.50") for n in range(3)]  # ERP-only
    store.upsert("shopify", shop)
    store.upsert("business_central", bc)
    store.upsert("erp_files", files)
    store.mark_deleted("shopify", {r.external_id: NOW - timedelta(days=1) for r in shop[3:40:13]})
    store.mark_deleted("business_central", {bc[5].external_id: NOW - timedelta(days=1)})

    config = ReconcileConfig(timezone="Asia/Tokyo", tolerance_minor_units={"JPY": 1})
    expected = results(store, ALL_AT_ONCE, config=config)
    assert expected["outcome"]["open"] > 10
    assert {kind for kind, n in expected["outcome"]["counts"].items() if n} >= {
        "missing_in_erp",
        "missing_in_shopify",
        "total_mismatch",
        "payment_status_mismatch",
    }
    assert expected["outcome"]["pending_sync"] > 0
    assert set(ODD_IDS) <= set(store.read_table(source_orders)["external_id"])
    assert_as_in_memory(store, expected, config)
    for chunk_rows in (1, 2, 3, 17):
        assert_same(results(store, chunk_rows, config=config), expected)


@st.composite
def sides(draw: st.DrawFn) -> dict[str, list[OrderRecord]]:
    """Orders of the three sources, overlapping on a small set of keys."""
    keys = draw(st.lists(st.sampled_from([*ODD_IDS, *"ABCDEFGH"]), min_size=1, max_size=10, unique=True))
    found: dict[str, list[OrderRecord]] = {"shopify": [], "business_central": [], "erp_files": []}
    for key in keys:
        currency = draw(st.sampled_from(CURRENCIES))
        total = draw(st.integers(0, 10**6))
        for source in found:
            if draw(st.booleans()):
                found[source].append(
                    rec(
                        key,
                        currency=currency,
                        total_amount=amount(total + draw(st.sampled_from([0, 0, 1])), currency),
                        tax_amount=draw(st.none() | st.just(amount(total // 10, currency))),
                        payment_status=draw(st.sampled_from(PAYMENTS)),
                        created_at=draw(st.sampled_from([CREATED, NOW - timedelta(minutes=5), None])),
                    )
                )
    return found


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sides(), st.integers(1, 4))
def test_any_store_gives_the_same_results_in_chunks(
    store: OrderStore, data: dict[str, list[OrderRecord]], chunk_rows: int
) -> None:
    reset(store)
    for source, records in data.items():
        store.upsert(source, records)
    expected = results(store, ALL_AT_ONCE)
    assert_as_in_memory(store, expected, ReconcileConfig())
    assert_same(results(store, chunk_rows), expected)


def test_an_amount_finer_than_its_currency_is_refused(store: OrderStore) -> None:
    store.upsert("shopify", [rec("a", total_amount="12.30"), rec("b", total_amount="5.00")])
    update = "UPDATE source_orders SET total_amount = :amount WHERE external_id = :id"
    with store.engine.begin() as conn:  # by hand: the store itself never writes such amounts
        conn.execute(sa.text(update), {"amount": "12.301", "id": "a"})
        conn.execute(sa.text(update), {"amount": "-5.00", "id": "b"})
    with pytest.raises(ValueError, match=r"12\.301"):
        run_reconciliation(store, now=NOW)
    with store.engine.begin() as conn:
        conn.execute(sa.text(update), {"amount": "12.30", "id": "a"})
    run_reconciliation(store, now=NOW)
    ledger = store.read_table(reconciliation_exceptions).set_index("external_id")
    assert ledger.loc["b", "difference"] == Decimal("-5.00")  # read exactly, sign and all


# ---------------------------------------------------------------------------------------
# The worst open exceptions, read without reading them all


@st.composite
def ledgers(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Open and resolved ledger rows with many ties: equal amounts, equal and nearly equal
    first_detected_at (ages are rounded to 0.01 day, 864 s), several kinds per order."""
    rows = []
    for n in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(KINDS))
        currency = draw(st.sampled_from(CURRENCIES))
        units = draw(st.sampled_from([1, 1, 250, 10**6, 10**15]))
        rows.append(
            {
                "external_id": draw(st.sampled_from(ODD_IDS)) + str(n // 3),
                "kind": kind,
                "currency": currency,
                "order_created_at": None,
                "shopify_value": None,
                "erp_value": None,
                "difference": (
                    Decimal(amount(units * draw(st.sampled_from([1, -1])), currency))
                    if kind in MONEY_KINDS
                    else None
                ),
                "first_detected_at": NOW - timedelta(seconds=draw(st.sampled_from([0, 1, 500, 900, 86_400]))),
                "last_detected_at": NOW,
                "resolved_at": draw(st.sampled_from([None, None, None, NOW])),
            }
        )
    unique = {(row["external_id"], row["kind"]): row for row in rows}
    return list(unique.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ledgers(), st.integers(1, 12))
def test_the_worst_are_those_of_all_open_exceptions(
    store: OrderStore, rows: list[dict[str, Any]], limit: int
) -> None:
    reset(store)
    if rows:
        with store.engine.begin() as conn:
            conn.execute(sa.insert(reconciliation_exceptions), rows)
    later = NOW + timedelta(hours=5)
    expected = worst_exceptions(open_exceptions(store, now=later), limit)
    pd.testing.assert_frame_equal(recon._worst_open_exceptions(store, later, limit), expected)


def test_an_empty_store(store: OrderStore) -> None:
    outcome = run_reconciliation(store, now=NOW, chunk_rows=1)
    assert (outcome.open, outcome.matched, outcome.shopify_orders, outcome.erp_orders) == (0, 0, 0, 0)
    assert outcome.worst.empty and store.read_table(reconciliation_summary).empty


@pytest.mark.postgres
def test_the_session_time_zone_changes_nothing(pg_url: str) -> None:
    # Times cross midnight in UTC, Tokyo and New York alike.
    records = [rec(str(n), created_at=CREATED + timedelta(hours=5 * n)) for n in range(8)]
    expected = {}
    for options in ("", " -cTimeZone=America/New_York"):
        url = sa.make_url(pg_url)
        url = url.update_query_dict({"options": url.query["options"] + options})
        store = OrderStore(create_store_engine(url))
        try:
            reset(store)
            store.upsert("shopify", records)
            off = [r.model_copy(update={"total_amount": Decimal("1.00")}) for r in records[::2]]
            store.upsert("business_central", off)
            expected[options] = results(store, 3, config=ReconcileConfig(timezone="Asia/Tokyo"))
        finally:
            store.dispose()
    first, second = expected.values()
    assert_same(second, first)
    assert_as_in_memory(store, first, ReconcileConfig(timezone="Asia/Tokyo"))
