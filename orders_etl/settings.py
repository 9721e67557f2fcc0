"""Configuration from the environment (DESIGN.md §6), read once, validated at the boundary.

A ``.env`` file in the working directory is read too; variables already set in the
environment win over it. Only *whether* a secret is set is recorded here, never its value:
the Dagster resources receive secrets as ``EnvVar``s, resolved when a run starts, so they
never appear in the UI, in run config or in this object's ``repr``.

With nothing set, the pipeline runs on the sample exports in ``data/samples`` into
``data/orders.db``: Shopify from a bulk-operation JSONL file, the ERP from a CSV export.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path

from dotenv import load_dotenv

DEFAULT_START_DATE = "2026-01-01"
DEFAULT_SHOPIFY_BULK_FILE = "data/samples/shopify_orders.jsonl"
DEFAULT_ERP_EXPORT_PATH = "data/samples/erp_orders.csv"
DIALECT_SUFFIX = ".dialect.toml"

# Secrets: passed to resources as EnvVar (by name), never read into this module.
SECRET_VARIABLES = (
    "ORDERS_ETL_DATABASE_URL",  # may hold a password
    "SHOPIFY_ACCESS_TOKEN",
    "SHOPIFY_CLIENT_ID",
    "SHOPIFY_CLIENT_SECRET",
    "BC_ACCESS_TOKEN",
    "BC_CLIENT_ID",
    "BC_CLIENT_SECRET",
)


class SettingsError(ValueError):
    """A variable holds a value we cannot use; the message names the variable and the value."""


@dataclass(frozen=True)
class Settings:
    # Sync window and schedules
    start_date: date
    overlap: timedelta
    sync_cron: str
    resync_cron: str
    # Check thresholds
    max_reject_rate: float
    max_exception_age: timedelta
    max_sync_age: timedelta
    # Shopify: the API when a shop URL is set, else a bulk-operation JSONL file
    shopify_shop_url: str | None
    shopify_api_version: str
    shopify_bulk_file: str
    # ERP: Business Central when a base URL is set, else CSV export files
    bc_base_url: str | None
    bc_company_id: str | None
    bc_tenant_id: str | None
    bc_token_url: str | None
    bc_ref_field: str
    bc_ref_kind: str
    bc_local_currency: str | None
    erp_export_path: str
    erp_dialect_path: str
    # Which secret variables are set (names only)
    secrets_set: frozenset[str]

    @property
    def shopify_is_api(self) -> bool:
        return self.shopify_shop_url is not None

    @property
    def erp_is_api(self) -> bool:
        return self.bc_base_url is not None


def default_dialect_path(export_path: str) -> str:
    """``data/x/erp_orders.csv`` -> ``data/x/erp_orders.dialect.toml`` (beside the export)."""
    path = Path(export_path)
    return str(path.parent / (path.stem + DIALECT_SUFFIX))


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _date(env: Mapping[str, str], name: str, default: str) -> date:
    value = _get(env, name) or default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a date (YYYY-MM-DD)") from None


def _number(env: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    value = _get(env, name)
    if value is None:
        return default
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise SettingsError(f"{name}={value!r} is not {kind}") from None
    if number < 0:
        raise SettingsError(f"{name}={value!r} must not be negative")
    return number


def _cron(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name) or default
    if len(value.split()) != 5:
        raise SettingsError(f"{name}={value!r} is not a five-field cron expression")
    return value


def _url(env: Mapping[str, str], name: str) -> str | None:
    value = _get(env, name)
    if value is not None and not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={value!r} must be an http(s) URL")
    return value.rstrip("/") if value else None


def _require_credentials(env: Mapping[str, str]) -> None:
    """An API source needs a credential; say which variables, not at the first request."""
    if _get(env, "SHOPIFY_SHOP_URL") and not (
        _get(env, "SHOPIFY_ACCESS_TOKEN")
        or (_get(env, "SHOPIFY_CLIENT_ID") and _get(env, "SHOPIFY_CLIENT_SECRET"))
    ):
        raise SettingsError(
            "SHOPIFY_SHOP_URL is set but no credential: set SHOPIFY_ACCESS_TOKEN, "
            "or SHOPIFY_CLIENT_ID and SHOPIFY_CLIENT_SECRET"
        )
    if _get(env, "BC_BASE_URL"):
        if not _get(env, "BC_COMPANY_ID"):
            raise SettingsError("BC_BASE_URL is set but BC_COMPANY_ID is not")
        client = all(_get(env, name) for name in ("BC_TENANT_ID", "BC_CLIENT_ID", "BC_CLIENT_SECRET"))
        if not (_get(env, "BC_ACCESS_TOKEN") or client):
            raise SettingsError(
                "BC_BASE_URL is set but no credential: set BC_ACCESS_TOKEN, "
                "or BC_TENANT_ID, BC_CLIENT_ID and BC_CLIENT_SECRET"
            )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: ``os.environ`` after reading ``./.env``)."""
    if env is None:
        load_dotenv(Path.cwd() / ".env", override=False)
        env = os.environ
    ref_kind = _get(env, "BC_SHOPIFY_REF_KIND") or "name"
    if ref_kind not in ("id", "name"):
        raise SettingsError(f"BC_SHOPIFY_REF_KIND={ref_kind!r} must be 'id' or 'name'")
    max_reject_rate = _number(env, "ORDERS_ETL_MAX_REJECT_RATE", 0.02)
    if max_reject_rate > 1:
        raise SettingsError(f"ORDERS_ETL_MAX_REJECT_RATE={max_reject_rate!r} is a fraction (0..1)")
    erp_export_path = _get(env, "ERP_EXPORT_PATH") or DEFAULT_ERP_EXPORT_PATH
    shop_url, bc_url = _url(env, "SHOPIFY_SHOP_URL"), _url(env, "BC_BASE_URL")
    _require_credentials(env)
    return Settings(
        start_date=_date(env, "ORDERS_ETL_START_DATE", DEFAULT_START_DATE),
        overlap=timedelta(minutes=_number(env, "ORDERS_ETL_OVERLAP_MINUTES", 60, integer=True)),
        sync_cron=_cron(env, "ORDERS_ETL_SYNC_CRON", "5 * * * *"),
        resync_cron=_cron(env, "ORDERS_ETL_RESYNC_CRON", "30 0 * * *"),
        max_reject_rate=max_reject_rate,
        max_exception_age=timedelta(days=_number(env, "ORDERS_ETL_MAX_EXCEPTION_AGE_DAYS", 7)),
        max_sync_age=timedelta(hours=_number(env, "ORDERS_ETL_MAX_SYNC_AGE_HOURS", 6)),
        shopify_shop_url=shop_url,
        shopify_api_version=_get(env, "SHOPIFY_API_VERSION") or "2026-10",
        shopify_bulk_file=_get(env, "SHOPIFY_BULK_FILE") or DEFAULT_SHOPIFY_BULK_FILE,
        bc_base_url=bc_url,
        bc_company_id=_get(env, "BC_COMPANY_ID"),
        bc_tenant_id=_get(env, "BC_TENANT_ID"),
        bc_token_url=_url(env, "BC_TOKEN_URL"),
        bc_ref_field=_get(env, "BC_SHOPIFY_REF_FIELD") or "externalDocumentNumber",
        bc_ref_kind=ref_kind,
        bc_local_currency=_get(env, "BC_LOCAL_CURRENCY"),
        erp_export_path=erp_export_path,
        erp_dialect_path=_get(env, "ERP_DIALECT_PATH") or default_dialect_path(erp_export_path),
        secrets_set=frozenset(name for name in SECRET_VARIABLES if _get(env, name)),
    )


@cache
def get_settings() -> Settings:
    """The process's settings, read once (the Dagster definitions are built from them)."""
    return load_settings()
