"""Source faults against the fake Business Central API (real HTTP): each ends one of two ways.

Either the reader delivers exactly the server's orders (every bundle once, each as a
fault-free read gives it) and says up to when the read is complete, or it raises
``SourceError`` naming the source and the cause, with ``complete_until`` left at None so no
cursor can move. Never a silent partial window, never an endless loop.

What the Business Central tests already covered (test_business_central_client/_reader/
_acceptance): each transient fault once on the first request, retries exhausted, 429 with
Retry-After as seconds or a date, a token revoked between requests (renewed once) or refused
from the start, a failure while assembling, 5,000 orders through random faults. Added here:
each fault in the middle of a reader's fetch and persisting there, 429 storms, a token
expiring mid-read then refused after its renewal, ``@odata.nextLink`` seen before, an empty
``value`` with a next link, a next link to another host, an unreadable huge number.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from orders_etl.sources.base import CredentialRejected, SourceError
from orders_etl.sources.business_central import BusinessCentralReader
from orders_etl.store.landing import dump_payload
from orders_etl_tests.fake_business_central import (
    FAULT_KINDS,
    FakeBusinessCentral,
    Fault,
    _Handler,
    dumps,
    populate,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)
ORDERS = 45
#: Faults the fake actually injected, over this module (reported at its end with ``-s``).
INJECTED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_injected() -> Iterator[None]:
    yield
    print(f"\nbusiness_central source faults injected: {sum(INJECTED.values())} {dict(INJECTED)}")


class Sleeps(list[float]):
    """Records the waits the reader asks for instead of spending them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class _TamperingHandler(_Handler):
    def _send(
        self, status: int, body: str, headers: dict[str, str] | None = None, *, cut: bool = False
    ) -> None:
        tamper = getattr(self.fake, "tamper", None)
        if tamper is not None and status == 200 and body.startswith('{"@odata.context"'):
            answer = json.loads(body, parse_float=Decimal)
            entity = urlsplit(self.path).path.rsplit("/", 1)[-1]
            tamper(entity, answer)
            body = dumps(answer)
        super()._send(status, body, headers, cut=cut)


class TamperingBC(FakeBusinessCentral):
    """The fake, with ``tamper(entity, page)`` rewriting pages no real query could get."""

    tamper: Callable[[str, dict[str, Any]], None] | None = None

    def __enter__(self) -> TamperingBC:
        handler = type("Handler", (_TamperingHandler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-bc", daemon=True
        )
        self._thread.start()
        return self


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    """Every bundle of the population as a fault-free read gives it: key -> landed text."""
    with TamperingBC() as clean:
        populate(clean, ORDERS, seed=5, start=T0)
        with static_reader(clean) as reader:
            bundles = {r.record_key: dump_payload(r.payload) for r in reader.fetch(None, None)}
    assert len(bundles) == ORDERS
    return bundles


@pytest.fixture
def bc() -> Iterator[TamperingBC]:
    with TamperingBC() as fake:
        populate(fake, ORDERS, seed=5, start=T0)
        yield fake
        INJECTED.update(fake.injected)


def static_reader(bc: FakeBusinessCentral, **options: Any) -> BusinessCentralReader:
    options.setdefault("sleep", Sleeps())
    options.setdefault("page_size", 5)
    options.setdefault("chunk_size", 15)
    return BusinessCentralReader(bc.base_url, bc.company_id, access_token=bc.issue_static_token(), **options)


def oauth_reader(bc: FakeBusinessCentral, **options: Any) -> BusinessCentralReader:
    options.setdefault("sleep", Sleeps())
    return BusinessCentralReader(
        bc.base_url,
        bc.company_id,
        tenant_id=bc.tenant_id,
        client_id=bc.client_id,
        client_secret=bc.client_secret,
        token_url=bc.token_url,
        page_size=5,
        chunk_size=15,
        **options,
    )


def read(reader: BusinessCentralReader) -> tuple[list[Any], SourceError | None]:
    records: list[Any] = []
    try:
        for record in reader.fetch(None, None):
            records.append(record)
    except SourceError as exc:
        return records, exc
    return records, None


def assert_exact(
    expected: dict[str, str], reader: BusinessCentralReader, records: list[Any], error: Any
) -> None:
    assert error is None, f"the reader failed: {error}"
    keys = [record.record_key for record in records]
    assert len(keys) == len(set(keys)) and set(keys) == set(expected)
    assert all(dump_payload(record.payload) == expected[record.record_key] for record in records)
    assert reader.complete_until is not None


def assert_loud(
    expected: dict[str, str], reader: BusinessCentralReader, records: list[Any], error: Any, cause: str
) -> None:
    assert error is not None, "the reader reported a complete read"
    assert error.source == "business_central" and str(error).startswith("business_central: ")
    assert cause in str(error), str(error)
    assert reader.complete_until is None
    # What came before the failure is whole bundles, exactly as a full read gives them.
    assert all(dump_payload(record.payload) == expected[record.record_key] for record in records)


def after_requests(bc: FakeBusinessCentral, count: int, action: Callable[[], None]) -> None:
    """Run ``action`` once, when the fake receives its ``count``-th API request."""
    seen = {"n": 0}

    def hook(_entity: str, _params: dict[str, str]) -> None:
        seen["n"] += 1
        if seen["n"] == count:
            action()

    bc.on_request = hook


def fault(kind: str) -> Fault | str:
    return Fault("slow", delay_s=2.0) if kind == "slow" else kind


def timeout_for(kind: str) -> float:
    return 1.5 if kind == "slow" else 5.0


# ---------------------------------------------------------------------------------------
# Transient faults in the middle of a read


@pytest.mark.parametrize("kind", sorted(FAULT_KINDS))
def test_a_fault_mid_read_is_retried_and_every_order_arrives(bc: TamperingBC, expected, kind: str) -> None:
    after_requests(bc, 4, lambda: bc.inject(fault(kind), fault(kind)))
    with static_reader(bc, timeout_s=timeout_for(kind)) as reader:
        records, error = read(reader)
    assert_exact(expected, reader, records, error)
    assert bc.injected[kind] == 2 and sum(reader.client.retries.values()) >= 2


@pytest.mark.parametrize("kind", sorted(FAULT_KINDS))
def test_a_fault_that_persists_mid_read_fails_loudly(bc: TamperingBC, expected, kind: str) -> None:
    # Request 9 falls in the assembly: the first chunk of bundles is out already.
    after_requests(bc, 9, lambda: bc.inject(*[fault(kind)] * 3))
    with static_reader(bc, timeout_s=timeout_for(kind), max_attempts=3) as reader:
        records, error = read(reader)
    assert_loud(expected, reader, records, error, "gave up after 3 attempts")
    assert bc.injected[kind] == 3


# ---------------------------------------------------------------------------------------
# 429 storms


def test_a_429_storm_is_waited_out_as_retry_after_says(bc: TamperingBC, expected) -> None:
    after_requests(bc, 3, lambda: bc.inject(*["429"] * 5))
    sleeps = Sleeps()
    with static_reader(bc, sleep=sleeps, max_attempts=6) as reader:
        records, error = read(reader)
    assert_exact(expected, reader, records, error)
    assert bc.injected["429"] == 5 and sleeps.count(1.0) == 5 and reader.client.retries == {"throttled": 5}


def test_a_429_storm_that_does_not_end_fails_loudly(bc: TamperingBC, expected) -> None:
    after_requests(bc, 3, lambda: bc.inject(*["429"] * 50))
    with static_reader(bc, max_attempts=6) as reader:
        records, error = read(reader)
    assert_loud(expected, reader, records, error, "gave up after 6 attempts; last error: HTTP 429")
    assert bc.injected["429"] == 6


def test_a_429_asking_for_an_absurd_wait_is_capped(bc: TamperingBC, expected) -> None:
    after_requests(bc, 3, lambda: bc.inject(Fault("throttle", 429, retry_after="86400")))
    sleeps = Sleeps()
    with static_reader(bc, sleep=sleeps, max_retry_after_s=120.0) as reader:
        records, error = read(reader)
    assert_exact(expected, reader, records, error)
    assert sleeps == [120.0]


# ---------------------------------------------------------------------------------------
# Tokens expiring mid-read


def test_a_token_expiring_mid_read_is_renewed_once_and_every_order_arrives(bc: TamperingBC, expected) -> None:
    after_requests(bc, 6, bc.revoke_tokens)
    with oauth_reader(bc) as reader:
        records, error = read(reader)
    assert_exact(expected, reader, records, error)
    assert bc.token_requests == 2
    INJECTED["expired token"] += 1


def test_a_token_refused_again_after_renewal_is_a_clear_error(bc: TamperingBC, expected) -> None:
    after_requests(bc, 6, lambda: setattr(bc, "refuse_with", 401))
    with oauth_reader(bc) as reader:
        records, error = read(reader)
    assert isinstance(error, CredentialRejected)
    assert_loud(expected, reader, records, error, "HTTP 401: Business Central refused the token issued for")
    assert "BC_CLIENT_ID/BC_CLIENT_SECRET" in str(error)
    assert bc.client_secret not in str(error) and all(t not in str(error) for t in bc.all_tokens)
    assert bc.token_requests == 2  # renewed exactly once, then the cause, no loop
    INJECTED["expired token"] += 2


def test_a_static_token_revoked_mid_read_is_a_clear_error(bc: TamperingBC, expected) -> None:
    after_requests(bc, 6, bc.revoke_tokens)
    with static_reader(bc) as reader:
        records, error = read(reader)
    assert isinstance(error, CredentialRejected)
    assert_loud(expected, reader, records, error, "Business Central refused BC_ACCESS_TOKEN")
    INJECTED["revoked token"] += 1


# ---------------------------------------------------------------------------------------
# Paging that lies


def _tamper_order_pages(bc: TamperingBC, change: Callable[[int, dict[str, Any], list[str]], None]) -> None:
    """``change(page, answer, next links so far)`` for each page of the salesOrders scan."""
    links: list[str] = []
    pages = {"n": 0}

    def tamper(entity: str, answer: dict[str, Any]) -> None:
        if entity != "salesOrders":
            return
        pages["n"] += 1
        change(pages["n"], answer, links)
        if "@odata.nextLink" in answer:
            links.append(answer["@odata.nextLink"])

    bc.tamper = tamper


@pytest.mark.timeout(30)
@pytest.mark.parametrize("repeats", ["the previous page's", "the first page's"])
def test_a_next_link_seen_before_fails_loudly_instead_of_looping(
    bc: TamperingBC, expected, repeats: str
) -> None:
    def repeat(page: int, answer: dict[str, Any], links: list[str]) -> None:
        if page >= 3:  # from page 3 on, the server keeps handing out a link it gave before
            answer["@odata.nextLink"] = links[1] if repeats.startswith("the previous") else links[0]
            bc.injected["repeated nextLink"] += 1

    _tamper_order_pages(bc, repeat)
    with static_reader(bc) as reader:
        records, error = read(reader)
    assert_loud(expected, reader, records, error, "the server is paging in a loop")
    assert records == [] and len(bc.api_requests("salesOrders")) == 3


@pytest.mark.timeout(30)
def test_an_empty_value_with_a_next_link_fails_loudly(bc: TamperingBC, expected) -> None:
    def empty(page: int, answer: dict[str, Any], links: list[str]) -> None:
        if page == 2:
            answer["value"] = []
            bc.injected["empty page"] += 1

    _tamper_order_pages(bc, empty)
    with static_reader(bc) as reader:
        records, error = read(reader)
    assert_loud(expected, reader, records, error, "an empty page with an '@odata.nextLink'")
    assert len(bc.api_requests("salesOrders")) == 2


def test_a_next_link_to_another_host_is_not_followed(bc: TamperingBC, expected) -> None:
    with FakeBusinessCentral() as elsewhere:

        def divert(page: int, answer: dict[str, Any], links: list[str]) -> None:
            if page == 1:
                answer["@odata.nextLink"] = answer["@odata.nextLink"].replace(bc.origin, elsewhere.origin)
                bc.injected["foreign nextLink"] += 1

        _tamper_order_pages(bc, divert)
        with static_reader(bc) as reader:
            records, error = read(reader)
        assert_loud(expected, reader, records, error, "points to another host")
        assert elsewhere.requests == []  # the token never went there


def test_an_unreadable_huge_number_fails_loudly_not_with_a_crash(bc: TamperingBC, expected) -> None:
    # 5,000 digits: Python's JSON parser refuses to convert it (ValueError, not JSONDecodeError).
    def huge(entity: str, answer: dict[str, Any]) -> None:
        if entity == "salesInvoices" and answer["value"]:
            answer["value"][0]["remainingAmount"] = Decimal("9" * 5_000)
            bc.injected["5000-digit number"] += 1

    bc.tamper = huge
    with static_reader(bc, max_attempts=2) as reader:
        records, error = read(reader)
    assert_loud(expected, reader, records, error, "the answer is not complete JSON")
