"""Analyst views over the reconciliation: open exceptions with age, aging counts, daily summary.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Age is measured from ``first_detected_at`` to the database's current time, so the views are
always up to date without a run. Buckets match ``orders_etl.store.reconciliation.AGING_BUCKETS``:
[0, 1) d, [1, 7) d, [7, 30) d, >= 30 d. Money is not summed here: SQLite would do it in
floating point (the store keeps exact decimal text there).
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

KINDS = (
    "missing_in_erp",
    "missing_in_shopify",
    "total_mismatch",
    "tax_mismatch",
    "refund_mismatch",
    "payment_status_mismatch",
    "currency_mismatch",
)
VIEWS = ("reconciliation_aging", "reconciliation_open_exceptions", "reconciliation_daily")


def _age_days(dialect: str) -> str:
    if dialect == "sqlite":
        return "(julianday('now') - julianday(e.first_detected_at))"
    return "(EXTRACT(EPOCH FROM (now() - e.first_detected_at)) / 86400.0)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(
        f"""
        CREATE VIEW reconciliation_open_exceptions AS
        SELECT external_id, number, kind, currency, order_created_at, shopify_value, erp_value,
               difference, first_detected_at, last_detected_at,
               ROUND(age_days, 2) AS age_days,
               CASE WHEN age_days < 1 THEN '0–1 d'
                    WHEN age_days < 7 THEN '1–7 d'
                    WHEN age_days < 30 THEN '7–30 d'
                    ELSE '>30 d' END AS aging
        FROM (
            SELECT e.external_id, o.number, e.kind, e.currency, e.order_created_at,
                   e.shopify_value, e.erp_value, e.difference, e.first_detected_at,
                   e.last_detected_at, {_age_days(dialect)} AS age_days
            FROM reconciliation_exceptions AS e
            LEFT JOIN orders AS o ON o.external_id = e.external_id
            WHERE e.resolved_at IS NULL
        ) AS open_exceptions
        """
    )
    op.execute(
        """
        CREATE VIEW reconciliation_aging AS
        SELECT kind, currency, aging, COUNT(*) AS exceptions, MIN(first_detected_at) AS oldest_detected_at
        FROM reconciliation_open_exceptions
        GROUP BY kind, currency, aging
        """
    )
    op.execute(
        f"""
        CREATE VIEW reconciliation_daily AS
        SELECT day, currency, shopify_orders, erp_orders, shopify_total, erp_total, difference,
               matched, pending_sync, {" + ".join(KINDS)} AS exceptions, {", ".join(KINDS)}, computed_at
        FROM reconciliation_summary
        """
    )


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
