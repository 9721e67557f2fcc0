"""httpx client for ``POST {shop}/admin/api/{version}/graphql.json``.

What it guarantees to the reader:

* a call returns the complete ``data`` of a successful answer, or raises: a 5xx, timeout,
  reset, truncated or unreadable body is retried with exponential backoff and jitter
  (tenacity), at most ``max_attempts`` times, then :class:`SourceError`; nothing is ever
  returned half-read;
* it waits before a query would exceed the cost bucket (``extensions.cost.throttleStatus``),
  and after a ``THROTTLED`` (or HTTP 429) answer waits as long as the bucket needs; those
  waits do not use up the retry budget, but are bounded too;
* GraphQL validation errors and ``MAX_COST_EXCEEDED`` fail at once with Shopify's message;
* a 401/403 raises :class:`CredentialRejected` naming the credential (never its value).

No secret appears in a message, log line or ``repr``: texts quoted from the server are
redacted against every secret the client holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from orders_etl.sources.base import CredentialRejected, Log, SourceError, no_log
from orders_etl.sources.shopify.auth import TokenProvider
from orders_etl.sources.shopify.errors import SOURCE, TransientError, redact
from orders_etl.sources.shopify.throttle import CostBucket

T = TypeVar("T")
DEFAULT_API_VERSION = "2026-10"
USER_AGENT = "orders_etl-shopify-sync"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # THROTTLED answers tolerated per call; each is followed by the wait the bucket needs,
    # so reaching this means the bucket is shared with a busy app, not a bug of ours.
    max_throttle_waits: int = 30
    # The longest single wait a 429's Retry-After (or the bucket's arithmetic) may impose: a
    # proxy asking for a day must not stall the sync for a day.
    max_throttle_wait_s: float = 300.0


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    throttle_wait_s: float = 0.0
    cost_spent: float = 0.0


class ShopifyGraphQLClient:
    def __init__(
        self,
        shop_url: str,
        auth: TokenProvider,
        *,
        http: httpx.Client,
        api_version: str = DEFAULT_API_VERSION,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shop_url = shop_url.rstrip("/")
        self.api_version = api_version
        self.endpoint = f"{self.shop_url}/admin/api/{api_version}/graphql.json"
        self._auth = auth
        self._http = http
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self.bucket = CostBucket()
        self.stats = ClientStats()

    def __repr__(self) -> str:
        return (
            f"ShopifyGraphQLClient(shop_url={self.shop_url!r}, api_version={self.api_version!r}, "
            f"auth={self._auth.credential!r} <secret>)"
        )

    # -- public -------------------------------------------------------------------------

    def execute(
        self, query: str, variables: dict[str, Any] | None = None, *, log: Log = no_log
    ) -> dict[str, Any]:
        """The ``data`` of ``query``; retries transient failures, waits out the cost bucket."""
        key = (query, (variables or {}).get("first"))
        return self.with_retries(lambda: self._attempt(query, variables, key, log), "GraphQL request", log)

    def download(
        self, url: str, sink: IO[bytes], *, log: Log = no_log, expected_size: int | None = None
    ) -> int:
        """Stream ``url`` (a bulk result) into ``sink``; returns the byte count.

        A body shorter than ``expected_size`` (the operation's ``fileSize``) is retried like
        any truncated answer: a cut-off file would look like a complete, smaller window.

        The result lives on a storage host, not the shop: it is fetched with a client that
        sends no Shopify token (a signed URL needs none, and the token must not leave Shopify).
        """

        def attempt() -> int:
            sink.seek(0)
            sink.truncate()
            written = 0
            try:
                with (
                    httpx.Client(timeout=self._http.timeout, headers={"User-Agent": USER_AGENT}) as plain,
                    plain.stream("GET", url) as response,
                ):
                    if response.status_code >= 500 or response.status_code == 429:
                        raise TransientError(f"bulk result download answered HTTP {response.status_code}")
                    if response.status_code != 200:
                        raise SourceError(
                            SOURCE,
                            f"bulk result download answered HTTP {response.status_code} "
                            "(a result URL expires 7 days after the operation; run the sync again)",
                        )
                    for chunk in response.iter_bytes():
                        sink.write(chunk)
                        written += len(chunk)
            except httpx.TimeoutException as exc:
                raise TransientError(f"bulk result download timed out ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                raise TransientError(f"bulk result download failed ({type(exc).__name__})") from None
            sink.flush()
            if expected_size is not None and written != expected_size:
                raise TransientError(f"bulk result truncated: {written} of {expected_size} bytes")
            return written

        return self.with_retries(attempt, "bulk result download", log)

    def with_retries(self, attempt: Callable[[], T], what: str, log: Log) -> T:
        """Run ``attempt``, retrying :class:`TransientError` with backoff and jitter, bounded."""
        policy = self.retry

        def before_sleep(state: RetryCallState) -> None:
            self.stats.retries += 1
            error = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log(
                f"shopify: {what} failed ({self._redact(str(error))}); retry {state.attempt_number}"
                f"/{policy.max_attempts - 1} in {wait:.2f} s"
            )

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(policy.max_attempts),
            wait=wait_random_exponential(multiplier=policy.backoff_base_s, max=policy.backoff_max_s),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except TransientError as exc:
            raise SourceError(
                SOURCE,
                f"{what} to {self.shop_url} failed {policy.max_attempts} times, "
                f"last: {self._redact(str(exc))}; the window was not read completely",
            ) from None

    # -- one attempt ----------------------------------------------------------------------

    def _attempt(self, query: str, variables: dict[str, Any] | None, key: object, log: Log) -> dict[str, Any]:
        throttle_waits = 0
        renewed = False
        while True:
            self._wait(self.bucket.wait_before(key, self._clock()))
            headers = self._auth.headers()
            self.stats.requests += 1
            try:
                response = self._http.post(
                    self.endpoint, json={"query": query, "variables": variables or {}}, headers=headers
                )
            except httpx.TimeoutException as exc:
                raise TransientError(f"timed out ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                # Covers resets and bodies cut short of their Content-Length.
                raise TransientError(f"connection failed ({type(exc).__name__})") from None
            status = response.status_code
            if status == 401:
                if not renewed and self._auth.renew_after_rejection():
                    renewed = True
                    continue
                raise CredentialRejected(
                    SOURCE,
                    f"Shopify refused {self._auth.credential} for {self.shop_url} (HTTP 401): "
                    f"{self._auth.how_to_fix}",
                )
            if status == 403:
                raise CredentialRejected(
                    SOURCE,
                    f"Shopify denied {self._auth.credential} access to {self.endpoint} (HTTP 403): "
                    "the app needs the read_orders scope (and read_all_orders for orders older than 60 days)",
                )
            if status == 429:
                throttle_waits = self._throttled(throttle_waits, _retry_after(response), None, key, log)
                continue
            if status >= 500:
                raise TransientError(f"HTTP {status}")
            if status != 200:
                hint = " (check SHOPIFY_SHOP_URL and SHOPIFY_API_VERSION)" if status == 404 else ""
                raise SourceError(SOURCE, f"{self.endpoint} answered HTTP {status}{hint}")
            body = _json_body(response)
            cost = (
                body.get("extensions", {}).get("cost") if isinstance(body.get("extensions"), dict) else None
            )
            errors = body.get("errors")
            if errors:
                codes = _error_codes(errors)
                if "THROTTLED" in codes:
                    throttle_waits = self._throttled(throttle_waits, None, cost, key, log)
                    continue
                self.bucket.observe(cost, self._clock(), key)
                self._raise_for_errors(errors, codes)
            self.bucket.observe(cost, self._clock(), key)
            if isinstance(cost, dict) and isinstance(cost.get("actualQueryCost"), int | float | Decimal):
                self.stats.cost_spent += float(cost["actualQueryCost"])
            data = body.get("data")
            if not isinstance(data, dict):
                raise TransientError("answer without data")
            return data

    def _throttled(self, waits: int, retry_after: float | None, cost: Any, key: object, log: Log) -> int:
        self.stats.throttled += 1
        waits += 1
        if waits > self.retry.max_throttle_waits:
            raise SourceError(
                SOURCE,
                f"still throttled after {waits - 1} waits for the cost bucket; another app may be "
                "using this shop's API budget",
            )
        wait = (
            retry_after
            if retry_after is not None
            else self.bucket.wait_after_throttled(cost, self._clock(), key)
        )
        if wait is None:
            wait = min(self.retry.backoff_max_s, self.retry.backoff_base_s * 2**waits)
        wait = min(wait, self.retry.max_throttle_wait_s)
        log(f"shopify: throttled by Shopify; waiting {wait:.2f} s for the cost bucket to refill")
        self._wait(wait)
        return waits

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.stats.throttle_wait_s += seconds
            self._sleep(seconds)

    def _raise_for_errors(self, errors: Any, codes: set[str]) -> None:
        message = self._redact(_error_messages(errors))
        if "INTERNAL_SERVER_ERROR" in codes:
            raise TransientError(f"Shopify internal error: {message}")
        if "ACCESS_DENIED" in codes:
            raise CredentialRejected(
                SOURCE,
                f"Shopify denied {self._auth.credential} access: {message} (grant the app the "
                "read_orders scope, and read_all_orders for orders older than 60 days)",
            )
        if "MAX_COST_EXCEEDED" in codes:
            raise SourceError(SOURCE, f"query too expensive: {message} (lower the page size)")
        raise SourceError(SOURCE, f"Shopify rejected the query: {message}")

    def _redact(self, text: str) -> str:
        return redact(text, self._auth.secrets())


# ---------------------------------------------------------------------------------------


def _json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise TransientError(f"truncated or unreadable JSON body ({len(response.content)} bytes)") from None
    if not isinstance(body, dict):
        raise TransientError("answer is not a JSON object")
    return body


def _error_codes(errors: Any) -> set[str]:
    if not isinstance(errors, list):
        return set()
    codes = set()
    for error in errors:
        if isinstance(error, dict) and isinstance(error.get("extensions"), dict):
            code = error["extensions"].get("code")
            if isinstance(code, str):
                codes.add(code)
    return codes


def _error_messages(errors: Any) -> str:
    if isinstance(errors, str):
        return errors[:500]
    if not isinstance(errors, list):
        return repr(errors)[:500]
    parts = []
    for error in errors[:5]:
        if isinstance(error, dict):
            text = str(error.get("message", error))
            code = (
                error.get("extensions", {}).get("code") if isinstance(error.get("extensions"), dict) else None
            )
            parts.append(f"{text} [{code}]" if code else text)
        else:
            parts.append(str(error))
    return "; ".join(parts)[:1000]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
