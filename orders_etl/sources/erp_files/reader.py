"""Reads ERP order exports (one file or a folder of them) into raw records, streaming.

Each file is read record by record through :mod:`records`, so memory stays bounded
whatever the file's size. Cells are kept as the text read: parsing amounts and dates is
the normalizer's job (``mapping.py``), so a landed payload can always be re-normalized
with a corrected dialect. The reader only interprets what it must:

* the order number, which is the record key (``row_shape = "line"`` groups consecutive
  rows of one order into one record, order fields taken from the group's first row);
* ``updated_at``, to filter the window: the ``updated_at`` column when the file has one
  (the latest of a group's rows), else the file's modification time.

A row that cannot be read (undecodable bytes, wrong number of fields, no order number,
an unreadable ``updated_at``) does not stop the file: it is yielded as an *error record*,
keyed ``"<file>:<line>"``, dated with the file's modification time, which the normalizer
turns into a reject. A file that cannot be read at all (no header, no order-number
column) raises :class:`SourceError`: a partial export is never reported complete.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orders_etl.model import Source
from orders_etl.sources.base import Log, SourceError, no_log
from orders_etl.sources.erp_files.dates import DateParser
from orders_etl.sources.erp_files.dialect import (
    REQUIRED_COLUMNS,
    Dialect,
    fold,
    load_dialect,
    resolve_columns,
)
from orders_etl.sources.erp_files.fast import payload_text
from orders_etl.sources.erp_files.records import Record, RecordReader, plain_record
from orders_etl.sources.fingerprint import DigestingFile, fingerprint_of_read, input_fingerprint
from orders_etl.store import RawRecord

SOURCE = Source.ERP_FILES.value
# Files of a folder that are read: exports are .csv, or .txt/.tsv (SAP B1 DTW, tab-separated).
EXPORT_SUFFIXES = frozenset({".csv", ".txt", ".tsv"})
PROGRESS_EVERY = 100_000
# An export is read through a hashing file (DigestingFile), a Python call per buffer filled.
_READ_BUFFER_BYTES = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def header_names(cells: list[str]) -> list[str]:
    """Header cells made usable as keys: trimmed, unnamed ones numbered, repeats suffixed."""
    names: list[str] = []
    seen: set[str] = set()
    for index, cell in enumerate(cells, start=1):
        name = cell.strip() or f"column {index}"
        base, n = name, 2
        while name in seen:
            name, n = f"{base} ({n})", n + 1
        seen.add(name)
        names.append(name)
    return names


def in_window(when: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or when >= start) and (end is None or when < end)


def _file_name(root: Path, path: Path) -> str:
    """A file's name in its records' keys: its name, or its path inside the export folder."""
    return path.name if path == root else str(path.relative_to(root))


class ErpFileReader:
    """Reads the export(s) at ``path`` (a file, or a folder of files) written in ``dialect``."""

    source = SOURCE

    def __init__(self, path: str | Path, dialect: Dialect | str | Path) -> None:
        self.path = Path(path)
        self.dialect = dialect if isinstance(dialect, Dialect) else load_dialect(dialect)
        self.dates = DateParser(self.dialect.date_formats, self.dialect.zone)
        # The fingerprint of the bytes the last fetch read, once it read them all.
        self.read_fingerprint: str | None = None

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if self.path.is_dir():
            return sorted(
                p
                for p in self.path.iterdir()
                if p.is_file() and p.suffix.lower() in EXPORT_SUFFIXES and not p.name.startswith((".", "~"))
            )
        raise SourceError(SOURCE, f"export path {self.path} does not exist (set ERP_EXPORT_PATH)")

    def fingerprint(self) -> str:
        """What :meth:`fetch` would read, as one digest: the files (names, times, bytes) and
        the dialect (see ``orders_etl.sources.fingerprint``)."""
        files = [(_file_name(self.path, path), path) for path in self.files()]
        return input_fingerprint(type(self).__name__, files, self._settings())

    def _settings(self) -> bytes:
        return self.dialect.model_dump_json().encode()

    def fetch(
        self, start: datetime | None = None, end: datetime | None = None, log: Log = no_log
    ) -> Iterator[RawRecord]:
        """Raw records updated in ``[start, end)`` (None = unbounded), file by file."""
        for bound in (start, end):
            if bound is not None and bound.utcoffset() is None:
                raise ValueError(f"window bound {bound!r} must be timezone-aware")
        self.read_fingerprint = None
        files = self.files()
        if not files:
            log(f"erp_files: no export files ({', '.join(sorted(EXPORT_SUFFIXES))}) in {self.path}")
        read = []
        for path in files:
            file = _FileRead(self, path, start, end, log)
            yield from file.records()
            read.append((file.name, file.mtime_ns, file.digest))
        self.read_fingerprint = fingerprint_of_read(type(self).__name__, read, self._settings())


class _FileRead:
    """The reading of one file: its header, its counters, its records."""

    def __init__(
        self, reader: ErpFileReader, path: Path, start: datetime | None, end: datetime | None, log: Log
    ) -> None:
        self.dialect = reader.dialect
        self.dates = reader.dates
        self.path = path
        self.name = _file_name(reader.path, path)
        self.start, self.end, self.log = start, end, log
        # Set when the file is opened: rows without a modification column are dated by it.
        self.mtime = datetime.fromtimestamp(0, UTC)
        self.mtime_ns = 0
        self.digest = b""  # the file's bytes' hash, once read
        self.rows = self.yielded = self.errors = self.outside = self.blank = 0

    # -- opening -----------------------------------------------------------------------

    def _encoding(self) -> str:
        with self.path.open("rb") as raw:
            head = raw.read(4)
        if head.startswith(_UTF8_BOM):
            # A BOM is the file's own word for its encoding: it beats the configuration.
            if fold(self.dialect.encoding).replace("-", "").replace("_", "") not in ("utf8", "utf8sig"):
                self.log(
                    f"erp_files: {self.name} starts with a UTF-8 byte-order mark: read as UTF-8, "
                    f"not {self.dialect.encoding}"
                )
            return "utf-8-sig"
        if head.startswith(_UTF16_BOMS):
            cause = f"{self.name} is UTF-16 (byte-order mark), which is not supported: export UTF-8 or cp1252"
            raise SourceError(SOURCE, cause)
        return self.dialect.encoding

    def _fail(self, line: int, cause: str) -> SourceError:
        return SourceError(SOURCE, f"{self.name} line {line}: {cause}")

    def records(self) -> Iterator[RawRecord]:
        encoding = self._encoding()
        with DigestingFile(self.path) as file:
            self.mtime_ns = file.stat.st_mtime_ns
            self.mtime = datetime.fromtimestamp(file.stat.st_mtime, UTC)
            buffered = io.BufferedReader(file, _READ_BUFFER_BYTES)
            stream = io.TextIOWrapper(buffered, encoding, errors="surrogateescape", newline="")
            yield from self._records(stream, encoding)
            self.digest = file.digest()  # (the rest of a file skipped or ended early is read)

    def _records(self, stream: io.TextIOWrapper, encoding: str) -> Iterator[RawRecord]:
        d = self.dialect
        reader = RecordReader(stream, d.separator, d.quotechar)
        reader.skip_lines(d.preamble_lines)
        header = reader.read()
        while header is not None and not header.error and not any(c.strip() for c in header.cells):
            header = reader.read()  # blank lines before the header
        if header is None:
            self.log(f"erp_files: {self.name} has no header row (empty file): nothing to read")
            return
        if header.error:
            raise self._fail(header.line, f"header row unreadable as {encoding}: {header.error}")
        headers = header_names(header.cells)
        columns = resolve_columns(headers, d)
        missing = [f for f in REQUIRED_COLUMNS if f not in columns]
        if missing:
            wanted = "; ".join(f"{f} (one of {d.columns[f]})" for f in missing)
            raise self._fail(header.line, f"no column for {wanted}; the header has {headers}")
        for _ in range(d.skip_rows_after_header):
            reader.read()
        updated_column = columns.get("updated_at")
        if updated_column is None and not in_window(self.mtime, self.start, self.end):
            self.log(f"erp_files: {self.name} skipped: modified {self.mtime.isoformat()}, outside the window")
            return
        self.log(
            f"erp_files: reading {self.name} ({encoding}, {d.row_shape} rows, updated_at from "
            + (f"column {updated_column!r})" if updated_column else "the file's modification time)")
        )
        rows = self._rows(reader, headers, columns, encoding)
        for record in self._grouped(rows) if d.row_shape == "line" else rows:
            if in_window(record.updated_at, self.start, self.end):
                self.yielded += 1
                yield record
            else:
                self.outside += 1
        self.log(
            f"erp_files: {self.name} done: {self.rows} rows, {self.yielded} records in the window, "
            f"{self.errors} unreadable, {self.outside} outside the window, {self.blank} blank lines skipped"
        )

    # -- rows --------------------------------------------------------------------------

    def _error(self, line: int, reason: str, raw: str | list[dict[str, str]]) -> RawRecord:
        self.errors += 1
        payload = {"file": self.name, "line": line, "error": reason, "raw": raw}
        return RawRecord(f"{self.name}:{line}", self.mtime, payload)

    def _rows(
        self, reader: RecordReader, headers: list[str], columns: dict[str, str], encoding: str
    ) -> Iterator[RawRecord]:
        """One raw record per row (line shape groups them afterwards).

        The fast path (see ``fast.py``): a plain line with an order number and a readable
        ``updated_at`` becomes its record right here, its payload's JSON text built in C;
        everything else goes through :meth:`_from_record`, as in :meth:`_rows_one_by_one`,
        the reference this must always equal.
        """
        number_at = headers.index(columns["order_number"])
        updated_column = columns.get("updated_at")
        updated_at = None if updated_column is None else headers.index(updated_column)
        parse_date, mtime, name, separator = self.dates.parse, self.mtime, self.name, reader.separator
        for item in reader.rows(len(headers)):
            if type(item) is tuple:
                line, cells = item
                key = cells[number_at].strip()
                updated: datetime | None = mtime
                if updated_at is not None and (cell := cells[updated_at].strip()):
                    try:
                        updated = parse_date(cell)
                    except ValueError:
                        updated = None
                if key and updated is not None:
                    self.rows += 1
                    if self.rows % PROGRESS_EVERY == 0:
                        self.log(f"erp_files: {self.name}: {self.rows} rows read, {self.errors} unreadable")
                    payload = {"file": name, "line": line, "row": dict(zip(headers, cells, strict=True))}
                    yield RawRecord(key, updated, payload, payload_text(payload))
                    continue
                item = plain_record(line, cells, separator)
            if (record := self._from_record(item, headers, columns, encoding)) is not None:
                yield record

    def _rows_one_by_one(
        self, reader: RecordReader, headers: list[str], columns: dict[str, str], encoding: str
    ) -> Iterator[RawRecord]:
        """:meth:`_rows` without its fast path: the reference it is tested against."""
        width = len(headers)
        while (record := reader.read(width)) is not None:
            if (raw := self._from_record(record, headers, columns, encoding)) is not None:
                yield raw

    def _from_record(
        self, record: Record, headers: list[str], columns: dict[str, str], encoding: str
    ) -> RawRecord | None:
        """The raw record of one record read (None for a blank line)."""
        if record.error is None and not any(c.strip() for c in record.cells):
            self.blank += 1
            return None
        self.rows += 1
        if self.rows % PROGRESS_EVERY == 0:
            self.log(f"erp_files: {self.name}: {self.rows} rows read, {self.errors} unreadable")
        if record.error is not None:
            reason = record.error
            if reason.startswith("undecodable"):
                reason += f" (file read as {encoding})"
            return self._error(record.line, reason, record.raw)
        number_column = columns["order_number"]
        updated_column = columns.get("updated_at")
        row = dict(zip(headers, record.cells, strict=True))
        key = row[number_column].strip()
        if not key:
            reason = f"no order number (column {number_column!r} is empty)"
            return self._error(record.line, reason, record.raw)
        updated_at = self.mtime
        if updated_column is not None and (cell := row[updated_column].strip()):
            try:
                updated_at = self.dates.parse(cell)
            except ValueError as exc:
                reason = f"field 'updated_at' (column {updated_column!r}) = {cell!r}: {exc}"
                return self._error(record.line, reason, record.raw)
        payload = {"file": self.name, "line": record.line, "row": row}
        return RawRecord(key, updated_at, payload, payload_text(payload))

    def _grouped(self, rows: Iterator[RawRecord]) -> Iterator[RawRecord]:
        """Consecutive rows of one order as one record (line shape)."""
        group: list[RawRecord] = []
        seen: dict[str, int] = {}  # order number -> its group's first line: catches split groups
        for record in rows:
            if "error" in record.payload:
                yield record  # a broken line does not end its order's group
                continue
            if group and record.record_key != group[0].record_key:
                yield from self._emit(group, seen)
                group = []
            group.append(record)
        if group:
            yield from self._emit(group, seen)

    def _emit(self, group: list[RawRecord], seen: dict[str, int]) -> Iterator[RawRecord]:
        first = group[0]
        line = first.payload["line"]
        if (earlier := seen.get(first.record_key)) is not None:
            reason = (
                f"rows of order {first.record_key!r} are not consecutive (its first rows start at line "
                f"{earlier}): sort the export by order number"
            )
            yield self._error(line, reason, [r.payload["row"] for r in group])
            return
        seen[first.record_key] = line
        payload: dict[str, Any] = {"file": self.name, "line": line, "rows": [r.payload["row"] for r in group]}
        yield RawRecord(first.record_key, max(r.updated_at for r in group), payload, payload_text(payload))
