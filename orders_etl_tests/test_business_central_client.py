"""The Business Central HTTP client against the fake server: paging, auth, throttling, retries."""

from __future__ import annotations

import logging
import time
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from orders_etl.sources.base import CredentialRejected, SourceError
from orders_etl.sources.business_central import BusinessCentralReader
from orders_etl.sources.business_central.client import NotFound
from orders_etl.sources.business_central.errors import retry_after_s
from orders_etl_tests.fake_business_central import FakeBusinessCentral, Fault, sales_order


class Sleeps(list):
    """Records the waits the client asks for instead of spending them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def bc():
    with FakeBusinessCentral() as fake:
        fake.put("salesOrders", *(sales_order(f"SO{i:03}") for i in range(25)))
        yield fake


def oauth_reader(bc: FakeBusinessCentral, **options) -> BusinessCentralReader:
    options.setdefault("sleep", Sleeps())
    options.setdefault("client_secret", bc.client_secret)
    return BusinessCentralReader(
        bc.base_url,
        bc.company_id,
        tenant_id=bc.tenant_id,
        client_id=bc.client_id,
        token_url=bc.token_url,
        **options,
    )


def token_reader(bc: FakeBusinessCentral, token: str | None = None, **options) -> BusinessCentralReader:
    options.setdefault("sleep", Sleeps())
    return BusinessCentralReader(
        bc.base_url, bc.company_id, access_token=token or bc.issue_static_token(), **options
    )


def numbers(reader: BusinessCentralReader, **query) -> list[str]:
    return [doc["number"] for doc in reader.client.collection("salesOrders", **query)]


ALL = [f"SO{i:03}" for i in range(25)]


# -- paging ------------------------------------------------------------------------------------------


def test_pages_follow_next_links_at_the_preferred_page_size(bc):
    with token_reader(bc, page_size=10) as reader:
        pages = list(reader.client.pages("salesOrders"))
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [doc["number"] for page in pages for doc in page] == ALL
    requests = bc.api_requests("salesOrders")
    assert [r.prefer for r in requests] == ["odata.maxpagesize=10"] * 3
    assert "$skiptoken" not in requests[0].params
    assert [r.params.get("$skiptoken") for r in requests[1:]] == ["SO009", "SO019"]


def test_a_relative_next_link_is_resolved_against_the_page_url(bc):
    bc.relative_next_links = True
    with token_reader(bc, page_size=10) as reader:
        assert numbers(reader) == ALL
    assert len(bc.api_requests("salesOrders")) == 3


def test_filter_and_select_travel_with_every_page(bc):
    with token_reader(bc, page_size=2) as reader:
        docs = reader.client.collection("salesOrders", filter="number ge 'SO020'", select="number,status")
    assert [d["number"] for d in docs] == ["SO020", "SO021", "SO022", "SO023", "SO024"]
    assert all(set(d) == {"number", "status", "@odata.etag"} for d in docs)
    assert {r.params["$filter"] for r in bc.api_requests("salesOrders")} == {"number ge 'SO020'"}


def test_amounts_arrive_as_exact_decimals(bc):
    bc.put("salesOrders", sales_order("SO999", total="0.30", tax="0.10"))
    with token_reader(bc) as reader:
        (doc,) = reader.client.collection("salesOrders", filter="number eq 'SO999'")
    assert repr(doc["totalAmountIncludingTax"]) == "Decimal('0.30')"
    assert repr(doc["totalAmountExcludingTax"]) == "Decimal('0.20')"


# -- throttling and transient failures ----------------------------------------------------------------


def test_429_waits_as_long_as_retry_after_says(bc):
    bc.inject(Fault("throttle", 429, retry_after="1"))
    with token_reader(bc, sleep=time.sleep) as reader:
        began = time.monotonic()
        assert numbers(reader) == ALL
        waited = time.monotonic() - began
    assert waited >= 1.0
    assert reader.client.retries == {"throttled": 1}
    assert len(bc.api_requests("salesOrders")) == 2


def test_a_429_from_the_token_endpoint_waits_as_long_as_retry_after_says(bc):
    bc.inject(Fault("throttle", 429, retry_after="7"))  # the first request: the token's
    sleeps = Sleeps()
    with oauth_reader(bc, sleep=sleeps) as reader:
        assert numbers(reader) == ALL
    assert sleeps == [7.0]
    assert reader.client.retries == {"throttled": 1}


def test_retry_after_as_an_http_date_and_without_a_value(bc):
    in_5_s = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    bc.inject(Fault("throttle", 429, retry_after=in_5_s), Fault("throttle", 429, retry_after=None))
    sleeps = Sleeps()
    with token_reader(bc, sleep=sleeps, backoff_initial_s=0.5) as reader:
        assert numbers(reader) == ALL
    assert 3.0 <= sleeps[0] <= 5.0  # the date, counted from now
    assert 0.5 <= sleeps[1] <= 1.0 + 1.0  # no Retry-After: exponential backoff with jitter


@pytest.mark.parametrize("fault", ["500", "502", "503", "504", "truncate", "reset", "garbage", "slow"])
def test_a_transient_failure_is_retried(bc, fault):
    bc.inject(fault if fault != "slow" else Fault("slow", delay_s=2.0))
    sleeps = Sleeps()
    with token_reader(bc, sleep=sleeps, timeout_s=1.5, page_size=10) as reader:
        assert numbers(reader) == ALL
    assert reader.client.retries == {"transient": 1}
    assert len(sleeps) == 1 and 0.5 <= sleeps[0] <= 1.5


def test_backoff_grows_between_attempts(bc):
    bc.inject("503", "503", "503", "503")
    sleeps = Sleeps()
    with token_reader(bc, sleep=sleeps, backoff_initial_s=0.5, backoff_max_s=30) as reader:
        assert numbers(reader) == ALL
    assert len(sleeps) == 4
    # Exponential: initial * 2**n, plus up to 1 s of jitter.
    for n, slept in enumerate(sleeps):
        assert 0.5 * 2**n <= slept <= 0.5 * 2**n + 1


def test_persistent_failure_gives_up_loudly_after_the_attempt_limit(bc):
    bc.inject(*["503"] * 10)
    with token_reader(bc, max_attempts=4) as reader, pytest.raises(SourceError) as raised:
        numbers(reader)
    message = str(raised.value)
    assert message.startswith("business_central: GET salesOrders page 1: gave up after 4 attempts")
    assert "HTTP 503 (Internal_ServerError: Injected server error." in message
    assert len(bc.api_requests("salesOrders")) == 4


def test_a_failure_on_a_later_page_fails_the_whole_read(bc):
    with token_reader(bc, page_size=10, max_attempts=2) as reader:
        pages = reader.client.pages("salesOrders")
        assert len(next(pages)) == 10
        bc.inject("504", "504")
        with pytest.raises(SourceError, match="salesOrders page 2: gave up after 2 attempts"):
            next(pages)


# -- authentication ------------------------------------------------------------------------------------


def test_a_refused_access_token_names_bc_access_token_and_is_not_retried(bc):
    with token_reader(bc, token="expired-token-value") as reader, pytest.raises(CredentialRejected) as raised:
        numbers(reader)
    message = str(raised.value)
    assert "HTTP 401" in message and "BC_ACCESS_TOKEN" in message and "BC_CLIENT_SECRET" in message
    assert "expired-token-value" not in message
    assert len(bc.api_requests()) == 1


def test_client_credentials_get_a_token_once_and_reuse_it(bc):
    with oauth_reader(bc, page_size=5) as reader:
        assert numbers(reader) == ALL
    assert bc.token_requests == 1
    assert all(r.authorized for r in bc.api_requests())


def test_a_revoked_token_is_renewed_once(bc):
    with oauth_reader(bc, page_size=10) as reader:
        pages = reader.client.pages("salesOrders")
        first = next(pages)
        bc.revoke_tokens()
        rest = [doc for page in pages for doc in page]
    assert [d["number"] for d in first + rest] == ALL
    assert bc.token_requests == 2


def test_a_token_refused_even_after_renewal_names_the_client_credentials(bc):
    bc.refuse_with = 401
    with oauth_reader(bc) as reader, pytest.raises(CredentialRejected) as raised:
        numbers(reader)
    assert "BC_CLIENT_ID/BC_CLIENT_SECRET" in str(raised.value)
    assert "Microsoft Entra Applications" in str(raised.value)
    assert bc.token_requests == 2 and len(bc.api_requests()) == 2


def test_403_says_the_credential_lacks_permission(bc):
    bc.refuse_with = 403
    with oauth_reader(bc) as reader, pytest.raises(CredentialRejected, match=r"HTTP 403.*permission set"):
        numbers(reader)


def test_the_token_endpoint_refusing_the_secret_says_which_setting(bc):
    reader = oauth_reader(bc, client_secret="wrong-secret-value")
    with reader, pytest.raises(CredentialRejected) as raised:
        numbers(reader)
    message = str(raised.value)
    assert "refused BC_CLIENT_ID/BC_CLIENT_SECRET (invalid_client, AADSTS7000215)" in message
    assert "wrong-secret-value" not in message
    assert bc.api_requests() == []


def test_a_wrong_client_id_is_reported_with_its_entra_error(bc):
    reader = BusinessCentralReader(
        bc.base_url,
        bc.company_id,
        tenant_id=bc.tenant_id,
        client_id="someone-else",
        client_secret=bc.client_secret,
        token_url=bc.token_url,
    )
    with reader, pytest.raises(CredentialRejected, match=r"unauthorized_client, AADSTS700016"):
        numbers(reader)


def test_the_token_is_renewed_before_it_expires(bc):
    now = [1000.0]
    with oauth_reader(bc, page_size=10, clock=lambda: now[0]) as reader:
        pages = reader.client.pages("salesOrders")
        next(pages)
        assert bc.token_requests == 1
        now[0] += 3600 - 300 - 1  # just inside the renewal margin of an hour-long token
        next(pages)
        assert bc.token_requests == 1
        now[0] += 2  # past it: renewed before it lapses, not after a 401
        next(pages)
        assert bc.token_requests == 2
    assert all(r.authorized for r in bc.api_requests())


def test_a_token_endpoint_outage_is_retried(bc):
    # The first request of a fresh reader is the token POST: its 503 and reset are retried
    # within the API request's budget, like any transient failure.
    bc.inject("503", "reset")
    with oauth_reader(bc) as reader:
        assert numbers(reader) == ALL
    assert reader.client.retries == {"transient": 2}
    assert bc.token_requests == 1  # the faulted POSTs never reached the token logic


# -- other answers -------------------------------------------------------------------------------------------


def test_an_unknown_company_is_a_clear_error(bc):
    reader = BusinessCentralReader(
        bc.base_url, "00000000-1111-2222-3333-444444444444", access_token=bc.issue_static_token()
    )
    with reader, pytest.raises(NotFound, match=r"HTTP 404.*BC_COMPANY_ID"):
        numbers(reader)


def test_a_bad_request_reports_business_centrals_message(bc):
    with (
        token_reader(bc) as reader,
        pytest.raises(SourceError, match="HTTP 400 \\(BadRequest: Could not find a property named 'colour'"),
    ):
        numbers(reader, filter="colour eq 'red'")


def test_retry_after_parsing():
    assert retry_after_s("120") == 120.0
    assert retry_after_s(" 0.5 ") == 0.5
    assert retry_after_s("-3") == 0.0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None
    past = format_datetime(datetime.now(UTC) - timedelta(minutes=1), usegmt=True)
    assert retry_after_s(past) == 0.0


# -- secrets ---------------------------------------------------------------------------------------


def test_no_token_or_secret_appears_in_logs_errors_or_reprs(bc, caplog):
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def failure_text(run) -> None:
        try:
            run()
        except Exception as exc:
            texts.append("".join(traceback.format_exception(exc)))
        else:
            raise AssertionError("expected a failure")

    progress: list[str] = []
    with oauth_reader(bc, page_size=7) as reader:
        texts.append(repr(reader))
        records = list(reader.fetch(None, None, progress.append))
        assert records
        bc.revoke_tokens()
        assert numbers(reader) == ALL  # renewed after a 401
        bc.inject(*["503"] * 3)
        reader.client._max_attempts = 2
        failure_text(lambda: numbers(reader))
        bc.refuse_with = 401
        failure_text(lambda: numbers(reader))
    bc.refuse_with = None
    static = bc.issue_static_token()
    with token_reader(bc, token=static) as reader:
        texts.append(repr(reader))
        bc.revoke_tokens()
        failure_text(lambda: numbers(reader))
    wrong = "wrong-" + bc.client_secret
    with oauth_reader(bc, client_secret=wrong) as reader:
        failure_text(lambda: numbers(reader))
    everything = "\n".join([*texts, *progress, caplog.text, *(r.getMessage() for r in caplog.records)])
    assert len(bc.all_tokens) >= 3
    for secret in [bc.client_secret, wrong, *bc.all_tokens]:
        assert secret not in everything
    assert "HTTP Request: GET" in caplog.text  # httpx did log its requests: the check saw real logs
