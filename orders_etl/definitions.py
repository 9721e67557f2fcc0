"""The code location: every asset, check, job, schedule and resource of orders_etl.

Loaded by ``workspace.yaml`` (``dagster dev``) and by the ``orders-etl`` CLI. Resources
come from the environment (:mod:`orders_etl.settings`): an API source when its URL is set,
else its file-backed twin; secrets are passed as ``EnvVar`` so the UI shows their names only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from orders_etl.allocator import arrow_on_malloc, limit_malloc_arenas
from orders_etl.defs.erp.assets import erp_raw_orders, erp_source_orders
from orders_etl.defs.erp.resources import BusinessCentralResource, ErpFilesResource, ErpSource
from orders_etl.defs.orders.assets import orders
from orders_etl.defs.orders.checks import orders_checks
from orders_etl.defs.reconciliation.assets import reconciliation
from orders_etl.defs.schedules import resync_previous_day, sync_current_day, sync_orders
from orders_etl.defs.shopify.assets import shopify_raw_orders, shopify_source_orders
from orders_etl.defs.shopify.resources import ShopifyApiResource, ShopifyBulkFileResource, ShopifySource
from orders_etl.defs.store.resources import StoreResource
from orders_etl.settings import Settings, get_settings
from orders_etl.store.engine import DEFAULT_DATABASE_URL

# Every process that runs steps loads this module first: cap the allocator's arenas before
# any step starts a thread, and give Arrow the same allocator (see orders_etl.allocator).
limit_malloc_arenas()
arrow_on_malloc()

ASSETS = [
    shopify_raw_orders,
    shopify_source_orders,
    erp_raw_orders,
    erp_source_orders,
    orders,
    reconciliation,
]


def _secret(settings: Settings, name: str) -> Any:
    """``EnvVar(name)`` when set (resolved at run start, never shown), else None."""
    return dg.EnvVar(name) if name in settings.secrets_set else None


def shopify_resource(settings: Settings) -> ShopifySource:
    overlap = int(settings.overlap.total_seconds() // 60)
    if settings.shopify_shop_url is None:
        return ShopifyBulkFileResource(path=settings.shopify_bulk_file, overlap_minutes=overlap)
    return ShopifyApiResource(
        shop_url=settings.shopify_shop_url,
        api_version=settings.shopify_api_version,
        access_token=_secret(settings, "SHOPIFY_ACCESS_TOKEN"),
        client_id=_secret(settings, "SHOPIFY_CLIENT_ID"),
        client_secret=_secret(settings, "SHOPIFY_CLIENT_SECRET"),
        overlap_minutes=overlap,
    )


def erp_resource(settings: Settings) -> ErpSource:
    overlap = int(settings.overlap.total_seconds() // 60)
    if settings.bc_base_url is None:
        return ErpFilesResource(
            path=settings.erp_export_path, dialect_path=settings.erp_dialect_path, overlap_minutes=overlap
        )
    return BusinessCentralResource(
        base_url=settings.bc_base_url,
        company_id=settings.bc_company_id or "",
        access_token=_secret(settings, "BC_ACCESS_TOKEN"),
        tenant_id=settings.bc_tenant_id,
        client_id=_secret(settings, "BC_CLIENT_ID"),
        client_secret=_secret(settings, "BC_CLIENT_SECRET"),
        token_url=settings.bc_token_url,
        local_currency=settings.bc_local_currency,
        ref_field=settings.bc_ref_field,
        ref_kind=settings.bc_ref_kind,
        overlap_minutes=overlap,
    )


def default_resources(settings: Settings) -> dict[str, Any]:
    return {
        "store": StoreResource(
            database_url=_secret(settings, "ORDERS_ETL_DATABASE_URL") or DEFAULT_DATABASE_URL
        ),
        "shopify": shopify_resource(settings),
        "erp": erp_resource(settings),
    }


def build_defs(resources: Mapping[str, Any] | None = None) -> dg.Definitions:
    """The project's definitions; ``resources`` replaces the ones from the environment."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=[orders_checks],
        jobs=[sync_orders],
        schedules=[sync_current_day, resync_previous_day],
        resources=dict(resources) if resources is not None else default_resources(get_settings()),
    )


defs = build_defs()
