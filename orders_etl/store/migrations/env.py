"""Alembic environment: runs on the connection handed in by orders_etl.store.migrate."""

from __future__ import annotations

from alembic import context

from orders_etl.store.schema import declared, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=metadata, include_object=declared, render_as_batch=True
)
with context.begin_transaction():
    context.run_migrations()
