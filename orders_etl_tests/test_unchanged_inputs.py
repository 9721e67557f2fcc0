"""A file input that a run landed whole is not read again over a window inside that run's.

The real graph over the real file readers (copies of the bundled samples) into a real
store: the second sync of unchanged files reads neither and leaves the store as it was; a
changed byte, a file's new time, a wider window, a failed landing or a file changed while it
was read make it read again. (The first test runs on SQLite and PostgreSQL; the others test
the step's logic, on SQLite.)
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import blake3
import dagster as dg
import pytest

from orders_etl.definitions import ASSETS
from orders_etl.defs.erp.resources import ErpFilesResource
from orders_etl.defs.orders.checks import orders_checks
from orders_etl.defs.shopify.resources import ShopifyBulkFileResource
from orders_etl.defs.store.resources import StoreResource
from orders_etl.sources.base import Log, no_log
from orders_etl.sources.erp_files import ErpFileReader, load_dialect
from orders_etl.sources.fingerprint import DigestingFile
from orders_etl.sources.shopify import ShopifyBulkFileReader
from orders_etl.store import OrderStore, RawRecord
from orders_etl_tests.test_cli import snapshot

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
# Every sample order is updated in September or October 2026.
WHOLE_RANGE = ("2026-08-31", "2026-11-01")
RAW_ASSETS = ("shopify/raw_orders", "erp/raw_orders")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("shopify_orders.jsonl", "erp_orders.csv", "erp_orders.dialect.toml"):
        shutil.copy2(SAMPLES / name, folder / name)
    return folder


class EditedWhileRead(ShopifyBulkFileReader):
    """A bulk file that gets a line appended while it is read (a blank one: no record)."""

    def fetch(self, start: datetime | None, end: datetime | None, log: Log = no_log) -> Iterator[RawRecord]:
        for index, record in enumerate(super().fetch(start, end, log)):
            if index == 0:
                with self.path.open("ab") as stream:
                    stream.write(b"\n")
            yield record


class EditedWhileReadResource(ShopifyBulkFileResource):
    def reader(self) -> ShopifyBulkFileReader:
        return EditedWhileRead(self.path)


def sync(
    files: Path,
    url: str,
    instance: dg.DagsterInstance,
    first: str,
    last: str,
    erp: str = "erp_orders.csv",
    shopify: type[ShopifyBulkFileResource] = ShopifyBulkFileResource,
):
    resources = {
        "store": StoreResource(database_url=url),
        "shopify": shopify(path=str(files / "shopify_orders.jsonl")),
        "erp": ErpFilesResource(path=str(files / erp), dialect_path=str(files / "erp_orders.dialect.toml")),
    }
    return dg.materialize(
        [*ASSETS, orders_checks],
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        raise_on_error=False,
    )


def raw_metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    events = result.get_asset_materialization_events()
    event = next(e for e in events if e.asset_key.to_user_string() == key)  # (one per day, alike)
    return {name: value.value for name, value in event.materialization.metadata.items()}


def count(url: str, table: str) -> int:
    store = OrderStore.from_url(url)
    try:
        return store.count(table)
    finally:
        store.dispose()


def test_a_second_sync_of_unchanged_files_reads_neither_and_changes_nothing(files, store_url):
    with dg.instance_for_test() as instance:
        first = sync(files, store_url, instance, *WHOLE_RANGE)
        assert first.success
        for key in RAW_ASSETS:
            found = raw_metadata(first, key)
            assert found["fetched"] > 0 and "unchanged_since_run" not in found, key
        before = snapshot(store_url)
        open_before = count(store_url, "reconciliation_exceptions")

        again = sync(files, store_url, instance, *WHOLE_RANGE)
        assert again.success
        for key in RAW_ASSETS:
            found = raw_metadata(again, key)
            assert found["unchanged_since_run"] == first.run_id, key
            assert (found["fetched"], found["landed"]) == (0, 0), key
        after = snapshot(store_url)
    # Rows and times alike: not even a reject was seen again.
    for table in ("raw_orders", "source_orders", "orders", "order_rejects"):
        assert after[table] == before[table], table
    assert count(store_url, "reconciliation_exceptions") == open_before == 29


def test_a_window_inside_the_landed_one_is_not_read_and_a_wider_one_is(files, sqlite_url):
    with dg.instance_for_test() as instance:
        assert sync(files, sqlite_url, instance, "2026-10-01", "2026-10-31").success
        inside = sync(files, sqlite_url, instance, "2026-10-10", "2026-10-12")
        assert inside.success
        assert "unchanged_since_run" in raw_metadata(inside, "shopify/raw_orders")
        wider = sync(files, sqlite_url, instance, *WHOLE_RANGE)
        assert wider.success
        # September's orders are outside the first window: read and landed now.
        found = raw_metadata(wider, "shopify/raw_orders")
        assert "unchanged_since_run" not in found and found["landed"] > 0


def test_a_changed_byte_or_a_new_file_time_makes_the_file_read_again(files, sqlite_url):
    csv_path = files / "erp_orders.csv"
    with dg.instance_for_test() as instance:
        assert sync(files, sqlite_url, instance, *WHOLE_RANGE).success
        # The same bytes with a new modification time: read again (rows without a
        # modification column are dated by it), nothing new to land.
        stat = csv_path.stat()
        os.utime(csv_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        touched = sync(files, sqlite_url, instance, *WHOLE_RANGE)
        assert touched.success
        found = raw_metadata(touched, "erp/raw_orders")
        assert "unchanged_since_run" not in found and found["fetched"] > 0 and found["landed"] == 0
        assert "unchanged_since_run" in raw_metadata(touched, "shopify/raw_orders")

        # One order edited in the ERP (a new amount, a later modification): read again, and
        # that row's new version is landed and normalized.
        text = csv_path.read_bytes()
        row = b"SO-100001;#1001;01.09.2026;03.09.2026 16:47;C10099;"
        assert row in text and b";37.497;3.409;" in text
        text = text.replace(row, row.replace(b"03.09.2026", b"05.09.2026"), 1)
        csv_path.write_bytes(text.replace(b";37.497;3.409;", b";37.498;3.409;", 1))
        changed = sync(files, sqlite_url, instance, *WHOLE_RANGE)
        assert changed.success
        assert raw_metadata(changed, "erp/raw_orders")["landed"] == 1
    store = OrderStore.from_url(sqlite_url)
    try:
        erp = store.read_table("source_orders")
        totals = erp[(erp["source"] == "erp_files") & (erp["number"] == "SO-100001")]["total_amount"]
        assert [str(total) for total in totals] == ["37498"]  # JPY has no minor unit
    finally:
        store.dispose()


def test_an_input_whose_landing_failed_is_read_again(files, sqlite_url):
    """A folder of exports whose second file cannot be read: the first file's rows are
    landed, the step fails, and nothing says the folder was landed whole."""
    folder = files / "exports"
    folder.mkdir()
    shutil.copy2(files / "erp_orders.csv", folder / "a.csv")
    (folder / "b.csv").write_bytes(b"Sales Orders;preamble\r\nNo Such Column;Other\r\nx;y\r\n")
    with dg.instance_for_test() as instance:
        failed = sync(files, sqlite_url, instance, *WHOLE_RANGE, erp="exports")
        assert not failed.success
        assert count(sqlite_url, "landed_inputs") == 1  # Shopify's file only
        assert count(sqlite_url, "raw_orders") > 0

        (folder / "b.csv").unlink()
        fixed = sync(files, sqlite_url, instance, *WHOLE_RANGE, erp="exports")
        assert fixed.success
        found = raw_metadata(fixed, "erp/raw_orders")
        assert "unchanged_since_run" not in found and found["fetched"] > 0


def test_a_file_changed_while_it_was_read_is_read_again(files, sqlite_url):
    with dg.instance_for_test() as instance:
        edited = sync(files, sqlite_url, instance, *WHOLE_RANGE, shopify=EditedWhileReadResource)
        assert edited.success and raw_metadata(edited, "shopify/raw_orders")["landed"] > 0
        # Recorded as it was read (the bytes read, the time it had when opened), which is
        # not what the file is now.
        (recorded,) = landed_fingerprints(sqlite_url, "shopify")
        assert recorded != ShopifyBulkFileReader(files / "shopify_orders.jsonl").fingerprint()
        again = sync(files, sqlite_url, instance, *WHOLE_RANGE)
        assert again.success
        found = raw_metadata(again, "shopify/raw_orders")
        assert "unchanged_since_run" not in found and found["fetched"] > 0 and found["landed"] == 0
        assert "unchanged_since_run" in raw_metadata(again, "erp/raw_orders")


def landed_fingerprints(url: str, source: str) -> list[str]:
    store = OrderStore.from_url(url)
    try:
        found = store.read_table("landed_inputs")
        return found[found["source"] == source]["fingerprint"].tolist()
    finally:
        store.dispose()


def test_a_fetch_fingerprints_the_bytes_it_read_as_the_file_would_be(files, tmp_path):
    dialect = load_dialect(files / "erp_orders.dialect.toml")
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy2(files / "erp_orders.csv", folder / "a.csv")
    shutil.copy2(files / "erp_orders.csv", folder / "b.csv")
    (folder / "c.csv").write_bytes(b"")  # no header: nothing to read
    window = (datetime(2026, 8, 31, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    for reader in (
        ShopifyBulkFileReader(files / "shopify_orders.jsonl"),
        ErpFileReader(files / "erp_orders.csv", dialect),
        ErpFileReader(folder, dialect),
    ):
        assert reader.read_fingerprint is None
        records = list(reader.fetch(*window))
        assert records and reader.read_fingerprint == reader.fingerprint(), reader
    # A fetch not read to its end has read no whole input.
    reader = ShopifyBulkFileReader(files / "shopify_orders.jsonl")
    next(reader.fetch(*window))
    assert reader.read_fingerprint is None


class CountingHashes(ShopifyBulkFileReader):
    hashed = 0

    def fingerprint(self) -> str:
        CountingHashes.hashed += 1
        return super().fingerprint()


class CountingHashesResource(ShopifyBulkFileResource):
    def reader(self) -> ShopifyBulkFileReader:
        return CountingHashes(self.path)


def test_a_file_is_hashed_before_it_is_read_only_when_a_landed_input_could_be_it(files, sqlite_url):
    with dg.instance_for_test() as instance:
        CountingHashes.hashed = 0
        assert sync(
            files, sqlite_url, instance, "2026-10-01", "2026-10-31", shopify=CountingHashesResource
        ).success
        assert CountingHashes.hashed == 0  # nothing landed yet: read (and hashed while read)
        wider = sync(files, sqlite_url, instance, *WHOLE_RANGE, shopify=CountingHashesResource)
        assert wider.success and "unchanged_since_run" not in raw_metadata(wider, "shopify/raw_orders")
        assert CountingHashes.hashed == 0  # the one landed is over a narrower window
        again = sync(files, sqlite_url, instance, *WHOLE_RANGE, shopify=CountingHashesResource)
        assert again.success and "unchanged_since_run" in raw_metadata(again, "shopify/raw_orders")
        assert CountingHashes.hashed == 1


def test_a_digesting_file_hashes_the_whole_file_however_much_was_read(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 * 1024 * 1024 + 7)
    path.write_bytes(data)
    for read in (0, 10, len(data), len(data) + 1):
        with DigestingFile(path) as file:
            buffered = io.BufferedReader(file, 4096)  # (closes the file when collected)
            assert buffered.read(read) == data[:read]
            assert file.digest() == blake3.blake3(data).digest()
            assert file.stat.st_mtime_ns == path.stat().st_mtime_ns


def test_fingerprints_change_with_any_input_and_only_then(files, tmp_path):
    dialect = load_dialect(files / "erp_orders.dialect.toml")
    shopify = ShopifyBulkFileReader(files / "shopify_orders.jsonl")
    erp = ErpFileReader(files / "erp_orders.csv", dialect)
    assert shopify.fingerprint() == ShopifyBulkFileReader(files / "shopify_orders.jsonl").fingerprint()
    assert erp.fingerprint() == ErpFileReader(files / "erp_orders.csv", dialect).fingerprint()

    # Another dialect over the same bytes reads other records.
    other = dialect.model_copy(update={"default_currency": "USD"})
    assert ErpFileReader(files / "erp_orders.csv", other).fingerprint() != erp.fingerprint()
    # The same bytes under another name are other record keys (the ERP keys carry the name).
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy2(files / "erp_orders.csv", renamed / "other.csv")
    assert ErpFileReader(renamed / "other.csv", dialect).fingerprint() != erp.fingerprint()
    # A folder: adding a file changes it.
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy2(files / "erp_orders.csv", folder / "a.csv")
    before = ErpFileReader(folder, dialect).fingerprint()
    shutil.copy2(files / "erp_orders.csv", folder / "b.csv")
    assert ErpFileReader(folder, dialect).fingerprint() != before

    # One byte of the bulk file, its time kept.
    path = files / "shopify_orders.jsonl"
    before = shopify.fingerprint()
    stat = path.stat()
    data = path.read_bytes()
    assert b"1001" in data
    path.write_bytes(data.replace(b"1001", b"1009", 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert shopify.fingerprint() != before
