"""Initial order store: orders, source_orders, raw_orders, order_rejects, sync_state, reconciliation.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orders_etl.store.types import Money, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

EXCEPTION_KINDS = (
    "missing_in_erp",
    "missing_in_shopify",
    "total_mismatch",
    "tax_mismatch",
    "refund_mismatch",
    "payment_status_mismatch",
    "currency_mismatch",
)


def _order_columns() -> list[sa.Column]:
    return [
        sa.Column("number", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("total_amount", Money, nullable=False),
        sa.Column("tax_amount", Money),
        sa.Column("payment_status", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("shipping_method", sa.Text),
        sa.Column("tracking_number", sa.Text),
        sa.Column("customer_id", sa.Text),
        sa.Column("refunded_amount", Money),
        sa.Column("payment_status_detail", sa.Text),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("deleted_at", UtcDateTime),
    ]


def upgrade() -> None:
    op.create_table(
        "source_orders",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("external_id", sa.Text, primary_key=True),
        *_order_columns(),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("synced_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_source_orders_external_id", "source_orders", ["external_id"])
    op.create_index("ix_source_orders_source_number", "source_orders", ["source", "number"])

    op.create_table(
        "orders",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("external_id", sa.Text, nullable=False, unique=True),
        *_order_columns(),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("synced_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_orders_created_at", "orders", ["created_at"])

    op.create_table(
        "raw_orders",
        sa.Column("raw_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("record_key", sa.Text, nullable=False),
        sa.Column("updated_at", UtcDateTime),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("payload_hash", sa.Text, nullable=False),
        sa.Column("fetched_at", UtcDateTime, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.UniqueConstraint("source", "record_key", "payload_hash", name="uq_raw_orders_payload"),
    )
    op.create_index("ix_raw_orders_source_updated_at", "raw_orders", ["source", "updated_at"])

    op.create_table(
        "order_rejects",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("record_key", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text),
        sa.Column("first_seen_at", UtcDateTime, nullable=False),
        sa.Column("last_seen_at", UtcDateTime, nullable=False),
        sa.Column("run_id", sa.Text),
    )

    op.create_table(
        "sync_state",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("high_water_mark", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("run_id", sa.Text),
    )

    op.create_table(
        "reconciliation_exceptions",
        sa.Column("external_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text),
        sa.Column("order_created_at", UtcDateTime),
        sa.Column("shopify_value", sa.Text),
        sa.Column("erp_value", sa.Text),
        sa.Column("difference", Money),
        sa.Column("first_detected_at", UtcDateTime, nullable=False),
        sa.Column("last_detected_at", UtcDateTime, nullable=False),
        sa.Column("resolved_at", UtcDateTime),
    )
    op.create_index("ix_reconciliation_exceptions_open", "reconciliation_exceptions", ["resolved_at", "kind"])

    op.create_table(
        "reconciliation_summary",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("shopify_orders", sa.Integer, nullable=False),
        sa.Column("erp_orders", sa.Integer, nullable=False),
        sa.Column("shopify_total", Money, nullable=False),
        sa.Column("erp_total", Money, nullable=False),
        sa.Column("difference", Money, nullable=False),
        sa.Column("matched", sa.Integer, nullable=False),
        sa.Column("pending_sync", sa.Integer, nullable=False),
        *[sa.Column(kind, sa.Integer, nullable=False) for kind in EXCEPTION_KINDS],
        sa.Column("computed_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "reconciliation_summary",
        "reconciliation_exceptions",
        "sync_state",
        "order_rejects",
        "raw_orders",
        "orders",
        "source_orders",
    ):
        op.drop_table(table)
