"""Bulk operations: run one, wait for it, download its JSONL result, and parse it.

Result format (Shopify bulk guide): one JSON object per line. Objects of nested
*connections* are not nested: each is a line of its own carrying ``__parentId``, the id of
the object it belongs to. Since ``groupObjects`` defaults to false, a child line may come
anywhere in the file, before or after its parent, so the parser makes two passes over the
(local) file: the first collects child lines, the second streams the parents with their
children joined in. Memory is bounded by the child lines; the order query of this source has
none (``fulfillments`` and ``trackingInfo`` are lists, inlined in the order's line), so
parents stream at constant memory.

A line that is not a JSON object, or a child whose parent is not in the file, is handed on
as a *problem* rather than dropped, so the normalizer can quarantine it with a reason.

A result holds up to millions of orders, so the ordinary line (an order without children to
join) is not parsed into a dict at all: it is checked and decoded for its key fields only
(:class:`LineHead`, msgspec, C speed) and handed on as the text it is, which is landed as
received. Everything else (children, invalid JSON or UTF-8, NaN, a key field of an odd type)
takes the dict path, exactly as before.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from orders_etl.sources.base import Log, SourceError
from orders_etl.sources.shopify.client import ShopifyGraphQLClient
from orders_etl.sources.shopify.errors import SOURCE, BulkOperationFailed, TransientError
from orders_etl.sources.shopify.fast import beyond_int_digits
from orders_etl.sources.shopify.queries import BULK_RUN_MUTATION, BULK_STATUS_QUERY

PARENT_KEY = "__parentId"
_MARKER = PARENT_KEY.encode()
_BLOCK_BYTES = 1 << 24  # the first pass reads the file in blocks of about this size
_GID = re.compile(r"^gid://shopify/([A-Za-z]+)/")
# Where a child line goes on its parent, by the child's type: the field names of the
# connections an order query can nest. Unknown types get lowerCamel + "s".
CHILD_FIELDS = {
    "Fulfillment": "fulfillments",
    "FulfillmentOrder": "fulfillmentOrders",
    "LineItem": "lineItems",
    "Metafield": "metafields",
    "OrderTransaction": "transactions",
    "Refund": "refunds",
    "Return": "returns",
    "ShippingLine": "shippingLines",
}
_BUSY_CODES = {"OPERATION_IN_PROGRESS", "LIMIT_REACHED"}
_TERMINAL_FAILURES = {"FAILED", "CANCELED", "EXPIRED"}


# ---------------------------------------------------------------------------------------
# Parsing


class LineHead(msgspec.Struct, gc=False):
    """The fields of an order line its reader keys and dates it by (the rest is skipped,
    though checked to be valid JSON). Any other JSON type here fails the decode, which
    sends the line down the dict path."""

    legacyResourceId: str | None = None
    id: str | None = None
    updatedAt: str | None = None


_HEAD = msgspec.json.Decoder(LineHead)


@dataclass(slots=True)  # not frozen: that doubles its cost, paid once per line
class BulkLine:
    """A parent object (``node``), an ordinary parent line (``text`` as received, without
    its line break, and its ``head``), or a line that could not be used (``problem``)."""

    line: int
    node: dict[str, Any] | None = None
    problem: dict[str, Any] | None = None
    text: str | None = None
    head: LineHead | None = None


def child_field(child: dict[str, Any]) -> str:
    typename = child.get("__typename")
    if not isinstance(typename, str):
        match = _GID.match(child.get("id") or "") if isinstance(child.get("id"), str) else None
        typename = match.group(1) if match else None
    if not typename:
        return "_children"
    return CHILD_FIELDS.get(typename) or typename[0].lower() + typename[1:] + "s"


def _parse(raw: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(raw, parse_float=Decimal), None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # (nesting too deep: RecursionError)
        return None, f"{type(exc).__name__}: {exc}"


def _ordinary(raw: bytes) -> tuple[str, LineHead] | None:
    """The line's text and head if it is a JSON object in valid UTF-8 that ``json.loads``
    reads as the same object (msgspec accepts less: no NaN, no lone surrogate escape,
    no BOM; but more: integers of any length); None sends it down the dict path."""
    try:
        # The text first: msgspec does not check the UTF-8 of the strings it skips.
        text = raw.rstrip(b"\r\n").decode("utf-8")
        head = _HEAD.decode(raw)
    except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        return None
    return None if beyond_int_digits(text) else (text, head)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _attach(parent: dict[str, Any], children: list[tuple[int, dict[str, Any]]]) -> None:
    for _, child in sorted(children, key=lambda item: item[0]):
        field = child_field(child)
        existing = parent.get(field)
        if existing is None:
            parent[field] = [child]
        elif isinstance(existing, list):
            existing.append(child)
        else:
            parent.setdefault("_children", []).append(child)


@dataclass
class BulkFileStats:
    """What a pass over a result file saw, to compare with the operation's own counts."""

    objects: int = 0  # non-blank lines
    children: int = 0  # lines with __parentId

    @property
    def roots(self) -> int:
        return self.objects - self.children


def _mentions_marker(path: Path) -> bool:
    """Whether the child marker ``__parentId`` occurs anywhere in the file: searched in
    big blocks, since the order query's result has no child line and a test per line
    would cost about a second per million lines."""
    overlap = len(_MARKER) - 1
    previous = b""
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK_BYTES):
            if _MARKER in block or _MARKER in previous[-overlap:] + block[:overlap]:
                return True
            previous = block
    return False


def _marked_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, line) of the lines that hold the child marker: only those may be children."""
    if not _mentions_marker(path):
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if _MARKER in raw:
                yield number, raw


def iter_bulk_file(
    path: Path | str, stats: BulkFileStats | None = None, stream: BinaryIO | None = None
) -> Iterator[BulkLine]:
    """Parents of a bulk-result JSONL file, children joined in, in file order; then orphans.

    ``stats`` (if given) is filled as the file is read; it is complete once exhausted.
    ``stream`` (if given) is the file opened by the caller (e.g. through a
    ``fingerprint.DigestingFile``), left open: the pass that yields reads it to its end.
    """
    path = Path(path)
    stats = stats if stats is not None else BulkFileStats()
    children: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    child_by_id: dict[str, dict[str, Any]] = {}
    marked: set[int] = set()  # only lines holding the marker may be children
    for number, raw in _marked_lines(path):
        marked.add(number)
        value, _ = _parse(raw)
        if isinstance(value, dict) and isinstance(value.get(PARENT_KEY), str):
            parent_id = value.pop(PARENT_KEY)
            stats.children += 1
            children[parent_id].append((number, value))
            if isinstance(value.get("id"), str):
                child_by_id[value["id"]] = value
    # Grandchildren (a connection nested in a connection) join their child first.
    for child_id, child in child_by_id.items():
        if child_id in children:
            _attach(child, children.pop(child_id))

    with nullcontext(stream) if stream is not None else path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number not in marked and (ordinary := _ordinary(raw)) is not None:
                text, head = ordinary
                if head.id not in children:  # (no child of its own to join)
                    stats.objects += 1
                    yield BulkLine(number, None, None, text, head)
                    continue
            if not raw.strip():
                continue
            stats.objects += 1
            value, error = _parse(raw)
            if error is not None or not isinstance(value, dict):
                reason = error or f"a JSON {type(value).__name__}, not an object"
                yield BulkLine(
                    number, problem={"_unparsed_line": _text(raw), "_line": number, "_error": reason}
                )
                continue
            if number in marked and isinstance(value.get(PARENT_KEY), str):
                continue  # a child line: the first pass took it (same test as there)
            own_id = value.get("id")
            if isinstance(own_id, str) and own_id in children:
                _attach(value, children.pop(own_id))
            yield BulkLine(number, node=value)

    for parent_id, kids in children.items():
        for number, kid in kids:
            yield BulkLine(
                number,
                problem={"_orphan_child_line": kid, "_line": number, "_parentId": parent_id},
            )


# ---------------------------------------------------------------------------------------
# Running an operation


@dataclass(frozen=True)
class BulkTiming:
    poll_interval_s: float = 2.0
    max_poll_interval_s: float = 30.0
    timeout_s: float = 6 * 3600.0


def run_bulk_query(
    client: ShopifyGraphQLClient,
    query: str,
    *,
    log: Log,
    timing: BulkTiming,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Start ``query`` as a bulk operation and wait for it; returns the COMPLETED operation.

    An operation already running on the shop (``OPERATION_IN_PROGRESS`` / ``LIMIT_REACHED``)
    is waited for, not cancelled: it may belong to another app or run. A FAILED, CANCELED or
    EXPIRED operation raises :class:`BulkOperationFailed` (its partial data is never taken
    for a complete window).
    """
    deadline = clock() + timing.timeout_s
    interval = timing.poll_interval_s

    def pause() -> None:
        nonlocal interval
        if clock() + interval > deadline:
            raise SourceError(
                SOURCE, f"bulk operation not finished after {timing.timeout_s:.0f} s; giving up"
            )
        sleep(interval)
        interval = min(interval * 1.5, timing.max_poll_interval_s)

    while True:
        payload = _field(
            client.execute(BULK_RUN_MUTATION, {"query": query}, log=log), "bulkOperationRunQuery"
        )
        errors = payload.get("userErrors") or []
        if not errors:
            break
        codes = {e.get("code") for e in errors if isinstance(e, dict)}
        messages = "; ".join(str(e.get("message")) for e in errors if isinstance(e, dict))
        if codes & _BUSY_CODES:
            log(f"shopify: a bulk operation is already running ({messages}); waiting {interval:.0f} s")
            pause()
            continue
        raise SourceError(SOURCE, f"Shopify refused the bulk query: {messages}")

    operation = payload.get("bulkOperation")
    if not isinstance(operation, dict) or not isinstance(operation.get("id"), str):
        raise TransientError("bulkOperationRunQuery answered without an operation")
    operation_id = operation["id"]
    log(f"shopify: bulk operation {operation_id} started")
    interval = timing.poll_interval_s
    while True:
        pause()
        operation = _field(client.execute(BULK_STATUS_QUERY, {"id": operation_id}, log=log), "bulkOperation")
        status = operation.get("status")
        objects = int(operation.get("objectCount") or 0)
        log(f"shopify: bulk operation {operation_id} {status}, {objects} objects so far")
        if status == "COMPLETED":
            return operation
        if status in _TERMINAL_FAILURES:
            raise BulkOperationFailed(
                str(status), operation.get("errorCode"), objects, bool(operation.get("partialDataUrl"))
            )


def _field(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise SourceError(SOURCE, f"Shopify answered without {name}")
    return value
