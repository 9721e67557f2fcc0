"""Dialect files: the example loads; every mistake is refused at load with its key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from orders_etl.model import OrderStatus, PaymentStatus
from orders_etl.sources.erp_files import DialectError, load_dialect

EXAMPLE_DIALECT = Path(__file__).with_name("erp_files_dialect.toml")
EXAMPLE = EXAMPLE_DIALECT.read_text(encoding="utf-8")


def load_text(tmp_path: Path, text: str):
    path = tmp_path / "dialect.toml"
    path.write_text(text, encoding="utf-8")
    return load_dialect(path)


def test_example_dialect_loads_with_its_vocabularies() -> None:
    dialect = load_dialect(EXAMPLE_DIALECT)

    assert (dialect.encoding, dialect.separator, dialect.decimal, dialect.thousands) == (
        "cp1252",
        ";",
        ",",
        ".",
    )
    assert dialect.columns["shopify_ref"][:2] == ["External Document No.", "NumAtCard"]
    assert dialect.status_lookup["inreview"] is OrderStatus.PENDING
    # "" on the right-hand side means "no payment yet" (TOML has no null); an empty cell too.
    assert dialect.payment_status_lookup["open"] is None
    assert dialect.payment_status_lookup[""] is None
    assert dialect.payment_status_lookup["paid"] is PaymentStatus.CAPTURED


def test_defaults_fill_what_a_minimal_dialect_leaves_out(tmp_path: Path) -> None:
    dialect = load_text(
        tmp_path,
        'default_currency = "USD"\n'
        '[columns]\norder_number = "No."\ntotal_amount = ["Total"]\nstatus = "Status"\n'
        '[status_map]\nOpen = "processing"\n',
    )

    assert (dialect.encoding, dialect.separator, dialect.quotechar, dialect.timezone) == (
        "utf-8",
        ",",
        '"',
        "UTC",
    )
    assert dialect.row_shape == "order"
    assert dialect.columns["order_number"] == ["No."]  # a single alias may be a plain string


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('separator = ";"', 'seperator = ";"'), "key 'seperator' is not a dialect setting"),
        (('encoding = "cp1252"', 'encoding = "cp9999"'), "key 'encoding': 'cp9999' is not an encoding"),
        (
            ('timezone = "Europe/Berlin"', 'timezone = "Europe/Bonn"'),
            "key 'timezone': 'Europe/Bonn' is not an IANA",
        ),
        (('"Open" = "processing"', '"Open" = "processing_now"'), "key 'status_map.Open'"),
        (('"Paid" = "captured"', '"Paid" = "paid"'), "key 'payment_status_map.Paid'"),
        (
            ('default_currency = "EUR"', 'default_currency = "EURO"'),
            "key 'default_currency': 'EURO' is not an ISO",
        ),
        (('separator = ";"', 'separator = ";;"'), "key 'separator': must be exactly one character"),
        (('thousands = "."', 'thousands = ","'), "decimal and thousands separators must differ"),
        (('row_shape = "order"', 'row_shape = "orders"'), "key 'row_shape'"),
        (('shopify_ref_kind = "name"', 'shopify_ref_kind = "number"'), "key 'shopify_ref_kind'"),
        (("preamble_lines = 0", "preamble_lines = -1"), "key 'preamble_lines'"),
        (
            ('customer_id = ["Customer No.", "CardCode"]', 'customer = ["Customer No."]'),
            "unknown field(s) ['customer']",
        ),
        (('status = ["Status", "DocStatus"]', ""), "required field(s) ['status'] have no column aliases"),
        (
            ('"Draft" = "pending"', '"Draft" = "pending"\n"DRAFT" = "pending"'),
            "keys 'Draft' and 'DRAFT' differ only",
        ),
    ],
)
def test_mistakes_are_refused_naming_file_and_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in EXAMPLE

    with pytest.raises(DialectError) as caught:
        load_text(tmp_path, EXAMPLE.replace(old, new))

    assert message in str(caught.value)
    assert str(tmp_path / "dialect.toml") in str(caught.value)


def test_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DialectError, match="does not exist"):
        load_dialect(tmp_path / "missing.toml")
    with pytest.raises(DialectError, match="not a valid UTF-8 TOML file"):
        load_text(tmp_path, "separator = ;")
