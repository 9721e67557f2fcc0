"""Helpers for the crash, concurrency, secrets and ops-signal tests: the real ``orders-etl``
console script in a subprocess, against the fake Shopify server (real HTTP, short pages) and
the bundled ERP CSV export, and comparisons of the stores it leaves behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orders_etl.store.engine import create_store_engine
from orders_etl_tests.fake_shopify import FakeShopify, make_orders

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
ORDERS_ETL = Path(sys.executable).with_name("orders-etl")
TOKEN = "shpat_crash_harness_token_5f3e"
# Variables a developer's shell might hold that would change what the CLI reads.
_CONFIG_PREFIXES = ("ORDERS_ETL_", "SHOPIFY_", "BC_", "ERP_", "DAGSTER_HOME")
# Columns that say when a row was written, not what it holds: a re-run changes them.
VOLATILE = {"synced_at", "fetched_at", "first_seen_at", "last_seen_at", "run_id", "id"}


class ShortPageShopify(FakeShopify):
    """The fake shop, serving at most ``page_cap`` orders per page (Shopify may send fewer
    than ``first``): a few hundred orders make dozens of pages, so kills land mid-paging.
    """

    def __init__(self, *args: Any, page_cap: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.page_cap = page_cap

    def orders_connection(self, first: int | None, *args: Any, **kwargs: Any) -> dict:
        return super().orders_connection(min(first or self.page_cap, self.page_cap), *args, **kwargs)


def shop(
    count: int = 300,
    step: timedelta = timedelta(seconds=20),
    start: datetime = datetime(2026, 3, 1, tzinfo=UTC),
    **kwargs: Any,
) -> ShortPageShopify:
    """A started fake shop of ``count`` orders updated ``step`` apart from ``start``."""
    kwargs.setdefault("access_token", TOKEN)
    return ShortPageShopify(make_orders(count, step=step, start=start), **kwargs).start()


def cli_env(
    database_url: str, shop_url: str | None, erp_export: Path | None = None, **extra: str
) -> dict[str, str]:
    """The CLI's environment: this store, the fake shop, an ERP export; the first partition
    is 2026-03-01, so a sync of that day is a first sync that moves the high-water marks.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        **clean,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "ORDERS_ETL_DATABASE_URL": database_url,
        "ORDERS_ETL_START_DATE": "2026-03-01",
        "ERP_EXPORT_PATH": str(erp_export or SAMPLES / "erp_orders.csv"),
        "ERP_DIALECT_PATH": str(SAMPLES / "erp_orders.dialect.toml"),
    }
    if shop_url is not None:
        env |= {"SHOPIFY_SHOP_URL": shop_url, "SHOPIFY_ACCESS_TOKEN": TOKEN}
    return env | extra


def start_sync(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.Popen:
    """``orders-etl sync <args>`` started in its own process group (so a kill takes it all)."""
    return subprocess.Popen(
        [str(ORDERS_ETL), "sync", *args],
        cwd=cwd or ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_sync(env: dict[str, str], *args: str, timeout: float = 120, cwd: Path | None = None):
    return subprocess.run(
        [str(ORDERS_ETL), "sync", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _rows(conn: sa.Connection, table: sa.Table, drop: Iterable[str]) -> list[tuple]:
    columns = [c for c in table.columns if c.name not in drop]
    return sorted(tuple(str(v) for v in row) for row in conn.execute(sa.select(*columns)))


def content(url: str) -> dict[str, list[tuple]]:
    """``orders`` and ``source_orders`` as sorted rows, without the when-written columns."""
    engine = create_store_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine, only=["orders", "source_orders"])
        with engine.connect() as conn:
            return {name: _rows(conn, meta.tables[name], VOLATILE) for name in ("orders", "source_orders")}
    finally:
        engine.dispose()


def marks_and_keys(url: str) -> tuple[dict[str, datetime], dict[str, set[str]]]:
    """Every source's high-water mark, and the external ids each source has in source_orders."""
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if "sync_state" not in tables:
                return {}, {}
            marks = {
                source: _utc(mark)
                for source, mark in conn.execute(sa.text("SELECT source, high_water_mark FROM sync_state"))
                if mark is not None
            }
            keys: dict[str, set[str]] = {}
            for source, key in conn.execute(sa.text("SELECT source, external_id FROM source_orders")):
                keys.setdefault(source, set()).add(str(key))
            return marks, keys
    finally:
        engine.dispose()


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def write_erp_export(
    path: Path, count: int = 120, step_minutes: int = 5, start: datetime = datetime(2026, 3, 1)
) -> Path:
    """The sample ERP export cut to ``count`` documents pointing at the fake shop's orders
    (#6001, #6003, ...) and modified ``step_minutes`` apart from ``start`` (UTC), so the ERP
    side lands, upserts and reconciles in the fake shop's days. Same dialect as the sample.
    """
    lines = (SAMPLES / "erp_orders.csv").read_bytes().decode("latin-1").splitlines()
    header, rows = lines[:2], lines[2 : 2 + count]
    out = []
    for index, row in enumerate(rows):
        fields = row.split(";")
        modified = start + timedelta(minutes=step_minutes * index)
        fields[1] = f"#{6001 + 2 * index}"
        fields[2] = modified.strftime("%d.%m.%Y")
        fields[3] = modified.strftime("%d.%m.%Y %H:%M")
        out.append(";".join(fields))
    path.write_bytes(("\r\n".join(header + out) + "\r\n").encode("latin-1"))
    return path


def reset_store(url: str) -> None:
    """Empty the store at ``url``: the SQLite file goes, a PostgreSQL schema is recreated."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        database = Path(sa_url.database or "")
        for suffix in ("", "-wal", "-shm", "-journal"):
            database.with_name(database.name + suffix).unlink(missing_ok=True)
        return
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    finally:
        engine.dispose()


def updated_keys(url: str) -> dict[str, dict[str, datetime]]:
    """source -> external_id -> updated_at of every row in source_orders (the clean run's)."""
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            found: dict[str, dict[str, datetime]] = {}
            rows = conn.execute(sa.text("SELECT source, external_id, updated_at FROM source_orders"))
            for source, key, updated in rows:
                found.setdefault(source, {})[str(key)] = _utc(updated)
            return found
    finally:
        engine.dispose()


def debug_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME whose runs store every event, with DEBUG records of the HTTP clients,
    the database layer and our own loggers captured into the event log.
    """
    path.mkdir()
    (path / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "python_logs:\n  python_log_level: DEBUG\n"
        "  managed_python_loggers: [httpx, httpcore, sqlalchemy, psycopg, orders_etl, dagster]\n"
    )
    return path
