"""The steps every source's assets share: land a window, normalize it, move the cursor.

Assets are thin: they pick the source and the resources, then call these. Everything here
is range-aware (a run may cover one day or a whole backfill range) and idempotent (a window
can be synced again at any time: raw payloads land once, the upsert keeps the newest).
"""

from __future__ import annotations

import gc
import os
import queue
import time
from array import array
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, Protocol, TypeVar, runtime_checkable

import dagster as dg
import pyarrow as pa
import sqlalchemy as sa
from pydantic import Field

from orders_etl.allocator import release_free_memory
from orders_etl.model import InvalidOrder, Reject, Source
from orders_etl.sources.base import Log, Normalized, SourceError, batches, read_ahead, read_ahead_in_child
from orders_etl.store import LandedInput, LandedRecord, OrderStore, RawRecord, UpsertCounts
from orders_etl.store.engine import own_connections_after_fork, reading
from orders_etl.store.frames import FRAME_COLUMNS, NO_KEY, canonical_text, rows_to_table
from orders_etl.store.landing import LANDING_CHUNK_SIZE, LandingRow, landing_row
from orders_etl.store.schema import order_rejects, source_orders
from orders_etl.store.types import parse_sqlite_datetime

OWNERS = ["team:data-engineering"]
# Transient faults (a dropped database connection, a lock timeout, a worker lost) are worth
# another try after a pause. A SourceError is not retried here: the reader has already
# retried with backoff and honoured the source's rate limits, so the step fails at once
# and the next scheduled sync starts again from the unchanged cursor.
TRANSIENT_RETRY = dg.RetryPolicy(
    max_retries=3, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
# Orders per normalize/upsert batch: one transaction each. A few batches are in flight at
# once (one being mapped, one queued, one prepared, one written), so the batch sets the
# step's memory: at 20,000 a normalize of many batches peaked about 150 MB above its start,
# at 10,000 about 80 MB, no slower (1M orders, SQLite).
NORMALIZE_BATCH = 10_000
PREVIEW_ROWS = 10
# Progress is logged per chunk, but at most once in this many seconds: every Dagster log
# line is an event stored in the run's event log (about 3 ms each in a 1M-order run, on the
# writing thread), and a line per 5,000-payload chunk cost a 1M landing about 0.6 s.
PROGRESS_INTERVAL_S = 2.0


class ProgressLog:
    """Per-chunk progress lines through ``log``, at most one every ``interval`` seconds; the
    last line held back is logged by :meth:`flush`."""

    def __init__(self, log: Callable[[str], None], interval: float = PROGRESS_INTERVAL_S) -> None:
        self._log = log
        self._interval = interval
        self._due = 0.0
        self._held: str | None = None

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now < self._due:
            self._held = message
            return
        self._log(message)
        self._due = now + self._interval
        self._held = None

    def flush(self) -> None:
        if self._held is not None:
            self._log(self._held)
            self._held = None


@contextmanager
def streaming_heap() -> Iterator[None]:
    """The heap while streaming millions of records, and after.

    While: the objects that were there before are skipped in every garbage collection: the
    process holds Dagster's and the libraries' objects, hundreds of thousands, and each
    full collection (a few dozen per million records) walked them all: re-landing a million
    unchanged ERP rows took 21.2 s, frozen 17.9 s. After: collected as usual, and what the
    stream freed is handed back to the system, so the next stage's peak does not build on it
    (``orders_etl.allocator.release_free_memory``).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        release_free_memory()


class Reader(Protocol):
    def fetch(self, start: datetime | None, end: datetime | None, log: Log) -> Iterator[RawRecord]: ...


R = TypeVar("R", bound=Reader)
T = TypeVar("T")


@runtime_checkable
class FileReader(Reader, Protocol):
    """A reader of files (``orders_etl.sources.fingerprint``): ``fingerprint()`` hashes what
    a fetch would read; ``read_fingerprint`` is that of what the last fetch read, once it
    read it all (None before)."""

    read_fingerprint: str | None

    def fingerprint(self) -> str: ...


class ShopifyReader(Reader, Protocol):
    def deleted(
        self, start: datetime | None, end: datetime | None, log: Log
    ) -> Iterator[tuple[str, datetime]]: ...


@contextmanager
def opened(source: Source, make_reader: Callable[[], R]) -> Iterator[R]:
    """A reader made and used inside one guard: a source that cannot be set up or cannot
    deliver fails the step with ``<source>: <cause>`` (no retry); its connections are closed.
    """
    try:
        reader = make_reader()
    except SourceError as exc:
        raise source_failure(exc) from exc
    except ValueError as exc:  # configuration the reader refuses (URL, credentials, dialect)
        raise source_failure(SourceError(source.value, str(exc))) from exc
    try:
        yield reader
    except SourceError as exc:
        raise source_failure(exc) from exc
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()


def source_failure(exc: SourceError) -> dg.Failure:
    """A source that cannot deliver fails the step with ``<source>: <cause>``, not retried."""
    return dg.Failure(
        description=str(exc),
        metadata={"source": exc.source, "cause": exc.cause},
        allow_retries=False,
    )


# ---------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class SyncWindow:
    """The partitions a run covers, widened by the overlap on both sides.

    A window that begins at the first partition has no lower bound: the first partition
    also covers every order updated before it, so a first sync never silently skips the
    orders older than ``ORDERS_ETL_START_DATE``.
    """

    partitions_start: datetime
    partitions_end: datetime
    overlap: timedelta
    from_beginning: bool = False

    @property
    def start(self) -> datetime | None:
        return None if self.from_beginning else self.partitions_start - self.overlap

    @property
    def end(self) -> datetime:
        return self.partitions_end + self.overlap

    def describe(self) -> str:
        start = "the beginning" if self.start is None else self.start.isoformat()
        return f"{start} .. {self.end.isoformat()}"


def sync_window(context: dg.AssetExecutionContext, overlap_minutes: int) -> SyncWindow:
    window = context.partition_time_window
    first_partition = context.assets_def.partitions_def.start  # type: ignore[union-attr]
    return SyncWindow(
        window.start.astimezone(UTC),
        window.end.astimezone(UTC),
        timedelta(minutes=overlap_minutes),
        from_beginning=window.start <= first_partition,
    )


def run_created_at(context: dg.AssetExecutionContext) -> datetime:
    """When this run was created: everything updated before it was visible to our fetch."""
    record = context.instance.get_run_record_by_id(context.run.run_id)
    if record is None:  # direct invocation in a test: no run record, use now
        return datetime.now(UTC)
    created = record.create_timestamp
    return created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)


# ---------------------------------------------------------------------------------------
# Raw landing


@dataclass
class LandOutcome:
    fetched: int = 0
    landed: int = 0
    preview: list[LandingRow] = field(default_factory=list)
    # Set when the input was not read: a run landed this very input whole before.
    unchanged_since: LandedInput | None = None


def land(
    context: dg.AssetExecutionContext,
    store: OrderStore,
    source: Source,
    make_reader: Callable[[], Reader],
    window: SyncWindow,
) -> LandOutcome:
    """Fetch the window from the source and land every payload in ``raw_orders``.

    A file reader (:class:`FileReader`) whose input a run has landed whole over a window
    holding this one is not read again: each of its records is in ``raw_orders`` already.
    Once an input is landed whole, the fingerprint of the bytes read is recorded (the
    reader hashes them as it reads: a file changed meanwhile is recorded as it was read,
    which it no longer is, so it is read again next time).
    """
    outcome = LandOutcome()

    def counted(rows: Iterable[LandingRow]) -> Iterator[LandingRow]:
        for row in rows:
            outcome.fetched += 1
            if len(outcome.preview) < PREVIEW_ROWS:
                outcome.preview.append(row)
            yield row

    context.log.info(f"{source}: fetching orders updated in {window.describe()}")
    # The reader runs beside this thread, which writes; its progress lines are logged from
    # here, between chunks.
    messages: queue.SimpleQueue[str] = queue.SimpleQueue()

    def log_messages() -> None:
        while not messages.empty():
            context.log.info(messages.get())

    run_id = context.run.run_id
    with streaming_heap(), opened(source, make_reader) as reader:
        file_backed = isinstance(reader, FileReader)
        # Hashing the input is a pass over it (0.7 s a GB): only worth it when a run has
        # landed an input of this source whole over a window holding this one.
        if file_backed and store.landed_any(source, window.start, window.end):
            before = store.landed_whole(source, reader.fingerprint(), window.start, window.end)
            if before is not None:
                context.log.info(
                    f"{source}: input unchanged since run {before.run_id} landed its {before.records} "
                    f"records on {before.landed_at:%Y-%m-%d %H:%M} UTC, over a window holding this "
                    "one: nothing new to land, not read again"
                )
                outcome.unchanged_since = before
                return outcome

        def rows(log: Log) -> Generator[LandingRow, None, str | None]:
            yield from map(landing_row, reader.fetch(window.start, window.end, log))
            # The stream ended: a file reader has read every byte, and hashed them.
            return reader.read_fingerprint if isinstance(reader, FileReader) else None

        progress = ProgressLog(context.log.debug)

        def landed(new: int) -> None:
            outcome.landed += new
            log_messages()
            progress(f"{source}: {outcome.fetched} records read, {outcome.landed} landed")

        # A file is read and decoded in a process of its own (all Python work: on a thread
        # it would hold the GIL from the writer); an API reader mostly waits on the network,
        # so a thread is enough for it.
        if file_backed:
            ahead = read_ahead_in_child(rows, LANDING_CHUNK_SIZE, messages.put)
        else:
            ahead = read_ahead(rows(messages.put), LANDING_CHUNK_SIZE)
        read: list[str | None] = []  # what the stream returned, once it ended

        def chunks() -> Iterator[list[LandingRow]]:
            read.append((yield from ahead))

        try:
            # One stream, one call: the landing carries what each chunk found to the next
            # (after a wholly new chunk it does not look the next one up).
            store.land_rows(source, counted(chain.from_iterable(chunks())), run_id=run_id, on_chunk=landed)
        finally:
            log_messages()
        # Every chunk has committed: the input read, exactly as its fingerprint says, is landed.
        if read and read[0] is not None:
            store.remember_landed(source, read[0], window.start, window.end, outcome.fetched, run_id=run_id)
    context.log.info(f"{source}: fetched {outcome.fetched} records, {outcome.landed} new payloads landed")
    return outcome


def raw_result(
    store: OrderStore, source: Source, window: SyncWindow, outcome: LandOutcome, label: str
) -> dg.MaterializeResult:
    rows = [
        {"record_key": key, "updated_at": parse_sqlite_datetime(updated_at).isoformat() if updated_at else ""}
        for key, updated_at, _text in outcome.preview
    ]
    metadata: dict[str, Any] = {
        "dagster/row_count": store.count_landed(source),
        "fetched": outcome.fetched,
        "landed": outcome.landed,
        "window": window.describe(),
        "source": source.value,
        "reads": label,
        "store": store.masked_url,
        "preview": dg.MetadataValue.md(markdown_table(["record_key", "updated_at"], rows)),
    }
    if outcome.unchanged_since is not None:
        metadata["unchanged_since_run"] = outcome.unchanged_since.run_id or ""
    return dg.MaterializeResult(metadata=metadata)


# ---------------------------------------------------------------------------------------
# Normalizing


@dataclass
class NormalizeOutcome:
    counts: UpsertCounts = field(default_factory=UpsertCounts)
    rejected: int = 0
    skipped: int = 0
    deleted: int = 0
    preview: list[tuple[str | None, ...]] = field(default_factory=list)  # canonical rows
    reject_preview: list[Reject] = field(default_factory=list)

    def add_rejects(self, rejects: Sequence[Reject]) -> None:
        self.rejected += len(rejects)
        room = PREVIEW_ROWS - len(self.reject_preview)
        self.reject_preview.extend(rejects[:room])


class NormalizeConfig(dg.Config):
    """Launchpad settings of a normalize step."""

    renormalize: bool = Field(
        default=False,
        description=(
            "Normalize every landed version in the window again, not only the new ones: after "
            "an upgrade changed a mapping, from raw_orders, without calling the source."
        ),
    )


def normalize_window(
    context: dg.AssetExecutionContext,
    store: OrderStore,
    source: Source,
    window: SyncWindow,
    normalize: Callable[[Iterable[LandedRecord]], Iterable[Normalized]],
    *,
    renormalize: bool = False,
) -> NormalizeOutcome:
    """Normalize the versions in the window that are queued (landed and not normalized yet,
    or queued again), streaming; upsert orders in batches (one transaction each), quarantine
    rejects with their reason, then take the versions off the queue.

    An unchanged re-sync landed nothing, so it normalizes nothing. A run stopped before the
    end leaves its versions queued, and the next run normalizes them (idempotent).

    One upsert stream over all the batches: the store prepares and writes a batch while the
    next one is being read and normalized, in a process of its own (two cores busy, not one:
    beside a thread, SQLite's writes wait for the GIL; 300,000 orders normalized in 10.5 s
    with a thread, 6.6 s with the process).

    A row of a fast mapping that the store's boundary checks still refuse would be a bug
    in that mapping; it must not cost the window: its order is quarantined with the
    store's reason and the window normalized again (idempotent) without it.
    """
    if renormalize:
        queued = store.queue_again(source, window.start, window.end)
        context.log.info(
            f"{source}: {queued} landed versions in {window.describe()} queued to normalize again"
        )
    refused: dict[str | None, str] = {}
    while True:
        try:
            with streaming_heap():
                return _normalize_pass(context, store, source, window, normalize, refused)
        except InvalidOrder as exc:
            key = None if exc.record_key == NO_KEY else exc.record_key
            if key in refused:
                raise
            context.log.warning(f"{source}: the store refused a normalized order: {exc}; normalizing again")
            refused[key] = str(exc)


@dataclass
class NormalizedFrame:
    """A batch as the normalizing process hands it to the writer: its orders as a table
    (None: only raw_ids read after the last batch), its rejects and skips, and the raw_ids
    read from the queue since the frame before."""

    table: pa.Table | None
    records: int
    rejects: list[Reject]
    skipped: int
    preview: list[tuple[str | None, ...]]
    taken: array


def _normalize_pass(
    context: dg.AssetExecutionContext,
    store: OrderStore,
    source: Source,
    window: SyncWindow,
    normalize: Callable[[Iterable[LandedRecord]], Iterable[Normalized]],
    refused: dict[str | None, str],
) -> NormalizeOutcome:
    outcome = NormalizeOutcome()
    run_id = context.run.run_id
    writer = os.getpid()

    def normalized(_log: Log) -> Iterator[NormalizedFrame]:
        """Read the queue, normalize, make tables: all Python work, in a process of its own."""
        if os.getpid() != writer:  # forked: the pooled connections are the writer's
            own_connections_after_fork(store.engine)
        taken = array("q")

        def landed() -> Iterator[LandedRecord]:
            chunks = store.iter_raw(source, window.start, window.end, pending=True)
            if store.engine.dialect.name == "postgresql":
                # Each fetch waits on the server: the next chunk is fetched on a thread
                # while this one is normalized (1M: each normalize step 2-3 s faster).
                # SQLite reads in this process, where the thread only contends for the
                # GIL (the ERP's normalize step: 21.8 and 19.2 s against 16.9 and 18.8 s).
                chunks = (chunk for [chunk] in read_ahead(chunks, 1, depth=1))
            for chunk in chunks:
                taken.extend(record.raw_id for record in chunk)
                yield from chunk

        for batch in batches(normalize(landed()), NORMALIZE_BATCH):
            rows = [*batch.rows, *map(canonical_text, batch.orders)]
            rejects = list(batch.rejects)
            if refused:
                rejects += [
                    Reject(source.value, str(r[0]), refused[r[0]], None) for r in rows if r[0] in refused
                ]
                rows = [r for r in rows if r[0] not in refused]
            frame = NormalizedFrame(
                rows_to_table(rows), len(batch), rejects, batch.skipped, rows[:PREVIEW_ROWS], taken
            )
            # Only the frame goes on: the batch's Python rows are freed now, not kept until
            # the next batch begins.
            del batch, rows, rejects
            yield frame
            taken = array("q")
        if taken:
            yield NormalizedFrame(None, 0, [], 0, [], taken)

    # Every raw_id read from the queue (8 bytes each): off the queue at the end.
    taken = array("q")
    # Per batch (records, orders, rejected, skipped): counted once its upsert committed.
    pending: list[tuple[int, int, int, int]] = []
    done = [0, 0, 0, 0]
    upserted = UpsertCounts()
    progress = ProgressLog(context.log.info)

    def frames() -> Iterator[pa.Table]:
        # The normalizing process runs ahead of the upsert (mostly database and Arrow work,
        # which releases the GIL, and Python work on its own thread: see upsert_frames).
        ahead = read_ahead_in_child(normalized, 1, context.log.info)
        for [frame] in _guarded(source, ahead):
            taken.extend(frame.taken)
            if frame.rejects:
                store.record_rejects(frame.rejects, run_id=run_id)
                outcome.add_rejects(frame.rejects)
            outcome.skipped += frame.skipped
            outcome.preview.extend(frame.preview[: PREVIEW_ROWS - len(outcome.preview)])
            if frame.table is not None:
                pending.append((frame.records, frame.table.num_rows, len(frame.rejects), frame.skipped))
                yield frame.table

    def committed(_index: int, counts: UpsertCounts) -> None:
        nonlocal upserted
        for i, count in enumerate(pending.pop(0)):
            done[i] += count
        upserted += counts
        records, orders, rejected, skipped = done
        progress(
            f"{source}: normalized {records} records: {orders} orders, {rejected} rejected, "
            f"{skipped} skipped; upserted: {_describe_counts(upserted)}"
        )

    outcome.counts = store.upsert_frames(source, frames(), on_chunk=committed)
    progress.flush()
    # Every order read is committed (or quarantined): off the queue. A version landed
    # meanwhile by another run has an id of its own and stays queued.
    store.forget_pending(source, taken)
    if not taken:
        context.log.info(f"{source}: nothing new to normalize in {window.describe()}")
    return outcome


def queue_provisional(
    context: dg.AssetExecutionContext, store: OrderStore, source: Source, window: SyncWindow
) -> int:
    """Queue again the ERP orders of the window still keyed on their own number: a Shopify
    order synced since may now resolve their reference (DESIGN.md §4)."""
    queued = store.queue_again(source, window.start, window.end, provisional_only=True)
    if queued:
        context.log.info(f"{source}: {queued} versions keyed on their ERP number queued to resolve again")
    return queued


def _guarded(source: Source, items: Iterator[T]) -> Iterator[T]:
    """``items`` with a SourceError (e.g. an unreadable ERP dialect file) failing the step."""
    try:
        yield from items
    except SourceError as exc:
        raise source_failure(exc) from exc


def mark_deleted(
    context: dg.AssetExecutionContext,
    store: OrderStore,
    source: Source,
    make_reader: Callable[[], ShopifyReader],
    window: SyncWindow,
) -> int:
    """Keep orders deleted at the source, with ``deleted_at`` set; returns versions written."""
    with opened(source, make_reader) as reader:
        deleted = dict(reader.deleted(window.start, window.end, context.log.info))
    counts = store.mark_deleted(source, deleted)
    marked = counts.inserted + counts.updated
    context.log.info(f"{source}: {len(deleted)} deletions reported, {marked} orders marked deleted")
    return marked


def advance_cursor(
    context: dg.AssetExecutionContext, store: OrderStore, source: Source, window: SyncWindow
) -> datetime | None:
    """Move ``sync_state`` to the end of what this run covered, once everything is committed.

    The mark only ever covers time synced without a gap: it moves when this window starts
    at or before the current mark (or at the first partition, on a first sync). A backfill
    of some later days leaves it where it is, so "since the last sync" never skips a day.
    The mark is capped at the run's creation (to the second below): updates after that may
    not have been visible.
    """
    current = store.high_water_mark(source)
    contiguous = window.start is None or (current is not None and window.start <= current)
    if not contiguous:
        context.log.info(
            f"{source}: high-water mark stays at {current or 'unset'}: this window starts later "
            "(sync the gap to move it)"
        )
        return current
    # Whole seconds: sources stamp updates to the second (Shopify's updatedAt), so an order
    # edited later in the second the run was created carries a time before a sub-second mark.
    mark = min(window.end, run_created_at(context).replace(microsecond=0))
    new = store.advance_high_water_mark(source, mark, run_id=context.run.run_id)
    context.log.info(f"{source}: high-water mark {current or 'unset'} -> {new}")
    return new


def normalized_result(
    store: OrderStore, source: Source, window: SyncWindow, outcome: NormalizeOutcome, mark: datetime | None
) -> dg.MaterializeResult:
    column = {name: index for index, name in enumerate(FRAME_COLUMNS)}
    orders_preview = [
        {
            "external_id": row[column["external_id"]],
            "number": row[column["number"]],
            "status": row[column["status"]],
            "payment_status": row[column["payment_status"]] or "",
            "total": f"{row[column['total_amount']]} {row[column['currency']]}",
            "updated_at": row[column["updated_at"]],
        }
        for row in outcome.preview
    ]
    rejects_preview = [{"record_key": r.record_key, "reason": r.reason} for r in outcome.reject_preview]
    preview = markdown_table(list(orders_preview[0]) if orders_preview else ["external_id"], orders_preview)
    if rejects_preview:
        preview += "\n\n**Rejected**\n\n" + markdown_table(["record_key", "reason"], rejects_preview)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count_rows(store, source_orders, source_orders.c.source == source.value),
            **outcome.counts.as_dict(),
            "rejected": outcome.rejected,
            "skipped": outcome.skipped,
            "deleted": outcome.deleted,
            "rejects_total": count_rows(store, order_rejects, order_rejects.c.source == source.value),
            "high_water_mark": mark.isoformat() if mark else "unset",
            "source": source.value,
            "window": window.describe(),
            "store": store.masked_url,
            "preview": dg.MetadataValue.md(preview),
        }
    )


# ---------------------------------------------------------------------------------------
# Small helpers


def count_rows(store: OrderStore, table: sa.Table, where: sa.ColumnElement[bool] | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    if where is not None:
        query = query.where(where)
    with reading(store.engine).connect() as conn:
        return conn.execute(query).scalar_one()


def _describe_counts(counts: UpsertCounts) -> str:
    return ", ".join(f"{name} {value}" for name, value in counts.as_dict().items())


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A small GitHub-flavoured markdown table (the UI renders it in the metadata panel)."""
    if not rows:
        return "_no rows_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
