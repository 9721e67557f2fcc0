"""The columnar upsert path (order frames): same rows, same hashes, same guards as records.

Frames are what a columnar normalizer (and the benchmark) hands to the store; the record
path converts into them. These tests pin that both paths store exactly the same thing, that
the content hash keeps its definition on SQLite and PostgreSQL, that any text survives the
bulk formats (JSON for SQLite, COPY text for PostgreSQL), and that a bad frame is refused
with the record, field and value named.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from decimal import Decimal

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from orders_etl.model import InvalidOrder
from orders_etl.store import OrderStore, UpsertCounts
from orders_etl.store import upsert as upsert_module
from orders_etl.store.frames import FRAME_COLUMNS, prepare, records_to_frame
from orders_etl.store.schema import ORDER_FIELDS, source_orders
from orders_etl_tests.factories import BASE_TIME, order

LATER = BASE_TIME + timedelta(hours=1)
# Text that each bulk format must carry unchanged: COPY's escapes and null marker, JSON's
# quotes, repr's quote choice and escapes, non-ASCII, empty (which is not null).
AWKWARD_TEXTS = ["tab\there", "line\nbreak\r", "back\\slash", "\\N", "dq\"sq'", "é ☃ \U0001f600", "", " "]


def _awkward_orders():
    records = [
        order(
            f"k{i}\t{text}",
            number=f"#{i}{text}",
            shipping_method=text,
            tracking_number=text or None,
            customer_id=f"c{text}",
            payment_status_detail=text,
        )
        for i, text in enumerate(AWKWARD_TEXTS)
    ]
    records.append(
        order("plain", tax_amount=None, payment_status=None, refunded_amount="1.00", deleted_at=LATER)
    )
    return records


def _source_rows(store: OrderStore, source: str) -> list[tuple]:
    columns = [
        source_orders.c.external_id,
        *(source_orders.c[f] for f in ORDER_FIELDS),
        source_orders.c.content_hash,
    ]
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(*columns).where(source_orders.c.source == source).order_by(source_orders.c.external_id)
        )
        return [tuple(row) for row in rows]


def test_frames_and_records_store_the_same_rows_and_any_text_survives(store: OrderStore) -> None:
    records = _awkward_orders()
    assert store.upsert("shopify", records).inserted == len(records)
    assert store.upsert_frames("erp_files", [records_to_frame(records)]).inserted == len(records)
    stored = _source_rows(store, "shopify")
    assert stored == _source_rows(store, "erp_files")
    by_key = {row[0]: row for row in stored}
    for record in records:
        row = by_key[record.external_id]
        assert row[1 : 1 + len(ORDER_FIELDS)] == tuple(getattr(record, f) for f in ORDER_FIELDS)
    # And a re-run through either path finds every one of them unchanged.
    assert store.upsert_frames("shopify", [records_to_frame(records)]).unchanged == len(records)
    assert store.upsert("erp_files", records).unchanged == len(records)


def _expected_hash(record) -> str:
    """The documented definition, computed independently of the store's code."""

    def text(name: str) -> str | None:
        value = getattr(record, name)
        if value is None:
            return None
        if name.endswith("_at"):
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return str(value)

    texts = (record.external_id, *(text(name) for name in ORDER_FIELDS))
    return hashlib.blake2b(repr(texts).encode("utf-8"), digest_size=16).hexdigest()


def test_content_hash_is_blake2b_of_the_repr_of_the_canonical_texts(store: OrderStore) -> None:
    records = _awkward_orders()
    store.upsert_frames("shopify", [records_to_frame(records)])
    stored = {row[0]: row[-1] for row in _source_rows(store, "shopify")}
    assert stored == {record.external_id: _expected_hash(record) for record in records}


def test_a_pandas_frame_of_any_string_dtype_is_accepted(store: OrderStore) -> None:
    frame = records_to_frame([order(1), order(2, tracking_number="T-2")])
    as_objects = frame.astype(object).where(frame.notna(), None)
    assert store.upsert_frames("shopify", [as_objects]).inserted == 2
    assert store.upsert_frames("shopify", [frame]).unchanged == 2
    assert store.upsert_frames("shopify", [frame.iloc[:0]]) == UpsertCounts()


def _frame(**changes) -> pd.DataFrame:
    frame = records_to_frame([order("good"), order("bad")])
    for column, value in changes.items():
        frame.loc[1, column] = value
    return frame


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("currency", "XXQ", "ISO 4217"),
        ("total_amount", "-1.00", "non-negative decimal"),
        ("total_amount", "1e3", "non-negative decimal"),
        ("total_amount", "12.3", "number of decimals"),
        ("tax_amount", "1000000000000000.00", "below 10**15"),
        ("total_amount", None, "is required"),
        ("updated_at", "2026-03-01T12:00:00Z", "YYYY-MM-DD HH:MM:SS.ffffff"),
        ("created_at", "2026-13-01 00:00:00.000000", "real date"),
        ("status", "lost", "allowed values"),
        ("payment_status", "paid", "allowed values"),
        ("number", "   ", "blank"),
        ("number", "x" * 256, "longer than 255"),
        ("tracking_number", "1Z\x00", "NUL"),
    ],
)
def test_a_bad_frame_names_record_field_and_value(column: str, value, problem: str) -> None:
    with pytest.raises(InvalidOrder) as error:
        prepare(_frame(**{column: value}))
    assert error.value.record_key == "bad"
    message = str(error.value)
    assert f"'{column}'" in message and problem in message
    assert repr(value)[:40] in message


def test_a_frame_with_other_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="missing \\['deleted_at'\\], extra \\['note'\\]"):
        prepare(records_to_frame([order(1)]).drop(columns="deleted_at").assign(note="x"))


def test_a_tie_goes_to_the_larger_hash_whatever_the_row_order() -> None:
    versions = [order(1, total_amount="1.00"), order(1, total_amount="2.00"), order(1, total_amount="3.00")]
    winners = set()
    for rotation in range(3):
        rotated = versions[rotation:] + versions[:rotation]
        chunk = prepare(records_to_frame(rotated))
        assert chunk.duplicates == 2 and chunk.table.num_rows == 1
        winners.add(chunk.table.column("total_amount")[0].as_py())
        assert chunk.table.column("content_hash")[0].as_py() == max(_expected_hash(v) for v in versions)
    assert len(winners) == 1


def test_newest_wins_within_a_frame_and_output_is_in_key_order() -> None:
    records = [order("b"), order("a", updated_at=LATER), order("a"), order("c"), order("b", updated_at=LATER)]
    table = prepare(records_to_frame(records)).table
    assert table.column("external_id").to_pylist() == ["a", "b", "c"]
    assert set(table.column("updated_at").to_pylist()[:2]) == {LATER.strftime("%Y-%m-%d %H:%M:%S.%f")}
    assert list(table.column_names) == [*FRAME_COLUMNS, "content_hash"]


@pytest.mark.postgres
def test_postgres_classifies_dense_and_sparse_chunks_alike(pg_url: str) -> None:
    """A chunk whose key range is dense is classified by one range read, a sparse one by
    per-key lookups after the (bounded) range read; both give the same, exact counts."""
    store = OrderStore.from_url(pg_url)
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    def upsert(records) -> tuple[UpsertCounts, int, int]:
        statements.clear()
        counts = store.upsert("shopify", records)
        range_reads = sum("WITH stored" in s for s in statements)
        lookups = sum("LEFT JOIN source_orders AS so" in s for s in statements)
        return counts, range_reads, lookups

    def mixed(when, new_key: str) -> list:
        return [
            order("010", updated_at=when, status="shipped"),
            order("011", updated_at=when, status="shipped"),
            order("012", updated_at=BASE_TIME - timedelta(days=1)),  # stale
            order("013"),
            order("014"),  # unchanged
            order(new_key),  # sorts between 012 and 013
        ]

    try:
        store.upsert("shopify", [order(f"{i:03d}") for i in range(200)])
        expected = UpsertCounts(inserted=1, updated=2, unchanged=2, stale=1)
        assert upsert(mixed(LATER, "0125")) == (expected, 1, 0)
        # 000 and 199 (unchanged) stretch the chunk's range over all 200 stored keys.
        sparse = [*mixed(LATER + timedelta(hours=1), "0126"), order("000"), order("199")]
        expected = UpsertCounts(inserted=1, updated=2, unchanged=4, stale=1)
        assert upsert(sparse) == (expected, 1, 1)
    finally:
        store.dispose()


@pytest.mark.postgres
def test_postgres_dense_range_read_is_bounded(pg_url: str, monkeypatch) -> None:
    """The range read stops at its limit: with a factor of 0 every non-empty range is sparse."""
    monkeypatch.setattr(upsert_module, "DENSE_RANGE_FACTOR", 0)
    store = OrderStore.from_url(pg_url)
    try:
        store.upsert("shopify", [order(i) for i in range(20)])
        counts = store.upsert(
            "shopify", [order(i, updated_at=LATER) if i % 2 else order(i) for i in range(20)]
        )
        assert counts == UpsertCounts(updated=10, unchanged=10)
    finally:
        store.dispose()


def test_the_frame_path_is_what_the_bench_measures(monkeypatch) -> None:
    """Guards the benchmark's honesty: its frames pass the same checks (and count the same
    duplicates) as any other input."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_store

    frames = list(bench_store.frames(1000, updated_fraction=0.5))
    chunks = [prepare(frame) for frame in frames]
    assert sum(frame.num_rows for frame in frames) == 1000
    assert sum(c.table.num_rows for c in chunks) == 900
    assert sum(c.duplicates for c in chunks) == 100
    assert isinstance(frames[0], pa.Table)


@pytest.mark.postgres
def test_postgres_tables_leave_room_for_in_place_updates(pg_url: str) -> None:
    store = OrderStore.from_url(pg_url)
    try:
        with store.engine.connect() as conn:
            options = dict(
                conn.execute(
                    sa.text(
                        "SELECT relname, reloptions FROM pg_class "
                        "WHERE relnamespace = current_schema()::regnamespace "
                        "AND relname IN ('orders', 'source_orders')"
                    )
                ).all()
            )
        assert options == {"orders": ["fillfactor=90"], "source_orders": ["fillfactor=90"]}
    finally:
        store.dispose()


@settings(max_examples=150, deadline=None)
@given(
    versions=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "aa", "é"]), st.integers(0, 3), st.integers(1, 5)),
        max_size=25,
    ),
    data=st.data(),
)
def test_dedupe_keeps_the_newest_version_then_the_larger_hash(versions, data) -> None:
    records = [
        order(key, updated_at=BASE_TIME + timedelta(minutes=minute), total_amount=f"{amount}.00")
        for key, minute, amount in data.draw(st.permutations(versions))
    ]
    chunk = prepare(records_to_frame(records))
    best: dict[str, tuple] = {}
    for record in records:
        rank = (record.updated_at, _expected_hash(record))
        if record.external_id not in best or rank > best[record.external_id][0]:
            best[record.external_id] = (rank, record)
    assert chunk.table.column("external_id").to_pylist() == sorted(best)
    assert chunk.table.column("content_hash").to_pylist() == [best[k][0][1] for k in sorted(best)]
    assert chunk.duplicates == len(records) - len(best)


def test_a_bad_frame_stops_the_stream_after_every_earlier_frame_committed(store: OrderStore) -> None:
    """The next frame is checked ahead, on a worker thread, while this one is written: its
    error must still come after this chunk's commit, and nothing after it is written."""
    frames = [records_to_frame([order(f"{n}-{i}") for i in range(10)]) for n in range(4)]
    frames[2].loc[3, "currency"] = "XXQ"
    written: list[int] = []
    with pytest.raises(InvalidOrder, match=r"'2-3'.*currency"):
        store.upsert_frames("shopify", iter(frames), on_chunk=lambda index, counts: written.append(index))
    assert written == [0, 1]
    assert store.count("source_orders") == store.count("orders") == 20


@pytest.mark.postgres
def test_postgres_copies_big_chunks_in_slices(pg_url: str, monkeypatch) -> None:
    monkeypatch.setattr(upsert_module, "_COPY_SLICE", 3)
    store = OrderStore.from_url(pg_url)
    try:
        records = _awkward_orders()
        assert store.upsert("shopify", records).inserted == len(records) == 9
        assert sorted(row[0] for row in _source_rows(store, "shopify")) == sorted(
            r.external_id for r in records
        )
        assert store.upsert("shopify", records).unchanged == 9
    finally:
        store.dispose()


@pytest.mark.postgres
def test_postgres_stages_whole_chunks_ahead_after_a_mostly_new_one(pg_url: str) -> None:
    """After a chunk of mostly new orders, the next chunk's rows are staged whole before the
    lock and classified there; what is not to be written is dropped from staging before the
    writes. Counts and rows must be exactly those of the keys-first path."""
    store = OrderStore.from_url(pg_url)
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        store.upsert("shopify", [order(f"{i:03d}") for i in range(10, 20)])
        statements.clear()
        # All new: the chunk after the next is built ahead (the next is prepared meanwhile).
        first = [order(f"{i:03d}") for i in range(20, 30)]
        filler = [order(f"{i:03d}") for i in range(40, 45)]
        second = [
            order("010", updated_at=LATER, total_amount="1.00"),  # update
            order("011", updated_at=BASE_TIME - timedelta(days=1)),  # stale
            order("012"),  # unchanged
            order("030"),  # insert
            order("031", tax_amount=None),  # insert
        ]
        counts: list[UpsertCounts] = []
        store.upsert_chunks("shopify", [first, filler, second], on_chunk=lambda _, c: counts.append(c))
        assert counts == [
            UpsertCounts(inserted=10),
            UpsertCounts(inserted=5),
            UpsertCounts(inserted=2, updated=1, unchanged=1, stale=1),
        ]

        def position(fragment: str, start: int = 0) -> int:
            return next(i for i, s in enumerate(statements) if i >= start and fragment in s)

        # (COPY goes straight to the driver, unseen here: the classification shows where it went.)
        first_lock = position("pg_advisory_xact_lock")
        third_lock = position("pg_advisory_xact_lock", position("pg_advisory_xact_lock", first_lock + 1) + 1)
        assert "min(external_id) FROM staging_keys" in statements[position("WITH stored", first_lock)]
        assert "min(external_id) FROM staging_orders" in statements[position("WITH stored", third_lock)]
        assert third_lock < position("DELETE FROM staging_orders WHERE pos = ANY")
        rows = {row[0]: row for row in _source_rows(store, "shopify")}
        assert len(rows) == 27
        assert rows["010"][ORDER_FIELDS.index("total_amount") + 1] == Decimal("1.00")
        assert rows["011"][ORDER_FIELDS.index("updated_at") + 1] == BASE_TIME
        assert rows["031"][ORDER_FIELDS.index("tax_amount") + 1] is None
        assert store.count("orders") == 27
    finally:
        store.dispose()
