"""The C allocator (glibc): at most two malloc arenas per process, Arrow's tables allocated
from it too, and freed memory handed back to the system after each stream of records.

Why: a sync reads, normalizes and writes on threads of their own, and glibc gives each
thread an arena of its own (up to eight per core), each keeping what was freed in it for
reuse by that arena only. Over a long process the memory held grows with the threads'
timing rather than with what is in use. Measured with ``bench/bench_e2e.py`` on
PostgreSQL (a cold load, a re-run and an update run in one process): peak RSS 549–558 MB
at 1,000,000 orders with glibc's default, 469–478 MB with two arenas; 476–502 and
451–459 MB at 100,000; no slower.

The same as ``MALLOC_ARENA_MAX=2``, which cannot be set for a process that is already
running; an arena limit set in the environment wins. Elsewhere than glibc, nothing is done.

Memory that a stream freed (a million payloads of about a kilobyte, each its own malloc'd
block) stays in the arenas, in free chunks between live ones, and the next stream's peak
builds on it: :func:`release_free_memory` gives it back (``malloc_trim``).

Arrow's own default allocator (mimalloc, in pyarrow's wheels) keeps the pages of the tables
it freed for its own reuse, out of reach of both: in a 1M-order run on SQLite the writing
process held 60–100 MB of them in a normalize step while Arrow had 2–13 MB allocated. So
Arrow allocates from glibc too (:func:`arrow_on_malloc`). Measured with
``bench/bench_e2e.py`` on SQLite, one run after the other: peak RSS 466 MB at 1,000,000
orders and 398 MB at 100,000 with mimalloc, 379 and 347 MB with glibc; no slower.
"""

from __future__ import annotations

import ctypes
import os
import sys

import pyarrow as pa

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
# Arrow's own choice of allocator (jemalloc, mimalloc or system); set, it wins.
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's arenas (for the threads that get one from now on); True if it was set.

    glibc fixes its own cap once it has made more than eight arenas, so this must run early: it runs
    when the code location is loaded, before any step starts a thread.
    """
    if not sys.platform.startswith("linux") or _set_in_environment():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(_M_ARENA_MAX, arenas) == 1


def arrow_on_malloc() -> bool:
    """Arrow allocates its buffers with malloc from now on; True if it was set.

    Runs when the code location is loaded, with :func:`limit_malloc_arenas`, before any
    table is built; a pool chosen in ``ARROW_DEFAULT_MEMORY_POOL`` wins.
    """
    if ARROW_POOL_VARIABLE in os.environ:
        return False
    pa.set_memory_pool(pa.system_memory_pool())
    return True


def release_free_memory() -> bool:
    """Hand the memory glibc (and Arrow's pool, if another) holds free back to the system;
    True if glibc had some.

    Called when a stream of records ends (a landing, a normalize pass): what the next stage
    allocates then comes from pages it touches anew, not on top of what this one left
    resident. Measured with ``bench/bench_e2e.py`` on PostgreSQL, whose peak is in the update
    run's normalize, after two raw stages that each read a 1 GB file: peak RSS 424 MB at
    100,000 orders and 464 MB at 1,000,000 (+9 %), against 434–461 and 477–542 MB (+5.5 to
    +17.6 %) without; no slower. It walks the arenas: 130 ms after a million 1 kB blocks were
    freed among live ones, once per step.
    """
    pool = pa.default_memory_pool()
    if pool.backend_name != "system":  # the system pool's release is the malloc_trim below
        pool.release_unused()
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # a C library without malloc_trim
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    return malloc_trim(0) == 1


def _set_in_environment() -> bool:
    return "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", "")
