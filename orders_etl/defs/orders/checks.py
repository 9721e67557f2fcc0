"""Data checks on the golden ``orders`` table and the syncs feeding it.

The queries are plain functions over the store (tested on their own); the Dagster check
turns their findings into results. All checks run in one step after ``orders``
materializes (one process, one store connection, instead of one per check).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import sqlalchemy as sa

from orders_etl.currencies import is_iso_currency
from orders_etl.defs import sync
from orders_etl.defs.erp.resources import ErpSource
from orders_etl.defs.orders.assets import orders
from orders_etl.defs.store.resources import StoreResource
from orders_etl.model import Source
from orders_etl.settings import get_settings
from orders_etl.store import OrderStore
from orders_etl.store.engine import reading
from orders_etl.store.schema import order_rejects, source_orders
from orders_etl.store.schema import orders as orders_table

UNIQUE_EXTERNAL_ID = "one_row_per_external_id"
MONEY_SANE = "money_sane"
CURRENCY_ISO_4217 = "currency_iso_4217"
REJECT_RATE = "reject_rate_under_threshold"
SYNC_FRESHNESS = "sync_is_fresh"
SAMPLE = 10


# ---------------------------------------------------------------------------------------
# Queries


def duplicate_external_ids(store: OrderStore) -> list[tuple[str, int]]:
    """``(external_id, rows)`` for every key held more than once (the schema forbids it)."""
    query = (
        sa.select(orders_table.c.external_id, sa.func.count())
        .group_by(orders_table.c.external_id)
        .having(sa.func.count() > 1)
        .order_by(orders_table.c.external_id)
    )
    with reading(store.engine).connect() as conn:
        return [(key, count) for key, count in conn.execute(query)]


@dataclass(frozen=True)
class MoneyProblem:
    external_id: str
    total_amount: Decimal
    tax_amount: Decimal | None
    payment_status: str | None
    problem: str


def money_problems(store: OrderStore) -> Iterator[MoneyProblem]:
    """Orders whose tax is larger than their total, or whose total is negative without a refund.

    Tax is a part of the total, so its size cannot exceed the total's (compared by absolute
    value, which keeps the rule meaningful for a refunded negative total). Compared in
    Python on exact Decimals: on SQLite money is decimal text, which SQL would compare as
    text or as a float.
    """
    # The database narrows a million orders to the few that may break a rule, comparing the
    # amounts as floats with a margin (a float may misorder amounts ~1e-15 apart); only
    # those few are read and decided on exact Decimals.
    total = sa.cast(orders_table.c.total_amount, sa.Float)
    tax = sa.cast(orders_table.c.tax_amount, sa.Float)
    maybe = sa.or_(total < 0, tax < 0, sa.and_(tax.is_not(None), tax >= total * (1 - 1e-9)))
    query = (
        sa.select(
            orders_table.c.external_id,
            orders_table.c.total_amount,
            orders_table.c.tax_amount,
            orders_table.c.payment_status,
        )
        .where(maybe)
        .order_by(orders_table.c.external_id)
    )
    with reading(store.engine).connect() as conn:
        for key, total_amount, tax_amount, payment in conn.execute(query):
            if tax_amount is not None and abs(tax_amount) > abs(total_amount):
                yield MoneyProblem(key, total_amount, tax_amount, payment, "tax_amount exceeds total_amount")
            elif total_amount < 0 and payment != "refunded":
                yield MoneyProblem(
                    key, total_amount, tax_amount, payment, "negative total_amount without a refund"
                )


def currency_counts(store: OrderStore) -> dict[str, int]:
    query = sa.select(orders_table.c.currency, sa.func.count()).group_by(orders_table.c.currency)
    with reading(store.engine).connect() as conn:
        return dict(conn.execute(query).all())


@dataclass(frozen=True)
class RejectRate:
    source: str
    rejects: int
    orders: int

    @property
    def rate(self) -> float:
        seen = self.rejects + self.orders
        return self.rejects / seen if seen else 0.0


def reject_rates(store: OrderStore) -> list[RejectRate]:
    """Per source: records quarantined vs. records stored (each counted once per key)."""
    with reading(store.engine).connect() as conn:
        rejects = dict(
            conn.execute(
                sa.select(order_rejects.c.source, sa.func.count()).group_by(order_rejects.c.source)
            ).all()
        )
        stored = dict(
            conn.execute(
                sa.select(source_orders.c.source, sa.func.count()).group_by(source_orders.c.source)
            ).all()
        )
    return [RejectRate(s, rejects.get(s, 0), stored.get(s, 0)) for s in sorted(set(rejects) | set(stored))]


def sync_marks(store: OrderStore, sources: Sequence[Source]) -> dict[str, datetime | None]:
    """Each source's high-water mark (None: never synced)."""
    return {source.value: store.high_water_mark(source) for source in sources}


def is_stale(mark: datetime | None, now: datetime, max_age: timedelta) -> bool:
    return mark is None or now - mark > max_age


# ---------------------------------------------------------------------------------------
# The Dagster check


@dg.multi_asset_check(
    specs=[
        # Blocking: with duplicate keys, reconciliation would count orders twice.
        dg.AssetCheckSpec(
            UNIQUE_EXTERNAL_ID, asset=orders, blocking=True, description="One row per external_id."
        ),
        dg.AssetCheckSpec(
            MONEY_SANE,
            asset=orders,
            description="tax_amount ≤ total_amount, and no negative total unless refunded.",
        ),
        dg.AssetCheckSpec(CURRENCY_ISO_4217, asset=orders, description="Every currency is an ISO 4217 code."),
        dg.AssetCheckSpec(
            REJECT_RATE,
            asset=orders,
            description="Share of each source's records quarantined in order_rejects stays under "
            "ORDERS_ETL_MAX_REJECT_RATE (warning).",
        ),
        dg.AssetCheckSpec(
            SYNC_FRESHNESS,
            asset=orders,
            description="Every configured source's high-water mark (sync_state) is younger than "
            "ORDERS_ETL_MAX_SYNC_AGE_HOURS.",
        ),
    ],
)
def orders_checks(store: StoreResource, erp: ErpSource) -> Iterator[dg.AssetCheckResult]:
    db = store.store
    settings = get_settings()

    duplicates = duplicate_external_ids(db)
    yield dg.AssetCheckResult(
        check_name=UNIQUE_EXTERNAL_ID,
        passed=not duplicates,
        metadata={
            "duplicated_keys": len(duplicates),
            "sample": dg.MetadataValue.md(
                sync.markdown_table(
                    ["external_id", "rows"], [{"external_id": k, "rows": n} for k, n in duplicates[:SAMPLE]]
                )
            ),
        },
    )

    problems: list[MoneyProblem] = []
    problem_count = 0
    for problem in money_problems(db):
        problem_count += 1
        if len(problems) < SAMPLE:
            problems.append(problem)
    yield dg.AssetCheckResult(
        check_name=MONEY_SANE,
        passed=problem_count == 0,
        metadata={
            "orders_with_problems": problem_count,
            "sample": dg.MetadataValue.md(
                sync.markdown_table(
                    ["external_id", "total_amount", "tax_amount", "payment_status", "problem"],
                    [vars(p) for p in problems],
                )
            ),
        },
    )

    currencies = currency_counts(db)
    invalid = {code: n for code, n in currencies.items() if not is_iso_currency(code)}
    yield dg.AssetCheckResult(
        check_name=CURRENCY_ISO_4217,
        passed=not invalid,
        metadata={
            "currencies": ", ".join(sorted(currencies)) or "none",
            "invalid": ", ".join(f"{code!r} ({n})" for code, n in sorted(invalid.items())) or "none",
        },
    )

    rates = reject_rates(db)
    too_high = [r for r in rates if r.rate > settings.max_reject_rate]
    yield dg.AssetCheckResult(
        check_name=REJECT_RATE,
        passed=not too_high,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "threshold": settings.max_reject_rate,
            **{f"reject_rate_{r.source}": round(r.rate, 6) for r in rates},
            **{f"rejects_{r.source}": r.rejects for r in rates},
        },
    )

    now = datetime.now(UTC)
    marks = sync_marks(db, [Source.SHOPIFY, erp.source])
    yield dg.AssetCheckResult(
        check_name=SYNC_FRESHNESS,
        passed=not any(is_stale(mark, now, settings.max_sync_age) for mark in marks.values()),
        metadata={
            "max_age_hours": settings.max_sync_age.total_seconds() / 3600,
            **{
                f"high_water_mark_{source}": mark.isoformat() if mark else "never synced"
                for source, mark in marks.items()
            },
        },
    )
