"""Properties of the upsert that must hold whatever the input: newest wins, ids are stable,
and concurrent writers neither duplicate nor lose an order (SQLite and PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import uuid
from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_etl.canonical import utc_text
from orders_etl.store import OrderStore
from orders_etl.store.engine import create_store_engine
from orders_etl.store.schema import orders, source_orders
from orders_etl.store.types import parse_sqlite_datetime, sqlite_datetime
from orders_etl_tests.factories import BASE_TIME, order

# A version: (key index, minutes after BASE_TIME, amount in cents).
versions_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 10_000), st.integers(0, 10**9)),
    min_size=1,
    max_size=40,
    unique_by=lambda v: (v[0], v[1]),  # one version per key and instant: "newest" is well defined
)


def _record(prefix: str, key: int, minutes: int, cents: int):
    return order(
        f"{prefix}-{key}",
        updated_at=BASE_TIME + timedelta(minutes=minutes),
        total_amount=f"{cents // 100}.{cents % 100:02d}",
    )


def _state(store: OrderStore, prefix: str) -> dict[str, tuple]:
    with store.engine.connect() as conn:
        golden = conn.execute(
            sa.select(orders.c.external_id, orders.c.id, orders.c.updated_at, orders.c.total_amount).where(
                orders.c.external_id.like(f"{prefix}-%")
            )
        ).all()
        sources = conn.execute(
            sa.select(sa.func.count()).where(source_orders.c.external_id.like(f"{prefix}-%"))
        ).scalar_one()
    assert sources == len(golden)
    return {row.external_id: (row.id, row.updated_at, row.total_amount) for row in golden}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=versions_strategy, data=st.data())
def test_any_versions_in_any_order_and_batches_give_the_newest(store: OrderStore, versions, data) -> None:
    prefix = uuid.uuid4().hex[:8]
    shuffled = data.draw(st.permutations(versions))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    for batch in batches:
        store.upsert("shopify", [_record(prefix, *v) for v in batch])

    newest = {}
    for key, minutes, cents in versions:
        if key not in newest or minutes > newest[key][0]:
            newest[key] = (minutes, cents)
    state = _state(store, prefix)
    assert set(state) == {f"{prefix}-{k}" for k in newest}
    for key, (minutes, _cents) in newest.items():
        expected = _record(prefix, key, minutes, _cents)
        _id, updated_at, total = state[f"{prefix}-{key}"]
        assert (updated_at, total) == (expected.updated_at, expected.total_amount)

    # Replaying everything again, reversed, changes nothing: not even the ids.
    store.upsert("shopify", [_record(prefix, *v) for v in reversed(versions)])
    assert _state(store, prefix) == state


def _writer(url: str, parity: int, rounds: int) -> None:
    store = OrderStore(create_store_engine(url))
    for minute in range(parity, rounds * 2, 2):
        # Every key in every chunk, so both writers fight over the same rows all the time.
        store.upsert(
            "shopify",
            [
                order(f"k{k}", updated_at=BASE_TIME + timedelta(minutes=minute), total_amount=f"{minute}.00")
                for k in range(50)
            ],
        )
    store.dispose()


def test_two_processes_upserting_overlapping_batches(store: OrderStore, store_url: str) -> None:
    rounds = 30
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(store_url, parity, rounds)) for parity in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    newest = BASE_TIME + timedelta(minutes=rounds * 2 - 1)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(orders.c.external_id, orders.c.updated_at, orders.c.total_amount)).all()
        source_count = conn.execute(sa.select(sa.func.count()).select_from(source_orders)).scalar_one()
    assert len(rows) == source_count == 50
    assert {(r.updated_at, str(r.total_amount)) for r in rows} == {(newest, f"{rounds * 2 - 1}.00")}


@given(
    st.datetimes(
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=14))])
    ),
    st.datetimes(timezones=st.just(UTC)),
)
def test_sqlite_time_text_is_the_canonical_text_and_sorts_as_time(moment: datetime, other: datetime) -> None:
    # Both ways of writing a time to SQLite (a bound value, a frame's text column) must agree,
    # every year included (year 999: "0999-…", not "999-…"), or text order is not time order.
    try:
        text = sqlite_datetime(moment)
    except OverflowError:  # year 1 east of Greenwich or 9999 west of it: no UTC form
        return
    assert text == utc_text(moment)
    assert len(text) == 26
    assert parse_sqlite_datetime(text) == moment
    assert (text < sqlite_datetime(other)) == (moment < other)
