"""raw_orders_pending: keyed on ``raw_id`` alone.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

A ``raw_id`` names one landed version of one source, so it is the queue's key by itself;
(source, raw_id) made every queued id an entry of a second, wider index on SQLite, and
compared the source's text first in every probe on both stores. A million ids, queued and
taken off again in chunks as the landing and the normalize step do (SQLite): 0.29 and
0.46 s keyed on ``raw_id``, 0.44 and 0.99 s before. A normalize reads its source's queue
by scanning it: the queue holds only what is not normalized yet.

SQLite cannot change a table's key: the table is made again and its rows copied. On
PostgreSQL only the key's index is built again. The queued versions stay queued.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _rekey(*key: str) -> None:
    columns = ", ".join(key)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE raw_orders_pending DROP CONSTRAINT raw_orders_pending_pkey, "
            f"ADD CONSTRAINT raw_orders_pending_pkey PRIMARY KEY ({columns})"
        )
        return
    # (raw_id INTEGER as the whole key: the table's rowid, with no index of its own.)
    op.execute(
        "CREATE TABLE raw_orders_pending_rekeyed "
        f"(source TEXT NOT NULL, raw_id INTEGER NOT NULL, PRIMARY KEY ({columns}))"
    )
    op.execute(
        "INSERT INTO raw_orders_pending_rekeyed (source, raw_id) "
        "SELECT source, raw_id FROM raw_orders_pending"
    )
    op.execute("DROP TABLE raw_orders_pending")
    op.execute("ALTER TABLE raw_orders_pending_rekeyed RENAME TO raw_orders_pending")


def upgrade() -> None:
    _rekey("raw_id")


def downgrade() -> None:
    _rekey("source", "raw_id")
