"""Schema migrations (Alembic), applied automatically on first use and by `orders-etl db upgrade`."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every process migrating this database.
_PG_MIGRATION_LOCK = 7_310_452_001


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the store's schema to ``revision``; safe when several processes do it at once."""
    config = _config()
    with engine.begin() as connection:
        # SQLite: the connection's BEGIN IMMEDIATE already serializes migrators.
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def ensure_schema(engine: sa.Engine) -> None:
    """Upgrade only when the store is behind, so the common case costs one query."""
    if current_revision(engine) != head_revision():
        upgrade(engine)
