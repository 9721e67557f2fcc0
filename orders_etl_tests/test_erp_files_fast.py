"""The ERP source's fast path gives exactly the slow path's result (``erp_files/fast.py``).

Reading: the fast reader yields the same raw records (payload, landed text, key, time) and
counts as the record-by-record reader, on any file. Mapping: for every landed record, the
fast path's ``OrderRow`` is the slow path's ``OrderRecord`` as canonical text, or the fast
path deferred and the result *is* the slow path's (the same record or reject). Shown on
ordinary and hostile rows (hypothesis) and on the bundled samples; and the ordinary rows
do take the fast path (else these tests would prove nothing).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from orders_etl.canonical import OrderRow
from orders_etl.model import OrderRecord, Reject
from orders_etl.sources.base import no_log
from orders_etl.sources.erp_files import Dialect, ErpFileReader, load_dialect
from orders_etl.sources.erp_files.dates import DateParser
from orders_etl.sources.erp_files.fast import FastMapper, payload_text
from orders_etl.sources.erp_files.mapping import _normalize
from orders_etl.sources.erp_files.reader import _FileRead
from orders_etl.sources.erp_files.records import RecordReader, plain_record
from orders_etl.store.frames import canonical_text
from orders_etl.store.landing import LandedRecord, dump_payload
from orders_etl.store.types import sqlite_datetime
from orders_etl_tests.hostile import NUMERIC_STRINGS, fuzz_settings, hostile_texts
from orders_etl_tests.test_hostile_erp_files import DIALECTS, HEADER, encode_rows
from orders_etl_tests.test_hostile_erp_files import rows as hostile_rows

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
TEST = DIALECTS["test"]


# ---------------------------------------------------------------------------------------
# Running both paths


def variant(dialect: Dialect, **changes: Any) -> Dialect:
    return Dialect.model_validate(dialect.model_dump() | changes)


def read(path: Path, dialect: Dialect, *, fast: bool) -> tuple[list[Any], tuple[int, ...]]:
    """The raw records of a file and the reader's counts, by the fast or the reference reader."""
    file_read = _FileRead(ErpFileReader(path, dialect), path, None, None, no_log)
    if not fast:
        file_read._rows = file_read._rows_one_by_one  # type: ignore[method-assign]
    records = list(file_read.records())
    r = file_read
    return records, (r.rows, r.yielded, r.errors, r.outside, r.blank)


def landed(records: Iterable[Any]) -> list[LandedRecord]:
    """The records as the store hands them back (text landed, payload parsed on demand), one
    in two with its time as SQLite's text, as SQLite hands it back, the rest as PostgreSQL."""
    out = []
    for i, r in enumerate(records, start=1):
        text = r.text or dump_payload(r.payload)
        aware = r.updated_at is not None and r.updated_at.utcoffset() is not None
        if i % 2 and aware:
            out.append(
                LandedRecord(
                    r.record_key, None, raw_id=i, text=text, updated_text=sqlite_datetime(r.updated_at)
                )
            )
        else:
            out.append(LandedRecord(r.record_key, r.updated_at, raw_id=i, text=text))
    return out


class Resolver:
    """Some names resolve, to ordinary ids and, now and then, to keys the model refuses."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.calls: list[set[str]] = []

    def __call__(self, names: Iterable[str]) -> dict[str, str]:
        wanted = set(names)
        self.calls.append(wanted)
        return {n: self.known[n] for n in wanted if n in self.known}


KNOWN = {"#1001": "5501234567890", "#1002": " ", "#1003": "9" * 300, "#1004": "#1004"}


def both_paths(
    records: list[LandedRecord], dialect: Dialect, chunk_size: int = 3, known: dict[str, str] = KNOWN
) -> list[str]:
    """Normalize by both paths and check they agree; return which way each record went."""
    fast_resolver, slow_resolver = Resolver(known), Resolver(known)
    fast = list(_normalize(records, dialect, fast_resolver, chunk_size, FastMapper(dialect)))
    slow = list(_normalize(records, dialect, slow_resolver, chunk_size, None))
    assert len(fast) == len(slow) == len(records)
    assert fast_resolver.calls == slow_resolver.calls  # the same names asked, chunk by chunk
    ways = []
    for record, quick, reference in zip(records, fast, slow, strict=True):
        if type(quick) is tuple:  # an OrderRow
            assert isinstance(reference, OrderRecord), (record.text, quick, reference)
            assert quick == OrderRow(canonical_text(reference)), record.text
            ways.append("fast")
        else:
            assert quick == reference, record.text  # deferred: the record path's own result
            ways.append("rejected" if isinstance(quick, Reject) else "record path")
    return ways


# ---------------------------------------------------------------------------------------
# Hostile and borderline rows

TEST_UTF8 = DIALECTS["test-utf8"]
MAPPING_DIALECTS = {
    **DIALECTS,
    "ids": variant(TEST_UTF8, shopify_ref_kind="id"),
    "lines": variant(TEST, row_shape="line"),
    "swiss": variant(TEST_UTF8, decimal=".", thousands="'", timezone="Europe/Zurich"),
    "french": variant(TEST_UTF8, thousands=" ", date_formats=["%d/%m/%Y %H:%M", "%d/%m/%Y %z"]),
    "plain": variant(TEST_UTF8, decimal=".", thousands="", default_currency="JPY"),
}
# Cells at the edges of what the fast path takes: each one either maps exactly or defers.
AMOUNTS = [
    *("0", "0,00", "0,5", "7", "12,5", "12,50", "12,500", "12,505", "1.234", "1.234,56", "1.234.567,8901"),
    *("999.999.999.999.999,99", "1.000.000.000.000.000", "999999999999999", "1000000000000000"),
    *("01,00", "00", "0.123", "1.23", "12.34,5", "1 234,50", "1\u00a0234,50", "1\u202f234", "1'234.50"),
    *("1,234.50", "1234.5", "12,", ",5", "-0,00", "-1,00", "1,00-", "+1,00", "١٢٣", "１２", "1_000"),
    *("12,50 ", " 12,50", "12,5\t", "0,0000", "0,00001", "5,0000000000000000000000000000001"),
    *NUMERIC_STRINGS,
]
DATES = [
    *("12.03.2024", "12.03.2024 10:15", "31.03.2024 02:30", "27.10.2024 02:30", "29.02.2024"),
    *("29.02.2023", "31.04.2024", "01.01.0001 00:30", "31.12.9999 23:59", "1.3.2024 9:05"),
    *("12/03/2024 10:15", "12/03/2024 +0530", "12.03.2024 24:00", "", " ", "2024-03-12"),
]
CURRENCIES = ["", "EUR", "eur", "USD", "JPY", "KWD", "CLF", "ınr", "EURO", "XXX", "ｕｓｄ", " usd "]
STATUSES = ["Open", "open", " OPEN ", "In Review", "inreview", "In\u00a0Review", "Teilgeliefert", ""]
PAYMENTS = ["", " ", "Paid", "PAID", "Partially Refunded", "Teilbezahlt", "İnvoiced", "Canceled"]
SHIPPING = ["", "DHL Paket", "ups standard", "Spedition Müller & Söhne", "®", "123", "DHL\u2028Express"]
REFS = [
    *("", " ", "#1001", "#1002", "#1003", "#1004", "#1005", "gid://shopify/Order/12"),
    *("gid://shopify/Order/١٢", "5501234567890", "x" * 300),
]
KEYS = ["SO-1", " SO-2 ", "SO-3", "x" * 255, "y" * 256, "\u3000SO-4"]
edge = st.sampled_from


@st.composite
def borderline_rows(draw: st.DrawFn, encoding: str) -> list[str]:
    """A row of ordinary cells, a few of them at an edge of the fast path."""
    texts = hostile_texts(surrogates=False, alphabet=st.characters(codec=encoding))
    modified = st.integers(0, 400).map(
        lambda hours: (
            (datetime(2024, 3, 30, tzinfo=UTC) + timedelta(hours=hours))
            .astimezone(TEST.zone)
            .strftime("%d.%m.%Y %H:%M")
        )
    )
    usual = {
        "Document No.": edge(["SO-1", "SO-2", " SO-3 "]),
        "External Document No.": edge(["", "#1001", "#1005"]),
        "Order Date": edge(["12.03.2024", "31.03.2024 02:30", ""]),
        "Last Modified": modified,
        "Customer No.": edge(["C1", "", " C2 "]),
        "Customer Name": edge(["Müller GmbH", "Zoë"]),
        "Currency Code": edge(["", "EUR", "USD", "JPY", "KWD"]),
        "Amount Including VAT": edge(["1.234", "0", "12,00", "7"]),
        "VAT Amount": edge(["", "0", "12", "1.000"]),
        "Credit Memo Amount": edge(["", "", "0", "10"]),
        "Status": edge(["Open", "Released", "In Review"]),
        "Payment Status": edge(["", "Paid", "Refunded"]),
        "Shipment Method": edge(["", "DHL Paket", "UPS"]),
        "Package Tracking No.": edge(["", "JJD0001"]),
    }
    edges = {
        "Document No.": edge(KEYS),
        "External Document No.": edge(REFS),
        "Order Date": edge(DATES),
        "Currency Code": edge(CURRENCIES),
        "Amount Including VAT": edge(AMOUNTS),
        "VAT Amount": edge(AMOUNTS),
        "Credit Memo Amount": edge(AMOUNTS),
        "Status": edge(STATUSES),
        "Payment Status": edge(PAYMENTS),
        "Shipment Method": edge(SHIPPING) | texts,
    }
    return [
        draw(edges.get(name, texts)) if draw(st.integers(0, 9)) == 0 else draw(usual[name]) for name in HEADER
    ]


@st.composite
def exports(draw: st.DrawFn) -> tuple[str, list[str], list[list[str]]]:
    """A dialect, a header (some optional columns dropped) and rows, hostile or borderline."""
    name = draw(st.sampled_from(sorted(MAPPING_DIALECTS)))
    encoding = MAPPING_DIALECTS[name].encoding
    optional = ["External Document No.", "Order Date", "Currency Code", "VAT Amount", "Credit Memo Amount"]
    dropped = draw(st.sets(st.sampled_from(optional), max_size=2))
    row = st.one_of(borderline_rows(encoding), hostile_rows(encoding))
    rows = draw(st.lists(row, min_size=1, max_size=10))
    if name == "lines":  # consecutive rows of one order: a group
        rows.sort(key=lambda cells: cells[0].strip())
    kept = [i for i, column in enumerate(HEADER) if column not in dropped]
    return name, [HEADER[i] for i in kept], [[cells[i] for i in kept] for cells in rows]


def write_export(folder: str, dialect: Dialect, header: list[str], rows: list[list[str]]) -> Path:
    path = Path(folder) / "export.csv"
    out = io.StringIO()
    out.write("Sales Orders;CRONUS;Export\r\n" * dialect.preamble_lines)
    for cells in [header, *rows]:
        out.write(dialect.separator.join(_quoted(c, dialect) for c in cells) + "\r\n")
    path.write_bytes(out.getvalue().encode(dialect.encoding, "replace"))
    return path


def _quoted(cell: str, dialect: Dialect) -> str:
    q, sep = dialect.quotechar, dialect.separator
    if q and (q in cell or sep in cell or "\r" in cell or "\n" in cell):
        return q + cell.replace(q, q + q) + q
    return cell


@fuzz_settings(150)
@given(export=exports(), chunk_size=st.integers(1, 4))
def test_any_row_maps_by_the_fast_path_exactly_as_by_the_slow_path(
    export: tuple[str, list[str], list[list[str]]], chunk_size: int
) -> None:
    name, header, rows = export
    dialect = MAPPING_DIALECTS[name]
    with TemporaryDirectory() as folder:
        records, counts = read(write_export(folder, dialect, header, rows), dialect, fast=True)
        assert (records, counts) == read(Path(folder) / "export.csv", dialect, fast=False)
    for way in both_paths(landed(records), dialect, chunk_size):
        event(way)


@fuzz_settings(100)
@given(export=st.data())
def test_any_file_reads_by_the_fast_path_exactly_as_by_the_slow_path(export: st.DataObject) -> None:
    """The hostile exports of test_hostile_erp_files (quotes, undecodable bytes, NUL, ...)."""
    name = export.draw(st.sampled_from(sorted(DIALECTS)))
    dialect = DIALECTS[name]
    cells = export.draw(st.lists(hostile_rows(dialect.encoding), max_size=8))
    bad = [b"\x00", b"\x81" if dialect.encoding == "cp1252" else b"\xff", b'"', b"\r", b";"]
    broken = export.draw(st.dictionaries(st.integers(0, max(len(cells) - 1, 0)), st.sampled_from(bad)))
    data, _ = encode_rows(dialect, cells, {i: b for i, b in broken.items() if i < len(cells)})
    with TemporaryDirectory() as folder:
        path = Path(folder) / "export.csv"
        path.write_bytes(data)
        fast = read(path, dialect, fast=True)
        assert fast == read(path, dialect, fast=False)
    both_paths(landed(fast[0]), dialect)


@fuzz_settings(200)
@given(
    lines=st.lists(
        st.one_of(
            st.lists(
                st.sampled_from(["a", "", " ", '"', '""', "x;y", "\x00", "\udc81", "é"]), max_size=5
            ).map(";".join),
            hostile_texts(),
        ).map(lambda text: text + "\r\n"),
        max_size=8,
    ),
    width=st.integers(1, 4),
    quote=st.sampled_from(['"', ""]),
)
def test_records_read_by_rows_are_the_records_read_one_by_one(
    lines: list[str], width: int, quote: str
) -> None:
    text = "".join(lines)
    fast = RecordReader(io.StringIO(text, newline=""), ";", quote)
    slow = RecordReader(io.StringIO(text, newline=""), ";", quote)
    records = [item if not isinstance(item, tuple) else plain_record(*item, ";") for item in fast.rows(width)]
    assert records == list(iter(functools.partial(slow.read, width), None))
    assert fast.line_number == slow.line_number


DATE_FORMATS = [
    *("%d.%m.%Y %H:%M", "%d.%m.%Y", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d", "%Y%m%d", "%d.%m.%Y %H:%M:%S"),
    *("%m/%d/%Y", "%d/%m/%Y %I:%M %p", "%d %b %Y", "%y-%m-%d", "%H:%M %d.%m.%Y", "%Y-%m-%d %H", "%d.%m.%Y%%"),
    *("%Y%m%d%H%M", "%Y%m%d%H"),
]


@st.composite
def date_texts(draw: st.DrawFn, formats: list[str]) -> str:
    """Dates written in one of ``formats`` (or another), then often bent: padding dropped,
    spaces, other digits, impossible days and hours."""
    moment = draw(st.datetimes(datetime(1000, 1, 1), datetime(9999, 12, 31)) | st.datetimes())
    written = [f.replace("%z", "+0100") for f in (formats if draw(st.integers(0, 4)) else DATE_FORMATS)]
    text = moment.strftime(draw(st.sampled_from(written)))
    bend = draw(st.sampled_from(["", "", "", "unpad", "space", "digits", "day", "hour", "hostile"]))
    if bend == "unpad":
        text = text.replace("0", "", 1)
    elif bend == "space":
        text = text.replace(" ", "  ").replace(".", ". ", 1)
    elif bend == "digits":  # Arabic-Indic digits: strptime reads them
        text = text.translate({ord(d): chr(0x660 + int(d)) for d in "0123456789"})
    elif bend == "day":
        text = draw(st.sampled_from(["31", "30", "29", "00", "32"])) + text[2:]
    elif bend == "hour":
        text = text.replace(":", draw(st.sampled_from(["4:", "0:", ":6", ":"])), 1)
    elif bend == "hostile":
        text = draw(hostile_texts(surrogates=False))
    return text


@fuzz_settings(500)
@given(formats=st.lists(st.sampled_from(DATE_FORMATS), min_size=1, max_size=3, unique=True), data=st.data())
def test_dates_read_by_the_fast_path_exactly_as_by_strptime(formats: list[str], data: st.DataObject) -> None:
    text = data.draw(date_texts(formats))
    parser, reference = DateParser(formats, TEST.zone), DateParser(formats, TEST.zone)
    strptime_calls = []
    strptime = parser._parse_strptime
    parser._parse_strptime = lambda text: strptime_calls.append(text) or strptime(text)  # type: ignore[method-assign]
    outcomes = []
    for parse in (parser._parse, lambda text: reference._parse_strptime(text.strip())):
        try:
            outcomes.append(parse(text))
        except ValueError as exc:
            outcomes.append(str(exc))
    event("strptime" if strptime_calls else "fast")
    assert outcomes[0] == outcomes[1]
    assert type(outcomes[0]) is type(outcomes[1])  # (an aware datetime is never a str)


@pytest.mark.parametrize(
    ("formats", "text"),
    [
        # strptime reads this with the first format (hour 1, minute 0): the strict form of
        # the second (hour 10) must not be taken, however plain it looks.
        (["%Y%m%d%H%M", "%Y%m%d%H"], "2024031210"),
        (["%m/%d/%Y", "%d/%m/%Y"], "13/03/2024"),  # not a month: the second format reads it
        (["%d.%m.%Y %H:%M", "%d.%m.%Y"], "31.04.2024"),  # no such day in either
        (["%d.%m.%Y"], "29.02.2024"),
    ],
)
def test_dates_a_later_format_reads_only_when_no_earlier_one_can(formats: list[str], text: str) -> None:
    parser = DateParser(formats, TEST.zone)
    try:
        expected: Any = parser._parse_strptime(text)
    except ValueError as exc:
        expected = str(exc)
    try:
        assert parser._parse(text) == expected
    except ValueError as exc:
        assert str(exc) == expected


reader_payloads = st.recursive(
    hostile_texts(surrogates=False) | st.integers(-(2**63), 2**63 - 1),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(hostile_texts(surrogates=False), children)
    ),
    max_leaves=20,
)


@fuzz_settings(200)
@given(value=reader_payloads)
def test_payload_text_is_the_landings_canonical_json(value: Any) -> None:
    assert payload_text(value) == dump_payload(value)


# ---------------------------------------------------------------------------------------
# The bundled samples, and that ordinary rows do take the fast path


def test_every_sample_row_reads_and_maps_as_by_the_slow_path() -> None:
    dialect = load_dialect(SAMPLES / "erp_orders.dialect.toml")
    records, counts = read(SAMPLES / "erp_orders.csv", dialect, fast=True)
    assert (records, counts) == read(SAMPLES / "erp_orders.csv", dialect, fast=False)

    ways = both_paths(landed(records), dialect, chunk_size=50, known={"#1001": "5501", "#1002": "5502"})

    # Every row the record path accepts is mapped by the fast path; the one bad row is rejected.
    assert ways.count("rejected") == 1 and ways.count("fast") == len(ways) - 1, sorted(set(ways))
    assert all(r.text == dump_payload(r.payload) for r in records)


def test_ordinary_rows_take_the_fast_path_in_every_dialect() -> None:
    row = {
        "Document No.": "SO-1",
        "External Document No.": "#1001",
        "Order Date": "12.03.2024 10:15",
        "Currency Code": "",
        "Amount Including VAT": "1.234,56",
        "VAT Amount": "197,12",
        "Credit Memo Amount": "",
        "Status": "Open",
        "Payment Status": "Paid",
        "Shipment Method": "DHL Paket",
        "Package Tracking No.": "JJD0001",
        "Customer No.": "C1",
    }
    text = json.dumps({"file": "e.csv", "line": 2, "row": row})
    record = LandedRecord("SO-1", datetime(2024, 3, 12, 9, 15, tzinfo=UTC), raw_id=1, text=text)

    assert both_paths([record], TEST) == ["fast"]
    (item,) = _normalize([record], TEST, Resolver(KNOWN), 10, FastMapper(TEST))
    assert item == OrderRow(
        (
            "5501234567890",
            "SO-1",
            "2024-03-12 09:15:00.000000",
            "EUR",
            "1234.56",
            "197.12",
            "captured",
            "processing",
            "dhl_paket",
            "JJD0001",
            "C1",
            "0.00",
            "paid",
            "2024-03-12 09:15:00.000000",
            None,
        )
    )
    # As SQLite hands it back: its stored text is taken as it is when it is the store's own
    # fixed-width form, and read as a time when another writer left another form.
    for stored, canonical in [
        ("2024-03-12 09:15:00.000000", "2024-03-12 09:15:00.000000"),
        ("2024-03-12 09:15:00.5", "2024-03-12 09:15:00.500000"),
    ]:
        record = LandedRecord("SO-1", None, raw_id=1, text=text, updated_text=stored)
        assert both_paths([record], TEST) == ["fast"]
        (item,) = _normalize([record], TEST, Resolver(KNOWN), 10, FastMapper(TEST))
        assert item[13] == canonical
