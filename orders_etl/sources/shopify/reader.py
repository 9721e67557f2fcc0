"""Readers: the Shopify API (paging or bulk) and a local bulk-result file.

Both yield :class:`RawRecord` (key = ``legacyResourceId``, ``updated_at`` = ``updatedAt``,
payload = the order node; an ordinary line of a bulk result comes as its ``text``, as
received, without payload: see ``bulk``) for orders updated in the half-open window
``[start, end)``, and record what they read in ``last_fetch`` so the caller can move its cursor: to
``last_fetch.window_end``, and only once ``last_fetch.complete`` is true and the records
are committed. A reader that cannot deliver the whole window raises ``SourceError``.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from orders_etl.sources.base import CredentialRejected, Log, SourceError, no_log
from orders_etl.sources.fingerprint import DigestingFile, fingerprint_of_read, input_fingerprint
from orders_etl.sources.shopify.auth import ClientCredentialsToken, StaticAccessToken, TokenProvider
from orders_etl.sources.shopify.bulk import (
    BulkFileStats,
    BulkLine,
    BulkTiming,
    iter_bulk_file,
    run_bulk_query,
)
from orders_etl.sources.shopify.client import (
    DEFAULT_API_VERSION,
    USER_AGENT,
    RetryPolicy,
    ShopifyGraphQLClient,
)
from orders_etl.sources.shopify.deleted import destroyed_orders
from orders_etl.sources.shopify.errors import SOURCE, BulkOperationFailed
from orders_etl.sources.shopify.mapping import parse_time
from orders_etl.sources.shopify.queries import (
    DEFAULT_PAGE_SIZE,
    ORDERS_COUNT_QUERY,
    ORDERS_PAGE_QUERY,
    bulk_orders_query,
    orders_search,
)
from orders_etl.store import RawRecord
from orders_etl.store.landing import dump_payload


@dataclass
class FetchSummary:
    """What one ``fetch`` read; ``complete`` turns true only after the last record."""

    mode: str
    window_start: datetime | None
    window_end: datetime | None
    records: int = 0
    max_updated_at: datetime | None = None
    complete: bool = False

    def saw(self, record: RawRecord) -> None:
        self.records += 1
        if record.updated_at is not None and (
            self.max_updated_at is None or record.updated_at > self.max_updated_at
        ):
            self.max_updated_at = record.updated_at


def raw_record(node: dict[str, Any], line: int | None = None) -> RawRecord:
    """An order node as landed: keyed on legacyResourceId (else its gid, else its line)."""
    legacy = node.get("legacyResourceId")
    if isinstance(legacy, str | int) and not isinstance(legacy, bool) and str(legacy).strip():
        key = str(legacy)
    elif isinstance(node.get("id"), str) and node["id"].strip():
        key = node["id"]
    elif line is not None:
        key = f"line:{line}"
    else:
        # Keyed on its content: two different records without an id must not share (and
        # overwrite) one reject row, as they did under the single key "unknown".
        digest = hashlib.blake2b(dump_payload(node).encode(), digest_size=8).hexdigest()
        key = f"unkeyed:{digest}"
    try:
        updated = parse_time(node.get("updatedAt"))
    except ValueError:
        updated = None  # the normalizer rejects it with the reason
    return RawRecord(key, updated, node)


def _line_record(line: BulkLine) -> RawRecord:
    """An ordinary bulk line as landed: keyed and dated as :func:`raw_record` would key and
    date its node (whose key fields are strings or null here), its text landed as received.

    Its ``payload`` is None: nothing but the landing reads a fetched record's payload, and
    the landing takes the text (parsing a million lines for nothing costs a minute).
    """
    head = line.head
    assert head is not None and line.text is not None
    legacy, gid = head.legacyResourceId, head.id
    if legacy is not None and legacy.strip():
        key = legacy
    elif gid is not None and gid.strip():
        key = gid
    else:
        key = f"line:{line.line}"
    try:
        updated = parse_time(head.updatedAt)
    except ValueError:
        updated = None  # the normalizer rejects it with the reason
    return RawRecord(key, updated, None, line.text)


def _bulk_record(line: BulkLine) -> RawRecord:
    if line.head is not None:
        return _line_record(line)
    if line.node is not None:
        return raw_record(line.node, line.line)
    return RawRecord(f"line:{line.line}", None, line.problem)


def _in_window(record: RawRecord, start: datetime | None, end: datetime | None) -> bool:
    if record.updated_at is None:
        return True  # cannot be placed in a window: pass it on to be rejected, never drop it
    return (start is None or record.updated_at >= start) and (end is None or record.updated_at < end)


# ---------------------------------------------------------------------------------------


# The bulk file is read through a hashing file (DigestingFile), a Python call per buffer filled.
_READ_BUFFER_BYTES = 1 << 20


class ShopifyBulkFileReader:
    """Reads a bulk-operation JSONL result from disk (``SHOPIFY_BULK_FILE``)."""

    source = SOURCE

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.last_fetch: FetchSummary | None = None
        # The fingerprint of the bytes the last fetch read, once it read them all.
        self.read_fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"ShopifyBulkFileReader({str(self.path)!r})"

    def fingerprint(self) -> str:
        """What :meth:`fetch` would read, as one digest (see ``orders_etl.sources.fingerprint``)."""
        self._check_exists()
        return input_fingerprint(type(self).__name__, [(self.path.name, self.path)])

    def _check_exists(self) -> None:
        if not self.path.is_file():
            raise SourceError(SOURCE, f"bulk file {self.path} does not exist (set SHOPIFY_BULK_FILE)")

    def fetch(self, start: datetime | None, end: datetime | None, log: Log = no_log) -> Iterator[RawRecord]:
        self._check_exists()
        summary = FetchSummary("file", start, end)
        self.last_fetch = summary
        self.read_fingerprint = None
        log(f"shopify: reading bulk file {self.path}")
        with DigestingFile(self.path) as file:
            stream = io.BufferedReader(file, _READ_BUFFER_BYTES)
            for record in map(_bulk_record, iter_bulk_file(self.path, stream=stream)):
                if _in_window(record, start, end):
                    summary.saw(record)
                    yield record
            summary.complete = True
            read = [(self.path.name, file.stat.st_mtime_ns, file.digest())]
            self.read_fingerprint = fingerprint_of_read(type(self).__name__, read)
        log(f"shopify: {summary.records} records from {self.path.name} in the window")

    def deleted(
        self, start: datetime | None, end: datetime | None, log: Log = no_log
    ) -> Iterator[tuple[str, datetime]]:
        return iter(())  # a bulk result lists live orders only


class ShopifyApiReader:
    """Orders from the Admin GraphQL API: paging for small windows, a bulk operation for big ones.

    Authentication is either ``access_token`` or ``client_id`` + ``client_secret`` (the
    client-credentials grant). ``overlap`` re-reads that much before ``start`` so orders
    updated while the previous sync ran, or indexed late by Shopify, are not missed; the
    upsert makes the re-read harmless. A window with at least ``bulk_threshold`` orders is
    read with a bulk operation.
    """

    source = SOURCE

    def __init__(
        self,
        shop_url: str,
        *,
        access_token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        page_size: int = DEFAULT_PAGE_SIZE,
        overlap: timedelta = timedelta(minutes=15),
        bulk_threshold: int = 5_000,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        max_attempts: int = 6,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_throttle_waits: int = 30,
        bulk_poll_interval_s: float = 2.0,
        bulk_max_poll_interval_s: float = 30.0,
        bulk_timeout_s: float = 6 * 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        parts = urlsplit(shop_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("SHOPIFY_SHOP_URL must be an http(s) URL such as https://acme.myshopify.com")
        if not 1 <= page_size <= 250:
            raise ValueError("page_size must be between 1 and 250 (Shopify's page limit)")
        if overlap < timedelta(0) or bulk_threshold < 1 or max_attempts < 1:
            raise ValueError("overlap must be >= 0, bulk_threshold and max_attempts >= 1")
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,  # a redirect would carry the token to another host
        )
        auth: TokenProvider
        if access_token and not (client_id or client_secret):
            auth = StaticAccessToken(access_token)
        elif client_id and client_secret and not access_token:
            auth = ClientCredentialsToken(shop_url, client_id, client_secret, self._http, clock=clock)
        else:
            self._http.close()
            raise ValueError(
                "give either SHOPIFY_ACCESS_TOKEN or both SHOPIFY_CLIENT_ID and SHOPIFY_CLIENT_SECRET"
            )
        self.client = ShopifyGraphQLClient(
            shop_url,
            auth,
            http=self._http,
            api_version=api_version,
            retry=RetryPolicy(max_attempts, backoff_base_s, backoff_max_s, max_throttle_waits),
            sleep=sleep,
            clock=clock,
        )
        self.page_size = page_size
        self.overlap = overlap
        self.bulk_threshold = bulk_threshold
        self.bulk_timing = BulkTiming(bulk_poll_interval_s, bulk_max_poll_interval_s, bulk_timeout_s)
        self._sleep = sleep
        self._clock = clock
        self._now = now
        self.last_fetch: FetchSummary | None = None

    def __repr__(self) -> str:
        return (
            f"ShopifyApiReader({self.client!r}, page_size={self.page_size}, "
            f"bulk_threshold={self.bulk_threshold})"
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ShopifyApiReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- window ---------------------------------------------------------------------------

    def window(self, start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime]:
        """The window actually read: ``overlap`` earlier, and ``end`` pinned (now when None)."""
        pinned_end = end if end is not None else self._now()
        return (start - self.overlap if start is not None else None), pinned_end

    # -- orders ---------------------------------------------------------------------------

    def fetch(self, start: datetime | None, end: datetime | None, log: Log = no_log) -> Iterator[RawRecord]:
        window_start, window_end = self.window(start, end)
        search = orders_search(window_start, window_end)
        count, precision = self._count(search, log)
        use_bulk = count >= self.bulk_threshold
        summary = FetchSummary("bulk" if use_bulk else "paging", window_start, window_end)
        self.last_fetch = summary
        shown = f"{count}+" if precision == "AT_LEAST" else str(count)
        log(
            f"shopify: {shown} orders updated in [{_iso(window_start)}, {_iso(window_end)}): reading them by "
            f"{'a bulk operation' if use_bulk else 'paging'} (bulk threshold {self.bulk_threshold})"
        )
        records = self._bulk(search, log) if use_bulk else self._pages(search, log)
        for record in records:
            summary.saw(record)
            yield record
        summary.complete = True
        stats = self.client.stats
        log(
            f"shopify: read {summary.records} orders ({summary.mode}); {stats.requests} requests, "
            f"{stats.retries} retries, {stats.throttled} throttled, {stats.throttle_wait_s:.1f} s waiting "
            "for the cost bucket"
        )

    def _count(self, search: str | None, log: Log) -> tuple[int, str]:
        data = self.client.execute(
            ORDERS_COUNT_QUERY, {"query": search, "limit": self.bulk_threshold}, log=log
        )
        counted = data.get("ordersCount")
        if not isinstance(counted, dict) or not isinstance(counted.get("count"), int):
            raise SourceError(SOURCE, "ordersCount answered without a count")
        return counted["count"], str(counted.get("precision"))

    def _pages(self, search: str | None, log: Log) -> Iterator[RawRecord]:
        after: str | None = None
        page = total = 0
        cursors: dict[str, int] = {}  # cursor -> the page that gave it
        while True:
            variables = {"first": self.page_size, "after": after, "query": search}
            connection = self.client.execute(ORDERS_PAGE_QUERY, variables, log=log).get("orders")
            if not isinstance(connection, dict) or not isinstance(connection.get("nodes"), list):
                raise SourceError(SOURCE, f"orders page {page + 1} came without a list of nodes")
            page_info = connection.get("pageInfo")
            if not isinstance(page_info, dict) or not isinstance(page_info.get("hasNextPage"), bool):
                # Without pageInfo we cannot tell the last page from a cut one: never guess.
                raise SourceError(SOURCE, f"orders page {page + 1} came without pageInfo.hasNextPage")
            page += 1
            for node in connection["nodes"]:
                total += 1
                yield (
                    raw_record(node)
                    if isinstance(node, dict)
                    else RawRecord(f"page:{page}:{total}", None, node)
                )
            bucket = self.client.bucket.state
            budget = (
                f"; bucket {bucket.currently_available:.0f}/{bucket.maximum_available:.0f}" if bucket else ""
            )
            log(f"shopify: page {page}: {len(connection['nodes'])} orders, {total} so far{budget}")
            if not page_info["hasNextPage"]:
                return
            if not connection["nodes"]:
                raise SourceError(
                    SOURCE,
                    f"orders page {page} is empty but says there is a next page; the window was not read "
                    "completely",
                )
            after = page_info.get("endCursor")
            if not isinstance(after, str) or not after:
                raise SourceError(SOURCE, f"orders page {page} says there is a next page but gives no cursor")
            if after in cursors:
                # Following it would read the same pages again, forever.
                raise SourceError(
                    SOURCE,
                    f"orders page {page} gives the same cursor as page {cursors[after]}: Shopify is paging "
                    "in a loop; the window was not read completely",
                )
            cursors[after] = page

    def _bulk(self, search: str | None, log: Log) -> Iterator[RawRecord]:
        try:
            operation = run_bulk_query(
                self.client,
                bulk_orders_query(search),
                log=log,
                timing=self.bulk_timing,
                sleep=self._sleep,
                clock=self._clock,
            )
        except BulkOperationFailed as failed:
            if failed.error_code == "ACCESS_DENIED":
                raise CredentialRejected(
                    SOURCE,
                    f"{failed}: the app needs the read_orders scope (and read_all_orders for old orders)",
                ) from None
            # Partial data is never a complete window; paging reads the same window correctly.
            log(f"shopify: {failed}; its partial data is not used, reading the window by paging instead")
            if self.last_fetch is not None:
                self.last_fetch.mode = "paging (bulk failed)"
            yield from self._pages(search, log)
            return
        url = operation.get("url")
        expected_objects = _int(operation.get("objectCount"))
        expected_roots = _int(operation.get("rootObjectCount"))
        if not url:
            if expected_objects:
                raise SourceError(
                    SOURCE, f"bulk operation reports {expected_objects} objects but no result URL"
                )
            log("shopify: bulk operation completed with no orders")
            return
        with tempfile.NamedTemporaryFile(prefix="shopify-bulk-", suffix=".jsonl") as sink:
            expected_size = _int(operation.get("fileSize"))
            size = self.client.download(url, sink, log=log, expected_size=expected_size)
            log(f"shopify: downloaded bulk result, {size} bytes, {expected_objects} objects")
            stats = BulkFileStats()
            yield from map(_bulk_record, iter_bulk_file(sink.name, stats))
        if (expected_objects is not None and stats.objects != expected_objects) or (
            expected_roots is not None and stats.roots != expected_roots
        ):
            raise SourceError(
                SOURCE,
                f"bulk result holds {stats.objects} objects ({stats.roots} orders) but Shopify reported "
                f"{expected_objects} ({expected_roots}): the result is incomplete",
            )

    # -- deleted orders ---------------------------------------------------------------------

    def deleted(
        self, start: datetime | None, end: datetime | None, log: Log = no_log
    ) -> Iterator[tuple[str, datetime]]:
        window_start, window_end = self.window(start, end)
        return destroyed_orders(self.client, window_start, window_end, log=log)


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat() if moment is not None else "-inf"


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
