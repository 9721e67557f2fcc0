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
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from orders_etl.sources.base import Log, SourceError
from orders_etl.sources.shopify.client import ShopifyGraphQLClient
from orders_etl.sources.shopify.errors import SOURCE, BulkOperationFailed, TransientError
from orders_etl.sources.shopify.queries import BULK_RUN_MUTATION, BULK_STATUS_QUERY

PARENT_KEY = "__parentId"
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


@dataclass(frozen=True, slots=True)
class BulkLine:
    """A parent object (``node``) or a line that could not be used (``problem``)."""

    line: int
    node: dict[str, Any] | None = None
    problem: dict[str, Any] | None = None


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
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


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


def iter_bulk_file(path: Path | str, stats: BulkFileStats | None = None) -> Iterator[BulkLine]:
    """Parents of a bulk-result JSONL file, children joined in, in file order; then orphans.

    ``stats`` (if given) is filled as the file is read; it is complete once exhausted.
    """
    path = Path(path)
    stats = stats if stats is not None else BulkFileStats()
    children: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    child_by_id: dict[str, dict[str, Any]] = {}
    marker = PARENT_KEY.encode()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if marker not in raw:
                continue  # cheap pre-filter: only lines that may be children are parsed here
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

    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
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
            if marker in raw and isinstance(value.get(PARENT_KEY), str):
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
