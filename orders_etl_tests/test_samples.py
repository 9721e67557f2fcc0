"""The bundled samples: shape, coverage, determinism, and a plan that is exactly right.

The last point is checked without the real source normalizers: a deliberately small reading
of both files that follows only the mapping facts of DESIGN.md §4 and the dialect file feeds
``reconcile``, and what it reports must be exactly ``planted_differences.csv``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
import tomllib
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from orders_etl.currencies import exponent_of, is_iso_currency
from orders_etl.reconcile import reconcile

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
NOW = datetime(2026, 11, 27, tzinfo=UTC)
NODE_KEYS = [
    "id",
    "legacyResourceId",
    "name",
    "createdAt",
    "updatedAt",
    "cancelledAt",
    "test",
    "currencyCode",
    "presentmentCurrencyCode",
    "displayFinancialStatus",
    "displayFulfillmentStatus",
    "totalPriceSet",
    "totalTaxSet",
    "totalRefundedSet",
    "shippingLine",
    "fulfillments",
    "customer",
]
FINANCIAL = {
    "AUTHORIZED": "authorized",
    "EXPIRED": "voided",
    "PAID": "captured",
    "PARTIALLY_PAID": "authorized",
    "PARTIALLY_REFUNDED": "captured",
    "PENDING": None,
    "REFUNDED": "refunded",
    "VOIDED": "voided",
}
FULFILLMENT = {
    "FULFILLED",
    "IN_PROGRESS",
    "ON_HOLD",
    "OPEN",
    "PARTIALLY_FULFILLED",
    "PENDING_FULFILLMENT",
    "RESTOCKED",
    "SCHEDULED",
    "UNFULFILLED",
}
CANONICAL_COLUMNS = {
    "order_number",
    "shopify_ref",
    "created_at",
    "updated_at",
    "currency",
    "total_amount",
    "tax_amount",
    "refunded_amount",
    "status",
    "payment_status",
    "shipping_method",
    "tracking_number",
    "customer_id",
}


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("samples_generate", SAMPLES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dialect() -> dict:
    return tomllib.loads((SAMPLES / "erp_orders.dialect.toml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------
# A minimal, independent reading of the two files (only the contract's mapping facts)


def _shopify_side(text: str) -> tuple[pd.DataFrame, dict[str, str], int, int]:
    """Valid non-test orders as reconcile input; name -> external_id; tests; malformed."""
    rows, names, tests, malformed = [], {}, 0, 0
    for line in text.splitlines():
        try:
            node = json.loads(line, parse_float=Decimal)
            currency = node["currencyCode"]
            amounts = [
                Decimal(node[s]["shopMoney"]["amount"])
                for s in ("totalPriceSet", "totalTaxSet", "totalRefundedSet")
            ]
            if not is_iso_currency(currency or "") or not all(a.is_finite() for a in amounts):
                raise ValueError(currency)
            payment = FINANCIAL[node["displayFinancialStatus"]]
        except (ValueError, KeyError, TypeError, InvalidOperation):
            malformed += 1
            continue
        if node["test"]:
            tests += 1
            continue
        names[node["name"]] = node["legacyResourceId"]
        rows.append(
            {
                "external_id": node["legacyResourceId"],
                "currency": currency,
                "created_at": datetime.fromisoformat(node["createdAt"]),
                "total_amount": amounts[0],
                "tax_amount": amounts[1],
                "refunded_amount": amounts[2],
                "payment_status": payment,
            }
        )
    return pd.DataFrame(rows), names, tests, malformed


def _amount(text: str, dialect: dict, currency: str) -> Decimal | None:
    if text == "":
        return None
    value = Decimal(text.replace(dialect["thousands"], "").replace(dialect["decimal"], "."))
    if value != value.quantize(Decimal(1).scaleb(-exponent_of(currency))):
        raise ValueError(f"{text} has more decimals than {currency}")
    return value


def _erp_side(data: bytes, dialect: dict, names: dict[str, str]) -> tuple[pd.DataFrame, list[int]]:
    """ERP rows as reconcile input, and the file line numbers of unreadable rows."""
    lines = data.decode(dialect["encoding"]).splitlines()
    body = lines[dialect["preamble_lines"] :]
    reader = csv.reader(
        io.StringIO("\n".join(body)), delimiter=dialect["separator"], quotechar=dialect["quotechar"]
    )
    header = next(reader)
    column = {name: header.index(aliases[0]) for name, aliases in dialect["columns"].items()}
    zone = ZoneInfo(dialect["timezone"])
    rows, rejected = [], []
    for number, cells in enumerate(reader, start=dialect["preamble_lines"] + 2):
        try:
            currency = cells[column["currency"]] or dialect["default_currency"]
            total = _amount(cells[column["total_amount"]], dialect, currency)
            if total is None:
                raise ValueError("no total")
            ref = cells[column["shopify_ref"]]
            payment = dialect["payment_status_map"][cells[column["payment_status"]]] or None
            rows.append(
                {
                    "external_id": names.get(ref, cells[column["order_number"]]),
                    "currency": currency,
                    "created_at": datetime.strptime(cells[column["created_at"]], "%d.%m.%Y").replace(
                        tzinfo=zone
                    ),
                    "total_amount": total,
                    "tax_amount": _amount(cells[column["tax_amount"]], dialect, currency),
                    "refunded_amount": _amount(cells[column["refunded_amount"]], dialect, currency),
                    "payment_status": payment,
                }
            )
        except (ValueError, KeyError, IndexError, InvalidOperation):
            rejected.append(number)
    return pd.DataFrame(rows), rejected


def _shop_amount(node: dict, name: str) -> Decimal:
    return Decimal(node[name]["shopMoney"]["amount"])


def _planted(text: str) -> set[tuple[str, str]]:
    return {(row["external_id"], row["kind"]) for row in csv.DictReader(io.StringIO(text))}


# ---------------------------------------------------------------------------------------
# Tests


def test_the_report_of_the_samples_is_exactly_the_planted_differences(dialect) -> None:
    shopify, names, tests, malformed = _shopify_side((SAMPLES / "shopify_orders.jsonl").read_text("utf-8"))
    erp, rejected = _erp_side((SAMPLES / "erp_orders.csv").read_bytes(), dialect, names)
    result = reconcile(shopify, erp, now=NOW)
    found = set(zip(result.exceptions["external_id"], result.exceptions["kind"], strict=True))
    planted = _planted((SAMPLES / "planted_differences.csv").read_text("utf-8"))
    assert found == planted
    assert {kind for _, kind in planted} == {
        "missing_in_erp",
        "missing_in_shopify",
        "total_mismatch",
        "tax_mismatch",
        "refund_mismatch",
        "payment_status_mismatch",
        "currency_mismatch",
    }
    assert result.matched == len(shopify) - len({i for i, k in planted if k != "missing_in_shopify"})
    assert (tests, malformed, len(rejected)) == (6, 4, 1)
    assert len(shopify) + tests + malformed == 300


def test_planted_amounts_include_one_minor_unit_in_each_currency(dialect) -> None:
    shopify, names, _, _ = _shopify_side((SAMPLES / "shopify_orders.jsonl").read_text("utf-8"))
    erp, _ = _erp_side((SAMPLES / "erp_orders.csv").read_bytes(), dialect, names)
    exceptions = reconcile(shopify, erp, now=NOW).exceptions
    totals = exceptions[exceptions["kind"] == "total_mismatch"]
    one_unit = {
        cur for cur, diff in zip(totals["currency"], totals["difference"], strict=True)
        if abs(diff) == Decimal(1).scaleb(-exponent_of(cur))
    }  # fmt: skip
    assert one_unit == {"USD", "EUR", "JPY", "KWD"}
    assert Decimal("0.01") in {abs(d) for d in totals["difference"]}


def test_the_malformed_erp_row_is_the_one_with_an_unreadable_amount(dialect) -> None:
    data = (SAMPLES / "erp_orders.csv").read_bytes()
    _, names, _, _ = _shopify_side((SAMPLES / "shopify_orders.jsonl").read_text("utf-8"))
    _, rejected = _erp_side(data, dialect, names)
    line = data.decode("cp1252").splitlines()[rejected[0] - 1]
    assert next(csv.reader([line], delimiter=";"))[7] == "abc"


def test_shopify_sample_has_the_bulk_node_shape_and_covers_every_case() -> None:
    lines = (SAMPLES / "shopify_orders.jsonl").read_text("utf-8").splitlines()
    nodes = []
    for line in lines:
        try:
            nodes.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    assert len(lines) - len(nodes) == 1  # one line that is not JSON
    assert all(list(node) == NODE_KEYS for node in nodes)
    assert {n["displayFinancialStatus"] for n in nodes} >= set(FINANCIAL)
    assert {n["displayFulfillmentStatus"] for n in nodes} >= FULFILLMENT
    assert {n["currencyCode"] for n in nodes} >= {"JPY", "USD", "EUR", "KWD"}
    assert any(n["test"] for n in nodes) and any(n["cancelledAt"] for n in nodes)
    assert any(n["presentmentCurrencyCode"] != n["currencyCode"] for n in nodes)
    assert len({n["legacyResourceId"] for n in nodes}) == len(nodes)
    assert len({n["name"] for n in nodes}) == len(nodes)
    assert {n["name"][:3] for n in nodes} >= {"BS-"}
    partial = [
        n for n in nodes
        if n["displayFinancialStatus"] == "PARTIALLY_REFUNDED"
        and 0 < _shop_amount(n, "totalRefundedSet") < _shop_amount(n, "totalPriceSet")
    ]  # fmt: skip
    assert partial
    for node in nodes:
        assert node["id"] == f"gid://shopify/Order/{node['legacyResourceId']}"
        created = datetime.fromisoformat(node["createdAt"])
        assert datetime(2026, 9, 1, tzinfo=UTC) <= created < datetime(2026, 11, 1, tzinfo=UTC)
        assert node["createdAt"].endswith("Z") and node["updatedAt"] >= node["createdAt"]
        for name in ("totalPriceSet", "totalTaxSet", "totalRefundedSet"):
            for money in node[name].values():
                if money["currencyCode"] is None:
                    continue  # the record planted without a currency
                amount = money["amount"]
                if amount == "12,5x":
                    continue  # the record planted with a broken amount
                decimals = len(amount.split(".")[1]) if "." in amount else 0
                assert decimals == exponent_of(money["currencyCode"]), (node["name"], money)
        for fulfillment in node["fulfillments"]:
            assert list(fulfillment) == ["displayStatus", "createdAt", "deliveredAt", "trackingInfo"]
            assert (fulfillment["deliveredAt"] is not None) == (fulfillment["displayStatus"] == "DELIVERED")
    malformed = [
        n for n in nodes if n["currencyCode"] is None or n["displayFinancialStatus"] not in FINANCIAL
    ]
    malformed += [n for n in nodes if n["totalPriceSet"]["shopMoney"]["amount"] == "12,5x"]
    assert len(malformed) == 3


def test_erp_sample_is_a_european_cp1252_export(dialect) -> None:
    data = (SAMPLES / "erp_orders.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # really cp1252, not UTF-8
    text = data.decode("cp1252")
    assert "\r\n" in text and any(ch in text for ch in "äöüßéøñŠŽ")
    rows = list(csv.reader(io.StringIO("\n".join(text.splitlines()[1:])), delimiter=";"))
    assert all(len(row) == len(rows[0]) for row in rows)
    assert any(row[6] == "" for row in rows[1:]) and any(row[6] == "JPY" for row in rows[1:])
    assert any("." in row[7] and "," in row[7] for row in rows[1:])  # 1.234,56
    assert all(len(row[2]) == 10 and row[2][2] == "." for row in rows[1:])
    assert any(";" in row[5] for row in rows[1:])  # a quoted separator


def test_dialect_file_follows_the_contract(dialect) -> None:
    assert set(dialect) == {
        "encoding", "separator", "quotechar", "decimal", "thousands", "date_formats", "timezone",
        "preamble_lines", "skip_rows_after_header", "row_shape", "default_currency", "shopify_ref_kind",
        "columns", "status_map", "payment_status_map",
    }  # fmt: skip
    assert set(dialect["columns"]) == CANONICAL_COLUMNS
    assert all(isinstance(v, list) and v for v in dialect["columns"].values())
    assert set(dialect["status_map"].values()) <= {
        "pending",
        "processing",
        "shipped",
        "delivered",
        "cancelled",
    }
    assert set(dialect["payment_status_map"].values()) <= {"authorized", "captured", "refunded", "voided", ""}
    assert (dialect["shopify_ref_kind"], dialect["row_shape"], dialect["default_currency"]) == (
        "name",
        "order",
        "EUR",
    )
    for fmt in dialect["date_formats"]:
        datetime.strptime(datetime(2026, 10, 3, 8, 15).strftime(fmt), fmt)
    text = (SAMPLES / "erp_orders.csv").read_bytes().decode("cp1252")
    header = next(csv.reader(io.StringIO(text.splitlines()[dialect["preamble_lines"]]), delimiter=";"))
    assert sorted(aliases[0] for aliases in dialect["columns"].values()) == sorted(
        h for h in header if h != "Customer Name"
    )
    statuses = {line.split(";")[-4] for line in text.splitlines()[2:]}
    assert statuses <= set(dialect["status_map"])


def test_committed_files_are_what_the_generator_writes(generator) -> None:
    sample = generator.generate()
    assert (SAMPLES / "shopify_orders.jsonl").read_text("utf-8") == sample.shopify_jsonl
    assert (SAMPLES / "erp_orders.csv").read_bytes() == sample.erp_csv
    assert (SAMPLES / "erp_orders.dialect.toml").read_text("utf-8") == sample.dialect_toml
    assert (SAMPLES / "planted_differences.csv").read_text("utf-8") == sample.planted_csv


def test_generation_is_deterministic_and_streams_the_same_bytes(generator, tmp_path) -> None:
    first, again = generator.generate(500, 7), generator.generate(500, 7)
    assert first == again
    assert first != generator.generate(500, 8)
    planted = generator.write_samples(tmp_path, 500, 7)
    assert planted == first.planted
    assert (tmp_path / "shopify_orders.jsonl").read_text("utf-8") == first.shopify_jsonl
    assert (tmp_path / "erp_orders.csv").read_bytes() == first.erp_csv


@pytest.mark.parametrize(("n", "seed"), [(60, 1), (2_000, 42)])
def test_the_plan_is_exact_at_other_sizes(generator, dialect, n, seed) -> None:
    sample = generator.generate(n, seed)
    shopify, names, _, malformed = _shopify_side(sample.shopify_jsonl)
    erp, rejected = _erp_side(sample.erp_csv, dialect, names)
    exceptions = reconcile(shopify, erp, now=NOW).exceptions
    assert set(zip(exceptions["external_id"], exceptions["kind"], strict=True)) == set(sample.planted)
    assert len(rejected) == 1 and malformed >= 4
