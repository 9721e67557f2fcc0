"""Reconciliation of Shopify against the ERP, over the whole store, after every sync."""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import sqlalchemy as sa

from orders_etl.defs import sync
from orders_etl.defs.orders.assets import orders
from orders_etl.defs.store.resources import StoreResource
from orders_etl.settings import get_settings
from orders_etl.store import OrderStore
from orders_etl.store.schema import EXCEPTION_KINDS, reconciliation_exceptions, reconciliation_summary

GROUP = "reconciliation"
OLD_OPEN_EXCEPTIONS = "no_old_open_exceptions"
WORST_SHOWN = 10


@dataclass
class OpenExceptions:
    """What is open in ``reconciliation_exceptions``, read back after the run."""

    by_kind: Counter[str] = field(default_factory=Counter)
    at_stake: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    worst: list[dict[str, object]] = field(default_factory=list)
    older_than_limit: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def open_exceptions(store: OrderStore, now: datetime, max_age: timedelta) -> OpenExceptions:
    """Counts per kind, amount at stake per currency (sum of |difference|), worst first."""
    e = reconciliation_exceptions
    query = sa.select(
        e.c.external_id, e.c.kind, e.c.currency, e.c.difference, e.c.shopify_value, e.c.erp_value,
        e.c.first_detected_at,
    ).where(e.c.resolved_at.is_(None))  # fmt: skip
    found = OpenExceptions()
    rows = []
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            found.by_kind[row.kind] += 1
            if row.difference is not None and row.currency:
                found.at_stake[row.currency] += abs(row.difference)
            if now - row.first_detected_at > max_age:
                found.older_than_limit += 1
            rows.append(row)
    rows.sort(key=lambda r: abs(r.difference) if r.difference is not None else Decimal(-1), reverse=True)
    found.worst = [
        {
            "external_id": r.external_id,
            "kind": r.kind,
            "difference": f"{r.difference} {r.currency or ''}".strip() if r.difference is not None else "",
            "shopify": r.shopify_value or "",
            "erp": r.erp_value or "",
            "open_since": r.first_detected_at.date().isoformat(),
        }
        for r in rows[:WORST_SHOWN]
    ]
    return found


@dg.asset(
    key="reconciliation",
    deps=[orders],
    group_name=GROUP,
    kinds={"pandas", "sqlalchemy"},
    owners=sync.OWNERS,
    retry_policy=sync.TRANSIENT_RETRY,
    check_specs=[
        dg.AssetCheckSpec(
            OLD_OPEN_EXCEPTIONS,
            asset="reconciliation",
            description="No reconciliation exception stays open longer than "
            "ORDERS_ETL_MAX_EXCEPTION_AGE_DAYS (warning).",
        )
    ],
)
def reconciliation(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Shopify against the ERP, order by order and per day × currency, over the whole store:
    `reconciliation_exceptions` (missing on either side, total / tax / refund / payment status /
    currency mismatches, with both values and the difference; resolved ones keep
    `resolved_at`) and `reconciliation_summary` (counts, totals, matched, exceptions per kind).

    Refreshed after every sync; the metadata shows what is open and how much money is at stake.
    """
    from orders_etl.reconcile import ReconcileConfig
    from orders_etl.store.reconciliation import run_reconciliation

    db = store.store
    run_reconciliation(db, config=ReconcileConfig())
    max_age = get_settings().max_exception_age
    found = open_exceptions(db, datetime.now(UTC), max_age)
    context.log.info(
        "reconciliation: open exceptions "
        + (", ".join(f"{kind} {n}" for kind, n in sorted(found.by_kind.items())) or "none")
    )
    # Shown as text: metadata floats would not keep the exact amount.
    stake = {f"at_stake_{currency}": str(amount) for currency, amount in sorted(found.at_stake.items())}
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sync.count_rows(db, reconciliation_exceptions),
            "open_exceptions": found.total,
            **{f"open_{kind}": found.by_kind.get(kind, 0) for kind in EXCEPTION_KINDS},
            **stake,
            "summary_rows": sync.count_rows(db, reconciliation_summary),
            "store": db.masked_url,
            "worst_open": dg.MetadataValue.md(
                sync.markdown_table(
                    ["external_id", "kind", "difference", "shopify", "erp", "open_since"], found.worst
                )
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=OLD_OPEN_EXCEPTIONS,
                passed=found.older_than_limit == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"older_than_days": max_age.days, "open_too_long": found.older_than_limit},
            )
        ],
    )
