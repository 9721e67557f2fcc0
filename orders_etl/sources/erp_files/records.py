"""From an export's text to records of cells, one at a time, each with its line number.

The stdlib ``csv`` parser does the work, but it is fed one record at a time instead of
the whole stream. Fed the stream, one stray quote (``"Müller "Bau" GmbH``, which Business
Central XMLports write because they do not escape quotes as RFC 4180 says) would swallow
every following line into a single field; here a record is one physical line unless its
quotes are unbalanced *and* joining the next lines gives a record of the header's width
(a real multi-line quoted field). Otherwise the line stands alone and is split leniently.

Lenient splitting (Go's "lazy quotes", roughly): a field that starts with a quote ends at
the first quote followed by the separator or the end of the record; quotes inside are
kept as written (``""`` still means one quote). It is used for records whose quotes are
not all at field boundaries or doubled (not RFC 4180), and for records of the wrong width.

Bytes the encoding cannot decode are read as lone surrogates (``surrogateescape``) so the
stream never stops on them; a record holding one (or a NUL, which no store can keep) is
returned as an error with its text shown with ``\\x..`` escapes.
"""

from __future__ import annotations

import csv
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

# A quoted field may span lines; beyond this many we assume a stray quote instead.
MAX_RECORD_LINES = 50
# One physical line longer than this is not an order row (a binary file, a missing newline).
MAX_LINE_CHARS = 1 << 20
_SURROGATE = re.compile("[\udc80-\udcff]")
_LINE_END = "\r\n"


@dataclass(frozen=True, slots=True)
class Record:
    """One logical record: its first physical line (1-based), its cells or why it has none."""

    line: int
    cells: list[str]
    raw: str
    error: str | None = None


def fit_width(cells: list[str], width: int) -> list[str] | None:
    """``cells`` as exactly ``width`` cells, or None when they do not fit.

    Extra cells are tolerated when empty (a trailing separator); missing cells are not: a
    short row is usually a truncated one, and guessing its amounts would be worse.
    """
    if len(cells) == width:
        return cells
    if len(cells) > width and not any(c.strip() for c in cells[width:]):
        return cells[:width]
    return None


def printable(text: str) -> str:
    """``text`` with undecodable bytes and NULs shown as ``\\xNN`` (storable, readable)."""
    text = _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)
    return text.replace("\x00", "\\x00")


def split_lenient(text: str, separator: str, quote: str) -> list[str]:
    cells: list[str] = []
    escaped = quote * 2
    i, n = 0, len(text)
    while True:
        if quote and text.startswith(quote, i):
            j = i + 1
            while True:
                k = text.find(quote, j)
                if k == -1:  # never closed: the rest of the record is the cell
                    cells.append(text[i + 1 :].replace(escaped, quote))
                    return cells
                if k + 1 == n or text.startswith(separator, k + 1):
                    cells.append(text[i + 1 : k].replace(escaped, quote))
                    if k + 1 == n:
                        return cells
                    i = k + 1 + len(separator)
                    break
                j = k + 1
        else:
            k = text.find(separator, i)
            if k == -1:
                cells.append(text[i:])
                return cells
            cells.append(text[i:k])
            i = k + len(separator)


class _Feed:
    """An iterator handing the csv reader exactly one record, then ending it."""

    __slots__ = ("text",)

    def __init__(self) -> None:
        self.text: str | None = None

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        text = self.text
        if text is None:
            raise StopIteration
        self.text = None
        return text


class RecordReader:
    """Reads records from a text stream opened with ``newline=""`` and ``surrogateescape``."""

    def __init__(self, stream: TextIO, separator: str, quotechar: str) -> None:
        self._stream = stream
        self.separator = separator
        self.quote = quotechar
        q, sep = re.escape(quotechar or '"'), re.escape(separator)
        field = f"(?:{q}(?:[^{q}]|{q}{q})*{q}|[^{q}{sep}]*)"
        self._rfc_record = re.compile(f"{field}(?:{sep}{field})*")
        self._feed = _Feed()
        # strict=False: a quote in the middle of an unquoted field is just a character.
        options = {"quotechar": quotechar, "doublequote": True} if quotechar else {"quoting": csv.QUOTE_NONE}
        self._csv = csv.reader(self._feed, delimiter=separator, strict=False, **options)
        self._pending: deque[tuple[int, str]] = deque()
        self.line_number = 0  # physical lines read from the stream so far

    # -- physical lines ---------------------------------------------------------------

    def _read_line(self) -> tuple[int, str] | None:
        if self._pending:
            return self._pending.popleft()
        text = self._stream.readline(MAX_LINE_CHARS)
        if not text:
            return None
        return self._counted(text)

    def _counted(self, text: str) -> tuple[int, str]:
        """A line just read from the stream, numbered."""
        if len(text) == MAX_LINE_CHARS and not text.endswith(("\n", "\r")):
            # Drain the rest of the monster line so the next record starts on a line boundary.
            while (more := self._stream.readline(MAX_LINE_CHARS)) and not more.endswith(("\n", "\r")):
                pass
        self.line_number += 1
        return self.line_number, text

    def skip_lines(self, count: int) -> None:
        for _ in range(count):
            if self._read_line() is None:
                return

    # -- records ----------------------------------------------------------------------

    def _strict(self, text: str) -> list[str]:
        self._feed.text = text
        try:
            return next(self._csv)
        except (StopIteration, csv.Error):
            return split_lenient(text, self.separator, self.quote)

    def _rfc_clean(self, text: str) -> bool:
        """True when every quote opens or closes a field or is doubled, as RFC 4180 says."""
        # Counting quotes next to separators misjudged a field that starts with an escaped
        # quote ('"""; x"'), so a valid row was re-read leniently, its cells shifted.
        return self._rfc_record.fullmatch(text) is not None

    def _cells(self, text: str, width: int | None) -> list[str]:
        """The record's cells; the lenient reading wins where the strict one met non-RFC quoting."""
        cells = self._strict(text)
        q = self.quote
        if (
            q
            and q in text
            and (
                not self._rfc_clean(text)
                or text.count(q) % 2
                or (width is not None and fit_width(cells, width) is None)
            )
        ):
            lenient = split_lenient(text, self.separator, q)
            if width is None or fit_width(lenient, width) is not None:
                return lenient
        return cells

    def _joined(self, first: tuple[int, str], width: int | None) -> tuple[str, list[str]] | None:
        """A quoted field running over the next lines, if joining them gives a full record."""
        taken: list[tuple[int, str]] = []
        parts = [first[1]]
        odd = True
        while len(parts) < MAX_RECORD_LINES and (nxt := self._read_line()) is not None:
            taken.append(nxt)
            parts.append(nxt[1])
            if nxt[1].count(self.quote) % 2:
                odd = not odd
            if not odd:
                text = "".join(parts).rstrip(_LINE_END)
                cells = self._strict(text)
                if width is None or fit_width(cells, width) is not None:
                    return text, cells
                break
        self._pending.extendleft(reversed(taken))
        return None

    def read(self, width: int | None = None) -> Record | None:
        """The next record, None at the end; a blank line is a record without cells.

        With ``width`` (the header's), a record that does not fit it is an error.
        """
        first = self._read_line()
        if first is None:
            return None
        line, text = first
        if len(text) >= MAX_LINE_CHARS:
            reason = f"line longer than {MAX_LINE_CHARS} characters"
            return Record(line, [], printable(text[:200]) + "...", reason)
        joined = self._joined(first, width) if self.quote and text.count(self.quote) % 2 else None
        if joined is not None:
            text, cells = joined
        else:
            text = text.rstrip(_LINE_END)
            cells = self._cells(text, width)
        if not text.isascii() and (bad := _SURROGATE.search(text)) is not None:
            byte = ord(bad.group()) - 0xDC00
            reason = f"undecodable byte 0x{byte:02x} at character {bad.start() + 1}"
            return Record(line, [], printable(text), reason)
        if "\x00" in text:
            return Record(line, [], printable(text), f"NUL character at character {text.index(chr(0)) + 1}")
        if not any(c.strip() for c in cells):
            return Record(line, [], text)
        if width is not None:
            fitted = fit_width(cells, width)
            if fitted is None:
                return Record(line, [], text, f"{len(cells)} fields where the header has {width}")
            cells = fitted
        return Record(line, cells, text)

    def rows(self, width: int) -> Iterator[Record | tuple[int, list[str]]]:
        """Every record to the end, exactly as :meth:`read` with ``width`` returns them, but
        a *plain* line comes as ``(line number, cells)``: the fast path (see ``fast.py``).

        Plain: no quote character, no NUL, no undecodable byte, not overlong, and exactly
        ``width`` cells when split at the separator. For such a line ``read`` would do no
        more than split it (the csv parser splits a line without quotes at the separator,
        nothing else), so splitting it here gives the same cells at a fraction of the cost.
        Every other line goes through ``read``; :func:`plain_record` is ``read``'s Record
        of a plain line, for the rare caller that needs it.
        """
        readline = self._stream.readline
        pending = self._pending
        separator, quote = self.separator, self.quote
        while True:
            if pending:  # lines a join looked ahead at and gave back
                record = self.read(width)
                if record is None:
                    return
                yield record
                continue
            text = readline(MAX_LINE_CHARS)
            if not text:
                return
            if (
                (quote and quote in text)
                or "\x00" in text
                or len(text) >= MAX_LINE_CHARS
                or not (text.isascii() or _encodable(text))
            ):
                pending.append(self._counted(text))  # read() takes it from there
                continue
            self.line_number += 1
            cells = text.rstrip(_LINE_END).split(separator)
            if len(cells) == width:
                yield self.line_number, cells
            else:
                pending.append((self.line_number, text))


def _encodable(text: str) -> bool:
    """False when ``text`` holds a lone surrogate (an undecodable byte): cheaper than a search."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def plain_record(line: int, cells: list[str], separator: str) -> Record:
    """The Record :meth:`RecordReader.read` returns for a plain line split into ``cells``."""
    return Record(line, cells if any(c.strip() for c in cells) else [], separator.join(cells))
