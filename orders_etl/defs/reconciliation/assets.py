"""Reconciliation of Shopify against the ERP, over the whole store, after every sync."""

import dagster as dg

from orders_etl.defs import sync
from orders_etl.defs.orders.assets import orders
from orders_etl.defs.store.resources import StoreResource
from orders_etl.settings import get_settings
from orders_etl.store.schema import EXCEPTION_KINDS, reconciliation_exceptions

GROUP = "reconciliation"
OLD_OPEN_EXCEPTIONS = "no_old_open_exceptions"


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
    from orders_etl.store.reconciliation import open_longer_than, run_reconciliation

    db = store.store
    # One key range at a time through pandas and Arrow: what it freed goes back when it ends.
    with sync.streaming_heap():
        outcome = run_reconciliation(db, config=ReconcileConfig())
    context.log.info(
        f"reconciliation: {outcome.open} open ({outcome.new} new, {outcome.resolved} resolved, "
        f"{outcome.reopened} reopened), {outcome.matched} matched, {outcome.pending_sync} pending sync"
    )
    max_age = get_settings().max_exception_age
    too_old, oldest_days = open_longer_than(db, now=outcome.now, max_age=max_age)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sync.count_rows(db, reconciliation_exceptions),
            "open_exceptions": outcome.open,
            **{f"open_{kind}": outcome.counts.get(kind, 0) for kind in EXCEPTION_KINDS},
            "new": outcome.new,
            "resolved": outcome.resolved,
            "reopened": outcome.reopened,
            "matched": outcome.matched,
            "pending_sync": outcome.pending_sync,
            "shopify_orders": outcome.shopify_orders,
            "erp_orders": outcome.erp_orders,
            # Text, not floats: the amounts stay exact. Never summed across currencies.
            **{
                f"at_stake_{currency}": str(amount)
                for currency, amount in sorted(outcome.amount_at_stake.items())
            },
            "store": db.masked_url,
            "worst_open": dg.MetadataValue.md(outcome.worst_markdown()),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=OLD_OPEN_EXCEPTIONS,
                passed=not too_old,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "max_age_days": max_age.total_seconds() / 86_400,
                    "open_too_long": too_old,
                    "oldest_days": oldest_days,
                },
            )
        ],
    )
