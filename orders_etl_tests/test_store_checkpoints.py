"""SQLite's WAL is checkpointed by a thread of its own after writing commits (checkpoints.py)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa

from orders_etl.store import checkpoints
from orders_etl.store.checkpoints import WalCheckpointer
from orders_etl.store.engine import create_store_engine, own_connections_after_fork, reading

PAYLOAD_ROWS = 200  # of 10 KB: 2 MB, far below the writer's own checkpoint (10,000 pages)


def _write(engine: sa.Engine, table: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (body TEXT)")
        conn.exec_driver_sql(
            f"INSERT INTO {table} VALUES " + ", ".join(["(randomblob(10000))"] * PAYLOAD_ROWS)
        )


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _in_database_file(path: Path) -> bool:
    """The rows written are in the database file itself, not only in its WAL."""
    return path.stat().st_size > PAYLOAD_ROWS * 10_000


def test_a_writing_commit_is_checkpointed_without_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "orders.db"
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        _write(engine, "t")
        assert _until(lambda: _in_database_file(path)), "the WAL was never copied into the database file"
        with reading(engine).connect() as conn:  # and the store reads as it should
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == PAYLOAD_ROWS
    finally:
        engine.dispose()


def test_reading_transactions_do_not_wake_it(tmp_path: Path) -> None:
    path = tmp_path / "orders.db"
    with closing(sqlite3.connect(path)) as plain:  # a store made without a checkpointer
        plain.execute("CREATE TABLE t (body TEXT)")
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        with reading(engine).connect() as conn:
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 0
            conn.commit()
        time.sleep(2 * checkpoints.CHECKPOINT_INTERVAL_S)
        assert WalCheckpointer(str(path)).thread_name not in {t.name for t in threading.enumerate()}
    finally:
        engine.dispose()


def test_the_thread_ends_when_idle_and_comes_back_with_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "IDLE_EXIT_S", 0.3)
    path = tmp_path / "orders.db"
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (body TEXT)")
        checkpointer = WalCheckpointer(str(path))
        checkpointer.committed()
        assert _until(lambda: checkpointer.checkpoints == 1)
        assert _until(lambda: not checkpointer.running), "an idle thread lives on"
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (randomblob(10000))")
        checkpointer.committed()
        assert checkpointer.running
        assert _until(lambda: checkpointer.checkpoints == 2)
    finally:
        engine.dispose()


def _child_writes(engine: sa.Engine, path: Path, done: multiprocessing.Queue) -> None:
    own_connections_after_fork(engine)
    _write(engine, "in_child")
    done.put(_until(lambda: path.stat().st_size > 2 * PAYLOAD_ROWS * 10_000))


def test_a_forked_child_checkpoints_with_a_thread_of_its_own(tmp_path: Path) -> None:
    """The fork happens while the parent's thread is alive: the child must neither wait
    on a lock that thread held nor lean on the thread, which does not exist there."""
    path = tmp_path / "orders.db"
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        _write(engine, "in_parent")
        assert _until(lambda: _in_database_file(path))
        context = multiprocessing.get_context("fork")
        done = context.Queue()
        child = context.Process(target=_child_writes, args=(engine, path, done))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert done.get(timeout=5), "the child's commit was never checkpointed"
    finally:
        engine.dispose()
