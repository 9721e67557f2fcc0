"""The order store's tables (DESIGN.md §5). Analysts query these names: never rename them.

The schema itself is owned by the Alembic migrations in ``store/migrations``; these Table
objects describe it for queries. ``orders_etl_tests/test_store_schema.py`` checks both agree.
"""

from __future__ import annotations

import sqlalchemy as sa

from orders_etl.store.types import Key, Money, UtcDateTime

metadata = sa.MetaData()

# Tables of the store that no Table object here describes: raw_orders_counts, PostgreSQL's
# only, kept by the landing and triggers (migration 0007) and read by name.
UNDECLARED_TABLES = frozenset({"raw_orders_counts"})


def declared(_object: object, name: str | None, type_: str, _reflected: bool, _compare_to: object) -> bool:
    """Alembic's ``include_object``: whether comparing the store with ``metadata`` looks at it."""
    return not (type_ == "table" and name in UNDECLARED_TABLES)


# The normalized fields every source produces and the golden record carries.
ORDER_FIELDS: tuple[str, ...] = (
    "number",
    "created_at",
    "currency",
    "total_amount",
    "tax_amount",
    "payment_status",
    "status",
    "shipping_method",
    "tracking_number",
    "customer_id",
    "refunded_amount",
    "payment_status_detail",
    "updated_at",
    "deleted_at",
)
MONEY_FIELDS = frozenset({"total_amount", "tax_amount", "refunded_amount"})
DATETIME_FIELDS = frozenset({"created_at", "updated_at", "deleted_at"})


def _order_columns() -> list[sa.Column]:
    return [
        sa.Column("number", Key, nullable=False),
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


source_orders = sa.Table(
    "source_orders",
    metadata,
    sa.Column("source", Key, primary_key=True),
    sa.Column("external_id", Key, primary_key=True),
    *_order_columns(),
    # Hash of the normalized fields: tells "unchanged" without comparing every column and
    # breaks updated_at ties deterministically (the larger hash wins).
    sa.Column("content_hash", sa.Text, nullable=False),
    sa.Column("synced_at", UtcDateTime, nullable=False),
    sa.Index("ix_source_orders_external_id", "external_id"),
    sa.Index("ix_source_orders_source_number", "source", "number"),
    # Room for in-place (HOT) updates on PostgreSQL: migration 0003.
    postgresql_with={"fillfactor": 90},
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", Key, primary_key=True),
    sa.Column("external_id", Key, nullable=False, unique=True),
    *_order_columns(),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("synced_at", UtcDateTime, nullable=False),
    sa.Index("ix_orders_created_at", "created_at"),
    postgresql_with={"fillfactor": 90},
)

raw_orders = sa.Table(
    "raw_orders",
    metadata,
    sa.Column("raw_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("source", Key, nullable=False),
    sa.Column("record_key", Key, nullable=False),
    sa.Column("updated_at", UtcDateTime),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("payload_hash", Key, nullable=False),
    sa.Column("fetched_at", UtcDateTime, nullable=False),
    sa.Column("run_id", sa.Text),
    # The same payload fetched again is not landed twice, so re-runs keep the table stable.
    sa.UniqueConstraint("source", "record_key", "payload_hash", name="uq_raw_orders_payload"),
    sa.Index("ix_raw_orders_source_updated_at", "source", "updated_at"),
)

# The landed versions not normalized yet (migration 0004): queued by the landing in the
# transaction that lands them, taken off once the normalize step committed their orders.
# Keyed on raw_id alone (migration 0008): it names one version of one source.
raw_orders_pending = sa.Table(
    "raw_orders_pending",
    metadata,
    sa.Column("source", Key, nullable=False),
    sa.Column("raw_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
)

# The inputs landed whole (migration 0005): a file-backed reader's fingerprint and the
# window a run landed it over. A re-sync of the same input over a window inside that one
# has nothing new to land, and skips reading it.
landed_inputs = sa.Table(
    "landed_inputs",
    metadata,
    sa.Column("input_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("source", Key, nullable=False),
    sa.Column("fingerprint", Key, nullable=False),
    sa.Column("window_start", UtcDateTime),
    sa.Column("window_end", UtcDateTime),
    sa.Column("records", sa.BigInteger, nullable=False),
    sa.Column("landed_at", UtcDateTime, nullable=False),
    sa.Column("run_id", sa.Text),
    sa.Index("ix_landed_inputs_fingerprint", "source", "fingerprint"),
)

order_rejects = sa.Table(
    "order_rejects",
    metadata,
    sa.Column("source", Key, primary_key=True),
    sa.Column("record_key", Key, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text),
    sa.Column("first_seen_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("run_id", sa.Text),
)

sync_state = sa.Table(
    "sync_state",
    metadata,
    sa.Column("source", Key, primary_key=True),
    sa.Column("high_water_mark", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("run_id", sa.Text),
)

reconciliation_exceptions = sa.Table(
    "reconciliation_exceptions",
    metadata,
    sa.Column("external_id", Key, primary_key=True),
    sa.Column("kind", Key, primary_key=True),
    sa.Column("currency", sa.Text),
    sa.Column("order_created_at", UtcDateTime),
    sa.Column("shopify_value", sa.Text),
    sa.Column("erp_value", sa.Text),
    sa.Column("difference", Money),
    sa.Column("first_detected_at", UtcDateTime, nullable=False),
    sa.Column("last_detected_at", UtcDateTime, nullable=False),
    sa.Column("resolved_at", UtcDateTime),
    sa.Index("ix_reconciliation_exceptions_open", "resolved_at", "kind"),
)

EXCEPTION_KINDS: tuple[str, ...] = (
    "missing_in_erp",
    "missing_in_shopify",
    "total_mismatch",
    "tax_mismatch",
    "refund_mismatch",
    "payment_status_mismatch",
    "currency_mismatch",
)

reconciliation_summary = sa.Table(
    "reconciliation_summary",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("currency", Key, primary_key=True),
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
