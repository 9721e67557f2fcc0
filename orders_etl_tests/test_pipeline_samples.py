"""The bundled samples through the real readers, normalizers, store and reconciliation
(no Dagster): the ledger holds exactly the planted differences, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from orders_etl.sources.base import batches
from orders_etl.sources.erp_files import ErpFileReader, load_dialect
from orders_etl.sources.erp_files import normalize as normalize_erp
from orders_etl.sources.shopify import ShopifyBulkFileReader
from orders_etl.sources.shopify import normalize as normalize_shopify
from orders_etl.store import OrderStore
from orders_etl.store.frames import canonical_text, rows_to_table
from orders_etl.store.reconciliation import run_reconciliation

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def _load(store: OrderStore, source: str, records, normalize) -> None:
    store.land_raw(source, records)
    landed = [record for chunk in store.iter_raw(source) for record in chunk]
    for batch in batches(normalize(landed)):
        # As a sync upserts (defs/sync.py): fast mappings' rows and records' canonical text.
        store.upsert_frames(source, [rows_to_table([*batch.rows, *map(canonical_text, batch.orders)])])
        store.record_rejects(batch.rejects)


def test_samples_reconcile_to_exactly_the_planted_differences(store: OrderStore) -> None:
    _load(
        store,
        "shopify",
        ShopifyBulkFileReader(SAMPLES / "shopify_orders.jsonl").fetch(None, None, print),
        normalize_shopify,
    )
    dialect = load_dialect(SAMPLES / "erp_orders.dialect.toml")
    _load(
        store,
        "erp_files",
        ErpFileReader(SAMPLES / "erp_orders.csv", dialect).fetch(None, None, print),
        lambda records: normalize_erp(records, dialect=dialect, resolve_names=store.shopify_ids_by_name),
    )
    run_reconciliation(store, now=datetime(2026, 11, 27, tzinfo=UTC))

    with store.engine.connect() as conn:
        found = sorted(conn.execute(sa.text("SELECT external_id, kind FROM reconciliation_exceptions")).all())
    with (SAMPLES / "planted_differences.csv").open() as planted:
        expected = sorted((row["external_id"], row["kind"]) for row in csv.DictReader(planted))
    assert [tuple(row) for row in found] == expected

    rejects = store.read_table("order_rejects")
    assert sorted(rejects["source"]) == ["erp_files"] + ["shopify"] * 4
    erp_reject = rejects[rejects["source"] == "erp_files"].iloc[0]
    assert "line 209" in erp_reject["reason"] and "'abc'" in erp_reject["reason"]
