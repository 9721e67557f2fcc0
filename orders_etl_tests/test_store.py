"""The order store on SQLite and PostgreSQL: schema, exact money, UTC time, guarded upsert."""

from __future__ import annotations

import gc
import hashlib
import importlib
import random
import sqlite3
import sys
from array import array
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from orders_etl.model import Reject, Source
from orders_etl.sources.base import Log, no_log, read_ahead_in_child
from orders_etl.store import OrderStore, RawRecord, landing, migrate, names_query
from orders_etl.store.engine import (
    SQLITE_PAGE_SIZE,
    create_store_engine,
    masked_url,
    own_connections_after_fork,
    plan_for_key_probes,
)
from orders_etl.store.landing import (
    forget_pending_query,
    id_runs,
    land_raw,
    landed_before_query,
    pending_query,
    plan_for_queue_runs,
)
from orders_etl.store.schema import declared, metadata, orders, raw_orders, source_orders
from orders_etl.store.upsert import _join_by, golden_merge_sql, key_lookups_sql
from orders_etl_tests.factories import BASE_TIME, order

LATER = BASE_TIME + timedelta(hours=1)
migration_0006 = importlib.import_module("orders_etl.store.migrations.versions.0006_keys_compare_bytewise")


def _rows(store: OrderStore, table: sa.Table, *columns: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(*(table.c[c] for c in columns)).order_by(*(table.c[c] for c in columns))
            )
        ]


def _schema_diff(conn: sa.Connection) -> list[Any]:
    return compare_metadata(MigrationContext.configure(conn, opts={"include_object": declared}), metadata)


def test_migrations_create_exactly_the_declared_schema(store: OrderStore) -> None:
    with store.engine.connect() as conn:
        diff = _schema_diff(conn)
    assert diff == []


def test_money_round_trips_with_the_currency_exponent(store: OrderStore) -> None:
    store.upsert("shopify", [
        order("jpy", currency="JPY", total_amount="1500", tax_amount="136"),
        order("usd", currency="USD", total_amount="12.30", tax_amount="0.05"),
        order("kwd", currency="KWD", total_amount="1.250", tax_amount="0.125", refunded_amount="0.005"),
    ])  # fmt: skip
    got = {
        r[0]: r[1:]
        for r in _rows(store, orders, "external_id", "total_amount", "tax_amount", "refunded_amount")
    }
    assert [str(v) if v is not None else None for v in got["jpy"]] == ["1500", "136", None]
    assert [str(v) if v is not None else None for v in got["usd"]] == ["12.30", "0.05", None]
    assert [str(v) for v in got["kwd"]] == ["1.250", "0.125", "0.005"]
    assert all(isinstance(v, Decimal) for v in got["kwd"])


def test_sums_never_lose_a_cent(store: OrderStore) -> None:
    # 0.1 + 0.2 style amounts that binary floats cannot hold, plus one big amount.
    records = [order(i, total_amount="0.01", tax_amount="0.10") for i in range(1000)]
    records.append(order("big", total_amount="999999999999.99", tax_amount="0.20"))
    store.upsert("shopify", records)
    total_sum = "decimal_sum" if store.engine.dialect.name == "sqlite" else "sum"
    with store.engine.connect() as conn:
        total, tax = conn.execute(
            sa.text(f"SELECT {total_sum}(total_amount), {total_sum}(tax_amount) FROM orders")
        ).one()
    assert Decimal(str(total)) == Decimal("1000000000009.99")
    assert str(total) == "1000000000009.99"
    assert Decimal(str(tax)) == Decimal("100.20")


def test_timestamps_round_trip_as_utc(store: OrderStore) -> None:
    from datetime import timezone

    tokyo = timezone(timedelta(hours=9))
    created = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=tokyo)
    store.upsert("shopify", [order(1, created_at=created)])
    (stored,) = _rows(store, orders, "created_at")[0]
    assert stored == created
    assert stored.utcoffset() == timedelta(0)
    assert stored.hour == 0 and stored.microsecond == 123456


def test_upsert_counts_and_newest_wins(store: OrderStore) -> None:
    first = store.upsert("shopify", [order(1), order(2), order(1, updated_at=BASE_TIME - timedelta(hours=1))])
    assert first.as_dict() == {"inserted": 2, "updated": 0, "unchanged": 0, "stale": 1}
    again = store.upsert("shopify", [order(1), order(2)])
    assert again.as_dict() == {"inserted": 0, "updated": 0, "unchanged": 2, "stale": 0}
    newer = store.upsert(
        "shopify",
        [
            order(1, updated_at=LATER, total_amount="120.00"),
            order(2, updated_at=BASE_TIME - timedelta(days=1)),
        ],
    )
    assert newer.as_dict() == {"inserted": 0, "updated": 1, "unchanged": 0, "stale": 1}
    assert _rows(store, orders, "external_id", "total_amount") == [
        ("1", Decimal("120.00")),
        ("2", Decimal("100.00")),
    ]
    # An older replay after that changes nothing.
    replay = store.upsert("shopify", [order(1, total_amount="1.00")])
    assert replay.stale == 1
    assert _rows(store, source_orders, "external_id", "total_amount") == [
        ("1", Decimal("120.00")),
        ("2", Decimal("100.00")),
    ]


def test_tie_on_updated_at_is_broken_by_content_not_arrival(store_url: str) -> None:
    a, b = order(1, total_amount="1.00"), order(1, total_amount="2.00")
    results = []
    for versions in ([a, b], [b, a]):
        for batch in ([versions], [[versions[0]], [versions[1]]]):
            store = OrderStore(create_store_engine(store_url))
            with store.engine.begin() as conn:
                conn.execute(orders.delete())
                conn.execute(source_orders.delete())
            for chunk in batch:
                store.upsert("shopify", chunk)
            results.append(_rows(store, orders, "total_amount")[0][0])
            store.dispose()
    assert len(set(results)) == 1


def test_unchanged_orders_are_not_rewritten_and_ids_are_stable(store: OrderStore) -> None:
    store.upsert("shopify", [order(i) for i in range(10)])
    before = _rows(store, orders, "id", "external_id", "synced_at")
    counts = store.upsert("shopify", [order(i) for i in range(10)])
    assert counts.unchanged == 10
    assert _rows(store, orders, "id", "external_id", "synced_at") == before
    store.upsert("shopify", [order(3, updated_at=LATER, status="shipped")])
    after = _rows(store, orders, "id", "external_id")
    assert after == [(i, e) for i, e, _ in before]
    assert all(i.startswith("ord_") and len(i) == 30 for i, _ in after)


def test_golden_record_origin_wins_and_others_fill_nulls(store: OrderStore) -> None:
    store.upsert("shopify", [order(1, tracking_number=None, customer_id=None, tax_amount=None)])
    bc_one = order(
        1, number="SO-1", total_amount="99.00", tax_amount="7.00", tracking_number="1Z999", customer_id="C-9"
    )
    store.upsert("business_central", [bc_one, order(2, number="SO-2")])
    golden = {
        r[0]: r[1:]
        for r in _rows(
            store,
            orders,
            "external_id",
            "number",
            "origin",
            "total_amount",
            "tax_amount",
            "tracking_number",
            "customer_id",
        )
    }
    # Shopify is the origin: its values win, BC fills the null tax and tracking number, but
    # never the origin's own identifiers (number, customer_id).
    assert golden["1"] == ("#1", "shopify", Decimal("100.00"), Decimal("7.00"), "1Z999", None)
    # An ERP-only order is owned by the ERP.
    assert golden["2"][:2] == ("SO-2", "business_central")


def test_erp_first_then_shopify_takes_over_the_golden_record(store: OrderStore) -> None:
    store.upsert("erp_files", [order(1, number="SO-1", customer_id="C-1")])
    (before_id,) = _rows(store, orders, "id")[0]
    store.upsert("shopify", [order(1, customer_id=None)])
    assert _rows(store, orders, "id", "number", "origin", "customer_id") == [
        (before_id, "#1", "shopify", None)
    ]


def test_mark_deleted_keeps_the_row(store: OrderStore) -> None:
    store.upsert("shopify", [order(1), order(2)])
    deleted_at = LATER
    counts = store.mark_deleted("shopify", {"1": deleted_at, "never-seen": deleted_at})
    assert counts.updated == 1
    assert _rows(store, orders, "external_id", "deleted_at") == [("1", deleted_at), ("2", None)]
    # Re-syncing the order's pre-deletion version does not resurrect it.
    assert store.upsert("shopify", [order(1)]).stale == 1


def test_a_failing_stream_commits_whole_chunks_only_and_can_be_rerun(store: OrderStore) -> None:
    def chunks(fail_after: int | None):
        for n in range(5):
            if fail_after is not None and n == fail_after:
                raise RuntimeError("source went away")
            yield [order(f"{n}-{i}") for i in range(100)]

    with pytest.raises(RuntimeError):
        store.upsert_chunks("shopify", chunks(fail_after=3))
    assert store.count("source_orders") == store.count("orders") == 300
    counts = store.upsert_chunks("shopify", chunks(fail_after=None))
    assert (counts.inserted, counts.unchanged) == (200, 300)
    assert store.count("source_orders") == store.count("orders") == 500


def test_a_statement_failing_mid_chunk_rolls_the_chunk_back(store: OrderStore) -> None:
    store.upsert("shopify", [order(1)])
    # A trigger makes the golden write fail for key 3, after its source row was written.
    if store.engine.dialect.name == "sqlite":
        trigger = (
            "CREATE TRIGGER refuse BEFORE INSERT ON orders WHEN NEW.external_id = '3' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        with store.engine.begin() as conn:
            conn.execute(sa.text(trigger))
    else:
        with store.engine.begin() as conn:
            refuse = (
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "IF NEW.external_id = '3' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.execute(sa.text(refuse))
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )
    with pytest.raises(sa.exc.DBAPIError):
        store.upsert("shopify", [order(2), order(3), order(1, updated_at=LATER, status="shipped")])
    assert _rows(store, source_orders, "external_id", "status") == [("1", "processing")]
    assert _rows(store, orders, "external_id") == [("1",)]


def test_raw_landing_is_idempotent(store: OrderStore) -> None:
    records = [
        RawRecord("1", BASE_TIME, {"id": 1, "total": Decimal("10.10")}),
        RawRecord("2", LATER, {"id": 2}),
    ]
    assert store.land_raw("shopify", records, run_id="r1") == 2
    assert store.land_raw("shopify", records, run_id="r2") == 0
    assert store.land_raw("shopify", [RawRecord("1", LATER, {"id": 1, "total": "11.00"})], run_id="r3") == 1
    landed = [r for chunk in store.iter_raw("shopify", BASE_TIME, LATER) for r in chunk]
    assert [(r.record_key, r.payload) for r in landed] == [("1", {"id": 1, "total": "10.10"})]
    assert sum(len(c) for c in store.iter_raw("shopify")) == 3
    store.land_raw("shopify", [RawRecord("line:9", None, {"_unparsed_line": "{oops"})])
    landed = [r.record_key for chunk in store.iter_raw("shopify", BASE_TIME, LATER) for r in chunk]
    assert sorted(landed) == ["1", "line:9"]  # in no particular order


def test_a_version_sent_twice_in_one_landing_is_landed_once(store: OrderStore) -> None:
    """Repeated within a chunk or across chunks, a version is landed, counted and queued once."""
    version = {"id": 1, "total": Decimal("10.10")}
    records = [
        RawRecord("1", BASE_TIME, version),
        RawRecord("1", BASE_TIME, dict(version)),  # same chunk
        RawRecord("2", LATER, {"id": 2}),
        RawRecord("1", BASE_TIME, dict(version)),  # a later chunk
        RawRecord("1", LATER, {"id": 1, "total": "11.00"}),  # a new version of the same key
    ]
    assert land_raw(store.engine, "shopify", records, chunk_size=3) == 3
    assert store.count("raw_orders") == 3
    assert _pending(store) == ["1", "1", "2"]


def test_a_payload_hash_is_the_blake2b_of_its_text_as_earlier_releases_stored_it(store: OrderStore) -> None:
    """A store keeps the hashes earlier releases landed: a payload hashed any other way
    would be a new version of every order, landed and normalized again."""
    texts = ['{"id":1,"note":"Zoë"}', '{"id": 2, "note": "Zo\\u00eb"}']  # each as it came
    land_raw(store.engine, "shopify", [RawRecord(str(n), BASE_TIME, None, t) for n, t in enumerate(texts)])
    expected = [
        (str(n), hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest())
        for n, text in enumerate(texts)
    ]
    assert _rows(store, raw_orders, "record_key", "payload_hash") == expected


def test_chunks_holding_the_same_versions_crosswise_land_each_once(store: OrderStore) -> None:
    """On PostgreSQL two chunks are in flight at once: the later one leaves the versions of
    the one in flight to it (else, holding them in the other order, the two could deadlock
    on the unique key); landed, queued and counted once all the same."""
    # (Without that rule PostgreSQL deadlocked in two of four runs of this many.)
    count = 1_000
    versions = [RawRecord(str(n), BASE_TIME, {"id": n}) for n in range(count)]
    records = []
    for start in range(0, count, 4):
        four = versions[start : start + 4]
        records += four + four[::-1]  # a chunk of four, then the same four backwards
    assert land_raw(store.engine, "shopify", records, chunk_size=4) == count
    assert store.count("raw_orders") == count == store.count_landed("shopify")
    assert _pending(store) == sorted(str(n) for n in range(count))


def test_a_chunk_that_fails_fails_the_landing_and_the_chunks_before_it_stay_landed(
    store: OrderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = landing._land_postgresql if store.engine.dialect.name == "postgresql" else landing._land_sqlite
    calls: list[int] = []

    def third_fails(conn: Any, source: str, rows: list[tuple[Any, ...]], *args: Any) -> int:
        calls.append(len(rows))
        if len(calls) == 3:
            raise RuntimeError("the third chunk's write failed")
        return real(conn, source, rows, *args)

    monkeypatch.setattr(landing, real.__name__, third_fails)
    records = [RawRecord(str(n), BASE_TIME, {"id": n}) for n in range(10)]
    with pytest.raises(RuntimeError, match="third chunk"):
        land_raw(store.engine, "shopify", records, chunk_size=2)
    landed = store.count("raw_orders")
    # PostgreSQL: the failing call may be the second of two chunks in flight, and a chunk
    # sent beside it still lands. Never the failed one.
    assert landed == 4 if store.engine.dialect.name == "sqlite" else landed in (4, 6, 8)
    assert store.count_landed("shopify") == landed == len(_pending(store))
    monkeypatch.undo()
    assert land_raw(store.engine, "shopify", records, chunk_size=2) == 10 - landed


SOURCES_COUNTED = ("shopify", "erp_files")


def _counted(store: OrderStore) -> dict[str, tuple[int, int]]:
    """Per source: the count the raw step reports, and a count of the rows themselves."""
    with store.engine.connect() as conn:
        counts = dict(conn.exec_driver_sql("SELECT source, count(*) FROM raw_orders GROUP BY source").all())
    return {source: (store.count_landed(source), counts.get(source, 0)) for source in SOURCES_COUNTED}


def test_the_landed_payloads_are_counted_through_landings_deletes_and_truncation(store: OrderStore) -> None:
    store.land_raw("shopify", [RawRecord(str(i), BASE_TIME, {"id": i}) for i in range(3)])
    store.land_raw("erp_files", [RawRecord("SO-1", BASE_TIME, {"no": 1})])
    assert _counted(store) == {"shopify": (3, 3), "erp_files": (1, 1)}
    store.land_raw("shopify", [RawRecord(str(i), BASE_TIME, {"id": i}) for i in range(4)])  # one new
    assert _counted(store) == {"shopify": (4, 4), "erp_files": (1, 1)}
    with store.engine.begin() as conn:  # by hand, as an operator might
        conn.exec_driver_sql("DELETE FROM raw_orders WHERE source = 'shopify' AND record_key IN ('0', '1')")
    assert _counted(store) == {"shopify": (2, 2), "erp_files": (1, 1)}
    with store.engine.begin() as conn:
        postgresql = store.engine.dialect.name == "postgresql"
        conn.exec_driver_sql("TRUNCATE raw_orders" if postgresql else "DELETE FROM raw_orders")
    assert _counted(store) == {"shopify": (0, 0), "erp_files": (0, 0)}
    store.land_raw("erp_files", [RawRecord("SO-2", BASE_TIME, {"no": 2})])
    assert _counted(store) == {"shopify": (0, 0), "erp_files": (1, 1)}


@pytest.mark.postgres
def test_a_postgresql_store_made_before_the_counts_gets_them_counted(pg_url: str) -> None:
    engine = create_store_engine(pg_url)
    try:
        migrate.upgrade(engine, "0006")
        with engine.begin() as conn:  # landed before 0007 (whose landing also counts)
            conn.execute(raw_orders.insert(), [
                {"source": source, "record_key": key, "payload": "{}", "payload_hash": key,
                 "fetched_at": BASE_TIME}
                for source, key in [*(("shopify", str(i)) for i in range(5)), ("erp_files", "SO-1")]
            ])  # fmt: skip
        migrate.upgrade(engine)
        store = OrderStore(engine)
        assert _counted(store) == {"shopify": (5, 5), "erp_files": (1, 1)}
        land_raw(engine, "shopify", [RawRecord("5", BASE_TIME, {"id": 5})])
        assert _counted(store) == {"shopify": (6, 6), "erp_files": (1, 1)}
    finally:
        engine.dispose()


def test_an_input_landed_whole_holds_the_windows_inside_its_own(store: OrderStore) -> None:
    day = timedelta(days=1)
    start, end = BASE_TIME, BASE_TIME + 10 * day
    assert store.landed_whole("erp_files", "f1", start, end) is None
    store.remember_landed("erp_files", "f1", start, end, 7, run_id="r1")
    found = store.landed_whole("erp_files", "f1", start + day, end - day)
    assert found is not None and (found.records, found.run_id) == (7, "r1")
    assert store.landed_whole("erp_files", "f1", start, end) is not None
    assert store.landed_whole("erp_files", "f1", start - day, end) is None  # begins before
    assert store.landed_whole("erp_files", "f1", start, end + day) is None  # ends after
    assert store.landed_whole("erp_files", "f1", None, end) is None  # unbounded
    assert store.landed_whole("erp_files", "f2", start, end) is None  # another input
    assert store.landed_whole("shopify", "f1", start, end) is None  # another source
    # Landed from the beginning: holds every earlier start; the latest landing is reported.
    store.remember_landed("erp_files", "f1", None, end + day, 9, run_id="r2")
    found = store.landed_whole("erp_files", "f1", None, end)
    assert found is not None and found.run_id == "r2"
    assert store.landed_whole("erp_files", "f1", start - 5 * day, end + day).run_id == "r2"


def test_only_versions_not_landed_before_are_sent(store: OrderStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first load sends every version; once a chunk holds versions landed before, each
    chunk is looked up and sends only its new ones (a changed export re-read whole)."""
    sent: list[list[str]] = []

    def counting(land: Any) -> Any:
        def wrapper(conn: Any, source: str, rows: list[tuple[Any, ...]], *args: Any) -> int:
            sent.append(sorted(key for (key, _digest), _row in rows))
            return land(conn, source, rows, *args)

        return wrapper

    for name in ("_land_sqlite", "_land_postgresql"):
        monkeypatch.setattr(landing, name, counting(getattr(landing, name)))
    first = [RawRecord(str(n), BASE_TIME, {"id": n}) for n in range(9)]
    assert land_raw(store.engine, "shopify", first, chunk_size=3) == 9
    # (In any order: on PostgreSQL two chunks are in flight at once.)
    assert sorted(sent) == [["0", "1", "2"], ["3", "4", "5"], ["6", "7", "8"]]
    sent.clear()
    # Every third order changed: each chunk of three holds two versions landed before.
    changed = [
        RawRecord(str(n), LATER, {"id": n, "edited": True}) if n % 3 == 0 else first[n] for n in range(9)
    ]
    assert land_raw(store.engine, "shopify", changed, chunk_size=3) == 3
    assert sorted(sent) == [["0"], ["3"], ["6"]]
    sent.clear()
    assert land_raw(store.engine, "shopify", changed, chunk_size=3) == 0
    assert sent == []
    assert store.count("raw_orders") == 12


def test_a_version_another_run_landed_after_the_lookup_is_not_landed_again(
    store: OrderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup found nothing, then another run landed one of the versions: the chunk
    lands the rest, each once, queued and counted (PostgreSQL: its COPY is refused on the
    unique key and the chunk goes through ON CONFLICT DO NOTHING instead)."""
    records = [RawRecord(str(n), BASE_TIME, {"id": n}) for n in range(4)]
    assert land_raw(store.engine, "shopify", records[2:3]) == 1  # the other run
    monkeypatch.setattr(landing, "_landed_before", lambda *_: set())  # looked up before it
    assert land_raw(store.engine, "shopify", records) == 3
    assert store.count("raw_orders") == 4
    assert _pending(store) == ["0", "1", "2", "3"]
    assert _counted(store)["shopify"] == (4, 4)
    monkeypatch.undo()
    assert land_raw(store.engine, "shopify", [*records, RawRecord("4", BASE_TIME, {"id": 4})]) == 1
    assert _counted(store)["shopify"] == (5, 5)


def _pending(store: OrderStore, **window) -> list[str]:
    return sorted(r.record_key for chunk in store.iter_raw("shopify", pending=True, **window) for r in chunk)


def test_landed_versions_are_queued_once_until_normalized(store: OrderStore) -> None:
    records = [RawRecord("1", BASE_TIME, {"id": 1}), RawRecord("2", LATER, {"id": 2})]
    assert store.land_raw("shopify", records) == 2
    assert store.land_raw("shopify", records) == 0  # landed before: neither landed nor queued again
    assert _pending(store) == ["1", "2"]
    assert _pending(store, start=BASE_TIME, end=LATER) == ["1"]
    taken = [r.raw_id for chunk in store.iter_raw("shopify", pending=True) for r in chunk]
    store.forget_pending("shopify", taken)
    assert _pending(store) == [] and store.count("raw_orders_pending") == 0
    # A new version is queued; the one normalized before is not.
    assert store.land_raw("shopify", [RawRecord("1", LATER, {"id": 1, "note": "edited"})]) == 1
    assert _pending(store) == ["1"]
    # Queued again on request (re-normalizing a window), each version once.
    assert store.queue_again("shopify", BASE_TIME, LATER) == 1
    assert store.queue_again("shopify") == 1
    assert sorted(r.raw_id for chunk in store.iter_raw("shopify", pending=True) for r in chunk) == sorted(
        r.raw_id for chunk in store.iter_raw("shopify") for r in chunk
    )


def test_only_the_versions_taken_go_off_the_queue(store: OrderStore) -> None:
    # Ids taken off by runs of consecutive ids: an id between two runs, queued by another
    # run meanwhile, stays; so do the other source's.
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO raw_orders_pending (source, raw_id) VALUES (:source, :raw_id)"),
            [{"source": "shopify" if n <= 10 else "erp_files", "raw_id": n} for n in range(1, 13)],
        )
    assert id_runs([9, 2, 1, 3, 6, 5, 2]) == ([1, 5, 9], [3, 6, 9])
    store.forget_pending("shopify", array("q", [9, 2, 1, 3, 6, 5, 2, 11]))
    assert _queue(store.engine) == [
        ("erp_files", 11),
        ("erp_files", 12),
        *(("shopify", n) for n in (4, 7, 8, 10)),
    ]
    store.forget_pending("shopify", [])
    assert len(_queue(store.engine)) == 6


def _queue(engine: sa.Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT source, raw_id FROM raw_orders_pending"))
        return sorted(tuple(row) for row in rows)


def _queue_key(engine: sa.Engine) -> list[str]:
    return sa.inspect(engine).get_pk_constraint("raw_orders_pending")["constrained_columns"]


def test_the_queue_of_a_store_made_before_is_keyed_on_raw_id_alone_and_kept(store_url: str) -> None:
    engine = create_store_engine(store_url)
    try:
        migrate.upgrade(engine, "0007")  # a store whose queue was keyed on (source, raw_id)
        land_raw(engine, "shopify", [RawRecord("1", BASE_TIME, {"id": 1}), RawRecord("2", LATER, {"id": 2})])
        land_raw(engine, "erp_files", [RawRecord("SO-1", BASE_TIME, {"no": 1})])
        queued = _queue(engine)
        assert [source for source, _ in queued] == ["erp_files", "shopify", "shopify"]
        assert _queue_key(engine) == ["source", "raw_id"]
        migrate.upgrade(engine)
        assert _queue(engine) == queued  # what was queued stays queued
        assert _queue_key(engine) == ["raw_id"]
        if engine.dialect.name == "sqlite":  # raw_id is the table's rowid: no index of its own
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA index_list(raw_orders_pending)").all() == []
        store = OrderStore(engine)
        assert _pending(store) == ["1", "2"]
        store.forget_pending("shopify", [raw_id for source, raw_id in queued if source == "shopify"])
        assert _queue(engine) == queued[:1]
        _downgrade(engine, "0007")
        assert _queue(engine) == queued[:1]
        assert _queue_key(engine) == ["source", "raw_id"]
    finally:
        engine.dispose()


def _downgrade(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(migrate.MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_a_new_sqlite_store_has_16_kib_pages_and_an_existing_one_keeps_its_own(tmp_path) -> None:
    old = tmp_path / "old.db"
    with closing(sqlite3.connect(old)) as conn, conn:  # a store made before: 4 KiB, no WAL
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("CREATE TABLE kept (x)")
        conn.execute("INSERT INTO kept VALUES (1)")
    for path, page_size in ((tmp_path / "new.db", SQLITE_PAGE_SIZE), (old, 4096)):
        store = OrderStore.from_url(f"sqlite:///{path}")
        try:
            store.upsert("shopify", [order("1001")])
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA page_size").scalar_one() == page_size
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
                assert conn.execute(sa.select(orders.c.external_id)).scalars().all() == ["1001"]
        finally:
            store.dispose()
    with closing(sqlite3.connect(old)) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]


def _key_collations(conn: sa.Connection) -> dict[tuple[str, str], str | None]:
    return {
        (table, column): collation
        for table, column, collation in conn.execute(
            sa.text(
                "SELECT table_name, column_name, collation_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ANY(:tables)"
            ),
            {"tables": list(migration_0006.KEYS)},
        )
        if column in migration_0006.KEYS[table]
    }


@pytest.mark.postgres
def test_identifiers_compare_bytewise_on_postgresql_in_a_store_made_before_too(pg_url: str) -> None:
    engine = create_store_engine(pg_url)
    try:
        migrate.upgrade(engine, "0005")  # a store made before revision 0006, with its data
        with engine.begin() as conn:
            assert set(_key_collations(conn).values()) == {None}  # the database's own
            conn.execute(orders.insert(), [
                {"id": f"id-{key}", "external_id": key, "number": key, "currency": "USD",
                 "total_amount": Decimal("1.00"), "status": "pending", "updated_at": BASE_TIME,
                 "origin": "shopify", "synced_at": BASE_TIME}
                for key in ("a-1", "B-2", "é-3")
            ])  # fmt: skip
        migrate.upgrade(engine)
        with engine.connect() as conn:
            collations = _key_collations(conn)
            assert len(collations) == sum(map(len, migration_0006.KEYS.values()))
            assert set(collations.values()) == {"C"}
            # Code point order (upper case before lower case, é last), the order of SQLite.
            assert conn.execute(
                sa.select(orders.c.external_id).order_by(orders.c.external_id)
            ).scalars().all() == ["B-2", "a-1", "é-3"]
            # The views were made again over the converted columns.
            conn.exec_driver_sql("SELECT count(*) FROM reconciliation_open_exceptions").scalar_one()
            assert _schema_diff(conn) == []
        _downgrade(engine, "0005")
        with engine.connect() as conn:
            assert set(_key_collations(conn).values()) == {None}
            assert conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar_one() == 3
    finally:
        engine.dispose()


def test_key_lookups_probe_an_index_per_key_on_sqlite(sqlite_url: str) -> None:
    # As a join with the JSON array, SQLite scanned every row of the source once per key:
    # the ERP normalize of 100,000 orders took minutes instead of seconds.
    store = OrderStore.from_url(sqlite_url)
    try:
        with store.engine.connect() as conn:
            names, bound = names_query("sqlite", ["#1"])
            plans = {
                "(source=? AND number=?)": conn.execute(
                    sa.text(f"EXPLAIN QUERY PLAN {names.text}"), {"source": "shopify", "names": bound}
                ).all()
            }
            keys, bound = landed_before_query("sqlite", ["1"])
            driver = conn.connection.driver_connection
            plans["(source=? AND record_key=?)"] = driver.execute(
                f"EXPLAIN QUERY PLAN {keys}", {"source": "shopify", "keys": bound}
            ).fetchall()
            forget, [bound] = forget_pending_query("sqlite", "shopify", [1], [5])
            plans["INTEGER PRIMARY KEY (rowid>? AND rowid<?)"] = conn.execute(
                sa.text(f"EXPLAIN QUERY PLAN {forget.text}"), bound
            ).all()
        for probe, plan in plans.items():
            assert any(probe in row[-1] for row in plan), plan
    finally:
        store.dispose()


@pytest.mark.postgres
def test_key_lookups_probe_the_index_however_stale_the_statistics(pg_url: str) -> None:
    # The name lookup, the landed-before lookup and the queue read. Analyzed at 100 orders,
    # then 20,000 loaded: PostgreSQL's estimates are far off (at a
    # million, a join with the names merge-joined or looped over every Shopify order).
    store = OrderStore.from_url(pg_url)
    try:
        store.upsert("shopify", [order(n, number=f"#{n}") for n in range(100)])
        store.land_raw("shopify", [RawRecord(str(n), BASE_TIME, {"id": n}) for n in range(100)])
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE source_orders")
            conn.exec_driver_sql("ANALYZE raw_orders")
        store.upsert("shopify", [order(n, number=f"#{n}") for n in range(100, 20_000)])
        store.land_raw("shopify", [RawRecord(str(n), BASE_TIME, {"id": n}) for n in range(100, 20_000)])
        names = [f"#{n}" for n in range(0, 20_000, 10)]
        keys = [str(n) for n in range(0, 20_000, 4)]
        with store.engine.connect() as conn:
            query, bound = names_query("postgresql", names)
            plans = [
                conn.execute(sa.text(f"EXPLAIN {query.text}"), {"source": "shopify", "names": bound}).all()
            ]
            sql, bound = landed_before_query("postgresql", keys)
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute(f"EXPLAIN {sql}", {"source": "shopify", "keys": bound})
            plans.append(cursor.fetchall())
            queued = pending_query("postgresql", "shopify", BASE_TIME, LATER)
            plans.append(
                conn.execute(
                    sa.text(f"EXPLAIN {queued.compile(compile_kwargs={'literal_binds': True})}")
                ).all()
            )
        for plan in ("\n".join(row[0] for row in rows) for rows in plans):
            # The queue itself may be read whole (it holds only what is not normalized yet);
            # every other table is probed by its index.
            rest = plan.replace("Seq Scan on raw_orders_pending", "")
            assert "Index" in plan and "Seq Scan" not in rest and " Join" not in plan, plan
        assert len(store.shopify_ids_by_name(names)) == 2_000
    finally:
        store.dispose()


@pytest.mark.postgres
def test_the_queue_delete_reads_each_run_by_its_key_however_long_the_queue(pg_url: str) -> None:
    # A bulk load queues a million versions before statistics exist; ``raw_id = ANY(:ids)``
    # was then planned as a scan of the source's whole queue testing each row against every
    # id (54 s to take 200,000 off it).
    store = OrderStore.from_url(pg_url)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO raw_orders_pending (source, raw_id) "
                "SELECT 'shopify', g FROM generate_series(1, 200000) AS g"
            )
        ids = [*range(1, 100_000, 20), *range(100_000, 150_000)]  # runs of one id, and one of 50,000
        with store.engine.begin() as conn:  # under the delete's own planner settings
            plan_for_queue_runs(conn)
            forget, bound = forget_pending_query("postgresql", "shopify", *id_runs(ids))
            plan = "\n".join(row[0] for row in conn.execute(sa.text(f"EXPLAIN {forget.text}"), bound))
        assert "Index" in plan and "Seq Scan" not in plan and "Bitmap" not in plan, plan
        store.forget_pending("shopify", ids)
        assert store.count("raw_orders_pending") == 200_000 - len(ids)
    finally:
        store.dispose()


def _store_with_stale_erp_statistics(pg_url: str, seed: int) -> OrderStore:
    """20,000 Shopify orders and the same 20,000 in the ERP, analyzed when the ERP held 50.

    Keys in random order, as a shop's are: then a probe per key looks dearer to the planner.
    """
    keys = random.Random(seed).sample(range(10**9, 2 * 10**9), 20_000)
    store = OrderStore.from_url(pg_url)
    store.upsert("shopify", [order(key) for key in keys])
    store.upsert("erp_files", [order(key) for key in keys[:50]])
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE source_orders")
    store.upsert("erp_files", [order(key) for key in keys[50:]])
    return store


@pytest.mark.postgres
def test_golden_merge_probes_each_source_by_key_however_stale_the_statistics(pg_url: str) -> None:
    # PostgreSQL believed the ERP small, read all its orders once and joined them against
    # every staged key again (the ERP normalize of 100,000 orders in batches of 5,000 took
    # 52 s instead of 5 s).
    store = _store_with_stale_erp_statistics(pg_url, seed=7)
    try:
        with store.engine.begin() as conn:
            plan_for_key_probes(conn)  # the upsert's own planner settings
            # The staging table as the upsert fills it: a chunk of 5,000 keys.
            conn.exec_driver_sql("DROP TABLE IF EXISTS pg_temp.staging_orders")
            conn.exec_driver_sql(
                "CREATE TEMP TABLE staging_orders ON COMMIT DROP AS "
                "SELECT row_number() OVER () AS pos, so.*, 'ord_x' AS candidate_id "
                "FROM source_orders AS so WHERE source = 'erp_files' LIMIT 5000"
            )
            sql = golden_merge_sql(conn, "erp_files", ["shopify", "erp_files"])
            plan = "\n".join(
                row[0] for row in conn.execute(sa.text(f"EXPLAIN {sql}"), {"synced_at": BASE_TIME})
            )
        # Shopify's row of each key (the ERP's is the staged one)
        probes = [line for line in plan.splitlines() if "on source_orders" in line]
        assert len(probes) == 1, plan
        assert all("Index Scan" in line for line in probes), plan
        # and one of the golden row, to leave it out when it would not change
        golden = [line for line in plan.splitlines() if "Scan" in line and " on orders " in line]
        assert len(golden) == 1 and "Index Scan" in golden[0], plan
        assert "Materialize" not in plan and "Bitmap" not in plan, plan
    finally:
        store.dispose()


def test_a_first_load_inserts_golden_rows_without_on_conflict(store: OrderStore) -> None:
    # The only source holding orders, every key new to it: no golden row can hold them yet,
    # and PostgreSQL's ON CONFLICT would insert each one speculatively, a quarter dearer.
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    store.upsert("shopify", [order(1), order(2)])
    first = [s for s in statements if s.startswith("INSERT INTO orders")]
    statements.clear()
    store.upsert("shopify", [order(1, updated_at=LATER, status="shipped"), order(3)])
    then = [s for s in statements if s.startswith("INSERT INTO orders")]
    assert len(first) == 1 and "ON CONFLICT" not in first[0]
    assert len(then) == 1 and "ON CONFLICT" in then[0]  # an update: merged as always
    assert _rows(store, orders, "external_id", "status") == [
        ("1", "shipped"),
        ("2", "processing"),
        ("3", "processing"),
    ]


def test_a_golden_row_that_outlived_its_source_rows_is_merged_on_a_first_load(store: OrderStore) -> None:
    store.upsert("shopify", [order(1)])
    [(kept_id,)] = _rows(store, orders, "id")
    with store.engine.begin() as conn:  # a store edited by hand: the golden row stays alone
        conn.execute(source_orders.delete())
    counts = store.upsert("shopify", [order(1, total_amount="7.00"), order(2)])
    assert counts.inserted == 2
    assert _rows(store, orders, "external_id", "total_amount") == [
        ("1", Decimal("7.00")),
        ("2", Decimal("100.00")),
    ]
    assert (kept_id, "1") in _rows(store, orders, "id", "external_id")  # its id stays


@pytest.mark.postgres
def test_an_erp_chunk_that_changes_no_golden_row_writes_none(pg_url: str) -> None:
    # PostgreSQL locks each row that ON CONFLICT finds before it reads DO UPDATE's WHERE,
    # writing the lock to the page and the WAL (500,000 unchanged rows: 144 MB of WAL for
    # nothing). A row that was locked has an xmax.
    store = OrderStore.from_url(pg_url)
    try:
        store.upsert("shopify", [order(key) for key in range(1, 101)])
        store.upsert("erp_files", [order(key) for key in range(1, 101)])  # fills nothing
        store.upsert("erp_files", [order(key, tracking_number="1Z-ERP") for key in (101, 102)])
        with store.engine.connect() as conn:
            touched = conn.execute(sa.text("SELECT count(*) FROM orders WHERE xmax::text <> '0'")).scalar()
        assert touched == 0
        # What the ERP does fill still lands: a golden row the origin left a field of null.
        store.upsert("shopify", [order(103, tracking_number=None)])
        store.upsert("erp_files", [order(103, tracking_number="1Z-FILLED")])
        golden = _rows(store, orders, "external_id", "tracking_number", "origin")
        assert ("103", "1Z-FILLED", "shopify") in golden
        assert ("101", "1Z-ERP", "erp_files") in golden
    finally:
        store.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("staged", ["staging_keys", "staging_orders"])
def test_sparse_chunks_are_classified_by_key_probes_however_stale_the_statistics(
    pg_url: str, staged: str
) -> None:
    # The same stale statistics as above, on the path that classifies a chunk whose keys
    # are spread over the store: one lookup per staged key, not the ERP read whole.
    store = _store_with_stale_erp_statistics(pg_url, seed=11)
    try:
        with store.engine.begin() as conn:
            plan_for_key_probes(conn)  # the upsert's own planner settings, as it classifies
            _join_by(conn, "nestloop")
            columns = "updated_at::text" if staged == "staging_keys" else "updated_at"
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{staged}")
            conn.exec_driver_sql(
                f"CREATE TEMP TABLE {staged} ON COMMIT DROP AS SELECT row_number() OVER () AS pos, "
                f"external_id, {columns} AS updated_at, content_hash "
                "FROM source_orders WHERE source = 'erp_files' LIMIT 5000"
            )
            plan = "\n".join(
                row[0]
                for row in conn.execute(
                    sa.text(f"EXPLAIN {key_lookups_sql(staged)}"), {"source": "erp_files"}
                )
            )
        probes = [line for line in plan.splitlines() if "on source_orders" in line]
        assert len(probes) == 1, plan
        assert "Index Scan" in probes[0], plan
        assert "Materialize" not in plan and "Bitmap" not in plan, plan
    finally:
        store.dispose()


def test_rejects_keep_first_and_last_seen(store: OrderStore) -> None:
    store.record_rejects([Reject("shopify", "7", "field 'currency' = 'XX': not ISO", {"id": 7})], run_id="a")
    store.record_rejects([Reject("shopify", "7", "field 'currency' = 'YY': not ISO", {"id": 7})], run_id="b")
    table = store.read_table("order_rejects")
    assert len(table) == 1
    row = table.iloc[0]
    assert row["reason"].startswith("field 'currency' = 'YY'")
    assert row["first_seen_at"] <= row["last_seen_at"]


def test_high_water_mark_only_moves_forward(store: OrderStore) -> None:
    assert store.high_water_mark("shopify") is None
    store.advance_high_water_mark("shopify", LATER)
    store.advance_high_water_mark("shopify", BASE_TIME)
    assert store.high_water_mark("shopify") == LATER


def test_database_urls_are_shown_masked() -> None:
    assert (
        masked_url("postgresql+psycopg://etl:s3cr3t@db:5432/orders")
        == "postgresql+psycopg://etl:***@db:5432/orders"
    )
    assert "s3cr3t" not in repr(create_store_engine("postgresql+psycopg://etl:s3cr3t@db:5432/orders").url)


def test_canonical_text_follows_the_declared_field_order() -> None:
    from orders_etl.store.schema import ORDER_FIELDS
    from orders_etl.store.upsert import _canonical_text

    record = order(
        1, refunded_amount="1.00", tracking_number="T", deleted_at=LATER, payment_status="refunded"
    )
    texts = _canonical_text(record)
    assert texts[0] == "1"
    for name, text in zip(ORDER_FIELDS, texts[1:], strict=True):
        value = getattr(record, name)
        expected = (
            None
            if value is None
            else value.strftime("%Y-%m-%d %H:%M:%S.%f")
            if name.endswith("_at")
            else str(value)
        )
        assert text == expected, name


def test_streaming_reads_do_not_block_writes_in_the_same_process(store: OrderStore) -> None:
    store.land_raw("shopify", [RawRecord(str(i), BASE_TIME, {"id": i}) for i in range(30)])
    from orders_etl.store.landing import iter_raw

    stream = iter_raw(store.engine, "shopify", chunk_size=10)
    first = next(stream)  # the read transaction stays open while we write below
    store.upsert("shopify", [order(r.record_key) for r in first])
    store.record_rejects([Reject("shopify", "x", "bad", None)])
    store.advance_high_water_mark("shopify", LATER)
    assert sum(len(chunk) for chunk in stream) == 20
    assert store.count("orders") == 10


def test_an_erp_order_resolved_later_replaces_its_erp_number_key(store: OrderStore) -> None:
    # The Shopify order is not known yet: the ERP document is keyed on its ERP number...
    store.upsert("erp_files", [order("SO-1", number="SO-1"), order("SO-2", number="SO-2")])
    store.upsert("shopify", [order("5001", number="#1001")])
    # ...and once it is, the same document maps to the Shopify id: no phantom ERP-only order.
    store.upsert("erp_files", [order("5001", number="SO-1", updated_at=LATER)])
    assert _rows(store, source_orders, "source", "external_id") == [
        ("erp_files", "5001"),
        ("erp_files", "SO-2"),
        ("shopify", "5001"),
    ]
    assert _rows(store, orders, "external_id", "origin") == [("5001", "shopify"), ("SO-2", "erp_files")]


def test_an_erp_order_keyed_on_its_number_after_it_was_stored_resolved_leaves_no_phantom(
    store: OrderStore,
) -> None:
    # Two runs at once: one resolved the document, the other (without the Shopify order in
    # the store yet) keyed the same version on its ERP number and wrote it afterwards.
    store.upsert("shopify", [order("5001", number="#1001")])
    store.upsert("erp_files", [order("5001", number="SO-1")])
    store.upsert("erp_files", [order("SO-1", number="SO-1"), order("SO-2", number="SO-2")])
    assert _rows(store, source_orders, "source", "external_id") == [
        ("erp_files", "5001"),
        ("erp_files", "SO-2"),
        ("shopify", "5001"),
    ]
    assert _rows(store, orders, "external_id", "origin") == [("5001", "shopify"), ("SO-2", "erp_files")]
    # A later version keyed on its number (the reference was removed) is a different story: it stays.
    store.upsert("erp_files", [order("SO-1", number="SO-1", updated_at=LATER)])
    assert ("erp_files", "SO-1") in _rows(store, source_orders, "source", "external_id")


def _pooled_connection_id(store: OrderStore) -> object:
    """Which connection the pool hands out: PostgreSQL's backend pid, SQLite's handle (in a
    forked process, an inherited handle keeps its address)."""
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        return id(conn.connection.driver_connection)


@pytest.mark.skipif(sys.platform != "linux", reason="the reading processes are forked on Linux only")
def test_a_forked_reader_connects_anew_and_leaves_the_writers_connections_alone(store: OrderStore) -> None:
    # A normalize reads the queue in a forked process while this one writes: the child
    # must read through connections of its own (two processes on one connection garble
    # it), and must not close the ones it inherited (on PostgreSQL that ends the parent's
    # session, and the pool would silently reconnect).
    store.land_raw(Source.SHOPIFY, [RawRecord(f"gid://shopify/Order/{n}", None, {"n": n}) for n in range(3)])
    writers = _pooled_connection_id(store)

    def read(_log: Log) -> Iterator[tuple[object, int]]:
        own_connections_after_fork(store.engine)
        readers = _pooled_connection_id(store)
        for chunk in store.iter_raw(Source.SHOPIFY, pending=True):
            yield from ((readers, record.raw_id) for record in chunk)
        gc.collect()  # what the child dropped is collected before it ends

    read_back = [item for chunk in read_ahead_in_child(read, 10, no_log) for item in chunk]
    assert len(read_back) == 3
    assert {readers for readers, _ in read_back} != {writers}
    assert _pooled_connection_id(store) == writers  # the same connection, still open
    assert store.land_raw(Source.SHOPIFY, [RawRecord("gid://shopify/Order/9", None, {"n": 9})]) == 1


def test_a_landed_time_is_the_instant_sent_whatever_the_sessions_time_zone(store_url: str) -> None:
    # The writer sends times as UTC text; PostgreSQL would read a bare one in the session's zone.
    url = sa.make_url(store_url)
    if url.get_backend_name() == "postgresql":
        url = url.update_query_dict({"options": f"{url.query['options']} -cTimeZone=America/New_York"})
    store = OrderStore.from_url(url.render_as_string(hide_password=False))
    sent = datetime(2024, 3, 10, 7, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    try:
        store.land_raw(
            Source.SHOPIFY,
            [RawRecord("gid://shopify/Order/1", sent, {"n": 1}), RawRecord("line:2", None, {"n": 2})],
        )
        back = {r.record_key: r.updated_at for chunk in store.iter_raw(Source.SHOPIFY) for r in chunk}
        assert back == {"gid://shopify/Order/1": sent, "line:2": None}
        assert back["gid://shopify/Order/1"].utcoffset() == timedelta(0)
        with pytest.raises(ValueError, match=r"record 'gid://shopify/Order/3': naive updated_at"):
            store.land_raw(Source.SHOPIFY, [RawRecord("gid://shopify/Order/3", datetime(2024, 3, 10), {})])
    finally:
        store.dispose()
