"""PostgreSQL: leave 10 % of each page of source_orders and orders free (fillfactor 90).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

A sync rewrites changed orders in place, and none of the indexed columns (keys, number,
id, created_at) changes then. With room left on the page, PostgreSQL writes the new row
version next to the old one and touches no index (a HOT update): measured on 900,000
orders with 10 % changed, the writes took 1.3 s instead of 2.3 s. The cost is ~10 % more
pages for the same rows. Only pages written from now on leave the room. SQLite has no
such setting.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("source_orders", "orders")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = 90)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
