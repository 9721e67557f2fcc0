"""The Business Central reader: whole order bundles, incremental windows, batching, local currency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from orders_etl.model import OrderStatus, PaymentStatus, Reject
from orders_etl.sources.base import SourceError
from orders_etl.sources.business_central import (
    BusinessCentralReader,
    normalize,
    reader_from_env,
    reference_from_env,
)
from orders_etl.sources.business_central.odata import MAX_FILTER_CHARS
from orders_etl.store.landing import dump_payload
from orders_etl_tests.fake_business_central import (
    FakeBusinessCentral,
    bc_time,
    populate,
    sales_credit_memo,
    sales_invoice,
    sales_order,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture
def bc():
    with FakeBusinessCentral() as fake:
        yield fake


def reader_for(bc: FakeBusinessCentral, **options) -> BusinessCentralReader:
    options.setdefault("sleep", lambda _s: None)
    return BusinessCentralReader(bc.base_url, bc.company_id, access_token=bc.issue_static_token(), **options)


def fetch(bc: FakeBusinessCentral, start=None, end=None, log=None, **options) -> dict[str, dict]:
    with reader_for(bc, **options) as reader:
        records = list(reader.fetch(start, end, log or (lambda _m: None)))
    keys = [r.record_key for r in records]
    assert len(keys) == len(set(keys)), "an order was yielded twice"
    return {r.record_key: {"updated_at": r.updated_at, **r.payload} for r in records}


def numbers(docs) -> list[str]:
    return [d["number"] for d in docs]


# -- whole bundles ---------------------------------------------------------------------------------


def test_a_full_read_yields_every_order_once_with_all_its_documents(bc):
    planned = populate(bc, 45, seed=3, start=T0)
    bundles = fetch(bc, page_size=7, chunk_size=10)
    assert set(bundles) == {p.key for p in planned}
    orders, invoices, memos = (bc.documents[e] for e in ("salesOrders", "salesInvoices", "salesCreditMemos"))
    for key, bundle in bundles.items():
        expected_invoices = sorted(
            n for n, d in invoices.items() if d["orderNumber"] == key or (not d["orderNumber"] and n == key)
        )
        assert numbers(bundle["salesInvoices"]) == expected_invoices
        expected_memos = sorted(n for n, d in memos.items() if d["invoiceNumber"] in expected_invoices)
        assert numbers(bundle["salesCreditMemos"]) == expected_memos
        assert (bundle["salesOrder"] or {}).get("number") == (key if key in orders else None)
        assert bundle["localCurrency"] == "EUR"
        documents = [bundle["salesOrder"] or {}, *bundle["salesInvoices"], *bundle["salesCreditMemos"]]
        latest = max(datetime.fromisoformat(d["lastModifiedDateTime"]) for d in documents if d)
        assert bundle["updated_at"] == latest


def test_posted_orders_are_found_through_their_invoices(bc):
    bc.put("salesInvoices", sales_invoice("PSI-1", order_number="SO1", status="Paid"))
    bc.put("salesCreditMemos", sales_credit_memo("PSCM-1", invoice_number="PSI-1", total="10.00"))
    bundle = fetch(bc)["SO1"]
    assert bundle["salesOrder"] is None
    assert numbers(bundle["salesInvoices"]) == ["PSI-1"]
    assert numbers(bundle["salesCreditMemos"]) == ["PSCM-1"]


def test_documents_arrive_as_the_api_returned_them(bc):
    order = sales_order("SO1", total="0.30", tax="0.05")
    bc.put("salesOrders", order)
    fetched = fetch(bc)["SO1"]["salesOrder"]
    assert fetched.pop("@odata.etag").startswith('W/"')
    assert fetched == order
    assert repr(fetched["totalAmountIncludingTax"]) == "Decimal('0.30')"


def test_credit_memos_without_an_invoice_belong_to_no_order_and_are_counted(bc):
    bc.put("salesCreditMemos", sales_credit_memo("PSCM-9", invoice_number="", total="5.00"))
    bc.put("salesOrders", sales_order("SO1"))
    log: list[str] = []
    assert set(fetch(bc, log=log.append)) == {"SO1"}
    assert any("1 credit memos without an invoice number belong to no order" in line for line in log)


def test_repeated_reads_give_identical_payloads(bc):
    populate(bc, 30, seed=5, start=T0)
    first, second = fetch(bc, page_size=4), fetch(bc, page_size=50, chunk_size=7)
    assert {k: dump_payload(v) for k, v in first.items()} == {k: dump_payload(v) for k, v in second.items()}


# -- incremental windows ---------------------------------------------------------------------------


def test_a_change_to_any_document_brings_the_whole_order(bc):
    old = bc_time(T0)
    bc.put(
        "salesOrders",
        sales_order("SO1", modified=old),
        sales_order("SO2", modified=old),
        sales_order("SO3", modified=old),
    )
    bc.put("salesInvoices", sales_invoice("PSI-4", order_number="SO4", modified=old))
    bc.put("salesInvoices", sales_invoice("PSI-5", order_number="SO5", modified=old))
    since = T0 + timedelta(days=1)
    new = bc_time(since + timedelta(hours=1))
    bc.update("salesOrders", "SO1", status="Draft", lastModifiedDateTime=new)  # the order changed
    bc.delete("salesOrders", "SO2")  # posted: the order is gone, an invoice is new
    bc.put("salesInvoices", sales_invoice("PSI-2", order_number="SO2", modified=new))
    # a refund against an invoice posted long ago
    bc.put(
        "salesCreditMemos", sales_credit_memo("PSCM-4", invoice_number="PSI-4", total="9.00", modified=new)
    )
    bundles = fetch(bc, start=since, overlap=timedelta(minutes=10))
    assert set(bundles) == {"SO1", "SO2", "SO4"}
    assert bundles["SO1"]["salesOrder"]["status"] == "Draft"
    assert bundles["SO2"]["salesOrder"] is None and numbers(bundles["SO2"]["salesInvoices"]) == ["PSI-2"]
    # the unmodified invoice comes along: the bundle is the order's whole current state
    assert numbers(bundles["SO4"]["salesInvoices"]) == ["PSI-4"]
    assert numbers(bundles["SO4"]["salesCreditMemos"]) == ["PSCM-4"]


def test_the_window_starts_overlap_before_start_and_excludes_end(bc):
    start, end, overlap = T0 + timedelta(days=1), T0 + timedelta(days=2), timedelta(minutes=10)
    edge = start - overlap
    ms = timedelta(milliseconds=1)
    bc.put(
        "salesOrders",
        sales_order("before", modified=bc_time(edge - ms)),
        sales_order("first", modified=bc_time(edge)),
        sales_order("last", modified=bc_time(end - ms)),
        sales_order("after", modified=bc_time(end)),
    )
    bundles = fetch(bc, start=start, end=end, overlap=overlap)
    assert set(bundles) == {"first", "last"}
    scans = [r.params["$filter"] for r in bc.api_requests("salesOrders") if "$select" in r.params]
    assert scans == [
        "lastModifiedDateTime ge 2024-03-01T23:50:00.000Z and "
        "lastModifiedDateTime lt 2024-03-03T00:00:00.000Z"
    ]


def test_naive_window_bounds_are_refused(bc):
    with reader_for(bc) as reader, pytest.raises(ValueError, match="timezone-aware"):
        next(reader.fetch(datetime(2024, 3, 1), None))


# -- batching --------------------------------------------------------------------------------------


def test_related_documents_are_fetched_in_batches_not_per_order(bc):
    planned = populate(bc, 300, seed=9, start=T0)
    bundles = fetch(bc, page_size=1000)
    assert len(bundles) == len(planned)
    requests = bc.api_requests()
    # 1 local currency + 3 scans + per kind about ceil(300 / 30) filtered requests
    assert len(requests) <= 45, len(requests)
    assert all(len(r.params.get("$filter", "")) <= MAX_FILTER_CHARS for r in requests)
    assert any(" or " in r.params.get("$filter", "") for r in requests)


def test_assembly_works_through_small_pages_and_chunks(bc):
    planned = populate(bc, 40, seed=11, start=T0)
    big = fetch(bc, page_size=1000, chunk_size=500)
    small = fetch(bc, page_size=3, chunk_size=4)
    assert set(small) == {p.key for p in planned}
    assert {k: dump_payload(v) for k, v in small.items()} == {k: dump_payload(v) for k, v in big.items()}


# -- local currency --------------------------------------------------------------------------------


def test_a_configured_local_currency_needs_no_lookup(bc):
    bc.put("salesOrders", sales_order("SO1"))
    assert fetch(bc, local_currency="chf")["SO1"]["localCurrency"] == "CHF"
    assert bc.api_requests("generalLedgerSetup") == [] and bc.api_requests("companyInformation") == []


def test_the_local_currency_comes_from_general_ledger_setup_once(bc):
    bc.put("salesOrders", sales_order("SO1"))
    with reader_for(bc) as reader:
        for _ in range(2):
            assert [r.payload["localCurrency"] for r in reader.fetch(None, None)] == ["EUR"]
    assert len(bc.api_requests("generalLedgerSetup")) == 1


def test_older_servers_give_the_local_currency_through_company_information():
    with FakeBusinessCentral(has_gl_setup_endpoint=False, lcy_code="GBP") as bc:
        bc.put("salesOrders", sales_order("SO1", lcy="GBP"))
        assert fetch(bc)["SO1"]["localCurrency"] == "GBP"
        assert len(bc.api_requests("companyInformation")) == 1


def test_a_company_without_local_currency_says_what_to_set():
    with FakeBusinessCentral(lcy_code="") as bc:
        bc.put("salesOrders", sales_order("SO1", lcy=""))
        log: list[str] = []
        bundles = fetch(bc, log=log.append)
    assert bundles["SO1"]["localCurrency"] is None
    assert any("BC_LOCAL_CURRENCY" in line for line in log)
    (result,) = normalize([_Record("SO1", bundles["SO1"])], resolve_names=lambda n: {})
    assert isinstance(result, Reject) and "BC_LOCAL_CURRENCY" in result.reason


class _Record:
    def __init__(self, key: str, payload: dict) -> None:
        self.record_key, self.payload = key, payload


# -- failures and races ----------------------------------------------------------------------------


def test_a_failure_while_assembling_raises_instead_of_ending_quietly(bc):
    populate(bc, 60, seed=13, start=T0)

    def log(line: str) -> None:
        if "assembled 20/" in line:
            bc.inject(*["503"] * 5)

    yielded = []
    with reader_for(bc, chunk_size=20, max_attempts=3) as reader, pytest.raises(SourceError, match="gave up"):
        for record in reader.fetch(None, None, log):
            yielded.append(record)
    # What came before the failure is whole bundles of the first chunk, nothing more.
    assert len(yielded) == 20
    assert reader.complete_until is None  # the cursor has nowhere to move


def test_complete_until_is_the_end_of_the_window_once_read(bc):
    bc.put("salesOrders", sales_order("SO1"))
    end = T0 + timedelta(days=400)
    with reader_for(bc) as reader:
        records = reader.fetch(None, end)
        assert reader.complete_until is None
        assert [r.record_key for r in records] == ["SO1"]
        assert reader.complete_until == end
        before = datetime.now(UTC)
        list(reader.fetch(T0, None))
        assert before <= reader.complete_until <= datetime.now(UTC)


def test_an_order_deleted_while_reading_is_skipped_and_logged(bc):
    bc.put("salesOrders", sales_order("SO1"), sales_order("SO2"))

    def log(line: str) -> None:
        if "orders to assemble" in line:
            bc.delete("salesOrders", "SO2")

    lines: list[str] = []
    bundles = fetch(bc, log=lambda line: (lines.append(line), log(line)))
    assert set(bundles) == {"SO1"}
    assert any("1 orders vanished while reading" in line for line in lines)


def test_an_order_posted_while_reading_arrives_posted(bc):
    bc.put("salesOrders", sales_order("SO1"))

    def log(line: str) -> None:
        if "orders to assemble" in line:
            bc.delete("salesOrders", "SO1")
            bc.put("salesInvoices", sales_invoice("PSI-1", order_number="SO1"))

    bundle = fetch(bc, log=log)["SO1"]
    assert bundle["salesOrder"] is None and numbers(bundle["salesInvoices"]) == ["PSI-1"]


# -- configuration ---------------------------------------------------------------------------------


def test_credentials_must_be_one_kind_or_the_other(bc):
    with pytest.raises(ValueError, match="either BC_ACCESS_TOKEN or"):
        BusinessCentralReader(bc.base_url, bc.company_id, access_token="t", client_id="c")
    with pytest.raises(ValueError, match="BC_ACCESS_TOKEN, or BC_TENANT_ID"):
        BusinessCentralReader(bc.base_url, bc.company_id)
    with pytest.raises(ValueError, match="BC_CLIENT_SECRET"):
        BusinessCentralReader(bc.base_url, bc.company_id, tenant_id="t", client_id="c")


def test_reader_and_reference_from_environment(bc):
    env = {
        "BC_BASE_URL": bc.base_url,
        "BC_COMPANY_ID": bc.company_id,
        "BC_TENANT_ID": bc.tenant_id,
        "BC_CLIENT_ID": bc.client_id,
        "BC_CLIENT_SECRET": bc.client_secret,
        "BC_TOKEN_URL": bc.token_url,
        "BC_LOCAL_CURRENCY": "SEK",
    }
    bc.put("salesOrders", sales_order("SO1"))
    with reader_from_env(env) as reader:
        assert [r.payload["localCurrency"] for r in reader.fetch(None, None)] == ["SEK"]
    assert bc.token_requests == 1
    assert reference_from_env({}) == ("externalDocumentNumber", "name")
    assert reference_from_env({"BC_SHOPIFY_REF_FIELD": "number", "BC_SHOPIFY_REF_KIND": "ID"}) == (
        "number",
        "id",
    )
    with pytest.raises(ValueError, match="BC_SHOPIFY_REF_KIND"):
        reference_from_env({"BC_SHOPIFY_REF_KIND": "title"})
    with pytest.raises(ValueError, match="BC_BASE_URL"):
        reader_from_env({"BC_COMPANY_ID": "x", "BC_ACCESS_TOKEN": "t"})


# -- an order's life, synced through the store -----------------------------------------------------


def sync(store, bc: FakeBusinessCentral, shopify_ids: dict[str, str]) -> None:
    """One incremental run: read from the cursor, land, normalize, upsert, then move the cursor."""
    start = store.high_water_mark("business_central")
    with reader_for(bc) as reader:
        records = list(reader.fetch(start, None))
        assert reader.complete_until is not None
        until = reader.complete_until
    store.land_raw("business_central", records)
    results = list(
        normalize(records, resolve_names=lambda names: {n: shopify_ids[n] for n in names if n in shopify_ids})
    )
    store.upsert("business_central", [r for r in results if not isinstance(r, Reject)])
    store.record_rejects([r for r in results if isinstance(r, Reject)])
    store.advance_high_water_mark("business_central", until)


def now() -> str:
    return bc_time(datetime.now(UTC))


def stored(store, external_id: str):
    (record,) = store.source_records("business_central", [external_id])
    return record


def test_an_order_from_open_to_posted_to_refunded(store, bc):
    ids = {"#1001": "5504312345678"}
    # Business Central stamps changes with its clock: the cursor (complete_until) follows it.
    bc.put("salesOrders", sales_order("SO1", reference="#1001", total="118.00", modified=now()))
    sync(store, bc, ids)
    first = stored(store, "5504312345678")
    assert (first.status, first.payment_status, first.number) == (OrderStatus.PROCESSING, None, "SO1")

    # Shipped and invoiced: Business Central deletes the order, the posted invoice remains.
    bc.delete("salesOrders", "SO1")
    bc.put(
        "salesInvoices",
        sales_invoice(
            "PSI-1",
            order_number="SO1",
            reference="#1001",
            total="118.00",
            status="Paid",
            modified=now(),
        ),
    )
    sync(store, bc, ids)
    posted = stored(store, "5504312345678")
    assert (posted.status, posted.payment_status, posted.total_amount) == (
        OrderStatus.SHIPPED,
        PaymentStatus.CAPTURED,
        Decimal("118.00"),
    )

    bc.put(
        "salesCreditMemos",
        sales_credit_memo("PSCM-1", invoice_number="PSI-1", total="118.00", modified=now()),
    )
    sync(store, bc, ids)
    refunded = stored(store, "5504312345678")
    assert (refunded.payment_status, refunded.refunded_amount, refunded.total_amount) == (
        PaymentStatus.REFUNDED,
        Decimal("118.00"),
        Decimal("118.00"),
    )
    assert store.count("source_orders") == 1
