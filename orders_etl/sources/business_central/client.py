"""HTTP client for one Business Central company (API v2.0): paging, retries, errors.

* Server-driven paging: ``Prefer: odata.maxpagesize=N`` and ``@odata.nextLink`` followed
  verbatim until the last page.
* 429 waits ``Retry-After``; 5xx, timeouts, resets and truncated or unreadable bodies are
  retried with exponential backoff and jitter (tenacity), a bounded number of times, then
  raise :class:`~orders_etl.sources.base.SourceError`.
* 401 renews a client-credentials token once, then raises ``CredentialRejected`` naming
  the setting; other 4xx raise ``SourceError`` with Business Central's error code.
* Amounts are parsed as ``Decimal`` (``parse_float=Decimal``), never float.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from orders_etl.sources.base import SourceError
from orders_etl.sources.business_central.auth import SOURCE, TokenSource
from orders_etl.sources.business_central.errors import Throttled, TransientError, retry_after_s

DEFAULT_PAGE_SIZE = 1_000
# Business Central online never returns more than 20,000 entities per page.
MAX_PAGE_SIZE = 20_000


class NotFound(SourceError):
    """HTTP 404: the company, or the endpoint on this Business Central version, does not exist."""


class BusinessCentralClient:
    """GETs against ``{base_url}/companies({company_id})/…`` with paging and retries."""

    def __init__(
        self,
        base_url: str,
        company_id: str,
        auth: TokenSource,
        *,
        http: httpx.Client,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_attempts: int = 6,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("BC_BASE_URL must be an http(s) URL")
        if not company_id.strip():
            raise ValueError("BC_COMPANY_ID is empty")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        self.company_url = f"{base_url.rstrip('/')}/companies({company_id.strip()})"
        self._auth = auth
        self._http = http
        self._page_size = page_size
        self._max_attempts = max_attempts
        # Exponential backoff plus up to a second of jitter, so parallel clients spread out.
        self._backoff = wait_exponential(multiplier=backoff_initial_s, max=backoff_max_s) + wait_random(0, 1)
        self._max_retry_after_s = max_retry_after_s
        self._sleep = sleep
        #: Counters for progress lines and tests: requests sent, retries after each cause.
        self.requests = 0
        self.retries: dict[str, int] = {}

    # -- public ------------------------------------------------------------------------

    def pages(
        self, entity: str, *, filter: str | None = None, select: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """The entity set, one list of documents per server page."""
        params: dict[str, str] | None = {}
        if filter:
            params["$filter"] = filter
        if select:
            params["$select"] = select
        url: str | None = f"{self.company_url}/{entity}"
        page = 0
        followed: dict[str, int] = {}  # next link -> the page that gave it
        while url is not None:
            page += 1
            body = self._get_json(url, params or None, what=f"{entity} page {page}")
            values = body.get("value")
            if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
                raise SourceError(
                    SOURCE, f"GET {entity} page {page}: the answer has no 'value' list of documents"
                )
            next_link = body.get("@odata.nextLink")
            if next_link is not None and not isinstance(next_link, str):
                raise SourceError(SOURCE, f"GET {entity} page {page}: '@odata.nextLink' is not a URL")
            # The next link already carries the filter, select and skip token; OData allows
            # it to be relative to the page it came with.
            next_url = urljoin(url, next_link) if next_link is not None else None
            if next_url is not None:
                self._check_next(entity, page, values, next_url, followed)
            yield values
            url, params = next_url, None

    def _check_next(
        self, entity: str, page: int, values: list, next_url: str, followed: dict[str, int]
    ) -> None:
        """A next link is followed only if it leads somewhere new on the same server."""
        what = f"GET {entity} page {page}"
        if not values:
            raise SourceError(
                SOURCE, f"{what}: an empty page with an '@odata.nextLink'; the read is not complete"
            )
        if urlsplit(next_url)[:2] != urlsplit(self.company_url)[:2]:
            # Following it would send the bearer token to another host.
            raise SourceError(SOURCE, f"{what}: '@odata.nextLink' points to another host; not followed")
        if next_url in followed:
            raise SourceError(
                SOURCE,
                f"{what}: '@odata.nextLink' repeats the one of page {followed[next_url]}: the server is "
                "paging in a loop; the read is not complete",
            )
        followed[next_url] = page

    def collection(self, entity: str, *, filter: str | None = None, select: str | None = None) -> list[dict]:
        return [doc for page in self.pages(entity, filter=filter, select=select) for doc in page]

    # -- one request, retried ----------------------------------------------------------

    def _get_json(self, url: str, params: dict[str, str] | None, *, what: str) -> dict[str, Any]:
        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(url, params, what=what)
        except TransientError as exc:
            raise SourceError(
                SOURCE, f"GET {what}: gave up after {self._max_attempts} attempts; last error: {exc.reason}"
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, Throttled) and error.retry_after is not None:
            return min(error.retry_after, self._max_retry_after_s)
        return self._backoff(state)

    def _count_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        cause = "throttled" if isinstance(error, Throttled) else "transient"
        self.retries[cause] = self.retries.get(cause, 0) + 1

    def _attempt(self, url: str, params: dict[str, str] | None, *, what: str) -> dict[str, Any]:
        renewed = False
        while True:
            headers = {
                "Authorization": f"Bearer {self._auth.token()}",
                "Accept": "application/json",
                "Prefer": f"odata.maxpagesize={self._page_size}",
            }
            self.requests += 1
            try:
                response = self._http.get(url, params=params, headers=headers)
            except httpx.TimeoutException as exc:
                raise TransientError(f"timed out ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                # Resets, refused connections and bodies cut short (RemoteProtocolError).
                raise TransientError(f"connection failed ({type(exc).__name__})") from None
            status = response.status_code
            if status == 401 and self._auth.renewable and not renewed:
                # The token may have been revoked or expired early: one fresh token, then judge.
                self._auth.invalidate()
                renewed = True
                continue
            if status in (401, 403):
                raise self._auth.refused(status)
            if status == 429:
                raise Throttled(retry_after_s(response.headers.get("Retry-After")))
            if status >= 500:
                raise TransientError(f"HTTP {status}{_bc_error(response)}")
            if status == 404:
                raise NotFound(
                    SOURCE, f"GET {what}: HTTP 404{_bc_error(response)}; check BC_BASE_URL and BC_COMPANY_ID"
                )
            if status != 200:
                raise SourceError(SOURCE, f"GET {what}: HTTP {status}{_bc_error(response)}")
            try:
                body = json.loads(response.content, parse_float=Decimal)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError, a number beyond 4,300 digits
                # A proxy's HTML error page or a body cut short: worth another try.
                raise TransientError("the answer is not complete JSON") from None
            if not isinstance(body, dict):
                raise TransientError("the answer is not a JSON object")
            return body


def _bc_error(response: httpx.Response) -> str:
    """``" (code: message)"`` from Business Central's ``{"error": {...}}`` body, shortened."""
    try:
        error = json.loads(response.content).get("error")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ""
    if not isinstance(error, dict):
        return ""
    code = str(error.get("code", "")).strip()
    message = " ".join(str(error.get("message", "")).split())
    if len(message) > 200:
        message = message[:197] + "..."
    text = ": ".join(part for part in (code, message) if part)
    return f" ({text})" if text else ""
