"""Batching a normalizer's output (``batches``) and reading ahead in a child process."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
import time
import weakref
from collections.abc import Generator, Iterator

import pytest

from orders_etl.model import InvalidOrder
from orders_etl.sources import base
from orders_etl.sources.base import (
    CredentialRejected,
    Log,
    Skipped,
    SourceError,
    batches,
    no_log,
    read_ahead_in_child,
)


def test_a_batch_handed_out_is_not_kept_alive_by_the_batching() -> None:
    # A normalize keeps a few batches in flight; the generator must not pin one more
    # while it waits to be asked for the next.
    stream = batches((Skipped(str(n), "test order") for n in range(10)), size=2)
    batch = next(stream)
    assert len(batch) == 2
    handed_out = weakref.ref(batch)
    del batch
    gc.collect()
    assert handed_out() is None
    assert sum(len(b) for b in stream) == 8  # and the rest still comes


# ---------------------------------------------------------------------------------------
# read_ahead_in_child: a file is read in a process of its own

# The process is forked on Linux only; elsewhere the same items come from a thread (tested below).
forks = pytest.mark.skipif(not base._FORK_SAFE, reason="read_ahead_in_child forks on Linux only")


def _numbers(log: Log) -> Iterator[tuple[int, int]]:
    """(pid, n) for n in 0..4, with a progress line after each even one."""
    for n in range(5):
        yield os.getpid(), n
        if n % 2 == 0:
            log(f"read {n + 1}")


@forks
def test_items_come_in_order_from_another_process_with_their_log_lines() -> None:
    seen: list[object] = []
    for chunk in read_ahead_in_child(_numbers, 2, seen.append):
        seen.append([n for _pid, n in chunk])
        pids = {pid for pid, _n in chunk}
        assert pids and os.getpid() not in pids
    # Each line comes before the chunk that follows it was handed out.
    assert seen == ["read 1", [0, 1], "read 3", [2, 3], "read 5", [4]]


def test_off_linux_the_items_come_from_a_thread_of_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_FORK_SAFE", False)
    lines: list[str] = []
    chunks = list(read_ahead_in_child(_numbers, 2, lines.append))
    assert [[n for _pid, n in chunk] for chunk in chunks] == [[0, 1], [2, 3], [4]]
    assert {pid for chunk in chunks for pid, _n in chunk} == {os.getpid()}
    assert lines == ["read 1", "read 3", "read 5"]


def _returning(_log: Log) -> Generator[int, None, str]:
    yield from range(3)
    return f"read by {os.getpid()}"


@pytest.mark.parametrize("fork", [True, False] if base._FORK_SAFE else [False])
def test_what_the_producer_returns_is_returned_after_its_items(
    fork: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "_FORK_SAFE", fork)
    returned: list[str] = []

    def items() -> Iterator[list[int]]:
        returned.append((yield from read_ahead_in_child(_returning, 2, no_log)))

    assert list(items()) == [[0, 1], [2]]
    (value,) = returned
    assert (value == f"read by {os.getpid()}") is not fork  # the child's, when forked


def _fails_after_three(_log: Log) -> Iterator[int]:
    yield from range(3)
    raise CredentialRejected("erp_files", "the export share refused our login")


@forks
def test_an_error_in_the_child_is_raised_here_after_the_items_before_it() -> None:
    got: list[int] = []
    with pytest.raises(CredentialRejected) as raised:
        for chunk in read_ahead_in_child(_fails_after_three, 2, no_log):
            got.extend(chunk)
    assert got == [0, 1]  # the last partial list is not handed out: its read did not end
    assert (raised.value.source, raised.value.cause) == ("erp_files", "the export share refused our login")
    assert str(raised.value) == "erp_files: the export share refused our login"


class _Unpicklable(Exception):
    def __init__(self, what: str, lock: threading.Lock) -> None:
        super().__init__(what)
        self.lock = lock


def _fails_unpicklably(_log: Log) -> Iterator[int]:
    yield 1
    raise _Unpicklable("row 7 is not a row", threading.Lock())


@forks
def test_an_error_that_cannot_cross_the_pipe_still_comes_with_its_type_and_message() -> None:
    with pytest.raises(RuntimeError, match=r"^_Unpicklable: row 7 is not a row$"):
        for _chunk in read_ahead_in_child(_fails_unpicklably, 10, no_log):
            pass


def _dies(_log: Log) -> Iterator[int]:
    yield 1
    os._exit(3)  # as if killed (out of memory): nothing more is sent


@forks
def test_a_child_that_dies_fails_the_read_instead_of_ending_it_early() -> None:
    with pytest.raises(RuntimeError, match=r"ended before its input did \(exit code 3\)"):
        for _chunk in read_ahead_in_child(_dies, 10, no_log):
            pass


def _endless(_log: Log) -> Iterator[int]:
    n = 0
    while True:
        yield os.getpid()
        n += 1


@forks
def test_a_consumer_that_stops_early_stops_the_child() -> None:
    stream = read_ahead_in_child(_endless, 100, no_log)
    child_pid = next(stream)[0]
    stream.close()
    with pytest.raises(ProcessLookupError):  # gone, and reaped
        os.kill(child_pid, 0)


def _one_then_stuck(_log: Log) -> Iterator[int]:
    yield os.getpid()
    time.sleep(120)  # a long computation: never sends, so it never sees the pipe closed
    yield 0


@forks
def test_a_child_is_stopped_even_where_sigterm_only_sets_a_flag() -> None:
    # As in a Dagster step process: SIGTERM mapped to an interrupt handler that notes it.
    noted: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signo, _frame: noted.append(signo))
    try:
        stream = read_ahead_in_child(_one_then_stuck, 1, no_log)
        child_pid = next(stream)[0]
        started = time.monotonic()
        stream.close()
        assert time.monotonic() - started < 10
    finally:
        signal.signal(signal.SIGTERM, before)
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
    assert noted == []  # the signal went to the child, not here


def test_a_source_error_keeps_its_parts_through_pickling() -> None:
    for error in (SourceError("shopify", "bulk file gone"), CredentialRejected("shopify", "token refused")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.source, copy.cause, str(copy)) == (error.source, error.cause, str(error))


def test_an_invalid_order_keeps_its_parts_through_pickling() -> None:
    # The normalize step quarantines the order by its record_key when the store refuses it.
    error = InvalidOrder("1001", ["field 'currency' is not an ISO 4217 code"])
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.record_key, copy.problems, str(copy)) == (error.record_key, error.problems, str(error))
