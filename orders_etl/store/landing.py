"""Raw landing (``raw_orders``), quarantine (``order_rejects``) and cursors (``sync_state``).

Raw payloads are kept as canonical JSON text with a hash, so any day can be re-normalized
without calling the source again, and a payload fetched twice is landed once. A version
landed is queued in ``raw_orders_pending`` until the normalize step has committed it.
"""

from __future__ import annotations

import json
import operator
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from orders_etl.lists import in_lists
from orders_etl.model import Reject
from orders_etl.store.engine import plan_for_key_probes, reading
from orders_etl.store.schema import landed_inputs, order_rejects, raw_orders, raw_orders_pending, sync_state
from orders_etl.store.types import (
    SQLITE_DATETIME_WIDTH,
    UtcDateTime,
    hex_digests,
    parse_sqlite_datetime,
    sqlite_datetime,
)

LANDING_CHUNK_SIZE = 5_000
# Record keys are indexed: a PostgreSQL btree entry much past 2.7 kB is refused.
MAX_KEY_BYTES = 1_000


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as the source sent it: its key, the source's update time, the payload.

    ``text``: the payload's JSON text exactly as received, when the reader has it (a bulk
    file's line): landed as it is, which spares encoding it again. Otherwise the payload
    is landed as canonical JSON (:func:`dump_payload`).
    """

    record_key: str
    updated_at: datetime | None
    payload: Any
    text: str | None = None


_UNREAD = object()


class LandedRecord:
    """A landed version: its key, ``updated_at``, JSON ``text`` and ``raw_id``.

    ``payload`` (the text parsed, amounts as Decimal) is parsed on first use only: a fast
    normalizer decodes ``text`` itself and never pays for it. So is ``updated_text``, the
    time as SQLite stores it (read from SQLite): the Shopify mapping reads the time in the
    payload, and the ERP's fast one wants this very text (1M orders: 1 s of parsing less
    in each normalize's reading process). Only the store's own fixed-width form is kept as
    text; another (a row another writer left) is read as a time at once.
    """

    __slots__ = ("_payload", "_updated_at", "raw_id", "record_key", "text", "updated_text")

    def __init__(
        self,
        record_key: str,
        updated_at: datetime | None,
        payload: Any = _UNREAD,
        raw_id: int = 0,
        *,
        text: str | None = None,
        updated_text: str | None = None,
    ) -> None:
        if payload is _UNREAD and text is None:
            raise TypeError("a LandedRecord needs its payload or its text")
        if updated_at is not None and updated_text is not None:
            raise TypeError("a LandedRecord's updated_at is given as a datetime or as text, not both")
        self.record_key = record_key
        if updated_text is not None and len(updated_text) != SQLITE_DATETIME_WIDTH:
            updated_at, updated_text = parse_sqlite_datetime(updated_text), None
        self._updated_at = updated_at
        self.updated_text = updated_text
        self.raw_id = raw_id
        self.text = dump_payload(payload) if text is None else text
        self._payload = payload

    @property
    def updated_at(self) -> datetime | None:
        if self._updated_at is None and self.updated_text is not None:
            self._updated_at = parse_sqlite_datetime(self.updated_text)
        return self._updated_at

    @property
    def payload(self) -> Any:
        if self._payload is _UNREAD:
            self._payload = load_payload(self.text)
        return self._payload

    def __repr__(self) -> str:
        return f"LandedRecord({self.record_key!r}, {self.updated_at!r}, raw_id={self.raw_id})"


def _json_default(value: Any) -> Any:
    # Decimals (amounts parsed with parse_float=Decimal) are kept as exact decimal strings.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in a raw payload")


def dump_payload(payload: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): equal payloads give equal text and hash.

    A payload is always encoded, a string too: a source that sends a bare JSON string where
    an order should be must land as JSON, or reading the landing back would fail.
    """
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON may escape one: "\\ud800") has no UTF-8 form: keep it escaped.
        text = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default
        )
    return text


def storable_text(text: str) -> str:
    """``text`` as both stores can keep it: NUL and lone surrogates shown as escapes.

    PostgreSQL text cannot hold NUL, and neither store can encode a lone surrogate; keys and
    reasons quote what the source sent, so they may hold either.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def storable_key(key: str) -> str:
    """A record key as stored: :func:`storable_text`, and if still too long for an index,
    cut and suffixed with a hash of the whole key (so distinct keys stay distinct)."""
    if key.isascii() and len(key) <= MAX_KEY_BYTES and "\x00" not in key:
        return key  # the usual key, as it is (isascii is a flag check: no scan)
    text = storable_text(key)
    if len(text.encode("utf-8")) > MAX_KEY_BYTES:
        [digest] = hex_digests([key.encode("utf-8", "surrogatepass")])
        text = f"{text[:200]}...#{digest}"
    return text


# One decoder for every payload: json.loads with options builds a new one per call.
_PAYLOAD_DECODER = json.JSONDecoder(parse_float=Decimal)


def load_payload(text: str) -> Any:
    return _PAYLOAD_DECODER.decode(text)


def _insert(conn: Connection, table: sa.Table) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


# A record ready to land: its stored key, updated_at (UTC, as text) and payload text. Its
# payload's hash is taken by the landing (:func:`land_rows`).
LandingRow = tuple[str, str | None, str]


def landing_row(record: RawRecord) -> LandingRow:
    """The row a record lands as: its key as stored, its ``updated_at`` as the UTC text
    SQLite stores (``types.sqlite_datetime``; PostgreSQL reads it as UTC) and its payload's
    text.

    Plain Python on the record alone, so it runs wherever the record is read (the reading
    process of a file, see ``orders_etl.sources.base.read_ahead_in_child``). The time as
    text, not a datetime: formatted there, it is work the writer does not do, and a string
    crosses the pipe for two thirds of a datetime's pickling (1M rows: 0.6 s less writer
    CPU, 0.5 s less in the reader).
    """
    updated = record.updated_at
    if updated is not None and updated.utcoffset() is None:
        # PostgreSQL would read it in the session's time zone, silently.
        raise ValueError(f"record {record.record_key!r}: naive updated_at {updated!r} reached the store")
    text = dump_payload(record.payload) if record.text is None else record.text
    return storable_key(record.record_key), sqlite_datetime(updated), text


def land_raw(
    engine: Engine,
    source: str,
    records: Iterable[RawRecord],
    *,
    run_id: str | None = None,
    chunk_size: int = LANDING_CHUNK_SIZE,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Land raw records: :func:`land_rows` of their :func:`landing_row`."""
    return land_rows(
        engine, source, map(landing_row, records), run_id=run_id, chunk_size=chunk_size, on_chunk=on_chunk
    )


def land_rows(
    engine: Engine,
    source: str,
    rows: Iterable[LandingRow],
    *,
    run_id: str | None = None,
    chunk_size: int = LANDING_CHUNK_SIZE,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Land rows (one transaction per chunk); returns how many were new.
    ``on_chunk(new)`` is called after each chunk's transaction, in order (progress logging).

    A version landed before (same key, same payload hash) is found by one indexed query per
    chunk and not sent again, so re-landing an unchanged window writes nothing. New ones are
    written through the driver in bulk (SQLite: one ``executemany``, ``ON CONFLICT DO
    NOTHING`` for a concurrent run landing the same version; PostgreSQL: ``COPY``, see
    :func:`_land_postgresql`), and queued in ``raw_orders_pending`` for the normalize step
    in the same transaction.

    Once a chunk turned out wholly new (a first load), the next ones are written without the
    lookup: a version landed before is kept all the same, and a chunk that held any such
    version turns the lookup back on. (So a stream is landed by one call, not a call per
    chunk: each call begins by looking up.)

    On PostgreSQL two chunks are in flight, each in a transaction on a connection of its
    own (:func:`_land_overlapped`); SQLite has one writer.
    """
    fetched_at = datetime.now(UTC)
    landed = 0
    look_up = True

    def done(new: int, count: int) -> None:
        nonlocal landed, look_up
        landed += new
        look_up = new < count
        if on_chunk is not None:
            on_chunk(new)

    chunks = map(_versions, in_lists(rows, chunk_size))
    if engine.dialect.name == "postgresql":
        _land_overlapped(engine, source, chunks, lambda: look_up, done, fetched_at, run_id)
    else:
        for versions in chunks:
            done(*_land_chunk(engine, source, versions, look_up, fetched_at, run_id))
    return landed


# A chunk's versions: (key, payload hash) -> its row.
Versions = dict[tuple[str, str], LandingRow]
Version = tuple[tuple[str, str], LandingRow]
_TEXT = operator.itemgetter(2)
# The text's UTF-8 as earlier releases hashed it (a lone surrogate never gets here: dump_payload).
_UTF8 = operator.methodcaller("encode", "utf-8", "surrogatepass")


def _versions(rows: list[LandingRow]) -> Versions:
    """One entry per version of the chunk: the last of a key and hash sent twice in it.

    The payloads are hashed here, in the writing process, not where they are read: a file's
    reading process is the landing's bound. Counted by callgrind over 50,000 records, the
    ERP export's reader ran 106k instructions a record and the writer 51k (Shopify's bulk
    file: 112k and 53k); hashing, with the digest's way through the pipe, moved 16k (22k)
    of them across.
    """
    digests = hex_digests(map(_UTF8, map(_TEXT, rows)))
    return {(row[0], digest): row for row, digest in zip(rows, digests, strict=True)}


def _land_chunk(
    engine: Engine,
    source: str,
    versions: Versions,
    look_up: bool,
    fetched_at: datetime,
    run_id: str | None,
) -> tuple[int, int]:
    """One chunk's transaction: (versions landed, versions in the chunk)."""
    count = len(versions)
    if not count:  # (every version left to the chunk in flight: see _land_overlapped)
        return 0, 0
    with engine.begin() as conn:
        if look_up:
            for known in _landed_before(conn, source, list({key for key, _ in versions})):
                versions.pop(known, None)
        land = _land_postgresql if conn.dialect.name == "postgresql" else _land_sqlite
        new = land(conn, source, list(versions.items()), fetched_at, run_id) if versions else 0
    return new, count


def _land_overlapped(
    engine: Engine,
    source: str,
    chunks: Iterator[Versions],
    look_up: Callable[[], bool],
    done: Callable[[int, int], None],
    fetched_at: datetime,
    run_id: str | None,
) -> None:
    """Land ``chunks`` two at a time, each on a thread and a connection of its own; ``done``
    is called with each one's outcome in order.

    Why: a chunk's transaction is mostly the server's work (its COPY is parsed, stored and
    indexed after the client has sent it), and the next chunk waited for it: a 1M-order
    Shopify landing spent 13 s waiting on the server, and the reading process as long
    blocked on the full pipe. While the server finishes one chunk, the next one is sent.

    A chunk leaves out the versions of the chunk still in flight: that one lands them, and
    two transactions never insert the same key at once (the second would wait for the
    first's end; two such, crosswise, would deadlock).
    """
    in_flight: deque[tuple[Future[tuple[int, int]], set[tuple[str, str]]]] = deque()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="orders-etl-landing") as pool:
        try:
            for versions in chunks:
                if len(in_flight) == 2:
                    done(*in_flight.popleft()[0].result())
                if in_flight:
                    flying = in_flight[0][1]
                    versions = {version: row for version, row in versions.items() if version not in flying}
                # (The versions' keys taken before the task pops the known ones from its dict.)
                keys = set(versions)
                task = pool.submit(_land_chunk, engine, source, versions, look_up(), fetched_at, run_id)
                in_flight.append((task, keys))
            while in_flight:
                done(*in_flight.popleft()[0].result())
        finally:
            for task, _ in in_flight:
                task.cancel()


def _landed_before(conn: Connection, source: str, keys: list[str]) -> set[tuple[str, str]]:
    """The (record_key, payload_hash) already landed for these keys: one query with all the
    keys in one parameter, each key one probe of the unique index. Through the driver: a
    million rows through SQLAlchemy's result rows cost seconds."""
    sql, bound = landed_before_query(conn.dialect.name, keys)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, {"source": source, "keys": bound})
        return set(cursor.fetchall())
    finally:
        cursor.close()


def landed_before_query(dialect: str, keys: list[str]) -> tuple[str, object]:
    """The driver's SQL (named parameters ``source`` and ``keys``) and the bound keys.

    Each dialect gets the form that is index probes per key whatever the planner believes
    (see ``names_query``). SQLite: IN a JSON array. PostgreSQL: a LATERAL probe per key,
    fenced by OFFSET 0.
    """
    if dialect == "postgresql":
        return (
            "SELECT r.record_key, r.payload_hash FROM unnest(%(keys)s::text[]) AS k(key) "
            "CROSS JOIN LATERAL (SELECT record_key, payload_hash FROM raw_orders "
            "WHERE source = %(source)s AND record_key = k.key OFFSET 0) AS r"
        ), keys
    return (
        "SELECT record_key, payload_hash FROM raw_orders "
        "WHERE source = :source AND record_key IN (SELECT value FROM json_each(:keys))"
    ), json.dumps(keys)


_RAW_COLUMNS = "source, record_key, updated_at, payload, payload_hash, fetched_at, run_id"


def _land_sqlite(
    conn: Connection, source: str, rows: list[Version], fetched_at: datetime, run_id: str | None
) -> int:
    driver = conn.connection.driver_connection
    # The transaction holds the write lock (BEGIN IMMEDIATE): every raw_id above the largest
    # one now is a row this statement inserts.
    (before,) = driver.execute("SELECT coalesce(max(raw_id), 0) FROM raw_orders").fetchone()  # type: ignore[union-attr]
    fetched = sqlite_datetime(fetched_at)
    changes = driver.total_changes  # type: ignore[union-attr]
    driver.executemany(  # type: ignore[union-attr]
        f"INSERT INTO raw_orders ({_RAW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (source, record_key, payload_hash) DO NOTHING",
        [(source, key, updated, text, digest, fetched, run_id) for (key, digest), (_, updated, text) in rows],
    )
    landed = driver.total_changes - changes  # type: ignore[union-attr]
    # (ON CONFLICT: SQLite may give a deleted row's raw_id to a new row, and the queue
    # may still hold that id: it is queued either way.)
    driver.execute(  # type: ignore[union-attr]
        "INSERT INTO raw_orders_pending (source, raw_id) "
        "SELECT source, raw_id FROM raw_orders WHERE raw_id > ? ON CONFLICT DO NOTHING",
        (before,),
    )
    return landed


def _land_postgresql(
    conn: Connection, source: str, rows: list[Version], fetched_at: datetime, run_id: str | None
) -> int:
    """COPY the chunk straight into ``raw_orders``, then queue and count it; through
    :func:`_land_postgresql_staged` if a version in it was landed already.

    Why: the staged path wrote every payload twice on the server (the temporary table,
    then ``raw_orders`` by ``INSERT … SELECT … ON CONFLICT``, whose speculative insertion
    also logs a confirmation of each row), and COPY's server work overlaps the client's
    sending of it.
    The chunk's versions are new as far as the landing knows (looked up, or following a
    wholly new chunk). When one is not (another run landed it meanwhile, or a chunk of
    a stream that was new so far held a known one), COPY fails on the unique key, the
    savepoint takes the chunk back, and the staged path lands what is new of it.
    """
    # Times arrive as UTC text without an offset (landing_row): read in UTC, never in the
    # session's time zone, by either path.
    conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
    try:
        with conn.begin_nested():
            return _land_postgresql_copied(conn, source, rows, fetched_at, run_id)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
            raise
    return _land_postgresql_staged(conn, source, rows, fetched_at, run_id)


_UNIQUE_VIOLATION = "23505"  # SQLSTATE of psycopg's UniqueViolation
_RAW_COPY_COLUMNS = f"raw_id, {_RAW_COLUMNS}"


def _land_postgresql_copied(
    conn: Connection, source: str, rows: list[Version], fetched_at: datetime, run_id: str | None
) -> int:
    # The rows' ids drawn ahead (the column's own sequence), so that the queue gets them.
    # (OFFSET 0: else the planner looks the sequence up again for every id, 7 times slower.)
    ids = (
        conn.exec_driver_sql(
            "SELECT nextval(s.id) FROM generate_series(1, %(n)s) CROSS JOIN "
            "(SELECT pg_get_serial_sequence('raw_orders', 'raw_id')::regclass AS id OFFSET 0) AS s",
            {"n": len(rows)},
        )
        .scalars()
        .all()
    )
    fetched = sqlite_datetime(fetched_at)
    driver = conn.connection.driver_connection
    statement = f"COPY raw_orders ({_RAW_COPY_COLUMNS}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        write = copy.write_row
        for raw_id, ((key, digest), (_, updated, text)) in zip(ids, rows, strict=True):
            write((raw_id, source, key, updated, text, digest, fetched, run_id))
    conn.execute(
        sa.text(
            "INSERT INTO raw_orders_pending (source, raw_id) SELECT :source, unnest(CAST(:ids AS bigint[]))"
        ),
        {"source": source, "ids": ids},
    )
    # Counted in raw_orders_counts (migration 0007) in the same transaction.
    conn.execute(
        sa.text(
            "INSERT INTO raw_orders_counts AS c (source, payloads) VALUES (:source, :n) "
            "ON CONFLICT (source) DO UPDATE SET payloads = c.payloads + excluded.payloads"
        ),
        {"source": source, "n": len(rows)},
    )
    return len(rows)


def _land_postgresql_staged(
    conn: Connection, source: str, rows: list[Version], fetched_at: datetime, run_id: str | None
) -> int:
    """COPY the chunk into a temporary table, then land what is new of it by one
    ``INSERT … ON CONFLICT DO NOTHING``, queued and counted in the same statement."""
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS staging_raw (record_key TEXT, updated_at TIMESTAMPTZ, "
        "payload TEXT, payload_hash TEXT) ON COMMIT DELETE ROWS"
    )
    driver = conn.connection.driver_connection
    statement = "COPY staging_raw (record_key, updated_at, payload, payload_hash) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        for (key, digest), (_, updated, text) in rows:
            copy.write_row((key, updated, text, digest))
    # Queued and counted in raw_orders_counts (migration 0007) in the same statement.
    result = conn.execute(
        sa.text(
            f"WITH landed AS (INSERT INTO raw_orders ({_RAW_COLUMNS}) "
            "SELECT :source, record_key, updated_at, payload, payload_hash, "
            ":fetched_at, :run_id FROM staging_raw "
            "ON CONFLICT (source, record_key, payload_hash) DO NOTHING RETURNING raw_id), "
            "queued AS (INSERT INTO raw_orders_pending (source, raw_id) "
            "SELECT :source, raw_id FROM landed RETURNING raw_id), "
            "new AS (SELECT count(*) AS payloads FROM queued), "
            "counted AS (INSERT INTO raw_orders_counts AS c (source, payloads) "
            "SELECT :source, payloads FROM new "
            "ON CONFLICT (source) DO UPDATE SET payloads = c.payloads + excluded.payloads) "
            "SELECT payloads FROM new"
        ),
        {"source": source, "fetched_at": fetched_at, "run_id": run_id},
    )
    return result.scalar_one()


def count_landed(engine: Engine, source: str) -> int:
    """How many payloads ``source`` has in ``raw_orders``: on PostgreSQL its row of
    ``raw_orders_counts``, which the landing and triggers keep (migration 0007; a count
    there reads every payload of the table, from the disk once the OS dropped them); on
    SQLite a count of the key index's entries."""
    with reading(engine).connect() as conn:
        if conn.dialect.name == "postgresql":
            query = sa.text("SELECT payloads FROM raw_orders_counts WHERE source = :source")
            return conn.execute(query, {"source": source}).scalar_one_or_none() or 0
        query = sa.select(sa.func.count()).select_from(raw_orders).where(raw_orders.c.source == source)
        return conn.execute(query).scalar_one()


@dataclass(frozen=True, slots=True)
class LandedInput:
    """A file input a run landed whole: its records, when, by which run."""

    records: int
    landed_at: datetime
    run_id: str | None


def landed_whole(
    engine: Engine, source: str, fingerprint: str | None, start: datetime | None, end: datetime | None
) -> LandedInput | None:
    """The last landing of the input ``fingerprint`` (None: of any input) over a window that
    holds ``[start, end)`` (None: unbounded), if there was one: every record of the input
    in the window is landed."""
    query = sa.select(landed_inputs.c.records, landed_inputs.c.landed_at, landed_inputs.c.run_id).where(
        landed_inputs.c.source == source
    )
    if fingerprint is not None:
        query = query.where(landed_inputs.c.fingerprint == fingerprint)
    start_held = landed_inputs.c.window_start.is_(None)
    if start is not None:
        start_held = sa.or_(start_held, landed_inputs.c.window_start <= start)
    end_held = landed_inputs.c.window_end.is_(None)
    if end is not None:
        end_held = sa.or_(end_held, landed_inputs.c.window_end >= end)
    query = query.where(start_held, end_held).order_by(landed_inputs.c.input_id.desc()).limit(1)
    with reading(engine).connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else LandedInput(*row)


def remember_landed(
    engine: Engine,
    source: str,
    fingerprint: str,
    start: datetime | None,
    end: datetime | None,
    records: int,
    *,
    run_id: str | None = None,
) -> None:
    """Record that every record of the input ``fingerprint`` in ``[start, end)`` is landed:
    call only once the last chunk has committed."""
    with engine.begin() as conn:
        conn.execute(
            landed_inputs.insert().values(
                source=source,
                fingerprint=fingerprint,
                window_start=start,
                window_end=end,
                records=records,
                landed_at=datetime.now(UTC),
                run_id=run_id,
            )
        )


def _in_window(
    query: sa.Select[Any], start: datetime | None, end: datetime | None, updated_at: Any = None
) -> sa.Select[Any]:
    updated_at = raw_orders.c.updated_at if updated_at is None else updated_at
    in_window = []
    if start is not None:
        in_window.append(updated_at >= start)
    if end is not None:
        in_window.append(updated_at < end)
    if not in_window:
        return query
    # A record without a source timestamp (e.g. an unparsable line) belongs to no day: it
    # is part of every window, so it is always rejected with its reason (rejects are keyed
    # per record, so that is idempotent).
    return query.where(sa.or_(sa.and_(*in_window), updated_at.is_(None)))


def pending_query(dialect: str, source: str, start: datetime | None, end: datetime | None) -> sa.Select[Any]:
    """The queued versions of ``source`` in the window: the queue read in raw_id order, each
    version one probe of raw_orders' key, however many versions the table holds. SQLite
    plans the join that way. PostgreSQL gets a LATERAL probe per queued id, fenced by
    OFFSET 0, so that the plan does not hang on statistics, which lag a bulk load (they
    made the name lookup scan every order)."""
    if dialect == "postgresql":
        probe = (
            sa.select(*_LANDED_COLUMNS)
            .where(raw_orders.c.raw_id == raw_orders_pending.c.raw_id)
            .offset(sa.literal_column("0"))
            .lateral("r")
        )
        query = (
            sa.select(probe.c.record_key, probe.c.updated_at, probe.c.payload, probe.c.raw_id)
            .select_from(raw_orders_pending)
            .join(probe, sa.true())
            .where(raw_orders_pending.c.source == source)
        )
        return _in_window(query, start, end, probe.c.updated_at)
    query = (
        sa.select(*_LANDED_COLUMNS)
        .select_from(raw_orders_pending.join(raw_orders, raw_orders.c.raw_id == raw_orders_pending.c.raw_id))
        .where(raw_orders_pending.c.source == source)
    )
    return _in_window(query, start, end)


_LANDED_COLUMNS = (
    raw_orders.c.record_key,
    raw_orders.c.updated_at,
    raw_orders.c.payload,
    raw_orders.c.raw_id,
)


def iter_raw(
    engine: Engine,
    source: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    pending: bool = False,
    chunk_size: int = LANDING_CHUNK_SIZE,
) -> Iterator[list[LandedRecord]]:
    """Landed records of ``source`` whose ``updated_at`` is in ``[start, end)``, in chunks;
    with ``pending``, only those queued in ``raw_orders_pending`` (not normalized yet).

    Every such version is returned, in no particular order; the upsert keeps the newest.
    Records without ``updated_at`` are part of every window.
    """
    # No ORDER BY: sorting a window of payloads costs more than the whole read, and the
    # upsert keeps the newest version whatever the order they arrive in.
    if pending:
        query = pending_query(engine.dialect.name, source, start, end)
    else:
        query = _in_window(sa.select(*_LANDED_COLUMNS).where(raw_orders.c.source == source), start, end)
    with reading(engine).connect() as conn:
        yield from _iter_driver(conn, query, chunk_size)


def _iter_driver(conn: Connection, query: sa.Select[Any], chunk_size: int) -> Iterator[list[LandedRecord]]:
    """The rows straight from the driver, a chunk per fetch (PostgreSQL: from a server-side
    cursor). Through SQLAlchemy's result rows and type processing, reading 965,000 queued
    versions back took 6.3 s on SQLite, this way 4.6 s; 300,000 on PostgreSQL 1.9 s of CPU,
    this way 1.3 s. Times are bound and read as the column does (UtcDateTime: a naive time
    is refused, what comes back is UTC)."""
    dialect = conn.dialect
    compiled = query.compile(dialect=dialect)
    times = UtcDateTime()
    params = {
        name: times.process_bind_param(value, dialect) if isinstance(value, datetime) else value
        for name, value in compiled.construct_params().items()
    }
    sqlite = dialect.name == "sqlite"
    bound = [params[name] for name in compiled.positiontup or ()] if sqlite else params
    driver = conn.connection.driver_connection
    with conn.begin():  # (SQLite: the engine's begin hook: the read cache size, a deferred BEGIN)
        cursor = driver.cursor() if sqlite else driver.cursor(name="orders_etl_landed")  # type: ignore[union-attr]
        with closing(cursor):
            cursor.execute(compiled.string, bound)
            while rows := cursor.fetchmany(chunk_size):
                if sqlite:  # the time kept as text until asked for (LandedRecord)
                    yield [
                        LandedRecord(key, None, raw_id=raw_id, text=payload, updated_text=updated)
                        for key, updated, payload, raw_id in rows
                    ]
                else:
                    yield [
                        LandedRecord(
                            key, times.process_result_value(updated, dialect), raw_id=raw_id, text=payload
                        )
                        for key, updated, payload, raw_id in rows
                    ]


def queue_again(
    engine: Engine,
    source: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    provisional_only: bool = False,
) -> int:
    """Queue the landed versions of ``source`` in the window for normalizing again; returns
    how many were not queued already.

    Everything (after an upgrade changed a mapping: re-normalized without calling the
    source), or with ``provisional_only`` the versions of orders stored under their own
    number (an ERP order whose Shopify reference could not be resolved yet, or one that
    refers to none): a Shopify order synced since may resolve them now.
    """
    # As text: SQLAlchemy reports no row count for INSERT … SELECT on psycopg.
    conditions = ["r.source = :source"]
    if provisional_only:
        # Driven from the (few) orders keyed on their number, each one probe of raw_orders'
        # key index: not a read of every landed payload.
        conditions.append(
            "r.record_key IN (SELECT so.external_id FROM source_orders AS so "
            "WHERE so.source = :source AND so.number = so.external_id)"
        )
    window, bounds = [], {}
    if start is not None:
        window.append("r.updated_at >= :start")
        bounds["start"] = start
    if end is not None:
        window.append("r.updated_at < :end")
        bounds["end"] = end
    if window:
        conditions.append(f"({' AND '.join(window)} OR r.updated_at IS NULL)")  # as _in_window
    statement = sa.text(
        "INSERT INTO raw_orders_pending (source, raw_id) SELECT r.source, r.raw_id FROM raw_orders AS r "
        f"WHERE {' AND '.join(conditions)} ON CONFLICT DO NOTHING"
    ).bindparams(*(sa.bindparam(name, type_=UtcDateTime()) for name in bounds))
    with engine.begin() as conn:
        return conn.execute(statement, {"source": source, **bounds}).rowcount


def forget_pending(engine: Engine, source: str, raw_ids: Sequence[int]) -> None:
    """Take normalized versions off the queue (once their orders are committed).

    The ids go 10,000 a transaction, as runs of consecutive ids (:func:`id_runs`), each
    run one range of the queue's key: a landing queues each chunk's ids in a run, so a
    million ids are a few hundred ranges. Taken off id by id, a million cost PostgreSQL
    1.7 s and SQLite 0.37 s; by ranges, 0.5 s and 0.2 s. A run holds only ids that were
    taken, so no version queued meanwhile goes with them.
    """
    ids = np.sort(np.asarray(raw_ids, dtype=np.int64))
    for start in range(0, len(ids), 10_000):
        query, bound = forget_pending_query(
            engine.dialect.name, source, *id_runs(ids[start : start + 10_000])
        )
        with engine.begin() as conn:
            plan_for_queue_runs(conn)
            conn.execute(query, bound)


def plan_for_queue_runs(conn: Connection) -> None:
    """PostgreSQL: a nested loop over the runs, one range of the queue's key each. (Under a
    freshly filled queue's statistics, the loop would scan the whole queue for every run.)"""
    plan_for_key_probes(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")


def id_runs(raw_ids: Sequence[int] | np.ndarray) -> tuple[list[int], list[int]]:
    """The distinct ``raw_ids`` as runs of consecutive ids: each run's first and last id."""
    ids = np.sort(np.asarray(raw_ids, dtype=np.int64))
    if not len(ids):
        return [], []
    starts = np.flatnonzero(np.diff(ids) > 1) + 1  # (an id given twice stays in its run)
    lows = ids[np.concatenate(([0], starts))]
    highs = ids[np.concatenate((starts - 1, [len(ids) - 1]))]
    return lows.tolist(), highs.tolist()


def forget_pending_query(
    dialect: str, source: str, lows: list[int], highs: list[int]
) -> tuple[sa.TextClause, Any]:
    """The queue's delete of the runs ``lows[i]..highs[i]`` of ``source`` and its parameters.

    PostgreSQL: the runs as two arrays, joined as a set under :func:`plan_for_queue_runs`
    (``raw_id = ANY(:ids)`` was planned, under a freshly filled queue's statistics, as a
    scan of the source's whole queue testing each row against every id: 54 s for 200,000).
    SQLite: a range of the table's rowid per run, executed for each.
    """
    if dialect == "postgresql":
        return sa.text(
            "DELETE FROM raw_orders_pending AS p "
            "USING unnest(CAST(:lows AS bigint[]), CAST(:highs AS bigint[])) AS r(low, high) "
            "WHERE p.source = :source AND p.raw_id BETWEEN r.low AND r.high"
        ), {"source": source, "lows": lows, "highs": highs}
    return sa.text(
        "DELETE FROM raw_orders_pending WHERE source = :source AND raw_id BETWEEN :low AND :high"
    ), [{"source": source, "low": low, "high": high} for low, high in zip(lows, highs, strict=True)]


def record_rejects(engine: Engine, rejects: Iterable[Reject], *, run_id: str | None = None) -> int:
    """Quarantine rejects: one row per (source, record_key), first/last seen kept."""
    count = 0
    now = datetime.now(UTC)
    for chunk in in_lists(rejects, LANDING_CHUNK_SIZE):
        latest = {(r.source, storable_key(r.record_key)): r for r in chunk}
        rows = [
            {
                "source": source,
                "record_key": key,
                "reason": storable_text(r.reason),
                "payload": dump_payload(r.payload) if r.payload is not None else None,
                "first_seen_at": now,
                "last_seen_at": now,
                "run_id": run_id,
            }
            for (source, key), r in latest.items()
        ]
        with engine.begin() as conn:
            statement = _insert(conn, order_rejects)
            statement = statement.on_conflict_do_update(
                index_elements=["source", "record_key"],
                set_={
                    "reason": statement.excluded.reason,
                    "payload": statement.excluded.payload,
                    "last_seen_at": statement.excluded.last_seen_at,
                    "run_id": statement.excluded.run_id,
                },
            )
            conn.execute(statement, rows)
        count += len(chunk)
    return count


def high_water_mark(engine: Engine, source: str) -> datetime | None:
    with reading(engine).connect() as conn:
        return conn.execute(
            sa.select(sync_state.c.high_water_mark).where(sync_state.c.source == source)
        ).scalar_one_or_none()


def advance_high_water_mark(
    engine: Engine, source: str, mark: datetime, *, run_id: str | None = None
) -> datetime:
    """Move the cursor forward to ``mark`` (never backwards); call only after the data committed."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        current = conn.execute(
            sa.select(sync_state.c.high_water_mark).where(sync_state.c.source == source)
        ).scalar_one_or_none()
        if current is not None and current >= mark:
            return current
        statement = _insert(conn, sync_state).values(
            source=source, high_water_mark=mark, updated_at=now, run_id=run_id
        )
        statement = statement.on_conflict_do_update(
            index_elements=["source"],
            set_={"high_water_mark": mark, "updated_at": now, "run_id": run_id},
            # On PostgreSQL the read above does not wait for a concurrent sync's uncommitted
            # advance: re-check against the row as committed, so a later mark is never undone.
            where=sync_state.c.high_water_mark < mark,
        )
        conn.execute(statement)
        return conn.execute(
            sa.select(sync_state.c.high_water_mark).where(sync_state.c.source == source)
        ).scalar_one()
