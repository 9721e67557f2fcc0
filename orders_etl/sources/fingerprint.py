"""One digest for what a file-backed reader would read: its files' bytes, names and times,
its settings, and this release of the code that turns them into records.

Why: a re-sync of an export that has not changed since a run landed it whole has nothing
new to land, and reading and hashing a million records only to find that out costs
seconds per source. Equal fingerprints mean equal records, so the landing step may skip
the read (``orders_etl.defs.sync.land``); any change to a byte, a file's name or time (the
ERP reader dates rows without a modification column by it), the dialect, or the release
gives another fingerprint, and the files are read as usual.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import blake3

# BLAKE3: cryptographic, and vectorized on every CPU (AVX-512, AVX2, SSE4.1, NEON), where
# hashlib's fastest digest depends on the machine. On one without SHA extensions (2026-11-28)
# SHA-256 took 4.7 s a GB, BLAKE2b 1.9 s, BLAKE3 0.23 s; SHA-256 was 31 % of the instructions
# of a Shopify bulk file's reading process. With them, SHA-256 took 0.7 s a GB.
_new_digest = blake3.blake3


def _release() -> str:
    try:
        return metadata.version("orders_etl")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unreleased"


class DigestingFile(io.RawIOBase):
    """A file opened for reading that hashes its bytes as they are read.

    Why: a reader that reads its input through one gets the fingerprint of exactly the
    bytes it turned into records (:meth:`digest`), without a second pass over the file
    after the read, which also could not tell a change made while it was read from one
    made after. ``stat`` is the file's status when it was opened.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = path.open("rb", buffering=0)
        self.stat = os.fstat(self._file.fileno())
        self._digest = _new_digest()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        count = self._file.readinto(buffer)
        if count:
            self._digest.update(memoryview(buffer)[:count])
        return count

    def close(self) -> None:
        self._file.close()
        super().close()

    def digest(self) -> bytes:
        """The hash of the whole file: what is left unread is read (and hashed) first."""
        while chunk := self._file.read(_BLOCK_BYTES):
            self._digest.update(chunk)
        return self._digest.digest()


_BLOCK_BYTES = 1 << 20


def input_fingerprint(reader: str, files: Sequence[tuple[str, Path]], settings: bytes = b"") -> str:
    """The digest of ``reader`` (its kind), ``settings`` and each ``(name, path)`` in order:
    the name, the modification time and the bytes of the file."""
    read = []
    for name, path in files:
        with DigestingFile(path) as file:
            read.append((name, file.stat.st_mtime_ns, file.digest()))
    return fingerprint_of_read(reader, read, settings)


def fingerprint_of_read(reader: str, files: Sequence[tuple[str, int, bytes]], settings: bytes = b"") -> str:
    """:func:`input_fingerprint` of files already read: each ``(name, modification time in
    ns, digest)``, as a :class:`DigestingFile` gives them."""
    digest = _new_digest()

    def part(data: bytes) -> None:
        # Length-prefixed, so that no two different sequences of parts hash the same.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)

    part(reader.encode())
    part(_release().encode())
    part(settings)
    for name, mtime_ns, file_digest in files:
        part(name.encode("utf-8", "surrogatepass"))
        part(str(mtime_ns).encode())
        part(file_digest)
    return digest.hexdigest()
