"""landed_inputs: the file inputs landed whole, by fingerprint and window.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

A run that landed every record of a file-backed input (the ERP export, a Shopify bulk file)
records the input's fingerprint and its window here. A later run given the same input over
a window inside that one has nothing new to land (each version landed is kept in
raw_orders), so it skips reading the input. Nothing is recorded before this revision, so
the first run after it reads its inputs as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orders_etl.store.types import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "landed_inputs",
        sa.Column("input_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("window_start", UtcDateTime),
        sa.Column("window_end", UtcDateTime),
        sa.Column("records", sa.BigInteger, nullable=False),
        sa.Column("landed_at", UtcDateTime, nullable=False),
        sa.Column("run_id", sa.Text),
    )
    op.create_index("ix_landed_inputs_fingerprint", "landed_inputs", ["source", "fingerprint"])


def downgrade() -> None:
    op.drop_index("ix_landed_inputs_fingerprint", table_name="landed_inputs")
    op.drop_table("landed_inputs")
