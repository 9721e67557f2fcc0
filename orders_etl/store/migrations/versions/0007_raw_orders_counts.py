"""PostgreSQL: raw_orders_counts, the landed payloads per source, kept by the landing and triggers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

Each raw step reports how many payloads its source has in ``raw_orders``
(``dagster/row_count``). PostgreSQL counts by reading the table: its index cannot answer
a count until VACUUM has marked the pages all-visible, and a store that autovacuum has not
reached yet (or a server without it) reads every payload of every source, about a gigabyte
a million orders. An unchanged 1M re-run spent 11.6 s and 14.1 s of its 25 s in that
count on the 2-core machine, waiting on the disk.

The table holds one row per source. The landing, the one writer of raw_orders, adds what
it landed in the transaction that lands it (``orders_etl.store.landing``); statement
triggers take off what any delete or truncate of raw_orders removes, a hand-made one
included. (An insert trigger would have to copy every landed payload into its transition
table: 11 % more of the server's CPU for a landing, measured.) A concurrent landing waits
on its source's row only from the end of its statement to its commit. SQLite counts an
index that is always current: it gets no such table.

A landing by an earlier release does not count what it lands: upgrade the workers before
a run of this release migrates the store (a step of an earlier release refuses a store
newer than it knows, but only when the step starts).
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_STATEMENTS = (
    'CREATE TABLE raw_orders_counts (source text COLLATE "C" PRIMARY KEY, payloads bigint NOT NULL)',
    "INSERT INTO raw_orders_counts (source, payloads) "
    "SELECT source, count(*) FROM raw_orders GROUP BY source",
    """
    CREATE FUNCTION raw_orders_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE raw_orders_counts AS c SET payloads = c.payloads - d.payloads
        FROM (SELECT source, count(*) AS payloads FROM deleted GROUP BY source) AS d
        WHERE c.source = d.source;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION raw_orders_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE raw_orders_counts SET payloads = 0;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER raw_orders_counted_deleted AFTER DELETE ON raw_orders REFERENCING OLD TABLE AS deleted "
    "FOR EACH STATEMENT EXECUTE FUNCTION raw_orders_count_deleted()",
    "CREATE TRIGGER raw_orders_counted_truncated AFTER TRUNCATE ON raw_orders "
    "FOR EACH STATEMENT EXECUTE FUNCTION raw_orders_count_truncated()",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Landings wait until this commits: none slips between the count and the triggers.
    op.execute("LOCK TABLE raw_orders IN SHARE ROW EXCLUSIVE MODE")
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for trigger in ("deleted", "truncated"):
        op.execute(f"DROP TRIGGER raw_orders_counted_{trigger} ON raw_orders")
        op.execute(f"DROP FUNCTION raw_orders_count_{trigger}()")
    op.execute("DROP TABLE raw_orders_counts")
