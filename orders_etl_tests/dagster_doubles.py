"""Test doubles for the Dagster layer's tests: sources that keep to the reader/normalizer
contract (``orders_etl.sources.base``) and read a small JSON file the test writes.

They make the graph's tests small and exact (every case in a few records, any failure on
demand); the Dagster graph, the store, the reconciliation and the CLI under test are the
real ones, and ``test_cli.py`` runs the real readers on the bundled samples. The module
is also a code location (``defs``), so ``dagster dev`` and the multiprocess executor's
step processes can load the same graph with these sources: the data file comes from
``ORDERS_ETL_TEST_DATA``, the store from ``ORDERS_ETL_DATABASE_URL``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg

from orders_etl.definitions import build_defs
from orders_etl.defs.erp.resources import ErpSource
from orders_etl.defs.shopify.resources import ShopifySource
from orders_etl.defs.store.resources import StoreResource
from orders_etl.model import InvalidOrder, Reject, Source, parse_order
from orders_etl.sources.base import Log, NameResolver, Normalized, Skipped, SourceError
from orders_etl.store import RawRecord

DATA_ENV = "ORDERS_ETL_TEST_DATA"
PAGE = 2  # records per "page", so the per-page progress callback is exercised


# ---------------------------------------------------------------------------------------
# Data the tests write


def shopify_order(
    order_id: str,
    updated_at: str,
    *,
    total: str = "10.00",
    tax: str = "1.00",
    currency: str = "EUR",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": order_id,
        "name": f"#{order_id}",
        "created_at": extra.pop("created_at", updated_at),
        "updated_at": updated_at,
        "currency": currency,
        "total": total,
        "tax": tax,
        "payment": extra.pop("payment", "captured"),
        "status": extra.pop("status", "processing"),
        "test": extra.pop("test", False),
        **extra,
    }


def erp_order(
    number: str, updated_at: str, *, ref: str | None = None, total: str = "10.00", **extra: Any
) -> dict:
    return {
        "number": number,
        "ref": ref,
        "created_at": extra.pop("created_at", updated_at),
        "updated_at": updated_at,
        "currency": extra.pop("currency", "EUR"),
        "total": total,
        "tax": extra.pop("tax", "1.00"),
        "payment": extra.pop("payment", "captured"),
        "status": extra.pop("status", "processing"),
    }


def write_data(
    path: Path,
    *,
    shopify: Iterable[dict] = (),
    erp: Iterable[dict] = (),
    shopify_deleted: Iterable[tuple[str, str]] = (),
) -> Path:
    path.write_text(
        json.dumps(
            {
                "shopify": list(shopify),
                "erp": list(erp),
                "shopify_deleted": [list(d) for d in shopify_deleted],
            }
        )
    )
    return path


def _load(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _in_window(when: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or when >= start) and (end is None or when < end)


def _paged(source: str, items: list[dict], key: str, start, end, log: Log) -> Iterator[RawRecord]:
    selected = [item for item in items if _in_window(datetime.fromisoformat(item["updated_at"]), start, end)]
    for page, first in enumerate(range(0, len(selected), PAGE), start=1):
        chunk = selected[first : first + PAGE]
        log(f"{source} (double): page {page}: {len(chunk)} records")
        for item in chunk:
            yield RawRecord(str(item[key]), datetime.fromisoformat(item["updated_at"]), item)


# ---------------------------------------------------------------------------------------
# Readers and resources


@dataclass
class FakeShopifyReader:
    data_path: str
    unreachable: bool

    def _check(self) -> None:
        if self.unreachable:
            raise SourceError("shopify", "cannot connect to http://127.0.0.1:9 (connection refused)")

    def fetch(self, start: datetime | None, end: datetime | None, log: Log) -> Iterator[RawRecord]:
        self._check()
        yield from _paged("shopify", _load(self.data_path)["shopify"], "id", start, end, log)

    def deleted(
        self, start: datetime | None, end: datetime | None, log: Log
    ) -> Iterator[tuple[str, datetime]]:
        self._check()
        for key, when in _load(self.data_path)["shopify_deleted"]:
            deleted_at = datetime.fromisoformat(when)
            if _in_window(deleted_at, start, end):
                yield key, deleted_at


def _record(data: dict[str, Any], external_id: str, number: str, source: str) -> Normalized:
    try:
        return parse_order(
            {
                "external_id": external_id,
                "number": number,
                "created_at": data["created_at"],
                "updated_at": data["updated_at"],
                "currency": data["currency"],
                "total_amount": data["total"],
                "tax_amount": data["tax"],
                "payment_status": data["payment"],
                "status": data["status"],
            },
            record_key=external_id,
        )
    except InvalidOrder as exc:
        return Reject(source, external_id, str(exc), data)


class FakeShopify(ShopifySource):
    """Shopify double: orders from the test's JSON file; ``unreachable`` fails every call."""

    data_path: str
    unreachable: bool = False

    def reader(self) -> FakeShopifyReader:
        return FakeShopifyReader(self.data_path, self.unreachable)

    def normalize(self, records: Iterable[Any]) -> Iterator[Normalized]:
        for record in records:
            data = record.payload
            if data.get("test") and not self.include_test_orders:
                yield Skipped(record.record_key, "test order")
            else:
                yield _record(data, str(data["id"]), data["name"], Source.SHOPIFY.value)


@dataclass
class FakeErpReader:
    data_path: str
    unreachable: bool

    def fetch(self, start: datetime | None, end: datetime | None, log: Log) -> Iterator[RawRecord]:
        if self.unreachable:
            raise SourceError("erp_files", "cannot read /nonexistent/export.csv (no such file)")
        yield from _paged("erp", _load(self.data_path)["erp"], "number", start, end, log)


class FakeErp(ErpSource):
    """ERP double: records refer to Shopify orders by name, resolved like the real mapping."""

    source: ClassVar[Source] = Source.ERP_FILES

    data_path: str
    unreachable: bool = False

    def reader(self) -> FakeErpReader:
        return FakeErpReader(self.data_path, self.unreachable)

    def normalize(self, records: Iterable[Any], resolve_names: NameResolver) -> Iterator[Normalized]:
        records = list(records)
        resolved = resolve_names({r.payload["ref"] for r in records if r.payload.get("ref")})
        for record in records:
            data = record.payload
            external_id = resolved.get(data.get("ref") or "", data["number"])
            yield _record(data, external_id, data["number"], Source.ERP_FILES.value)


def double_resources(data_path: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Resources for the graph with the doubles; the store comes from ORDERS_ETL_DATABASE_URL."""
    path = data_path if data_path is not None else dg.EnvVar(DATA_ENV)
    resources: dict[str, Any] = {
        "store": StoreResource(database_url=dg.EnvVar("ORDERS_ETL_DATABASE_URL")),
        "shopify": FakeShopify(data_path=path),
        "erp": FakeErp(data_path=path),
    }
    resources.update(overrides)
    return resources


# ---------------------------------------------------------------------------------------
# The code location and a reconstructable job (for dagster dev and the multiprocess executor)

defs = build_defs(resources=double_resources())


def sync_orders_job() -> dg.JobDefinition:
    return defs.resolve_job_def("sync_orders")


# ---------------------------------------------------------------------------------------
# The scenario most tests run: three days of March 2026

RANGE = ("2026-03-01", "2026-03-03")


def write_march(path: Path) -> Path:
    """Shopify and ERP orders over 2026-03-01..03, with the cases the graph must handle.

    - 1001: two versions (10.00 on the 1st, 12.00 on the 3rd): the newest must win;
    - 1002: deleted in Shopify on the 3rd: kept with deleted_at;
    - 1003: a Shopify test order: skipped;  1004: currency "EURO": rejected;
    - 1005: updated on the 5th, outside the range: not fetched;
    - SO-1 refers to #1001 (resolved to 1001); SO-2 refers to nothing (ERP-only order).
    """
    return write_data(
        path,
        shopify=[
            shopify_order("1001", "2026-03-01T10:00:00+00:00", total="10.00"),
            shopify_order("1001", "2026-03-03T09:00:00+00:00", total="12.00"),
            shopify_order("1002", "2026-03-02T11:00:00+00:00", total="20.00"),
            shopify_order("1003", "2026-03-02T12:00:00+00:00", test=True),
            shopify_order("1004", "2026-03-01T12:00:00+00:00", currency="EURO"),
            shopify_order("1005", "2026-03-05T12:00:00+00:00"),
        ],
        erp=[
            erp_order("SO-1", "2026-03-02T10:00:00+00:00", ref="#1001", total="12.00"),
            erp_order("SO-2", "2026-03-03T10:00:00+00:00", total="7.50"),
        ],
        shopify_deleted=[("1002", "2026-03-03T12:00:00+00:00")],
    )


def assert_march_synced(store: Any) -> None:
    """The store after the March range is synced, however the run was launched."""
    shopify = store.read_table("source_orders").query("source == 'shopify'").set_index("external_id")
    assert sorted(shopify.index) == ["1001", "1002"], shopify.index  # 1003 skipped, 1004 rejected
    assert shopify.loc["1001", "total_amount"] == Decimal("12.00")  # the newest version won
    assert shopify.loc["1002", "deleted_at"] == datetime(2026, 3, 3, 12, tzinfo=UTC)
    golden = store.read_table("orders").set_index("external_id")
    assert sorted(golden.index) == ["1001", "1002", "SO-2"], golden.index  # SO-1 is order 1001
    assert golden.index.is_unique
    assert golden.loc["1001", "origin"] == "shopify" and golden.loc["SO-2", "origin"] == "erp_files"
    assert store.read_table("order_rejects")["record_key"].tolist() == ["1004"]
