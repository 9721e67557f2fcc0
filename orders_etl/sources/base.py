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

import multiprocessing
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from orders_etl.canonical import OrderRow
from orders_etl.lists import in_lists
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

    def __reduce__(self) -> tuple[type[SourceError], tuple[str, str]]:
        # Rebuilt from its parts: the default would call __init__ with the message alone
        # (an error raised in a reading process comes to the step this way).
        return type(self), (self.source, self.cause)


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


@dataclass
class _Returned:
    value: Any = None


def _keeping_return(items: Iterable[T], returned: _Returned) -> Iterator[T]:
    returned.value = yield from items


def read_ahead(items: Iterable[T], size: int, depth: int = 2) -> Generator[list[T], None, Any]:
    """``items`` in lists of ``size``, produced by a thread of their own up to ``depth`` lists ahead.

    Reading and decoding a source is Python work; writing to the store is mostly database
    work that releases the GIL. Running the two in different threads keeps both cores busy.
    Order is kept; an error of ``items`` is raised here, after the lists before it. When the
    consumer stops early (an error, a closed generator), the thread stops at its next list.
    What a generator ``items`` returns, this one returns.
    """
    returned = _Returned()
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
            for chunk in in_lists(_keeping_return(items, returned), size):
                if not put(chunk):
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
                return returned.value
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def read_ahead_in_child(
    produce: Callable[[Log], Iterable[T]], size: int, log: Log
) -> Generator[list[T], None, Any]:
    """``produce(log)``'s items in lists of ``size``, produced by a child process, forked.

    Why a process where :func:`read_ahead` has a thread: reading and decoding a file is
    Python work that holds the GIL all the time, and SQLite's ``executemany`` lets go of it
    for every row it writes, then waits to take it back from the busy reader: writing 100,000
    payloads took 0.8 s alone and, beside a thread busy in Python, minutes. Landing 300,000
    orders beside the reader thread took 8.2 s, one after the other 6.6 s. A process has a
    GIL of its own.

    ``produce`` runs in the child (forked: it and what it holds need not be picklable) and
    calls ``log`` there; each line comes back here and is passed to ``log`` in order with
    the items. An error of ``produce`` is raised here, after the lists before it. When the
    consumer stops early, the child is stopped. What a generator ``produce(log)`` returns
    (picklable), this one returns. Off Linux, this is :func:`read_ahead`.
    """
    if not _FORK_SAFE:
        return (yield from read_ahead(produce(log), size))
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_produce_in_child, args=(produce, size, sender), name="orders-etl-reader", daemon=True
    )
    child.start()
    sender.close()  # the child's end: once the child is gone, recv() sees the end of the pipe
    try:
        while True:
            try:
                kind, value = receiver.recv()
            except EOFError:
                child.join()
                raise RuntimeError(
                    f"the reading process ended before its input did (exit code {child.exitcode})"
                ) from None
            if kind == _ITEMS:
                yield value
            elif kind == _LOG:
                log(value)
            elif kind == _ERROR:
                raise value
            else:
                return value
    finally:
        receiver.close()
        if child.is_alive():
            child.terminate()
        child.join()


_ITEMS, _LOG, _ERROR, _END = "items", "log", "error", "end"
# Linux only: macOS can fork, but a forked child of a process that used its system
# frameworks may crash (why Python spawns there by default); Windows cannot fork.
_FORK_SAFE = sys.platform == "linux"


def _produce_in_child(produce: Callable[[Log], Iterable[T]], size: int, sender: Connection) -> None:
    # The parent's handlers are inherited: Dagster's map SIGTERM to its interrupt handler,
    # which may only note the signal, and the consumer stops the child with SIGTERM. An
    # interrupt (Ctrl-C reaches the whole process group) is the parent's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def log(message: str) -> None:
        sender.send((_LOG, message))

    returned = _Returned()
    try:
        for chunk in in_lists(_keeping_return(produce(log), returned), size):
            sender.send((_ITEMS, chunk))
        sender.send((_END, returned.value))
    except BaseException as exc:  # handed over to the consumer, raised there
        sender.send((_ERROR, _picklable(exc)))


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives the trip through the pipe, else its type and message as text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
