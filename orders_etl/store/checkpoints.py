"""SQLite: the WAL copied into the database file on a thread of its own, not in the writer's commits.

A commit that takes the WAL past ``wal_autocheckpoint`` pages checkpoints it right there, on
the writer's path: at 1M orders the Shopify raw step's writer spent 5–8 s in commits,
mostly the kernel copying pages into the database file, while the second core waited.
After each writing commit this thread runs a ``PASSIVE`` checkpoint on a connection of its
own (it never waits for a lock and never blocks a reader or the writer; ``sqlite3`` lets go
of the GIL while it runs). The writer's own checkpoints stay as the bound if the thread
falls behind. bench_e2e, 1M on SQLite, alternating: Shopify raw 16.3 s against 18.8 s (a
first version, checkpointing as soon as told: 17.3 and 17.0 s against 24.7 and 19.4 s).

The thread belongs to one process and one database file. It ends after a while without a
commit (a store in a test, an idle session) and starts again with the next one. A fork
waits while the thread is inside SQLite: a child must not inherit a SQLite mutex that a
thread that does not exist there holds. A forked child gets a thread of its own.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

# The thread checkpoints this long after a commit, at most this often.
CHECKPOINT_INTERVAL_S = 0.2
# Without a commit for this long, the thread closes its connection and ends.
IDLE_EXIT_S = 10.0

# Held while a checkpointer is inside SQLite; a fork takes it first (see the module docstring).
_IN_SQLITE = threading.Lock()


class WalCheckpointer:
    """Checkpoints ``database``'s WAL in the background after :meth:`committed` is called."""

    def __init__(self, database: str) -> None:
        # Opened read-write only: a store removed meanwhile is not created again.
        self.uri = Path(database).absolute().as_uri() + "?mode=rw"
        self.thread_name = f"orders-etl-wal-checkpoint {Path(database).absolute()}"
        self.checkpoints = 0  # how many the thread ran (for the tests)
        self._pid = os.getpid()
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def committed(self) -> None:
        """A writing transaction committed: checkpoint soon."""
        if self._pid != os.getpid():
            # Forked: the parent's thread does not exist here, and its lock and event may
            # have been held at the fork. (Its connection, closed or not, is never touched.)
            self._pid = os.getpid()
            self._guard = threading.Lock()
            self._wake = threading.Event()
            self._thread = None
        with self._guard:
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        try:
            with _IN_SQLITE:
                connection = sqlite3.connect(
                    self.uri, uri=True, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error:
            with self._guard:
                self._thread = None
            return
        try:
            while self._wait_for_commit():
                # After the commit that woke it (SQLAlchemy tells before it commits), and
                # once for a burst of them.
                time.sleep(CHECKPOINT_INTERVAL_S)
                with _IN_SQLITE:
                    try:
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        self.checkpoints += 1
                    except sqlite3.Error:
                        # Busy (another process checkpoints) or a store being removed: the
                        # writer's own checkpoints still bound the WAL.
                        pass
        finally:
            with _IN_SQLITE:
                connection.close()

    def _wait_for_commit(self) -> bool:
        """Wait for the next commit: False once idle (then the thread is gone for ``committed``)."""
        if not self._wake.wait(IDLE_EXIT_S):
            with self._guard:
                if not self._wake.is_set():
                    self._thread = None
                    return False
        self._wake.clear()
        return True


os.register_at_fork(
    before=_IN_SQLITE.acquire, after_in_parent=_IN_SQLITE.release, after_in_child=_IN_SQLITE.release
)
