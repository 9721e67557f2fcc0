"""Hostile input through the ERP file source and the store (SQLite and PostgreSQL).

CSV bytes written to a file in a dialect (the sample export's, the test dialect, and the
test dialect in UTF-8 for text cp1252 cannot carry), read by the real reader: SQL, RTL,
emoji, NUL, 10 kB cells, amounts like ``NaN`` or 10^20, impossible dates, undecodable
bytes, and several rows of one document number conflicting. Every row ends stored or
quarantined with a reason; every cell lands as written and stored text reads back exactly.
"""

from __future__ import annotations

import csv
import functools
import io
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orders_etl.canonical import ROW_FIELDS, OrderRow
from orders_etl.model import OrderRecord, Reject
from orders_etl.sources.erp_files import Dialect, ErpFileReader, load_dialect, normalize
from orders_etl.sources.erp_files.records import MAX_RECORD_LINES
from orders_etl.store import OrderStore, RawRecord
from orders_etl.store.frames import canonical_text, rows_to_table
from orders_etl_tests.hostile import (
    NUMERIC_STRINGS,
    Outcome,
    check_batch,
    empty_store,
    fuzz_settings,
    hostile_texts,
    moments,
)

SOURCE = "erp_files"
REPO = Path(__file__).resolve().parents[1]
SAMPLE = load_dialect(REPO / "data/samples/erp_orders.dialect.toml")
TEST = load_dialect(Path(__file__).with_name("erp_files_dialect.toml"))
DIALECTS = {
    "sample": SAMPLE,
    "test": TEST,
    "test-utf8": Dialect.model_validate(TEST.model_dump() | {"encoding": "utf-8"}),
}
HEADER = [
    "Document No.",
    "External Document No.",
    "Order Date",
    "Last Modified",
    "Customer No.",
    "Customer Name",
    "Currency Code",
    "Amount Including VAT",
    "VAT Amount",
    "Credit Memo Amount",
    "Status",
    "Payment Status",
    "Shipment Method",
    "Package Tracking No.",
]
STATUSES = ["Open", "Released", "Shipped", "Invoiced", "Cancelled", "Draft", "In Review", "Pending Approval"]
PAYMENTS = ["", "Open", "Authorized", "Paid", "Refunded", "Cancelled", "Canceled", "Partially Refunded"]
DATES = ["01.01.0001 00:30", "31.12.9999 23:59", "01.01.0001", "29.02.2023", "12.03.2024 25:00"]
AMOUNTS = ["1.234,56", "99,90", "12,00", "0,00", "100.000.000.000.000.000.000,00", "1,005"]
rarely = st.sampled_from([False] * 14 + [True])  # (integers() would favour the boundary)


def _berlin(moment) -> str:
    return moment.astimezone(SAMPLE.zone).strftime("%d.%m.%Y %H:%M")


@st.composite
def rows(draw: st.DrawFn, encoding: str) -> list[str]:
    """One export row: mostly ordinary values, any cell now and then hostile."""

    def storable(text: str) -> str:  # what the file's encoding can carry of it
        return text.encode(encoding, "replace").decode(encoding)

    # (A quoted cell running over more than MAX_RECORD_LINES lines cannot be told from a
    # stray quote: the reader reads its first line alone. Such cells are left out here.)
    texts = (
        hostile_texts(surrogates=False, alphabet=st.characters(codec=encoding))
        .map(storable)
        .filter(lambda text: len(io.StringIO(text, newline="").readlines()) < MAX_RECORD_LINES)
    )
    usual = {
        "Document No.": st.sampled_from(["SO-1", "SO-2", "SO-3", " SO-4 "]),  # few: versions conflict
        "External Document No.": st.sampled_from(["", "#1001", "#1002"]),
        "Order Date": st.just("12.03.2024"),
        "Last Modified": moments().map(_berlin),
        "Customer No.": st.sampled_from(["C1", "", " C2 "]),
        "Customer Name": st.sampled_from(["Müller GmbH", "Zoë"]).map(storable),
        "Currency Code": st.sampled_from(["", "EUR", "USD", "JPY"]),
        "Amount Including VAT": st.sampled_from(AMOUNTS[:4]),
        "VAT Amount": st.sampled_from(["", "1,92", "0,00"]),
        "Credit Memo Amount": st.sampled_from(["", "0,00", "10,00"]),
        "Status": st.sampled_from(STATUSES),
        "Payment Status": st.sampled_from(PAYMENTS),
        "Shipment Method": st.sampled_from(["", "DHL", "UPS Standard"]),
        "Package Tracking No.": st.sampled_from(["", "JJD0001", " 1Z999 "]),
    }
    hostile = {
        "Order Date": st.sampled_from(DATES) | texts,
        "Last Modified": st.sampled_from(DATES) | texts,
        "Amount Including VAT": st.sampled_from([*AMOUNTS, *NUMERIC_STRINGS]) | texts,
        "VAT Amount": st.sampled_from(NUMERIC_STRINGS) | texts,
        "Credit Memo Amount": st.sampled_from(NUMERIC_STRINGS) | texts,
    }
    return [draw(hostile.get(name, texts) if draw(rarely) else usual[name]) for name in HEADER]


def encode_rows(
    dialect: Dialect, cells: list[list[str]], broken: dict[int, bytes]
) -> tuple[bytes, list[range]]:
    """The export file (preamble, header, rows; row ``i`` in ``broken`` gets that byte
    inserted) and the physical lines each row occupies."""
    out = io.BytesIO()
    line = 1
    if dialect.preamble_lines:
        out.write("Sales Orders;CRONUS;Export\r\n".encode(dialect.encoding) * dialect.preamble_lines)
        line += dialect.preamble_lines
    spans = []
    for index, row in enumerate([HEADER, *cells], start=-1):
        buffer = io.StringIO()
        writer = csv.writer(
            buffer, delimiter=dialect.separator, quotechar=dialect.quotechar, lineterminator="\r\n"
        )
        writer.writerow(row)
        text = buffer.getvalue()
        lines = len(io.StringIO(text, newline="").readlines())  # as the reader counts them
        spans.append(range(line, line + lines))
        line += lines
        data = text.encode(dialect.encoding)
        if index in broken:
            data = data[:1] + broken[index] + data[1:]
        out.write(data)
    return out.getvalue(), spans[1:]


@st.composite
def exports(draw: st.DrawFn) -> tuple[str, list[list[str]], dict[int, bytes]]:
    name = draw(st.sampled_from(sorted(DIALECTS)))
    encoding = DIALECTS[name].encoding
    cells = draw(st.lists(rows(encoding), max_size=8))
    # Bytes the encoding cannot decode, or a NUL, in the middle of some rows.
    bad = [b"\x00", b"\x81" if encoding == "cp1252" else b"\xff"]
    broken = draw(st.dictionaries(st.integers(0, max(len(cells) - 1, 0)), st.sampled_from(bad), max_size=2))
    return name, cells, {i: b for i, b in broken.items() if i < len(cells)}


def record_of(item: OrderRow | OrderRecord | Reject) -> OrderRecord | Reject:
    """An ``OrderRow`` read back as the ``OrderRecord`` it stands for (others as they are)."""
    if type(item) is not tuple:  # an OrderRow is a plain tuple
        return item
    data: dict[str, Any] = dict(zip(ROW_FIELDS, item, strict=True))
    for name in ("created_at", "updated_at", "deleted_at"):
        if data[name] is not None:
            data[name] = datetime.fromisoformat(data[name]).replace(tzinfo=UTC)
    return OrderRecord.model_validate(data)


def run_through_store(
    store: OrderStore, source: str, sent: list[RawRecord], normalize: Callable[[Any], Iterable[Any]]
) -> Outcome:
    """One batch as a sync runs it (``defs/sync.py``): land, read the landing back, normalize,
    upsert every order as a frame of canonical rows (the fast path's OrderRows as they are,
    the record path's records as their canonical text), quarantine the rejects. The items
    are handed back as records (``record_of``), for ``check_batch`` to compare with the store.
    """
    store.land_raw(source, sent)
    landed = [record for chunk in store.iter_raw(source) for record in chunk]
    items = list(normalize(landed))
    rows = [
        i if type(i) is tuple else canonical_text(i)
        for i in items
        if type(i) is tuple or isinstance(i, OrderRecord)
    ]
    store.upsert_frames(source, [rows_to_table(rows)])
    store.record_rejects([i for i in items if isinstance(i, Reject)])
    return Outcome(list(sent), landed, [record_of(i) for i in items])


def check_texts_as_sent(outcome) -> None:
    """Each stored order's texts are the cells', only trimmed (and the payment detail lowered)."""
    for landed, item in outcome.pairs():
        if not isinstance(item, OrderRecord):
            continue
        row = landed.payload["row"]
        assert item.number.encode() == row["Document No."].strip().encode()
        for field, column in (("customer_id", "Customer No."), ("tracking_number", "Package Tracking No.")):
            assert getattr(item, field) == (row[column].strip() or None), field
        assert item.payment_status_detail == (row["Payment Status"].strip().lower() or None)


@fuzz_settings(100)
@given(export=exports())
def test_any_export_rows_end_stored_or_quarantined(
    store: OrderStore, export: tuple[str, list[list[str]], dict[int, bytes]]
) -> None:
    name, cells, broken = export
    dialect = DIALECTS[name]
    empty_store(store)
    data, spans = encode_rows(dialect, cells, broken)
    with TemporaryDirectory() as folder:
        path = Path(folder) / "export.csv"
        path.write_bytes(data)
        sent = list(ErpFileReader(path, dialect).fetch())

    # Every row written is read with exactly its cells, or quarantined: an error record at
    # one of its lines. (A quoted cell of more than 50 lines is beyond what the reader joins:
    # its pieces are quarantined apart, nothing is lost.)
    read = Counter(tuple(r.payload["row"][h] for h in HEADER) for r in sent if "row" in r.payload)
    errors = [r.payload["line"] for r in sent if "row" not in r.payload]
    written = Counter(tuple(row) for i, row in enumerate(cells) if i not in broken)
    assert not read - written, "a row was read with cells other than the ones written"
    unread = read.copy()
    for index, row in enumerate(cells):
        if unread[tuple(row)] and index not in broken:
            unread[tuple(row)] -= 1
        elif any(c.strip() for c in row) or index in broken:
            assert any(line in spans[index] for line in errors), f"row {index} neither read nor quarantined"
    assert not +unread

    run = functools.partial(normalize, dialect=dialect, resolve_names=store.shopify_ids_by_name)
    outcome = run_through_store(store, SOURCE, sent, run)
    check_batch(store, SOURCE, outcome)
    check_texts_as_sent(outcome)


# ---------------------------------------------------------------------------------------
# The bugs the properties found, pinned down one by one


def _read_one(dialect: Dialect, row: list[str], tmp_path: Path) -> RawRecord:
    path = tmp_path / "export.csv"
    path.write_bytes(encode_rows(dialect, [row], {})[0])
    (record,) = ErpFileReader(path, dialect).fetch()
    return record


def test_a_field_starting_with_an_escaped_quote_is_read_exactly(tmp_path: Path) -> None:
    row = ["SO-1", "", "12.03.2024", "12.03.2024 10:15", "C1", "x", "", "1,00", "", "", "Open", "", "", ""]
    row[12] = '"; DELETE FROM source_orders WHERE "1"="1'  # written """; DELETE ... ""1""=""1"
    record = _read_one(TEST, row, tmp_path)
    assert [record.payload["row"][h] for h in HEADER] == row  # its cells used to shift left


def test_a_date_before_year_1_in_utc_is_rejected_with_the_reason(tmp_path: Path) -> None:
    row = [
        "SO-1",
        "",
        "01.01.0001 00:30",
        "01.01.0001 00:30",
        "C1",
        "x",
        "",
        "1,00",
        "",
        "",
        "Open",
        "",
        "",
        "",
    ]
    record = _read_one(TEST, row, tmp_path)  # the reader used to raise OverflowError
    assert "out of the representable range" in record.payload["error"]
    row[3] = "12.03.2024 10:15"
    (item,) = normalize([_read_one(TEST, row, tmp_path)], dialect=TEST, resolve_names=dict)
    assert isinstance(item, Reject) and "'created_at'" in item.reason
