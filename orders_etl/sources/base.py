"""What every source provides: raw records out of the source, then normalized Orders.

A source module offers two plain-Python parts that the Dagster assets (and tests) call:

* a **reader** with ``fetch(start, end, log)`` yielding :class:`~orders_etl.store.RawRecord`
  for orders updated in the half-open window ``[start, end)`` (``None`` = unbounded). The
  real reader calls the API; the file-backed one reads an export. A reader raises
  :class:`SourceError` (naming the source and the cause, never a secret) when it cannot
  deliver the whole window: a partial window is never reported as complete.
* a **normalizer** turning landed payloads into :data:`Normalized` items: an
  ``OrderRecord`` or, from a fast mapping, an ``OrderRow`` (``orders_etl.canonical``: the
  same order as canonical text), a :class:`~orders_etl.model.Reject` (kept in ``order_rejects`` with its
  reason) or a :class:`Skipped` (deliberately not stored, e.g. Shopify test orders; counted).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from orders_etl.canonical import OrderRow
from orders_etl.model import OrderRecord, Reject

T = TypeVar("T")
# A progress callback: one human-readable line per page or chunk, with counts.
Log = Callable[[str], None]
# Resolves Shopify order names (e.g. "#1001") to Shopify external ids; unknown names are absent.
NameResolver = Callable[[Iterable[str]], dict[str, str]]


def no_log(_message: str) -> None:
    return None


class SourceError(RuntimeError):
    """A source could not deliver: the message names the source and an actionable cause."""

    def __init__(self, source: str, cause: str) -> None:
        self.source = source
        self.cause = cause
        super().__init__(f"{source}: {cause}")


class CredentialRejected(SourceError):
    """HTTP 401/403: says which credential was refused and how to fix it (never its value)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    record_key: str
    reason: str


Normalized = OrderRow | OrderRecord | Reject | Skipped


@dataclass
class NormalizedBatch:
    rows: list[OrderRow] = field(default_factory=list)
    orders: list[OrderRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.rows) + len(self.orders) + len(self.rejects) + self.skipped


def batches(items: Iterable[Normalized], size: int = 50_000) -> Iterator[NormalizedBatch]:
    """Group a normalizer's output into batches of about ``size`` items (bounded memory)."""
    batch = NormalizedBatch()
    full: list[NormalizedBatch] = []
    for item in items:
        if type(item) is tuple:  # an OrderRow, the usual case: fast mappings yield rows
            batch.rows.append(item)
        elif isinstance(item, OrderRecord):
            batch.orders.append(item)
        elif isinstance(item, Reject):
            batch.rejects.append(item)
        else:
            batch.skipped += 1
        if len(batch) >= size:
            full.append(batch)
            batch = NormalizedBatch()
            # Popped as it is handed out: while suspended here this generator holds no
            # reference to it, so the batch is freed as soon as its consumer is done with it.
            yield full.pop()
    if len(batch):
        yield batch


_DONE = object()


def read_ahead(items: Iterable[T], size: int, depth: int = 2) -> Iterator[list[T]]:
    """``items`` in lists of ``size``, produced by a thread of their own up to ``depth`` lists ahead.

    Reading and decoding a source is Python work; writing to the store is mostly database
    work that releases the GIL. Running the two in different threads keeps both cores busy.
    Order is kept; an error of ``items`` is raised here, after the lists before it. When the
    consumer stops early (an error, a closed generator), the thread stops at its next list.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            chunk: list[T] = []
            for item in items:
                chunk.append(item)
                if len(chunk) >= size:
                    if not put(chunk):
                        return
                    chunk = []
            if chunk and not put(chunk):
                return
            put(_DONE)
        except BaseException as exc:  # handed over to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=produce, name="orders-etl-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
