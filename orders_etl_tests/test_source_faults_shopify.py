"""Source faults against the fake Shopify Admin API (real HTTP): each ends one of two ways.

Either the reader delivers exactly the server's orders (no loss, no duplicate, the content
as served) and says the fetch is complete, or it raises ``SourceError`` naming the source
and the cause, with the fetch marked incomplete, so the cursor cannot move. Never a silent
partial window, never an endless loop.

What the Shopify tests already covered (test_shopify_client/_sync/_bulk): each transient
fault once before the first page, retries exhausted after page 1, one THROTTLED answer, a
bad or early-expired token between fetches, a page without cursor or pageInfo, bulk
download faults. Added here: every fault *in the middle* of a window and persisting,
THROTTLED and HTTP 429 storms, a token expiring mid-sync (renewed once, then a clear
error), a repeated cursor, empty pages claiming a next page, and the same for the paging
of destroyed-order events.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from orders_etl.sources.base import CredentialRejected, SourceError
from orders_etl.sources.shopify.deleted import destroyed_orders
from orders_etl_tests import fake_shopify
from orders_etl_tests.fake_shopify import (
    FAULT_KINDS,
    FakeShopify,
    Faults,
    _Handler,
    make_orders,
    node_key,
)

START = datetime(2026, 3, 1, tzinfo=UTC)
PAGE = 25  # the reader's page size: 120 orders are 5 pages
#: Faults the fake actually injected, over this module (reported at its end with ``-s``).
INJECTED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_injected() -> Iterator[None]:
    yield
    print(f"\nshopify source faults injected: {sum(INJECTED.values())} {dict(INJECTED)}")


class Sleeps(list[float]):
    """Records the waits the reader asks for instead of spending them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class StormyShopify(FakeShopify):
    """The fake, able to answer HTTP 429 with a Retry-After for the next ``http_429`` requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http_429 = 0
        self.retry_after = "2"

    def _graphql(self, handler: _Handler, body: bytes) -> None:
        if self.http_429 > 0 and self._authorized(handler):
            self.http_429 -= 1
            self.stats.faults["429"] += 1
            payload = b'{"errors":"Exceeded 2 calls per second for api client. Reduce request rates."}'
            handler.send_response(429)
            handler.send_header("Retry-After", self.retry_after)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        super()._graphql(handler, body)


@pytest.fixture
def fake() -> Iterator[StormyShopify]:
    with StormyShopify(make_orders(120, start=START), faults=Faults(stall_s=0.6)) as server:
        yield server
        INJECTED.update(server.stats.faults)


def api_reader(fake: FakeShopify, **overrides: Any) -> Any:
    """The fake's test reader, with a timeout a busy machine cannot hit by accident (a test
    that wants timeouts sets its own, below the fake's stall)."""
    return fake_shopify.api_reader(fake, **({"timeout_s": 5.0} | overrides))


def read(reader: Any) -> tuple[list[Any], SourceError | None, list[str]]:
    """Everything the reader yields, and the SourceError it ended with (if any)."""
    records: list[Any] = []
    lines: list[str] = []
    try:
        for record in reader.fetch(None, None, lines.append):
            records.append(record)
    except SourceError as exc:
        return records, exc, lines
    return records, None, lines


def assert_exact(fake: FakeShopify, reader: Any, records: list[Any], error: SourceError | None) -> None:
    """Exactly the server's orders, each once, as served; the fetch complete."""
    assert error is None, f"the reader failed: {error}"
    served = {node_key(order): order for order in fake.orders.values()}
    keys = [record.record_key for record in records]
    assert len(keys) == len(set(keys)) and set(keys) == set(served)
    assert all(record.payload == served[record.record_key] for record in records)
    assert reader.last_fetch.complete


def assert_loud(
    fake: FakeShopify, reader: Any, records: list[Any], error: SourceError | None, cause: str
) -> None:
    """A SourceError naming the source and the cause; the fetch incomplete; nothing invented."""
    assert error is not None, "the reader reported a complete window"
    assert error.source == "shopify" and str(error).startswith("shopify: ")
    assert cause in str(error), str(error)
    assert reader.last_fetch is None or not reader.last_fetch.complete
    served = {node_key(order) for order in fake.orders.values()}
    assert {record.record_key for record in records} <= served


def on_page(fake: FakeShopify, page: int, action: Callable[[], None]) -> None:
    """Run ``action`` once, right after the fake served orders page ``page``."""
    fake.after_orders_page = lambda served: action() if served == page else None


# ---------------------------------------------------------------------------------------
# Transient faults in the middle of a window


def timeout_for(kind: str) -> float:
    """The client's timeout: below the fake's 0.6 s stall for timeouts, else generous (a busy
    machine must not add timeouts of its own)."""
    return 0.3 if kind == "timeout" else 5.0


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_fault_mid_window_is_retried_and_the_window_arrives_exactly(fake: StormyShopify, kind: str) -> None:
    on_page(fake, 2, lambda: fake.fail_next(kind, times=3))
    with api_reader(fake, timeout_s=timeout_for(kind), sleep=Sleeps()) as reader:
        records, error, lines = read(reader)
    assert_exact(fake, reader, records, error)
    assert fake.stats.faults[kind] == 3 and reader.client.stats.retries >= 3
    assert sum("retry" in line for line in lines) == reader.client.stats.retries


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_fault_that_persists_mid_window_fails_loudly(fake: StormyShopify, kind: str) -> None:
    on_page(fake, 3, lambda: fake.fail_next(kind, times=4))
    with api_reader(fake, timeout_s=timeout_for(kind), max_attempts=4, sleep=Sleeps()) as reader:
        records, error, _ = read(reader)
    assert_loud(fake, reader, records, error, "failed 4 times")
    assert "the window was not read completely" in str(error)
    assert len(records) == 3 * PAGE  # what came before the fault, marked incomplete
    assert fake.stats.faults[kind] == 4


# ---------------------------------------------------------------------------------------
# Throttling storms


def _throttled_answers(fake: FakeShopify, count: int) -> Callable[[dict[str, Any]], None]:
    """A tamper turning the next ``count`` answers into THROTTLED errors, as Shopify words them."""
    left = {"n": count}

    def tamper(answer: dict[str, Any]) -> None:
        if left["n"] <= 0:
            return
        left["n"] -= 1
        fake.stats.faults["THROTTLED"] += 1
        answer.clear()
        answer["errors"] = [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]
        answer["extensions"] = {
            "cost": {
                "requestedQueryCost": 52,
                "actualQueryCost": None,
                "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 2, "restoreRate": 100.0},
            }
        }

    return tamper


def test_a_throttled_storm_is_waited_out_and_costs_no_retry(fake: StormyShopify) -> None:
    on_page(fake, 1, lambda: setattr(fake, "tamper", _throttled_answers(fake, 12)))
    sleeps = Sleeps()
    with api_reader(fake, sleep=sleeps) as reader:
        records, error, lines = read(reader)
    assert_exact(fake, reader, records, error)
    assert fake.stats.faults["THROTTLED"] == 12 and reader.client.stats.throttled == 12
    assert reader.client.stats.retries == 0
    # Each wait is what the bucket needs for the query's cost: (52 - 2) / 100 points per second.
    assert sum(0.5 <= s <= 0.6 for s in sleeps) >= 12
    assert sum("throttled by Shopify" in line for line in lines) == 12


def test_a_throttled_storm_that_never_ends_fails_loudly(fake: StormyShopify) -> None:
    on_page(fake, 2, lambda: setattr(fake, "tamper", _throttled_answers(fake, 1_000)))
    with api_reader(fake, max_throttle_waits=10, sleep=Sleeps()) as reader:
        records, error, _ = read(reader)
    assert_loud(fake, reader, records, error, "still throttled after 10 waits")
    # (the tamper starts with page 2's own answer: only page 1 arrived)
    assert len(records) == PAGE and fake.stats.faults["THROTTLED"] == 11


def test_an_http_429_storm_waits_as_retry_after_says(fake: StormyShopify) -> None:
    on_page(fake, 2, lambda: setattr(fake, "http_429", 8))
    sleeps = Sleeps()
    with api_reader(fake, sleep=sleeps) as reader:
        records, error, _ = read(reader)
    assert_exact(fake, reader, records, error)
    assert fake.stats.faults["429"] == 8 and sleeps.count(2.0) == 8
    assert reader.client.stats.retries == 0


def test_an_http_429_asking_for_an_absurd_wait_is_capped(fake: StormyShopify) -> None:
    fake.http_429, fake.retry_after = 1, "86400"  # a day
    sleeps = Sleeps()
    with api_reader(fake, sleep=sleeps) as reader:
        records, error, _ = read(reader)
    assert_exact(fake, reader, records, error)
    assert max(sleeps) == reader.client.retry.max_throttle_wait_s == 300.0


def test_an_http_429_storm_that_never_ends_fails_loudly(fake: StormyShopify) -> None:
    fake.http_429 = 1_000
    with api_reader(fake, max_throttle_waits=5, sleep=Sleeps()) as reader:
        records, error, _ = read(reader)
    assert_loud(fake, reader, records, error, "still throttled after 5 waits")
    assert records == [] and fake.stats.faults["429"] == 6


# ---------------------------------------------------------------------------------------
# Tokens expiring mid-sync


CLIENT = {"client_id": "orders-etl-app", "client_secret": "cc-secret-never-printed"}


@pytest.fixture
def oauth_fake() -> Iterator[FakeShopify]:
    with FakeShopify(make_orders(120, start=START), access_token=None, **CLIENT) as server:
        yield server


def test_a_token_expiring_mid_sync_is_renewed_once_and_the_window_arrives(oauth_fake: FakeShopify) -> None:
    on_page(oauth_fake, 2, oauth_fake.expire_tokens)
    with api_reader(oauth_fake, **CLIENT) as reader:
        records, error, _ = read(reader)
    assert_exact(oauth_fake, reader, records, error)
    assert oauth_fake.stats.unauthorized == 1 and oauth_fake.stats.token_requests == 2
    INJECTED["expired token"] += 1


def test_a_token_refused_again_after_renewal_is_a_clear_error(oauth_fake: FakeShopify) -> None:
    def revoke_for_good() -> None:
        oauth_fake.token_ttl_s = -1.0  # every token issued from now on is already expired
        oauth_fake.expire_tokens()

    on_page(oauth_fake, 2, revoke_for_good)
    with api_reader(oauth_fake, **CLIENT) as reader:
        records, error, _ = read(reader)
    assert isinstance(error, CredentialRejected)
    assert_loud(oauth_fake, reader, records, error, "SHOPIFY_CLIENT_ID / SHOPIFY_CLIENT_SECRET")
    assert "HTTP 401" in str(error) and CLIENT["client_secret"] not in str(error)
    assert all(token not in str(error) for token in oauth_fake.issued_tokens)
    # Renewed exactly once (no loop of renewals), then the run stops with the cause.
    assert oauth_fake.stats.token_requests == 2 and oauth_fake.stats.unauthorized == 2
    assert len(records) == 2 * PAGE
    INJECTED["expired token"] += 2


def test_a_static_token_revoked_mid_sync_is_a_clear_error(fake: StormyShopify) -> None:
    revoked = fake.access_token
    on_page(fake, 2, lambda: setattr(fake, "access_token", "shpat_rotated"))
    with api_reader(fake) as reader:
        records, error, _ = read(reader)
    assert isinstance(error, CredentialRejected)
    assert_loud(fake, reader, records, error, "SHOPIFY_ACCESS_TOKEN")
    assert revoked not in str(error) and fake.stats.unauthorized == 1
    INJECTED["revoked token"] += 1


# ---------------------------------------------------------------------------------------
# Paging that lies: repeated cursors, empty pages that claim more


def _orders_page(answer: dict[str, Any]) -> dict[str, Any] | None:
    orders = answer.get("data", {}).get("orders") if isinstance(answer.get("data"), dict) else None
    return orders if isinstance(orders, dict) and "pageInfo" in orders else None


def _tamper_pages(fake: FakeShopify, change: Callable[[int, dict[str, Any], list[str]], None]) -> None:
    """Let ``change(page number, connection, cursors so far)`` rewrite each orders page."""
    cursors: list[str] = []
    pages = {"n": 0}

    def tamper(answer: dict[str, Any]) -> None:
        connection = _orders_page(answer)
        if connection is None:
            return
        pages["n"] += 1
        change(pages["n"], connection, cursors)
        if connection["pageInfo"].get("endCursor"):
            cursors.append(connection["pageInfo"]["endCursor"])

    fake.tamper = tamper


@pytest.mark.timeout(30)
@pytest.mark.parametrize("repeats", ["the previous page's", "the first page's"])
def test_a_cursor_already_seen_fails_loudly_instead_of_looping(fake: StormyShopify, repeats: str) -> None:
    def repeat_cursor(page: int, connection: dict[str, Any], cursors: list[str]) -> None:
        if page >= 3:
            connection["pageInfo"]["endCursor"] = (
                cursors[-1] if repeats.startswith("the previous") else cursors[0]
            )
            fake.stats.faults["repeated cursor"] += 1

    _tamper_pages(fake, repeat_cursor)
    with api_reader(fake) as reader:
        records, error, _ = read(reader)
    assert_loud(fake, reader, records, error, "Shopify is paging in a loop")
    assert fake.stats.operations["OrdersPage"] == 3  # it stopped at once, it did not go round
    assert len(records) == 3 * PAGE


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cursor", ["a new one", "none", "the previous page's"])
def test_an_empty_page_that_claims_a_next_page_fails_loudly(fake: StormyShopify, cursor: str) -> None:
    def empty_page(page: int, connection: dict[str, Any], cursors: list[str]) -> None:
        if page == 3:
            connection["nodes"], connection["edges"] = [], []
            connection["pageInfo"]["hasNextPage"] = True
            connection["pageInfo"]["endCursor"] = {
                "a new one": "eyJuZXZlciI6InNlZW4ifQ==",
                "none": None,
                "the previous page's": cursors[-1],
            }[cursor]
            fake.stats.faults["empty page"] += 1

    _tamper_pages(fake, empty_page)
    with api_reader(fake) as reader:
        records, error, _ = read(reader)
    assert_loud(fake, reader, records, error, "orders page 3 is empty but says there is a next page")
    assert len(records) == 2 * PAGE and fake.stats.operations["OrdersPage"] == 3


def test_an_empty_last_page_ends_the_window_correctly() -> None:
    """The one empty page that is honest: the last, saying no page follows."""
    with FakeShopify([]) as fake, api_reader(fake) as reader:
        records, error, _ = read(reader)
        assert_exact(fake, reader, records, error)
    assert records == [] and fake.stats.operations["OrdersPage"] == 1


# ---------------------------------------------------------------------------------------
# The same for the paging of destroyed-order events


@pytest.fixture
def events_fake() -> Iterator[FakeShopify]:
    with FakeShopify([]) as server:
        for legacy_id in range(1, 11):
            server.add_event(
                {
                    "id": f"gid://shopify/BasicEvent/{legacy_id}",
                    "action": "destroy",
                    "createdAt": f"2026-03-01T00:00:{legacy_id:02d}Z",
                    "subjectId": f"gid://shopify/Order/{legacy_id}",
                    "subjectType": "ORDER",
                    "message": "Order was deleted.",
                }
            )
        yield server


def _events(reader: Any) -> tuple[list[tuple[str, datetime]], SourceError | None]:
    found: list[tuple[str, datetime]] = []
    try:
        for item in destroyed_orders(reader.client, None, None, log=lambda _: None, page_size=3):
            found.append(item)
    except SourceError as exc:
        return found, exc
    return found, None


def _tamper_events(fake: FakeShopify, change: Callable[[int, dict[str, Any]], None]) -> None:
    pages = {"n": 0}

    def tamper(answer: dict[str, Any]) -> None:
        events = answer.get("data", {}).get("events") if isinstance(answer.get("data"), dict) else None
        if isinstance(events, dict):
            pages["n"] += 1
            change(pages["n"], events)

    fake.tamper = tamper


def test_destroyed_orders_arrive_exactly_through_faults(events_fake: FakeShopify) -> None:
    events_fake.scripted = ["503", "reset", "truncated"]
    with api_reader(events_fake, sleep=Sleeps()) as reader:
        found, error = _events(reader)
    assert error is None and [legacy for legacy, _ in found] == [str(i) for i in range(1, 11)]
    INJECTED.update(events_fake.stats.faults)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("lie", ["repeated cursor", "empty page claiming more", "no pageInfo"])
def test_lying_events_pages_fail_loudly(events_fake: FakeShopify, lie: str) -> None:
    first_cursor: list[str] = []

    def change(page: int, events: dict[str, Any]) -> None:
        if page == 1:
            first_cursor.append(events["pageInfo"]["endCursor"])
        elif page == 2:
            INJECTED[f"events {lie}"] += 1
            if lie == "repeated cursor":
                events["pageInfo"]["endCursor"] = first_cursor[0]
            elif lie == "empty page claiming more":
                events["nodes"], events["edges"] = [], []
                events["pageInfo"].update(hasNextPage=True, endCursor="eyJuZXciOjF9")
            else:
                del events["pageInfo"]

    _tamper_events(events_fake, change)
    with api_reader(events_fake) as reader:
        _, error = _events(reader)
    assert error is not None and error.source == "shopify", "a partial list of deletions looked complete"
    assert {"repeated cursor": "loop", "empty page claiming more": "empty", "no pageInfo": "pageInfo"}[
        lie
    ] in str(error)
    assert events_fake.stats.operations["DestroyedOrders"] == 2


def test_the_fake_really_sends_what_the_tests_claim(fake: StormyShopify) -> None:
    """The 429 the subclass sends is a real HTTP 429 with its Retry-After."""
    fake.http_429 = 1
    response = httpx.post(
        f"{fake.url}/admin/api/2026-10/graphql.json",
        json={"query": "{ shop { id } }"},
        headers={"X-Shopify-Access-Token": fake.access_token or ""},
    )
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert "Reduce request rates" in json.loads(response.content)["errors"]
