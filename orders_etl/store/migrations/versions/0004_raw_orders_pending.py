"""raw_orders_pending: the landed versions not normalized yet.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Landing a version queues its ``raw_id`` here, in the landing's transaction; the normalize
step removes it in the transaction that upserts the order. An unchanged re-sync lands
nothing, so it has nothing to normalize; a run that failed between the two steps leaves its
versions queued for the next one. Versions landed before this revision were normalized by
the runs that landed them, so the queue starts empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "raw_orders_pending",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("raw_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("raw_orders_pending")
