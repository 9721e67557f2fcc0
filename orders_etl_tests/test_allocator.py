"""The process-wide allocator cap (orders_etl.allocator), measured in fresh processes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's; this C library has none to cap"
)

# Threads that each hold a malloc'd block at the same time, then glibc's own count of its
# arenas (one <heap> per arena in malloc_info's report).
_COUNT_ARENAS = """
import ctypes, tempfile, threading
THREADS = 6
ready = threading.Barrier(THREADS + 1)
done = threading.Event()
def hold():
    block = bytearray(100_000)  # past pymalloc: from the thread's malloc arena
    ready.wait()
    done.wait()
threads = [threading.Thread(target=hold) for _ in range(THREADS)]
for thread in threads:
    thread.start()
ready.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(report.name).read().count("<heap nr="))
done.set()
"""


def _arenas(prelude: str, env_extra: dict[str, str] | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    env.update(env_extra or {})
    out = subprocess.run(
        [sys.executable, "-c", prelude + _COUNT_ARENAS], capture_output=True, text=True, env=env, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_loading_the_code_location_caps_the_arenas_its_threads_get() -> None:
    assert _arenas("") > 2  # the default: an arena per thread (the test can tell)
    assert _arenas("import orders_etl.definitions\n") <= 2


def test_an_arena_limit_set_in_the_environment_wins() -> None:
    assert _arenas("import orders_etl.definitions\n", {"MALLOC_ARENA_MAX": "4"}) == 4


# Blocks past pymalloc (malloc'd one by one, like landed payloads), one in 64 kept alive:
# the freed ones lie between live ones, where glibc keeps them unless asked to give them back.
_FREED_BETWEEN_LIVE_BLOCKS = """
import os
from orders_etl.allocator import release_free_memory
def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
blocks = [bytes(2_000) for _ in range(100_000)]
kept = blocks[::64]
del blocks
held = resident_mb()
released = release_free_memory()
print(held - before, resident_mb() - before, released)
"""


def test_memory_a_stream_freed_is_given_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FREED_BETWEEN_LIVE_BLOCKS], capture_output=True, text=True, check=True
    )
    held, after, released = out.stdout.split()
    # About 200 MB were allocated and 197 MB freed: glibc kept them resident...
    assert float(held) > 150
    # ...until asked: what stays is the kept blocks' pages (one live block in a page pins it).
    assert float(after) < 50 and released == "True"


def _arrow_pool(prelude: str, env_extra: dict[str, str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    env.update(env_extra or {})
    code = prelude + "import pyarrow as pa\nprint(pa.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_loading_the_code_location_puts_arrow_on_malloc() -> None:
    assert _arrow_pool("") != "system"  # pyarrow's own default (the test can tell)
    assert _arrow_pool("import orders_etl.definitions\n") == "system"


def test_an_arrow_pool_chosen_in_the_environment_wins() -> None:
    chosen = _arrow_pool("", {"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"})
    assert _arrow_pool("import orders_etl.definitions\n", {"ARROW_DEFAULT_MEMORY_POOL": chosen}) == chosen


# Buffers from Arrow's default pool (its own allocator, when one is chosen in the environment),
# written to, then freed.
_FREED_ARROW_BUFFERS = """
import os
import numpy as np
import pyarrow as pa
from orders_etl.allocator import release_free_memory
def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
buffers = [pa.allocate_buffer(2**20, resizable=False) for _ in range(100)]
for buffer in buffers:
    np.frombuffer(buffer, dtype=np.uint8)[:] = 1
del buffer, buffers
held = resident_mb()
release_free_memory()
print(held - before, resident_mb() - before)
"""


def test_memory_arrows_own_pool_freed_is_given_back_too() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}  # pyarrow's default
    out = subprocess.run(
        [sys.executable, "-c", _FREED_ARROW_BUFFERS], capture_output=True, text=True, env=env, check=True
    )
    held, after = map(float, out.stdout.split())
    # 100 MB written and freed: Arrow's pool kept them for its own reuse...
    assert held > 80
    # ...until asked.
    assert after < 30
