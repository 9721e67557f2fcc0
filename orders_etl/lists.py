"""A stream cut into lists: how every stage batches what it reads, lands or upserts.

Plain Python with no project imports, so the store, the sources and the mappings share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def in_lists(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter); an error of ``items`` drops the
    list it interrupted: its read did not end."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
