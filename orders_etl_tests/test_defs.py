"""The code location loads, every asset is described, and the environment picks the resources."""

from __future__ import annotations

import os
from datetime import date, timedelta

import dagster as dg
import pytest

from orders_etl import definitions
from orders_etl.defs.erp.resources import BusinessCentralResource, ErpFilesResource
from orders_etl.defs.shopify.resources import ShopifyApiResource, ShopifyBulkFileResource
from orders_etl.settings import SettingsError, load_settings


def test_definitions_load_with_every_asset_described():
    dg.Definitions.validate_loadable(definitions.defs)
    specs = {spec.key.to_user_string(): spec for spec in definitions.defs.resolve_all_asset_specs()}
    assert set(specs) == {
        "shopify/raw_orders",
        "shopify/source_orders",
        "erp/raw_orders",
        "erp/source_orders",
        "orders",
        "reconciliation",
    }
    for key, spec in specs.items():
        assert spec.description and len(spec.description) > 80, key
        assert spec.kinds, key
        assert spec.group_name and spec.group_name != "default", key
        assert spec.owners, key


def test_job_covers_the_graph_and_the_checks():
    job = definitions.defs.resolve_job_def("sync_orders")
    assert set(job.graph.node_names()) == {
        "shopify__raw_orders",
        "shopify__source_orders",
        "erp__raw_orders",
        "erp__source_orders",
        "orders",
        "orders_checks",
        "reconciliation",
    }
    graph = definitions.defs.resolve_asset_graph()
    assert {key.name for key in graph.asset_check_keys} == {
        "one_row_per_external_id",
        "money_sane",
        "currency_iso_4217",
        "reject_rate_under_threshold",
        "sync_is_fresh",
        "no_old_open_exceptions",
    }


def test_api_assets_sit_in_a_pool_and_retry_transient_faults():
    for key, pool in (("shopify/raw_orders", "shopify_api"), ("erp/raw_orders", "erp_api")):
        node = definitions.defs.resolve_assets_def(dg.AssetKey.from_user_string(key)).op
        assert node.pool == pool
        assert node.retry_policy.max_retries >= 1 and node.retry_policy.backoff == dg.Backoff.EXPONENTIAL


def test_defaults_are_the_file_backed_sources():
    settings = load_settings({})
    resources = definitions.default_resources(settings)
    assert isinstance(resources["shopify"], ShopifyBulkFileResource)
    assert resources["shopify"].path == "data/samples/shopify_orders.jsonl"
    assert isinstance(resources["erp"], ErpFilesResource)
    assert resources["erp"].dialect_path == "data/samples/erp_orders.dialect.toml"
    assert resources["store"].database_url == "sqlite:///data/orders.db"
    assert settings.start_date == date(2026, 1, 1) and settings.overlap == timedelta(hours=1)


def test_api_sources_take_secrets_as_env_vars_only():
    env = {
        "SHOPIFY_SHOP_URL": "https://acme.myshopify.com/",
        "SHOPIFY_ACCESS_TOKEN": "shpat_secret_value",
        "BC_BASE_URL": "https://api.businesscentral.dynamics.com/v2.0/t/prod/api/v2.0",
        "BC_COMPANY_ID": "c0ffee",
        "BC_TENANT_ID": "tenant",
        "BC_CLIENT_ID": "client",
        "BC_CLIENT_SECRET": "bc_secret_value",
        "ORDERS_ETL_DATABASE_URL": "postgresql+psycopg://etl:db_secret_value@db/orders",
        "ORDERS_ETL_OVERLAP_MINUTES": "30",
    }
    resources = definitions.default_resources(load_settings(env))
    shopify, erp, store = resources["shopify"], resources["erp"], resources["store"]
    assert isinstance(shopify, ShopifyApiResource) and shopify.shop_url == "https://acme.myshopify.com"
    assert isinstance(erp, BusinessCentralResource) and erp.company_id == "c0ffee"
    assert shopify.overlap_minutes == erp.overlap_minutes == 30
    # Secrets are the variables' names (resolved when a run starts), never their values.
    assert shopify.access_token == dg.EnvVar("SHOPIFY_ACCESS_TOKEN")
    assert erp.client_secret == dg.EnvVar("BC_CLIENT_SECRET")
    assert store.database_url == dg.EnvVar("ORDERS_ETL_DATABASE_URL")
    shown = repr(resources) + str(shopify.model_dump()) + str(erp.model_dump()) + str(store.model_dump())
    for secret in ("shpat_secret_value", "bc_secret_value", "db_secret_value"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORDERS_ETL_START_DATE": "2026-13-01"}, "ORDERS_ETL_START_DATE='2026-13-01' is not a date"),
        ({"ORDERS_ETL_OVERLAP_MINUTES": "-5"}, "must not be negative"),
        ({"ORDERS_ETL_SYNC_CRON": "hourly"}, "is not a five-field cron expression"),
        ({"ORDERS_ETL_MAX_REJECT_RATE": "5"}, "is a fraction"),
        ({"SHOPIFY_SHOP_URL": "acme.myshopify.com"}, "must be an http(s) URL"),
        (
            {"SHOPIFY_SHOP_URL": "https://acme.myshopify.com"},
            "set SHOPIFY_ACCESS_TOKEN, or SHOPIFY_CLIENT_ID",
        ),
        ({"BC_BASE_URL": "https://bc.example", "BC_ACCESS_TOKEN": "t"}, "BC_COMPANY_ID is not"),
        ({"BC_BASE_URL": "https://bc.example", "BC_COMPANY_ID": "c"}, "set BC_ACCESS_TOKEN"),
        ({"BC_SHOPIFY_REF_KIND": "number"}, "must be 'id' or 'name'"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env)


def test_dialect_defaults_beside_the_export_and_can_be_overridden():
    assert (
        load_settings({"ERP_EXPORT_PATH": "/exports/acme.csv"}).erp_dialect_path
        == "/exports/acme.dialect.toml"
    )
    overridden = load_settings({"ERP_EXPORT_PATH": "/exports", "ERP_DIALECT_PATH": "/etc/erp.toml"})
    assert overridden.erp_dialect_path == "/etc/erp.toml"


def test_dotenv_in_the_working_directory_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORDERS_ETL_START_DATE", raising=False)
    monkeypatch.delenv("ORDERS_ETL_OVERLAP_MINUTES", raising=False)
    (tmp_path / ".env").write_text("ORDERS_ETL_START_DATE=2026-05-01\nORDERS_ETL_OVERLAP_MINUTES=10\n")
    monkeypatch.setenv("ORDERS_ETL_OVERLAP_MINUTES", "20")  # the environment wins over .env
    try:
        settings = load_settings()
    finally:
        os.environ.pop("ORDERS_ETL_START_DATE", None)  # load_dotenv wrote it into os.environ
    assert settings.start_date == date(2026, 5, 1)
    assert settings.overlap == timedelta(minutes=20)
