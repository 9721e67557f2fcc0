"""PostgreSQL: identifiers compare byte by byte (COLLATE "C"), whatever the database's collation.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

Every landing, upsert and reconciliation orders keys: each insert into a unique index (a
payload's source, record key and hash; an order's source and external id) and each sort or
range over them compares text. Under a database collation such as en_US.UTF-8, or even
C.UTF-8 on PostgreSQL 15, each of those comparisons goes through the C library's strcoll
instead of memcmp. These columns hold identifiers (gid://shopify/Order/…, hex hashes, ERP
document numbers, currency codes), whose order by the rules of a language serves no one.
Landing 300,000 payloads, the server's CPU fell by 4–12 % (``bench/bench_pg_keys.py``, medians
of five interleaved rounds): in a C.UTF-8 database 6.18 to 5.44 s with ERP keys and 6.32 to
6.04 s with Shopify ids; in an ICU en-US one 6.12 to 5.64 s and 7.13 to 6.29 s.

Equality is unchanged: a database's collation is deterministic (two strings are equal only
if their bytes are), so no unique index refuses a row it took before, and no lookup finds
another row. What changes is the order of ``ORDER BY`` on these columns: by code point,
as SQLite orders all text. The views read some of these columns, and PostgreSQL refuses to
change a column a view reads, so the views are dropped and made again as revision 0002
made them. SQLite compares text byte by byte already: nothing to do there.

The rows stay where they are, but every index over these columns is built again, under a
lock that holds off reads and writes of the table: 6.6 s for a store of 2,000,000 landed
payloads on the 2-core machine. On a big store, run ``orders-etl db upgrade`` between syncs.
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KEYS: dict[str, tuple[str, ...]] = {
    "raw_orders": ("source", "record_key", "payload_hash"),
    "raw_orders_pending": ("source",),
    "source_orders": ("source", "external_id", "number"),
    "orders": ("id", "external_id", "number"),
    "landed_inputs": ("source", "fingerprint"),
    "order_rejects": ("source", "record_key"),
    "sync_state": ("source",),
    "reconciliation_exceptions": ("external_id", "kind"),
    "reconciliation_summary": ("currency",),
}

# A module name that starts with a digit can be imported, only not with `import`.
_views = importlib.import_module("orders_etl.store.migrations.versions.0002_reconciliation_views")


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _views.downgrade()
    for table, columns in KEYS.items():
        changes = ", ".join(f'ALTER COLUMN {column} TYPE text COLLATE "{collation}"' for column in columns)
        op.execute(f"ALTER TABLE {table} {changes}")
    _views.upgrade()


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")
