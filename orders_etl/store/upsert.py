"""Guarded bulk upsert of normalized orders into ``source_orders`` and the golden ``orders``.

Each chunk is one transaction, so an order is either fully written (its source row and its
golden row) or not at all, and a failed batch can simply be re-run. Within a chunk:

1. **Dedupe in Python**: one version per ``external_id``, the newest ``updated_at``; a tie
   goes to the larger ``content_hash`` (a hash of the normalized fields), so the winner
   does not depend on arrival order, batching or which writer came first.
2. **Stage**: the chunk goes into a temporary table in one bulk write (SQLite: one
   ``executemany``; PostgreSQL: ``COPY``), sorted by key.
3. **Classify** each staged row against the stored version (insert / update / unchanged /
   stale) with one set-based UPDATE, and count.
4. **Write** only inserts and updates with one ``INSERT … SELECT … ON CONFLICT DO UPDATE``
   whose ``WHERE`` repeats the newest-wins guard, so an older version can never overwrite a
   newer one, whoever runs concurrently. Unchanged orders are not rewritten.
5. **Merge the golden record** for the changed keys in one grouped ``INSERT … SELECT``:
   the origin source (first in :class:`~orders_etl.model.Source` order that holds the
   order) wins every field, later sources only fill its nulls, and the origin system's own
   identifiers (``number``, ``customer_id``) are never taken from another source. ``id`` is
   minted on first insert only (``ON CONFLICT`` never touches it), so it is stable across
   re-runs and concurrent writers; a golden row is rewritten only when a value changed.

Concurrency: SQLite transactions start with ``BEGIN IMMEDIATE`` (see ``engine.py``), and on
PostgreSQL each chunk takes a transaction-scoped advisory lock before classifying, so
writers are serialized per chunk: no lost update, and no deadlock between overlapping
batches. Staging (the expensive COPY) happens before the lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from ulid_transform import ulid_now

from orders_etl.model import ERP_SOURCES, ORDER_ID_PREFIX, OrderRecord, Source
from orders_etl.store.schema import DATETIME_FIELDS, MONEY_FIELDS, ORDER_FIELDS
from orders_etl.store.types import UtcDateTime

DEFAULT_CHUNK_SIZE = 50_000
_PG_WRITE_LOCK = 7_310_452_002
# Fields only the origin system may fill: another system's number is not this order's number.
ORIGIN_ONLY_FIELDS = frozenset({"number", "customer_id"})
_STAGED = ("external_id", *ORDER_FIELDS, "content_hash", "candidate_id")


@dataclass
class UpsertCounts:
    """What one upsert did to ``source_orders`` (stale: older than a version already seen)."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged + self.stale

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def mint_order_ids(count: int) -> list[str]:
    """``count`` fresh order ids: ``ord_`` + ULID (ulid-transform: C, ~0.1 µs per id)."""
    return [ORDER_ID_PREFIX + ulid_now() for _ in range(count)]


# ---------------------------------------------------------------------------------------
# Python side: canonical text, hash, dedupe

_UPDATED_AT = 1 + ORDER_FIELDS.index("updated_at")
# Positions of datetime fields in a staged row (external_id first).
_DATETIME_POSITIONS = tuple(i + 1 for i, name in enumerate(ORDER_FIELDS) if name in DATETIME_FIELDS)


def _canonical_text(record: OrderRecord) -> tuple[str | None, ...]:
    """``external_id`` and the fields (``ORDER_FIELDS`` order) as the text SQLite stores.

    Times are validated UTC, so dropping the ``+00:00`` of the ISO text gives SQLite's
    fixed-width form. The same text feeds the content hash, so a hash means the same thing
    on both stores. Spelled out field by field because it runs once per order on the hot
    path (a loop with per-field helpers costs twice as much).
    """
    d = record.__dict__
    created_at, updated_at, deleted_at = d["created_at"], d["updated_at"], d["deleted_at"]
    tax, refunded, payment = d["tax_amount"], d["refunded_amount"], d["payment_status"]
    return (
        d["external_id"],
        d["number"],
        None if created_at is None else created_at.isoformat(" ", "microseconds")[:-6],
        d["currency"],
        str(d["total_amount"]),
        None if tax is None else str(tax),
        None if payment is None else str(payment),
        str(d["status"]),
        d["shipping_method"],
        d["tracking_number"],
        d["customer_id"],
        None if refunded is None else str(refunded),
        d["payment_status_detail"],
        updated_at.isoformat(" ", "microseconds")[:-6],
        None if deleted_at is None else deleted_at.isoformat(" ", "microseconds")[:-6],
    )


def content_hash(text_values: tuple[str | None, ...]) -> str:
    return hashlib.blake2b(repr(text_values).encode(), digest_size=16).hexdigest()


def dedupe(records: Iterable[OrderRecord]) -> tuple[list[tuple[str | None, ...]], int]:
    """Newest version per key (ties: larger content hash), sorted by key; and how many lost.

    Returns staged rows: the canonical text values followed by the content hash.
    """
    best: dict[str, tuple[str | None, ...]] = {}
    seen = 0
    for record in records:
        seen += 1
        texts = _canonical_text(record)
        row = (*texts, content_hash(texts))
        key = texts[0]
        current = best.get(key)  # type: ignore[arg-type]
        if current is None or (row[_UPDATED_AT], row[-1]) > (current[_UPDATED_AT], current[-1]):
            best[key] = row  # type: ignore[index]
    winners = [best[key] for key in sorted(best)]
    return winners, seen - len(winners)


# ---------------------------------------------------------------------------------------
# SQL side


def _pg_row(row: tuple[str | None, ...]) -> tuple[str | None, ...]:
    values = list(row)
    for position in _DATETIME_POSITIONS:
        if values[position] is not None:
            values[position] += "+00"  # type: ignore[operator]
    return tuple(values)


def _column_type(name: str, dialect: str) -> str:
    if name in MONEY_FIELDS:
        return "TEXT" if dialect == "sqlite" else "NUMERIC"
    if name in DATETIME_FIELDS:
        return "TEXT" if dialect == "sqlite" else "TIMESTAMPTZ"
    return "TEXT"


def _create_staging(conn: Connection) -> None:
    dialect = conn.dialect.name
    columns = ", ".join(
        f"{name} {_column_type(name, dialect)}" + (" PRIMARY KEY" if name == "external_id" else "")
        for name in _STAGED
    )
    columns += ", action TEXT NOT NULL DEFAULT 'insert'"
    if dialect == "sqlite":
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS staging_orders ({columns})")
        conn.exec_driver_sql("DELETE FROM staging_orders")
    else:
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS staging_orders ({columns}) ON COMMIT DELETE ROWS"
        )


def _fill_staging(conn: Connection, rows: list[tuple[str | None, ...]]) -> None:
    names = ", ".join(_STAGED)
    ids = mint_order_ids(len(rows))
    driver = conn.connection.driver_connection
    if conn.dialect.name == "sqlite":
        placeholders = ", ".join("?" for _ in _STAGED)
        driver.executemany(  # type: ignore[union-attr]
            f"INSERT INTO staging_orders ({names}) VALUES ({placeholders})",
            [(*row, candidate) for row, candidate in zip(rows, ids, strict=True)],
        )
    else:
        with (
            driver.cursor() as cursor,
            cursor.copy(  # type: ignore[union-attr]
                f"COPY staging_orders ({names}) FROM STDIN"
            ) as copy,
        ):
            for row, candidate in zip(rows, ids, strict=True):
                copy.write_row((*_pg_row(row), candidate))


def _newer(new: str, old: str) -> str:
    """SQL: row ``new`` beats stored row ``old`` (newest updated_at, then larger hash)."""
    return (
        f"({new}.updated_at > {old}.updated_at OR "
        f"({new}.updated_at = {old}.updated_at AND {new}.content_hash > {old}.content_hash))"
    )


def _classify(conn: Connection, source: str) -> dict[str, int]:
    conn.execute(
        sa.text(
            "UPDATE staging_orders SET action = CASE "
            "WHEN so.content_hash = staging_orders.content_hash THEN 'unchanged' "
            f"WHEN {_newer('staging_orders', 'so')} THEN 'update' "
            "ELSE 'stale' END "
            "FROM source_orders AS so "
            "WHERE so.source = :source AND so.external_id = staging_orders.external_id"
        ),
        {"source": source},
    )
    result = conn.execute(sa.text("SELECT action, COUNT(*) FROM staging_orders GROUP BY action"))
    return {action: count for action, count in result}


def _write_source_rows(conn: Connection, source: str, synced_at: datetime) -> None:
    columns = ("external_id", *ORDER_FIELDS, "content_hash")
    assignments = ", ".join(f"{c} = excluded.{c}" for c in (*ORDER_FIELDS, "content_hash", "synced_at"))
    conn.execute(
        sa.text(
            f"INSERT INTO source_orders (source, {', '.join(columns)}, synced_at) "
            f"SELECT :source, {', '.join(columns)}, :synced_at FROM staging_orders "
            "WHERE action IN ('insert', 'update') ORDER BY external_id "
            f"ON CONFLICT (source, external_id) DO UPDATE SET {assignments} "
            f"WHERE {_newer('excluded', 'source_orders')}"
        ).bindparams(sa.bindparam("synced_at", type_=UtcDateTime())),
        {"source": source, "synced_at": synced_at},
    )


def _sources_present(conn: Connection) -> list[str]:
    """Sources holding any order, in precedence order (one index probe each)."""
    return [
        source.value
        for source in Source
        if conn.execute(
            sa.text("SELECT 1 FROM source_orders WHERE source = :s LIMIT 1"), {"s": source.value}
        ).first()
    ]


def _golden_select(sources: list[str]) -> str:
    """SELECT of the merged golden row for every key staged as insert or update.

    One primary-key lookup per present source and key (no grouping); the origin is the
    first source, in precedence order, that holds the key.
    """
    aliases = {source: f"s{rank}" for rank, source in enumerate(sources)}
    origin = " ".join(f"WHEN {a}.external_id IS NOT NULL THEN '{s}'" for s, a in aliases.items())
    expressions = []
    for field in ORDER_FIELDS:
        if field in ORIGIN_ONLY_FIELDS:
            branches = " ".join(
                f"WHEN {a}.external_id IS NOT NULL THEN {a}.{field}" for a in aliases.values()
            )
            expressions.append(f"CASE {branches} END AS {field}")
        else:
            expressions.append(f"COALESCE({', '.join(f'{a}.{field}' for a in aliases.values())}) AS {field}")
    joins = " ".join(
        f"LEFT JOIN source_orders AS {a} ON {a}.source = '{s}' AND {a}.external_id = st.external_id"
        for s, a in aliases.items()
    )
    return (
        f"SELECT st.candidate_id AS candidate_id, st.external_id AS external_id, {', '.join(expressions)}, "
        f"CASE {origin} END AS origin FROM staging_orders AS st {joins} "
        "WHERE st.action IN ('insert', 'update')"
    )


def _single_source_select(source: str) -> str:
    """The golden rows when ``source`` is the only source holding orders: its staged rows."""
    return (
        f"SELECT candidate_id, external_id, {', '.join(ORDER_FIELDS)}, '{source}' AS origin "
        "FROM staging_orders WHERE action IN ('insert', 'update')"
    )


def _merge_golden(conn: Connection, source: str, synced_at: datetime) -> int:
    present = _sources_present(conn)
    select = _single_source_select(source) if present == [source] else _golden_select(present)
    distinct = "IS NOT" if conn.dialect.name == "sqlite" else "IS DISTINCT FROM"
    compared = (*ORDER_FIELDS, "origin")
    changed = " OR ".join(f"orders.{c} {distinct} excluded.{c}" for c in compared)
    assignments = ", ".join(f"{c} = excluded.{c}" for c in (*compared, "synced_at"))
    names = ", ".join(compared)
    result = conn.execute(
        sa.text(
            f"INSERT INTO orders (id, external_id, {names}, synced_at) "
            f"SELECT g.candidate_id, g.external_id, {', '.join('g.' + c for c in compared)}, :synced_at "
            f"FROM ({select}) AS g ORDER BY g.external_id "
            f"ON CONFLICT (external_id) DO UPDATE SET {assignments} WHERE {changed}"
        ).bindparams(sa.bindparam("synced_at", type_=UtcDateTime())),
        {"synced_at": synced_at},
    )
    return result.rowcount


def _lock_writers(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WRITE_LOCK})


def upsert_chunk(conn: Connection, source: str, records: Iterable[OrderRecord]) -> UpsertCounts:
    """Upsert one chunk inside the caller's transaction (see the module docstring)."""
    rows, duplicates = dedupe(records)
    counts = UpsertCounts(stale=duplicates)
    if not rows:
        return counts
    synced_at = datetime.now(UTC)
    _create_staging(conn)
    _fill_staging(conn, rows)
    _lock_writers(conn)
    actions = _classify(conn, source)
    counts += UpsertCounts(
        inserted=actions.get("insert", 0),
        updated=actions.get("update", 0),
        unchanged=actions.get("unchanged", 0),
        stale=actions.get("stale", 0),
    )
    if counts.inserted or counts.updated:
        _write_source_rows(conn, source, synced_at)
        _merge_golden(conn, source, synced_at)
        if source in ERP_SOURCES:
            _drop_superseded_erp_keys(conn, source)
    return counts


def _drop_superseded_erp_keys(conn: Connection, source: str) -> None:
    """Forget the ERP-number key of ERP orders that now resolve to their Shopify order.

    An ERP order whose Shopify reference could not be resolved yet is keyed on its ERP
    number (DESIGN.md §4). Once the Shopify order is known, the same ERP document maps to
    the Shopify ``external_id``; its old row would otherwise live on as a phantom
    ERP-only order reported ``missing_in_shopify``. Its golden row goes too, unless
    another source still holds that key.
    """
    superseded = (
        "SELECT number FROM staging_orders WHERE action IN ('insert', 'update') AND number <> external_id"
    )
    # Only a provisional row that is not newer than the version resolving it: a later version
    # keyed on the ERP number (its reference removed) must not lose to an older one. (One
    # primary-key probe per staged row, as before.)
    not_newer = (
        f"{superseded} AND updated_at >= (SELECT so.updated_at FROM source_orders AS so "
        "WHERE so.source = :source AND so.external_id = staging_orders.number)"
    )
    # A provisional row is keyed on its own number; a row keyed on a Shopify id that happens to
    # equal another document's ERP number is a different order and stays.
    conn.execute(
        sa.text(
            "DELETE FROM source_orders WHERE source = :source AND number = external_id "
            f"AND external_id IN ({not_newer})"
        ),
        {"source": source},
    )
    conn.execute(
        sa.text(
            f"DELETE FROM orders WHERE external_id IN ({superseded}) AND NOT EXISTS "
            "(SELECT 1 FROM source_orders AS so WHERE so.external_id = orders.external_id)"
        )
    )


def chunked(records: Iterable[OrderRecord], size: int = DEFAULT_CHUNK_SIZE) -> Iterator[list[OrderRecord]]:
    chunk: list[OrderRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def upsert_orders(
    engine: Engine,
    source: str | Source,
    chunks: Iterable[Sequence[OrderRecord]],
    *,
    on_chunk: Callable[[int, UpsertCounts], None] | None = None,
) -> UpsertCounts:
    """Upsert a stream of chunks, one transaction per chunk; returns the summed counts.

    ``on_chunk(index, counts)`` is called after each committed chunk (progress logging).
    Memory is bounded by the chunk size, whatever the length of the stream.
    """
    source = Source(source).value
    total = UpsertCounts()
    for index, chunk in enumerate(chunks):
        with engine.begin() as conn:
            counts = upsert_chunk(conn, source, chunk)
        total += counts
        if on_chunk is not None:
            on_chunk(index, counts)
    return total
