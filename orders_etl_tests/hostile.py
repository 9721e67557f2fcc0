"""Hostile input for the sources, and the checks every record must pass through the store.

Strategies (hypothesis) for what a broken or malicious source can send: arbitrary JSON in
place of an order, wrong types, huge numbers, ``"NaN"``/``"Infinity"`` strings, RTL and
emoji text, NUL characters, lone surrogates (where the format can carry them: JSON escapes),
10 kB strings, SQL in every text field.

:func:`run_through_store` drives one batch the way a sync does (land raw, read the landing
back, normalize, upsert, quarantine) and :func:`check_batch` proves what the issue asks:
no record crashed the batch, each one ends stored or quarantined with a reason (or
deliberately skipped, counted), nothing else is lost, and every text value stored reads
back byte for byte.

The number of examples per property is ``ORDERS_ETL_FUZZ_EXAMPLES`` when set (``make fuzz``
runs thousands), else each test's own short budget (``make test`` stays fast).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from orders_etl.model import ERP_SOURCES, OrderRecord, Reject
from orders_etl.sources.base import Normalized, Skipped
from orders_etl.store import LandedRecord, OrderStore, RawRecord
from orders_etl.store.landing import dump_payload, storable_key
from orders_etl.store.schema import (
    ORDER_FIELDS,
    landed_inputs,
    order_rejects,
    orders,
    raw_orders,
    raw_orders_pending,
    source_orders,
    sync_state,
)

FUZZ_EXAMPLES_ENV = "ORDERS_ETL_FUZZ_EXAMPLES"


def fuzz_settings(default_examples: int) -> settings:
    """``default_examples`` per property, or ``ORDERS_ETL_FUZZ_EXAMPLES`` when that is set."""
    examples = int(os.environ.get(FUZZ_EXAMPLES_ENV) or default_examples)
    return settings(
        max_examples=examples,
        deadline=None,
        # The store fixture is shared by the examples of one test: each example empties it.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# ---------------------------------------------------------------------------------------
# Text

SQL_INJECTIONS = (
    "'); DROP TABLE orders; --",
    "Robert'); DROP TABLE order_rejects;--",
    '"; DELETE FROM source_orders WHERE "1"="1',
    "' OR '1'='1",
    "1; UPDATE orders SET total_amount = 0; --",
    "$$; DROP TABLE raw_orders; $$",
    "\\'; TRUNCATE sync_state; --",
    "%' AND 1=0 UNION SELECT payload FROM raw_orders --",
    ":source",
    "?",
    "%s%s%s",
    "E'\\x00'",
)
NUMERIC_STRINGS = (
    "NaN",
    "-NaN",
    "sNaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    "1e20",
    "100000000000000000000",
    "-100000000000000000000",
    "1E+999999",
    "9E+2000000",
    "1e-999999",
    "0.000000000000000000000000000001",
    "-0",
    "-0.00",
    "0x1F",
    "1_000.00",
    " 12.50 ",
    "12,50",
    "1.234,56",
    "",
)
UNICODE = (
    "\u202eredro\u202c",  # right-to-left override
    "שלום עולם",
    "طلب رقم ١٢٣",
    "👩‍👩‍👧‍👦🛒💳",
    "e\u0301\u0301\u0301",  # stacked combining accents
    "\ufeffBOM first",
    "zero\u200bwidth",
    "line\u2028separator",
    "tab\tnew\nline\r\nend",
    "\U0010ffff\U000e0001",
    "\x7f\x1b[31mred",
    "   ",
    "Ω≈ç√∫˜µ≤≥÷",
    "Müller \"Bau\" GmbH; 'quoted'",
)
NUL_TEXTS = ("\x00", "a\x00b", "order\x00; DROP TABLE orders")
SURROGATES = ("\ud800", "\udfff", "a\udc80b", "\udbff\udbff")
LONG = 10_240  # a 10 kB string


def _long_text(seed: int) -> str:
    """10 kB of varied (incompressible) text: index keys of this size break PostgreSQL btrees."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789ÄÖÜßéèΩЖж中文字🙂🛒' ;\"%_"
    return "".join(rng.choices(alphabet, k=LONG))


long_texts = st.one_of(
    st.integers(0, 2**32).map(_long_text),
    st.text(min_size=1, max_size=8).map(lambda s: (s * (LONG // len(s) + 1))[:LONG]),
)


def hostile_texts(
    *, surrogates: bool = True, nul: bool = True, alphabet: st.SearchStrategy[str] | None = None
):
    """Text a source may send. ``alphabet`` limits generated text (e.g. to what cp1252 encodes)."""
    fixed = [*SQL_INJECTIONS, *NUMERIC_STRINGS, *UNICODE]
    if nul:
        fixed += NUL_TEXTS
    if surrogates:
        fixed += SURROGATES
    alphabet = alphabet if alphabet is not None else st.characters(codec="utf-8")
    parts = st.sampled_from(fixed) | st.text(alphabet=alphabet, max_size=12)
    generated = st.text(alphabet=alphabet, max_size=30)
    if surrogates:
        generated = generated | st.text(st.characters(codec=None, categories=["Cs", "L", "Zs"]), max_size=8)
    return st.one_of(
        st.sampled_from(fixed),
        generated,
        st.lists(parts, min_size=2, max_size=4).map("".join),
        long_texts,
    )


# ---------------------------------------------------------------------------------------
# JSON values (as a JSON parser with parse_float=Decimal hands them over)

HUGE_INTEGERS = (10**20, -(10**20), 2**63, 2**64 + 1, -(2**63) - 1, 10**30)
# The only floats json.loads(parse_float=Decimal) can produce: the NaN/Infinity literals.
JSON_FLOAT_LITERALS = (float("nan"), float("inf"), float("-inf"))


def hostile_scalars(*, surrogates: bool = True):
    return st.one_of(
        hostile_texts(surrogates=surrogates),
        st.integers(-(10**20), 10**20),
        st.sampled_from(HUGE_INTEGERS),
        st.decimals(allow_nan=False, allow_infinity=False, places=None),
        st.sampled_from([Decimal("1E+999999"), Decimal("-0"), Decimal("0.001")]),
        st.sampled_from(JSON_FLOAT_LITERALS),
        st.booleans(),
        st.none(),
    )


def json_values(*, surrogates: bool = True):
    """Any JSON value: what a broken source might put where an order should be."""
    keys = st.one_of(
        st.sampled_from(["id", "legacyResourceId", "name", "number", "value"]),
        hostile_texts(surrogates=surrogates),
    )
    return st.recursive(
        hostile_scalars(surrogates=surrogates),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
        max_leaves=10,
    )


def moments(start: datetime = datetime(2026, 3, 1, tzinfo=UTC)):
    """Update times a few minutes apart, so versions of one key often conflict or tie."""
    return st.integers(0, 20).map(lambda minutes: start + timedelta(minutes=minutes))


def json_text(value: Any, *, ensure_ascii: bool = True) -> str:
    """JSON text of ``value`` with Decimals written as JSON numbers, digits exact."""
    marked: dict[str, str] = {}

    def mark(item: Any) -> str:
        token = f"@@decimal{len(marked)}@@"
        marked[f'"{token}"'] = str(item)
        return token

    text = json.dumps(value, ensure_ascii=ensure_ascii, default=mark)
    for token, digits in marked.items():
        text = text.replace(token, digits, 1)
    return text


# ---------------------------------------------------------------------------------------
# Running a batch through the store


def canonical(value: Any) -> str:
    """One text for a JSON value as landed (Decimals land as their exact strings)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True, default=str)


def empty_store(store: OrderStore) -> None:
    """Examples of one test share the store fixture: each starts from empty tables."""
    with store.engine.begin() as conn:
        for table in (
            raw_orders,
            raw_orders_pending,
            landed_inputs,
            order_rejects,
            source_orders,
            orders,
            sync_state,
        ):
            conn.execute(table.delete())


@dataclass
class Outcome:
    sent: list[RawRecord]
    landed: list[LandedRecord]
    items: list[Normalized]

    def pairs(self) -> list[tuple[LandedRecord, Normalized]]:
        return list(zip(self.landed, self.items, strict=True))


def run_through_store(
    store: OrderStore,
    source: str,
    sent: Sequence[RawRecord],
    normalize: Callable[[Iterable[LandedRecord]], Iterable[Normalized]],
) -> Outcome:
    """One batch as a sync runs it: land, read the landing back, normalize, upsert, quarantine."""
    store.land_raw(source, sent)
    landed = [record for chunk in store.iter_raw(source) for record in chunk]
    items = list(normalize(landed))
    store.upsert(source, [i for i in items if isinstance(i, OrderRecord)])
    store.record_rejects([i for i in items if isinstance(i, Reject)])
    return Outcome(list(sent), landed, items)


def _texts_equal(stored: Any, expected: Any) -> bool:
    """Byte for byte: both None, or the same UTF-8 bytes."""
    if expected is None or stored is None:
        return stored is None and expected is None
    return isinstance(stored, str) and stored.encode("utf-8") == expected.encode("utf-8")


def check_batch(store: OrderStore, source: str, outcome: Outcome) -> dict[str, int]:
    """Every record accounted for and every stored text intact; returns what became of them."""
    # 1. The landing holds each distinct record sent (key and payload text: the text as
    #    received if the reader kept it, else canonical JSON; a text sent twice under one key
    #    is landed once), exactly, dated as sent.
    sent: dict[tuple[str, str], set[datetime | None]] = {}
    for record in outcome.sent:
        text = record.text if record.text is not None else dump_payload(record.payload)
        sent.setdefault((storable_key(record.record_key), text), set()).add(record.updated_at)
    landed = sorted((r.record_key, r.text) for r in outcome.landed)
    assert landed == sorted(sent), "the raw landing differs from what the source sent"
    for record in outcome.landed:
        assert record.updated_at in sent[(record.record_key, record.text)]

    # 2. One normalized item per landed record, each an order, a reject with a reason, or skipped.
    newest: dict[str, list[OrderRecord]] = {}  # per key: the versions with the latest updated_at
    last_reject: dict[str, Reject] = {}
    skipped = 0
    for record, item in outcome.pairs():
        if isinstance(item, OrderRecord):
            versions = newest.setdefault(item.external_id, [item])
            if item.updated_at > versions[0].updated_at:
                versions[:] = [item]
            elif item.updated_at == versions[0].updated_at and item is not versions[0]:
                versions.append(item)
        elif isinstance(item, Reject):
            assert item.source == source and item.record_key == record.record_key
            assert item.reason.strip(), "a reject without a reason"
            last_reject[item.record_key] = item
        else:
            assert isinstance(item, Skipped) and item.record_key == record.record_key
            skipped += 1

    with store.engine.connect() as conn:
        rejects = {
            row.record_key: row
            for row in conn.execute(sa.select(order_rejects).where(order_rejects.c.source == source))
        }
        stored = {
            row.external_id: row
            for row in conn.execute(sa.select(source_orders).where(source_orders.c.source == source))
        }
        golden = {row.external_id: row for row in conn.execute(sa.select(orders))}

    # 3. Each rejected record is quarantined under its key with its reason and payload, as sent.
    assert set(rejects) == set(last_reject), "a reject is missing from order_rejects (or one too many)"
    for key, reject in last_reject.items():
        row = rejects[key]
        assert _texts_equal(row.reason, reject.reason)
        # (a JSON null in place of an order is quarantined without a payload)
        expected = None if reject.payload is None else dump_payload(reject.payload)
        assert _texts_equal(row.payload, expected), (key, row.payload, expected)

    # 4. Each order is stored, its newest version (a tie: one of them), every field exactly as
    #    normalized: text byte for byte, money and time equal.
    # (An ERP document keyed on its own number gives way to a version of it, not older, that
    #  its reference resolves to another key: DESIGN.md §4, the provisional key is dropped.)
    superseded = {
        key
        for key, versions in newest.items()
        if key not in stored
        and source in ERP_SOURCES
        and versions[0].number == key
        and any(
            row.number == key and row.external_id != key and row.updated_at >= versions[0].updated_at
            for row in stored.values()
        )
    }
    expected = set(newest) - superseded
    assert set(stored) == expected, "an order is missing from source_orders (or one too many)"
    assert set(golden) == expected, "an order is missing from the golden orders (or one too many)"
    newest = {key: versions for key, versions in newest.items() if key in expected}
    for external_id, versions in newest.items():
        for row in (stored[external_id], golden[external_id]):
            mismatches = [_differences(row, version) for version in versions]
            assert [] in mismatches, (external_id, mismatches)
    if currently_in_test_context():  # (statistics of a property run: how much got through)
        event(f"orders stored: {min(len(newest), 3)}{'+' if len(newest) >= 3 else ''}")
        event(f"records rejected: {min(len(last_reject), 3)}{'+' if len(last_reject) >= 3 else ''}")
    return {
        "records": len(outcome.landed),
        "stored": len(newest),
        "rejected": len(last_reject),
        "skipped": skipped,
    }


def _differences(row: Any, record: OrderRecord) -> list[tuple[str, Any, Any]]:
    found = []
    for name in ORDER_FIELDS:
        expected, value = getattr(record, name), getattr(row, name)
        same = _texts_equal(value, str(expected)) if isinstance(expected, str) else value == expected
        if not same:
            found.append((name, value, expected))
    return found
