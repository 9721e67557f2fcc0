"""The Shopify API reader against the fake Admin API: paging, throttle, faults, auth, errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from orders_etl.sources.base import CredentialRejected, SourceError
from orders_etl.sources.shopify import ShopifyApiReader
from orders_etl_tests.fake_shopify import FAULT_KINDS, FakeShopify, api_reader, make_orders, node_key

START = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def fake():
    with FakeShopify(make_orders(600, start=START)) as server:
        yield server


def read_all(reader, start=None, end=None, log=None):
    lines: list[str] = []
    records = list(reader.fetch(start, end, log or lines.append))
    return records, lines


def test_pages_through_thousands_of_orders_exactly_once():
    orders = make_orders(3000, start=START)
    with FakeShopify(orders) as fake, api_reader(fake) as reader:
        records, lines = read_all(reader)
    keys = [r.record_key for r in records]
    assert len(keys) == len(set(keys)) == 3000
    by_key = {node_key(o): o for o in orders}
    assert all(r.payload == by_key[r.record_key] for r in records)  # the node, exactly as served
    assert all(r.updated_at == datetime.fromisoformat(by_key[r.record_key]["updatedAt"]) for r in records)
    assert reader.last_fetch.complete and reader.last_fetch.mode == "paging"
    assert reader.last_fetch.max_updated_at == max(r.updated_at for r in records)
    assert sum("shopify: page" in line for line in lines) == 3000 // reader.page_size
    assert fake.stats.invalid_queries == 0
    assert set(fake.stats.paths) == {"/admin/api/2026-10/graphql.json"}  # the pinned version


def test_window_is_half_open_and_overlap_rereads(fake):
    # make_orders spaces updates 20 s apart from START: order i is updated at START + 20 s * i.
    start, end = START + timedelta(seconds=200), START + timedelta(seconds=400)
    with api_reader(fake, overlap=timedelta(0)) as reader:
        records, _ = read_all(reader, start, end)
        assert sorted(int(r.record_key) for r in records) == list(range(5011, 5021))  # [start, end)
        assert (reader.last_fetch.window_start, reader.last_fetch.window_end) == (start, end)
    with api_reader(fake, overlap=timedelta(seconds=60)) as reader:
        records, _ = read_all(reader, start, end)
        assert sorted(int(r.record_key) for r in records) == list(range(5008, 5021))
        assert reader.last_fetch.window_start == start - timedelta(seconds=60)


def test_open_end_is_pinned_when_the_fetch_starts(fake):
    pinned = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    with api_reader(fake, now=lambda: pinned, overlap=timedelta(0)) as reader:
        records, _ = read_all(reader, START, None)
    assert reader.last_fetch.window_end == pinned
    assert len(records) == 180  # 3600 s / 20 s
    assert all(r.updated_at < pinned for r in records)


def test_reads_ahead_of_the_bucket_instead_of_being_throttled():
    restore_rate, bucket = 6_000.0, 1_000.0
    with (
        FakeShopify(
            make_orders(500, start=START), restore_rate=restore_rate, maximum_available=bucket
        ) as fake,
        api_reader(fake) as reader,
    ):
        began = time.monotonic()
        records, _ = read_all(reader)
        elapsed = time.monotonic() - began
    assert len(records) == 500
    assert fake.stats.throttled <= 1  # "a handful" at most; normally none
    # It did have to wait for the bucket: the work costs far more than the bucket holds.
    assert fake.stats.cost_actual > 3 * bucket
    assert reader.client.stats.throttle_wait_s > 0
    assert elapsed >= (fake.stats.cost_actual - bucket) / restore_rate * 0.9


def test_throttled_answer_waits_as_long_as_the_bucket_needs():
    with FakeShopify(make_orders(100, start=START), restore_rate=4_000.0, maximum_available=1_000.0) as fake:
        fake.available = 0.0  # another app just emptied the bucket
        with api_reader(fake) as reader:
            records, lines = read_all(reader)
    assert len(records) == 100
    assert 1 <= fake.stats.throttled <= 2
    assert any("throttled by Shopify; waiting" in line for line in lines)
    assert reader.client.stats.retries == 0  # throttling does not use up the retry budget


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_transient_fault_is_retried_and_nothing_is_lost(fake, kind):
    fake.fail_next(kind, times=2)
    with api_reader(fake) as reader:
        records, lines = read_all(reader)
    assert sorted(r.record_key for r in records) == sorted(
        fake.orders[k]["legacyResourceId"] for k in fake.orders
    )
    assert fake.stats.faults[kind] == 2
    assert reader.client.stats.retries == 2
    assert sum("retry" in line for line in lines) == 2


def test_retries_exhausted_fail_the_fetch_loudly(fake):
    def break_after_first_page(pages: int) -> None:
        if pages == 1:
            fake.fail_next("502", times=100)

    fake.after_orders_page = break_after_first_page
    with api_reader(fake, max_attempts=3) as reader:
        got = []
        with pytest.raises(SourceError) as failure:
            for record in reader.fetch(None, None, lambda _: None):
                got.append(record)
    assert len(got) == reader.page_size  # the first page came, then the source failed
    assert reader.last_fetch.complete is False
    assert "failed 3 times" in str(failure.value) and "HTTP 502" in str(failure.value)
    assert failure.value.source == "shopify"


def test_bad_token_is_refused_with_the_credential_named():
    with FakeShopify(make_orders(5), access_token="shpat_the_right_one") as fake:
        with (
            api_reader(fake, access_token="shpat_wrong_token_value") as reader,
            pytest.raises(CredentialRejected) as refused,
        ):
            read_all(reader)
        message = str(refused.value)
        assert "SHOPIFY_ACCESS_TOKEN" in message and "HTTP 401" in message
        assert "shpat_wrong_token_value" not in message
        assert fake.stats.graphql == 1  # a 401 is not retried


def test_client_credentials_token_is_fetched_once_and_renewed():
    fake = FakeShopify(
        make_orders(200, start=START), access_token=None, client_id="app-id", client_secret="s3cret-value"
    )
    with fake, api_reader(fake, client_id="app-id", client_secret="s3cret-value") as reader:
        records, _ = read_all(reader)
        assert len(records) == 200 and fake.stats.token_requests == 1
        fake.expire_tokens()  # revoked or expired early: one 401, then a fresh token
        records, _ = read_all(reader)
        assert len(records) == 200 and fake.stats.token_requests == 2
        assert fake.stats.unauthorized == 1


def test_client_credentials_token_renewed_before_it_expires():
    fake = FakeShopify(
        make_orders(30, start=START), access_token=None, client_id="app", client_secret="sec", token_ttl_s=600
    )
    skew = {"s": 0.0}
    with (
        fake,
        api_reader(
            fake, client_id="app", client_secret="sec", clock=lambda: time.monotonic() + skew["s"]
        ) as reader,
    ):
        read_all(reader)
        skew["s"] = 590.0  # ten minutes later by the client's clock: the token has 10 s left
        read_all(reader)
        assert fake.stats.token_requests == 2
        skew["s"] = 591.0
        read_all(reader)
    assert fake.stats.token_requests == 2  # the fresh token is good for another 10 minutes
    assert fake.stats.unauthorized == 0  # renewed ahead, never refused


def test_wrong_client_secret_names_the_client_credentials():
    fake = FakeShopify(make_orders(3), access_token=None, client_id="app-id", client_secret="right")
    with (
        fake,
        api_reader(fake, client_id="app-id", client_secret="wrong-secret-xyz") as reader,
        pytest.raises(CredentialRejected) as refused,
    ):
        read_all(reader)
    assert "SHOPIFY_CLIENT_ID / SHOPIFY_CLIENT_SECRET" in str(refused.value)
    assert "wrong-secret-xyz" not in str(refused.value)


def test_query_over_the_cost_limit_fails_at_once_with_shopifys_message(fake):
    with api_reader(fake, page_size=250) as reader, pytest.raises(SourceError) as failure:
        read_all(reader)
    assert "exceeds the single query max cost limit" in str(failure.value)
    assert reader.client.stats.retries == 0


def test_invalid_query_fails_at_once_with_shopifys_message(fake):
    with api_reader(fake) as reader, pytest.raises(SourceError) as failure:
        reader.client.execute("query { orders(first: 1) { nodes { financialStatus } } }")
    assert "Cannot query field 'financialStatus' on type 'Order'" in str(failure.value)
    assert fake.stats.invalid_queries == 1 and reader.client.stats.retries == 0


def test_constructor_needs_exactly_one_way_to_authenticate(fake):
    with pytest.raises(ValueError, match="SHOPIFY_ACCESS_TOKEN or both"):
        ShopifyApiReader(fake.url)
    with pytest.raises(ValueError, match="SHOPIFY_ACCESS_TOKEN or both"):
        ShopifyApiReader(fake.url, client_id="x", client_secret="y", access_token="z")
    with pytest.raises(ValueError, match="SHOPIFY_ACCESS_TOKEN or both"):
        ShopifyApiReader(fake.url, client_id="x")
    with pytest.raises(ValueError, match="http"):
        ShopifyApiReader("acme.myshopify.com", access_token="t")


def test_a_page_is_never_taken_for_the_last_one_without_saying_so(fake):
    def drop_cursor(answer: dict) -> None:
        page_info = answer.get("data", {}).get("orders", {}).get("pageInfo")
        if page_info and page_info["hasNextPage"]:
            page_info["endCursor"] = None

    fake.tamper = drop_cursor
    with api_reader(fake) as reader, pytest.raises(SourceError, match="next page but gives no cursor"):
        read_all(reader)
    assert reader.last_fetch.complete is False

    fake.tamper = lambda answer: answer.get("data", {}).get("orders", {}).pop("pageInfo", None)
    with api_reader(fake) as reader, pytest.raises(SourceError, match="without pageInfo"):
        read_all(reader)


def test_reprs_hide_the_token(fake):
    with api_reader(fake) as reader:
        assert fake.access_token not in repr(reader) and "<secret>" in repr(reader)
        assert fake.access_token not in repr(reader.client._auth)
        assert "SHOPIFY_ACCESS_TOKEN" in repr(reader)
