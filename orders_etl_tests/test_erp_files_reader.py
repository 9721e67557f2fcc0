"""The ERP export reader over each dialect option: bytes in, raw records (cells as text) out."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orders_etl.sources.base import SourceError
from orders_etl.sources.erp_files import Dialect, ErpFileReader, load_dialect
from orders_etl.store import RawRecord

EXAMPLE_DIALECT = Path(__file__).with_name("erp_files_dialect.toml")
HEADER = [
    "Document No.",
    "External Document No.",
    "Order Date",
    "Last Modified",
    "Currency Code",
    "Amount Including VAT",
    "VAT Amount",
    "Status",
    "Payment Status",
    "Customer No.",
    "Customer Name",
]


def variant(**changes: Any) -> Dialect:
    """The example dialect with some keys changed (validated like a file would be)."""
    return Dialect.model_validate(load_dialect(EXAMPLE_DIALECT).model_dump() | changes)


def line(*cells: str, sep: str = ";") -> str:
    return sep.join(cells) + "\r\n"


def order_row(
    number: str, modified: str = "12.03.2024 10:15", name: str = "Müller GmbH", sep: str = ";"
) -> str:
    return line(
        number,
        "#" + number,
        "12.03.2024",
        modified,
        "",
        "1.234,56",
        "197,12",
        "Open",
        "Paid",
        "C1",
        name,
        sep=sep,
    )


def write(path: Path, text: str, encoding: str = "cp1252") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def fetch(
    path: Path, dialect: Dialect, start: datetime | None = None, end: datetime | None = None
) -> list[RawRecord]:
    return list(ErpFileReader(path, dialect).fetch(start, end))


def good(records: list[RawRecord]) -> list[RawRecord]:
    return [r for r in records if "error" not in r.payload]


def errors(records: list[RawRecord]) -> dict[int, str]:
    return {r.payload["line"]: r.payload["error"] for r in records if "error" in r.payload}


# -- encodings ---------------------------------------------------------------------------


def test_cp1252_file_keeps_non_ascii_names_exactly(tmp_path: Path) -> None:
    text = (
        line(*HEADER)
        + order_row("SO-1", name="Müller GmbH")
        + order_row("SO-2", name="Société Générale – Zoë €")
    )
    path = write(tmp_path / "export.csv", text, "cp1252")

    records = fetch(path, variant())

    assert [r.record_key for r in records] == ["SO-1", "SO-2"]
    assert records[0].payload == {
        "file": "export.csv",
        "line": 2,
        "row": dict(
            zip(
                HEADER,
                [
                    "SO-1",
                    "#SO-1",
                    "12.03.2024",
                    "12.03.2024 10:15",
                    "",
                    "1.234,56",
                    "197,12",
                    "Open",
                    "Paid",
                    "C1",
                    "Müller GmbH",
                ],
                strict=True,
            )
        ),
    }
    assert records[1].payload["row"]["Customer Name"] == "Société Générale – Zoë €"
    # Last Modified 10:15 in Berlin (CET, UTC+1) is 09:15 UTC.
    assert records[0].updated_at == datetime(2024, 3, 12, 9, 15, tzinfo=UTC)


def test_cp850_dos_export(tmp_path: Path) -> None:
    path = write(tmp_path / "export.csv", line(*HEADER) + order_row("SO-1", name="Größe Ærø"), "cp850")

    (record,) = fetch(path, variant(encoding="cp850"))

    assert record.payload["row"]["Customer Name"] == "Größe Ærø"


@pytest.mark.parametrize("configured", ["utf-8", "cp1252", "utf-8-sig"])
def test_utf8_bom_is_detected_and_stripped_whatever_is_configured(tmp_path: Path, configured: str) -> None:
    text = line(*HEADER) + order_row("SO-1", name="Müller – Société")
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))

    (record,) = fetch(path, variant(encoding=configured))

    # The BOM does not end up in the first header (which would hide the order-number column).
    assert next(iter(record.payload["row"])) == "Document No."
    assert record.payload["row"]["Customer Name"] == "Müller – Société"


def test_utf8_without_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.csv", line(*HEADER) + order_row("SO-1", name="Łódź 東京"), "utf-8")

    (record,) = fetch(path, variant(encoding="utf-8"))

    assert record.payload["row"]["Customer Name"] == "Łódź 東京"


def test_utf16_file_fails_loudly_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_bytes(b"\xff\xfe" + (line(*HEADER) + order_row("SO-1")).encode("utf-16-le"))

    with pytest.raises(SourceError, match=r"wide\.csv is UTF-16"):
        fetch(path, variant())


# -- separators, preambles, header aliases ----------------------------------------------


@pytest.mark.parametrize("sep", ["\t", "|", ","])
def test_separators(tmp_path: Path, sep: str) -> None:
    # With "," as separator the amounts must not use a decimal comma: quote them as exports do.
    total, tax = ('"1.234,56"', '"197,12"') if sep == "," else ("1.234,56", "197,12")
    text = line(*HEADER, sep=sep) + line(
        "SO-1",
        "#1001",
        "12.03.2024",
        "12.03.2024 10:15",
        "EUR",
        total,
        tax,
        "Open",
        "Paid",
        "C1",
        '"A; B, C"',
        sep=sep,
    )
    path = write(tmp_path / "export.txt", text)

    (record,) = fetch(path, variant(separator=sep))

    assert record.payload["row"]["Amount Including VAT"] == "1.234,56"
    assert record.payload["row"]["VAT Amount"] == "197,12"
    assert record.payload["row"]["Customer Name"] == "A; B, C"
    assert len(record.payload["row"]) == len(HEADER)


def test_tab_separator_from_the_toml_file(tmp_path: Path) -> None:
    toml = EXAMPLE_DIALECT.read_text(encoding="utf-8").replace('separator = ";"', 'separator = "\\t"')
    dialect = load_dialect(write(tmp_path / "tab.toml", toml, "utf-8"))
    path = write(tmp_path / "export.tsv", line(*HEADER, sep="\t") + order_row("SO-1", sep="\t"))

    (record,) = fetch(path, dialect)

    assert dialect.separator == "\t"
    assert record.payload["row"]["Customer No."] == "C1"


def test_preamble_lines_and_second_header_row(tmp_path: Path) -> None:
    # A DATEV-style metadata line before the header, and a SAP B1 DTW description row after it.
    text = (
        line('"EXTF"', "700", "21", '"Buchungsstapel"', "20240312")
        + line(*HEADER)
        + line(
            "DocNum",
            "NumAtCard",
            "DocDate",
            "UpdateDate",
            "DocCur",
            "DocTotal",
            "VatSum",
            "Status",
            "Paid",
            "CardCode",
            "CardName",
        )
        + order_row("SO-1")
        + order_row("SO-2")
    )
    path = write(tmp_path / "export.csv", text)

    records = fetch(path, variant(preamble_lines=1, skip_rows_after_header=1))

    assert [(r.record_key, r.payload["line"]) for r in records] == [("SO-1", 4), ("SO-2", 5)]


def test_header_aliases_first_present_wins_ignoring_case_and_spaces(tmp_path: Path) -> None:
    # SAP B1 headers, spelt loosely; "No." (second alias) and "DocNum" (third) are both present.
    header = ["DOCNUM", "numatcard", "Doc Date", "Doc Total", "VatSum", "Status", "No."]
    text = line(*header) + line("4711", "#1001", "12.03.2024", "99,00", "15,81", "Open", "N-9")
    path = write(tmp_path / "sap.csv", text)
    dialect = variant()

    (record,) = fetch(path, dialect)

    # order_number aliases are ["Document No.", "No.", "DocNum"]: "No." comes first in the list.
    assert record.record_key == "N-9"
    dialect = variant(columns=dialect.columns | {"order_number": ["DocNum", "No."]})
    (record,) = fetch(path, dialect)
    assert record.record_key == "4711"


def test_file_without_a_required_column_fails_naming_file_and_aliases(tmp_path: Path) -> None:
    header = [h for h in HEADER if h != "Amount Including VAT"]
    path = write(tmp_path / "export.csv", line(*header) + line(*("x" * len(header))))

    with pytest.raises(SourceError, match=r"export\.csv line 1: no column for total_amount .*'DocTotal'"):
        fetch(path, variant())


def test_missing_path_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        fetch(tmp_path / "nowhere.csv", variant())


def test_empty_file_yields_nothing_and_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", "")
    messages: list[str] = []

    assert list(ErpFileReader(path, variant()).fetch(log=messages.append)) == []
    assert any("empty.csv has no header row" in m for m in messages)


# -- broken rows and quoting -------------------------------------------------------------


def test_broken_rows_become_error_records_and_the_rest_loads(tmp_path: Path) -> None:
    rows = [
        order_row("SO-1"),
        line("SO-2", "#SO-2", "12.03.2024"),  # line 3: truncated
        order_row("SO-3"),
        order_row("SO-4", name="bad \x81 byte"),  # line 5: 0x81 is undefined in cp1252
        order_row("", name="no number"),  # line 6
        order_row("SO-7", modified="31.02.2024 10:00"),  # line 7: no such date
        order_row("SO-8", name="nul \x00 char"),  # line 8
        order_row("SO-9"),
    ]
    data = (line(*HEADER) + "".join(rows)).encode("cp1252", errors="replace")
    data = data.replace(b"bad ? byte", b"bad \x81 byte")
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    os.utime(path, (1_710_000_000, 1_710_000_000))

    records = fetch(path, variant())

    assert [r.record_key for r in good(records)] == ["SO-1", "SO-3", "SO-9"]
    assert errors(records) == {
        3: "3 fields where the header has 11",
        5: "undecodable byte 0x81 at character 74 (file read as cp1252)",
        6: "no order number (column 'Document No.' is empty)",
        7: "field 'updated_at' (column 'Last Modified') = '31.02.2024 10:00': "
        "matches none of the date formats ['%d.%m.%Y %H:%M', '%d.%m.%Y']",
        8: "NUL character at character 74",
    }
    bad = {r.payload["line"]: r for r in records if "error" in r.payload}
    assert bad[3].record_key == "export.csv:3"
    assert bad[3].payload["raw"] == "SO-2;#SO-2;12.03.2024"
    assert "bad \\x81 byte" in bad[5].payload["raw"]  # storable text, the byte still visible
    assert "nul \\x00 char" in bad[8].payload["raw"]
    # Error records are dated with the file's modification time so windows still carry them.
    assert bad[3].updated_at == datetime.fromtimestamp(1_710_000_000, UTC)


def test_stray_quote_does_not_swallow_the_following_rows(tmp_path: Path) -> None:
    rows = [
        order_row("SO-1"),
        order_row("SO-2", name='"Bau "Nord GmbH'),
        order_row("SO-3"),
        order_row("SO-4"),
    ]
    path = write(tmp_path / "export.csv", line(*HEADER) + "".join(rows))

    records = fetch(path, variant())

    assert [r.record_key for r in records] == ["SO-1", "SO-2", "SO-3", "SO-4"]
    assert records[1].payload["row"]["Customer Name"] == 'Bau "Nord GmbH'
    assert records[2].payload["row"]["Customer Name"] == "Müller GmbH"


def test_unescaped_quotes_inside_quoted_fields_are_kept(tmp_path: Path) -> None:
    # Business Central XMLports quote fields but do not double the quotes inside them.
    rows = [order_row("SO-1", name='"Bau "Nord" GmbH"'), order_row("SO-2", name='"He said ""hi"""')]
    path = write(tmp_path / "export.csv", line(*HEADER) + "".join(rows))

    records = fetch(path, variant())

    assert [r.payload["row"]["Customer Name"] for r in records] == ['Bau "Nord" GmbH', 'He said "hi"']


def test_quoted_field_over_several_lines_is_one_record(tmp_path: Path) -> None:
    rows = [order_row("SO-1", name='"Hof 3\r\nHinterhaus\r\n2. OG"'), order_row("SO-2")]
    path = write(tmp_path / "export.csv", line(*HEADER) + "".join(rows))

    records = fetch(path, variant())

    assert records[0].payload["row"]["Customer Name"] == "Hof 3\r\nHinterhaus\r\n2. OG"
    assert [(r.record_key, r.payload["line"]) for r in records] == [("SO-1", 2), ("SO-2", 5)]


def test_unquoted_export_keeps_quotes_as_text(tmp_path: Path) -> None:
    path = write(tmp_path / "export.csv", line(*HEADER) + order_row("SO-1", name='12" Zoll "Monitor'))

    (record,) = fetch(path, variant(quotechar=""))

    assert record.payload["row"]["Customer Name"] == '12" Zoll "Monitor'


def test_blank_lines_and_trailing_separators_are_tolerated(tmp_path: Path) -> None:
    text = line(*HEADER) + "\r\n" + order_row("SO-1").replace("\r\n", ";\r\n") + ";;;\r\n" + order_row("SO-2")
    path = write(tmp_path / "export.csv", text)

    records = fetch(path, variant())

    assert [r.record_key for r in records] == ["SO-1", "SO-2"]
    assert len(records[0].payload["row"]) == len(HEADER)


# -- row shapes --------------------------------------------------------------------------


def test_line_shape_groups_consecutive_rows_of_an_order(tmp_path: Path) -> None:
    header = ["Document No.", "Last Modified", "Amount Including VAT", "Status", "Item"]
    text = line(*header) + "".join(
        [
            line("SO-1", "12.03.2024 10:00", "100,00", "Open", "A"),
            line("SO-1", "12.03.2024 11:30", "", "", "B"),
            line("SO-2", "12.03.2024 09:00", "50,00", "Open", "C"),
            line("SO-2", "broken"),  # line 5: an unreadable line inside SO-2's group
            line("SO-2", "12.03.2024 09:00", "", "", "D"),
        ]
    )
    path = write(tmp_path / "lines.csv", text)

    records = fetch(path, variant(row_shape="line"))

    assert errors(records) == {5: "2 fields where the header has 5"}
    so1, so2 = good(records)
    assert so1.record_key == "SO-1"
    assert so1.payload["line"] == 2
    assert [row["Item"] for row in so1.payload["rows"]] == ["A", "B"]
    assert so1.updated_at == datetime(2024, 3, 12, 10, 30, tzinfo=UTC)  # the latest line's change
    assert [row["Item"] for row in so2.payload["rows"]] == ["C", "D"]


def test_line_shape_rejects_an_order_whose_rows_are_split(tmp_path: Path) -> None:
    header = ["Document No.", "Amount Including VAT", "Status"]
    text = line(*header) + line("SO-1", "1,00", "Open") + line("SO-2", "2,00", "Open") + line("SO-1", "", "")
    path = write(tmp_path / "lines.csv", text)

    records = fetch(path, variant(row_shape="line"))

    assert [r.record_key for r in good(records)] == ["SO-1", "SO-2"]
    assert errors(records) == {
        4: "rows of order 'SO-1' are not consecutive (its first rows start at line 2): sort the export by "
        "order number"
    }


# -- windows and folders -----------------------------------------------------------------


def test_window_filters_on_the_last_modified_column_half_open(tmp_path: Path) -> None:
    rows = [
        order_row("SO-1", modified="11.03.2024 23:59"),
        order_row("SO-2", modified="12.03.2024 00:00"),  # = start (Berlin midnight)
        order_row("SO-3", modified="12.03.2024 18:00"),
        order_row("SO-4", modified="13.03.2024"),  # = end: excluded
    ]
    path = write(tmp_path / "export.csv", line(*HEADER) + "".join(rows))
    start = datetime(2024, 3, 11, 23, 0, tzinfo=UTC)
    end = datetime(2024, 3, 12, 23, 0, tzinfo=UTC)

    assert [r.record_key for r in fetch(path, variant(), start, end)] == ["SO-2", "SO-3"]
    assert [r.record_key for r in fetch(path, variant(), start, None)] == ["SO-2", "SO-3", "SO-4"]
    assert [r.record_key for r in fetch(path, variant(), None, end)] == ["SO-1", "SO-2", "SO-3"]


def test_a_naive_window_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "export.csv", line(*HEADER) + order_row("SO-1"))

    with pytest.raises(ValueError, match="must be timezone-aware"):
        fetch(path, variant(), datetime(2024, 3, 12), None)


def test_without_an_updated_column_the_file_time_decides(tmp_path: Path) -> None:
    header = [h for h in HEADER if h != "Last Modified"]
    path = write(
        tmp_path / "export.csv",
        line(*header) + line("SO-1", "", "12.03.2024", "", "1,00", "", "Open", "", "", ""),
    )
    modified = datetime(2024, 3, 12, 8, 0, tzinfo=UTC)
    os.utime(path, (modified.timestamp(), modified.timestamp()))
    messages: list[str] = []

    inside = list(ErpFileReader(path, variant()).fetch(modified, None, messages.append))
    outside = list(ErpFileReader(path, variant()).fetch(None, modified, messages.append))

    assert [(r.record_key, r.updated_at) for r in inside] == [("SO-1", modified)]
    assert outside == []
    assert any("skipped: modified 2024-03-12T08:00:00+00:00, outside the window" in m for m in messages)


def test_folder_reads_export_files_in_name_order(tmp_path: Path) -> None:
    write(tmp_path / "b.csv", line(*HEADER) + order_row("SO-2"))
    write(tmp_path / "a.TXT", line(*HEADER) + order_row("SO-1"))
    write(tmp_path / "notes.md", "not an export")
    write(tmp_path / ".~lock.b.csv#", "editor lock")
    (tmp_path / "sub").mkdir()
    messages: list[str] = []

    records = list(ErpFileReader(tmp_path, variant()).fetch(log=messages.append))

    assert [(r.payload["file"], r.record_key) for r in records] == [("a.TXT", "SO-1"), ("b.csv", "SO-2")]
    assert any("b.csv done: 1 rows, 1 records in the window, 0 unreadable" in m for m in messages)


def test_reader_accepts_a_dialect_path(tmp_path: Path) -> None:
    path = write(tmp_path / "export.csv", line(*HEADER) + order_row("SO-1"))

    (record,) = ErpFileReader(path, EXAMPLE_DIALECT).fetch()

    assert record.record_key == "SO-1"
