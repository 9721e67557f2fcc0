"""An ERP export through the store: landed, normalized, upserted; the malformed row quarantined."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd

from orders_etl.model import OrderRecord, OrderStatus
from orders_etl.sources.base import batches
from orders_etl.sources.erp_files import ErpFileReader, load_dialect, normalize
from orders_etl.store import OrderStore, UpsertCounts
from orders_etl.store.frames import canonical_text, rows_to_table

EXAMPLE_DIALECT = Path(__file__).with_name("erp_files_dialect.toml")
EXPORT = (
    "Document No.;External Document No.;Order Date;Last Modified;Currency Code;Amount Including VAT;"
    "VAT Amount;Credit Memo Amount;Status;Payment Status;Customer No.;Customer Name\r\n"
    "SO-1;#1001;12.03.2024;12.03.2024 10:15;;1.234,56;197,12;;Open;Paid;C1;Müller GmbH\r\n"
    "SO-2;;12.03.2024;12.03.2024 11:00;USD;99,90;0,00;10,00;Shipped;Refunded;C2;Société Générale\r\n"
    "SO-3;#1003;13.03.2024\r\n"  # line 4: malformed (three fields)
    "SO-4;#1004;13.03.2024;13.03.2024 09:00;EUR;12,00;1,92;;Draft;;C4;Zoë\r\n"
)


def sync(store: OrderStore, reader: ErpFileReader) -> tuple[UpsertCounts, int]:
    """What the pipeline does for this source: land, normalize from the landing, upsert, quarantine."""
    store.land_raw("erp_files", reader.fetch())
    # Read the landing fully before writing: on SQLite an open iter_raw holds the write lock.
    landed = [record for chunk in store.iter_raw("erp_files") for record in chunk]
    counts, rejected = UpsertCounts(), 0
    normalized = normalize(landed, dialect=reader.dialect, resolve_names=store.shopify_ids_by_name)
    for batch in batches(normalized):
        # As a sync upserts (defs/sync.py): the fast path's rows and records' canonical text.
        rows = [*batch.rows, *map(canonical_text, batch.orders)]
        counts += store.upsert_frames("erp_files", [rows_to_table(rows)])
        rejected += store.record_rejects(batch.rejects)
    return counts, rejected


def test_export_loads_every_good_row_and_quarantines_the_malformed_one(
    store: OrderStore, tmp_path: Path
) -> None:
    shopify_order = OrderRecord(
        external_id="5501234567890",
        number="#1001",
        currency="EUR",
        total_amount=Decimal("1234.56"),
        status=OrderStatus.PROCESSING,
        updated_at=datetime(2024, 3, 12, 9, 0, tzinfo=UTC),
    )
    store.upsert("shopify", [shopify_order])
    export = tmp_path / "export.csv"
    export.write_bytes(EXPORT.encode("cp1252"))
    reader = ErpFileReader(export, load_dialect(EXAMPLE_DIALECT))

    counts, rejected = sync(store, reader)

    assert (counts.inserted, rejected) == (3, 1)
    rows = store.read_table("source_orders").query("source == 'erp_files'").set_index("external_id")
    # #1001 resolves through the store to the Shopify id; #1004 names no Shopify order, so the
    # order is keyed on its ERP number.
    assert sorted(rows.index) == ["5501234567890", "SO-2", "SO-4"]
    assert rows.loc["5501234567890", "number"] == "SO-1"
    assert rows.loc["5501234567890", "total_amount"] == Decimal("1234.56")
    assert rows.loc["5501234567890", "tax_amount"] == Decimal("197.12")
    assert rows.loc["5501234567890", "refunded_amount"] == Decimal("0.00")
    assert rows.loc["SO-2", "currency"] == "USD"
    assert rows.loc["SO-2", "refunded_amount"] == Decimal("10.00")
    assert rows.loc["SO-2", "payment_status"] == "refunded"
    assert pd.isna(rows.loc["SO-4", "payment_status"])
    assert rows.loc["SO-4", "status"] == "pending"

    rejects = store.read_table("order_rejects")
    assert rejects[["source", "record_key"]].values.tolist() == [["erp_files", "export.csv:4"]]
    assert rejects.loc[0, "reason"] == "export.csv line 4: 3 fields where the header has 12"
    assert '"line":4' in rejects.loc[0, "payload"]

    # Re-running the same export changes nothing and keeps one reject row.
    again, rejected_again = sync(store, reader)
    assert (again.inserted, again.updated, rejected_again) == (0, 0, 1)
    assert store.count("order_rejects") == 1
    assert store.count("source_orders") == 4
