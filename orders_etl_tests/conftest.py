"""Shared fixtures: a fresh order store on SQLite and on a real PostgreSQL.

PostgreSQL tests run against ``ORDERS_ETL_TEST_PG_URL`` (default: the local server on
127.0.0.1:5432, database ``test``), each test in a schema of its own so tests and
developers running the suite at once never see each other's rows. When no server answers,
they are skipped with the reason, except under ``CI=true``, where that is a failure: CI must
prove the PostgreSQL path, not skip it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from orders_etl.store import OrderStore
from orders_etl.store.engine import create_store_engine

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("ORDERS_ETL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_pg_status: dict[str, str | None] = {}


def postgres_unavailable() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per session)."""
    if "reason" not in _pg_status:
        try:
            engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            engine.dispose()
            _pg_status["reason"] = None
        except Exception as exc:  # any failure to connect means "not here"
            _pg_status["reason"] = (
                f"PostgreSQL at {sa.make_url(PG_URL).render_as_string()} unreachable: {type(exc).__name__}"
            )
    return _pg_status["reason"]


def require_postgres() -> None:
    reason = postgres_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the PostgreSQL tests (start it, see .ci/run)")
    pytest.skip(f"{reason}; start PostgreSQL to run this test (CI fails instead of skipping)")


def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a new empty schema, dropped afterwards."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from fresh_pg_url()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'orders.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> Iterator[str]:
    """The URL of a fresh, empty store: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'orders.db'}"
    else:
        yield from fresh_pg_url()


@pytest.fixture
def store(store_url) -> Iterator[OrderStore]:
    store = OrderStore(create_store_engine(store_url))
    yield store
    store.dispose()


@contextmanager
def postgres_dagster_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``home`` with the shipped dagster.yaml.example, on a PostgreSQL database of its own
    (its ``DAGSTER_PG_*`` variables set), dropped afterwards."""
    require_postgres()
    database = f"dagster_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {database}"))
    server = sa.make_url(PG_URL)
    for name, value in {
        "DAGSTER_PG_HOST": server.host,
        "DAGSTER_PG_PORT": str(server.port or 5432),
        "DAGSTER_PG_DB": database,
        "DAGSTER_PG_USER": server.username,
        "DAGSTER_PG_PASSWORD": server.password or "unused-with-trust-auth",
    }.items():
        monkeypatch.setenv(name, value)
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml.example").read_text())
    try:
        yield home
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {database} WITH (FORCE)"))
        admin.dispose()
