"""The Business Central source configured from ``BC_*`` environment variables (DESIGN.md §6)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast

from orders_etl.sources.business_central.mapping import DEFAULT_REF_FIELD, RefKind
from orders_etl.sources.business_central.reader import BusinessCentralReader


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def reader_from_env(env: Mapping[str, str] | None = None, **options: Any) -> BusinessCentralReader:
    """A reader for ``BC_BASE_URL`` / ``BC_COMPANY_ID`` with the configured credentials.

    ``options`` are passed on to :class:`BusinessCentralReader` (page size, overlap, ...).
    """
    env = os.environ if env is None else env
    missing = [name for name in ("BC_BASE_URL", "BC_COMPANY_ID") if not _get(env, name)]
    if missing:
        raise ValueError(f"Business Central needs {' and '.join(missing)}")
    return BusinessCentralReader(
        cast(str, _get(env, "BC_BASE_URL")),
        cast(str, _get(env, "BC_COMPANY_ID")),
        access_token=_get(env, "BC_ACCESS_TOKEN"),
        tenant_id=_get(env, "BC_TENANT_ID"),
        client_id=_get(env, "BC_CLIENT_ID"),
        client_secret=_get(env, "BC_CLIENT_SECRET"),
        token_url=_get(env, "BC_TOKEN_URL"),
        local_currency=_get(env, "BC_LOCAL_CURRENCY"),
        **options,
    )


def reference_from_env(env: Mapping[str, str] | None = None) -> tuple[str, RefKind]:
    """``(BC_SHOPIFY_REF_FIELD, BC_SHOPIFY_REF_KIND)``, defaults ``externalDocumentNumber`` / ``name``."""
    env = os.environ if env is None else env
    field = _get(env, "BC_SHOPIFY_REF_FIELD") or DEFAULT_REF_FIELD
    kind = (_get(env, "BC_SHOPIFY_REF_KIND") or "name").lower()
    if kind not in ("id", "name"):
        raise ValueError(f"BC_SHOPIFY_REF_KIND must be 'id' or 'name', not {kind!r}")
    return field, cast(RefKind, kind)
