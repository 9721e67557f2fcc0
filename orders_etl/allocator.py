"""The C allocator, set once per process: at most two malloc arenas (glibc).

Why: a sync reads, normalizes and writes on threads of their own, and glibc gives each
thread an arena of its own (up to eight per core), each keeping what was freed in it for
reuse by that arena only. Over a long process the memory held grows with the threads'
timing rather than with what is in use. Measured with ``bench/bench_e2e.py`` on
PostgreSQL (a cold load, a re-run and an update run in one process): peak RSS 549–558 MB
at 1,000,000 orders with glibc's default, 469–478 MB with two arenas; 476–502 and
451–459 MB at 100,000; no slower.

The same as ``MALLOC_ARENA_MAX=2``, which cannot be set for a process that is already
running; an arena limit set in the environment wins. Elsewhere than glibc, nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


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


def _set_in_environment() -> bool:
    return "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", "")
