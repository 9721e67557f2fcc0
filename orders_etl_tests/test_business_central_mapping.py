"""Business Central bundles -> Order: every mapping rule of DESIGN.md §4, on real-shaped documents."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_etl.model import OrderRecord, OrderStatus, PaymentStatus, Reject
from orders_etl.sources.business_central import normalize
from orders_etl.store.landing import dump_payload, load_payload
from orders_etl_tests.fake_business_central import (
    ZERO_GUID,
    dumps,
    sales_credit_memo,
    sales_invoice,
    sales_order,
)

D = Decimal


@dataclass
class Bundle:
    record_key: str
    payload: Any


def bundle(
    order: dict | None = None,
    invoices=(),
    memos=(),
    *,
    local: str | None = "EUR",
    key=None,
    through_json=True,
) -> Bundle:
    payload = {
        "salesOrder": order,
        "salesInvoices": list(invoices),
        "salesCreditMemos": list(memos),
        "localCurrency": local,
    }
    if key is None:
        key = order["number"] if order else (invoices[0]["orderNumber"] or invoices[0]["number"])
    # Through JSON text with parse_float=Decimal, as the reader hands documents on.
    return Bundle(key, json.loads(dumps(payload), parse_float=Decimal) if through_json else payload)


def no_names(names):
    return {}


def one(item: Bundle, **options) -> OrderRecord | Reject:
    options.setdefault("resolve_names", no_names)
    results = list(normalize([item], **options))
    assert len(results) == 1
    return results[0]


def order_of(item: Bundle, **options) -> OrderRecord:
    result = one(item, **options)
    assert isinstance(result, OrderRecord), result
    return result


def reject_of(item: Bundle, **options) -> Reject:
    result = one(item, **options)
    assert isinstance(result, Reject), result
    assert result.source == "business_central"
    assert result.record_key == item.record_key
    assert result.payload == item.payload
    return result


# -- identity and reference ----------------------------------------------------------------


def test_an_open_order_maps_its_own_fields():
    order = sales_order(
        "101001",
        total="13600.50",
        tax="2720.10",
        customer="10000",
        reference="#1001",
        order_date="2022-04-02",
        modified="2022-12-28T00:57:41.157Z",
    )
    result = order_of(bundle(order), resolve_names=lambda names: {"#1001": "5504312345678"})
    assert result.external_id == "5504312345678"
    assert result.number == "101001"
    assert result.customer_id == "10000"
    assert result.total_amount == D("13600.50")
    assert result.tax_amount == D("2720.10")
    assert result.currency == "EUR"
    assert result.status is OrderStatus.PROCESSING
    assert result.payment_status is None
    assert result.payment_status_detail == "not_invoiced"
    assert result.refunded_amount == D("0.00")
    # Business Central dates are date-only: midnight UTC of that day.
    assert result.created_at == datetime(2022, 4, 2, tzinfo=UTC)
    assert result.updated_at == datetime(2022, 12, 28, 0, 57, 41, 157000, tzinfo=UTC)


def test_names_are_resolved_in_one_call_per_chunk_with_a_set():
    calls: list[set[str]] = []

    def resolve(names):
        calls.append(set(names))
        return {name: f"id-{name[1:]}" for name in names if name != "#3"}

    items = [bundle(sales_order(f"SO{i}", reference=f"#{i}")) for i in range(5)]
    items.append(bundle(sales_order("SO9", reference="#1")))  # the same name twice
    results = list(normalize(items, resolve_names=resolve, chunk_size=4))
    assert calls == [{"#0", "#1", "#2", "#3"}, {"#4", "#1"}]
    assert [r.external_id for r in results] == ["id-0", "id-1", "id-2", "SO3", "id-4", "id-1"]


def test_an_unresolved_name_is_keyed_on_the_bc_number():
    result = order_of(bundle(sales_order("SO7", reference="#9999")))
    assert (result.external_id, result.number) == ("SO7", "SO7")


def test_an_order_without_reference_is_an_erp_order_keyed_on_its_number():
    calls = []
    result = order_of(
        bundle(sales_order("SO8", reference="  ")), resolve_names=lambda n: calls.append(n) or {}
    )
    assert result.external_id == "SO8"
    assert calls == []  # nothing to resolve, no lookup


def test_kind_id_uses_the_reference_itself_and_reduces_a_gid():
    assert order_of(bundle(sales_order("SO1", reference="5504312345678")), ref_kind="id").external_id == (
        "5504312345678"
    )
    gid = bundle(sales_order("SO2", reference="gid://shopify/Order/5504312345679"))
    assert order_of(gid, ref_kind="id").external_id == "5504312345679"
    # An id no Shopify order has is still keyed on it (reported missing_in_shopify later).
    assert order_of(bundle(sales_order("SO3", reference="4242")), ref_kind="id").external_id == "4242"


def test_the_reference_field_is_configurable():
    order = sales_order("SO1", reference="")
    order["customerPurchaseOrderReference"] = "#1001"
    result = order_of(
        bundle(order), ref_field="customerPurchaseOrderReference", resolve_names=lambda n: {"#1001": "77"}
    )
    assert result.external_id == "77"


def test_ref_field_number_uses_the_order_number_even_once_posted():
    # "Use Shopify Order No." makes the BC order number the Shopify name; posted invoices
    # have numbers of their own, the order's number survives in orderNumber.
    posted = bundle(None, [sales_invoice("PSI-1", order_number="#1001", reference="")])
    result = order_of(posted, ref_field="number", resolve_names=lambda n: {"#1001": "55"})
    assert (result.external_id, result.number) == ("55", "#1001")


def test_a_reference_field_the_api_does_not_return_is_rejected_by_name():
    reject = reject_of(bundle(sales_order("SO1")), ref_field="shpfyOrderId")
    assert "'shpfyOrderId' (BC_SHOPIFY_REF_FIELD) is absent" in reject.reason


def test_a_posted_order_takes_its_reference_from_the_invoice():
    posted = bundle(None, [sales_invoice("PSI-1", order_number="SO1", reference="#1001")])
    assert order_of(posted, resolve_names=lambda n: {"#1001": "55"}).external_id == "55"


def test_invalid_reference_configuration_fails_loudly():
    with pytest.raises(ValueError, match="BC_SHOPIFY_REF_KIND"):
        list(normalize([], ref_kind="title", resolve_names=no_names))  # type: ignore[arg-type]


# -- status ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "fully_shipped", "expected"),
    [
        ("Draft", False, OrderStatus.PENDING),
        ("In_x0020_Review", False, OrderStatus.PENDING),
        ("In Review", False, OrderStatus.PENDING),
        ("Open", False, OrderStatus.PROCESSING),
        ("Open", True, OrderStatus.SHIPPED),
    ],
)
def test_order_status(status, fully_shipped, expected):
    order = sales_order("SO1", status=status, fully_shipped=fully_shipped)
    assert order_of(bundle(order)).status is expected


@pytest.mark.parametrize("status", ["Released", "Pending Approval", "open", ""])
def test_an_unknown_order_status_is_rejected_with_its_value(status):
    reject = reject_of(bundle(sales_order("SO1", status=status)))
    assert f"salesOrder.status = {status!r}" in reject.reason
    assert "'SO1'" in reject.reason


def test_a_posted_order_is_shipped():
    posted = bundle(None, [sales_invoice("PSI-1", order_number="SO1", status="Open")])
    result = order_of(posted)
    assert (result.number, result.status) == ("SO1", OrderStatus.SHIPPED)


def test_a_draft_invoice_without_order_is_pending():
    draft = bundle(None, [sales_invoice("INV-1", status="Draft")])
    result = order_of(draft)
    assert (result.external_id, result.number, result.status) == ("INV-1", "INV-1", OrderStatus.PENDING)
    assert result.payment_status_detail == "not_invoiced"


# -- totals and refunds ------------------------------------------------------------------------


def test_partly_invoiced_order_keeps_the_order_totals_and_is_captured():
    order = sales_order("SO1", total="200.00", tax="38.00")
    paid = sales_invoice("PSI-1", order_number="SO1", total="100.00", tax="19.00", status="Paid")
    result = order_of(bundle(order, [paid]))
    assert (result.total_amount, result.tax_amount) == (D("200.00"), D("38.00"))
    assert (result.payment_status, result.status) == (PaymentStatus.CAPTURED, OrderStatus.PROCESSING)


def test_posted_totals_come_from_the_invoices_and_are_not_netted_by_refunds():
    invoices = [
        sales_invoice("PSI-1", order_number="SO1", total="100.00", tax="19.00", status="Paid"),
        sales_invoice("PSI-2", order_number="SO1", total="50.00", tax="9.50", status="Paid"),
    ]
    memos = [sales_credit_memo("PSCM-1", invoice_number="PSI-2", total="50.00", tax="9.50", status="Paid")]
    result = order_of(bundle(None, invoices, memos))
    assert (result.total_amount, result.tax_amount) == (D("150.00"), D("28.50"))
    assert result.refunded_amount == D("50.00")
    assert (result.payment_status, result.payment_status_detail) == (
        PaymentStatus.CAPTURED,
        "partially_refunded",
    )


def test_a_cancelled_invoice_does_not_count_toward_the_total_of_its_replacement():
    invoices = [
        sales_invoice("PSI-1", order_number="SO1", total="100.00", tax="19.00", status="Canceled"),
        sales_invoice("PSI-2", order_number="SO1", total="110.00", tax="20.90", status="Paid"),
    ]
    memos = [sales_credit_memo("PSCM-1", invoice_number="PSI-1", total="100.00", status="Corrective")]
    result = order_of(bundle(None, invoices, memos))
    assert (result.total_amount, result.tax_amount, result.refunded_amount) == (D("110.00"), D("20.90"), D(0))
    assert result.payment_status is PaymentStatus.CAPTURED


def test_a_voided_order_keeps_what_had_been_charged():
    invoices = [sales_invoice("PSI-1", order_number="SO1", total="100.00", tax="19.00", status="Canceled")]
    memos = [sales_credit_memo("PSCM-1", invoice_number="PSI-1", total="100.00", status="Corrective")]
    result = order_of(bundle(None, invoices, memos))
    assert (result.payment_status, result.total_amount, result.refunded_amount) == (
        PaymentStatus.VOIDED,
        D("100.00"),
        D(0),
    )


def test_a_fully_refunded_order():
    invoices = [sales_invoice("PSI-1", order_number="SO1", total="100.00", status="Paid")]
    memos = [
        sales_credit_memo("PSCM-1", invoice_number="PSI-1", total="60.00", status="Paid"),
        sales_credit_memo("PSCM-2", invoice_number="PSI-1", total="40.00", status="Open"),
    ]
    result = order_of(bundle(None, invoices, memos))
    assert (result.payment_status, result.payment_status_detail, result.refunded_amount) == (
        PaymentStatus.REFUNDED,
        "refunded",
        D("100.00"),
    )


def test_a_posted_order_dates_from_its_first_invoice():
    invoices = [
        sales_invoice("PSI-2", order_number="SO1", invoice_date="2024-03-09", status="Paid"),
        sales_invoice("PSI-1", order_number="SO1", invoice_date="2024-03-04", status="Paid"),
    ]
    assert order_of(bundle(None, invoices)).created_at == datetime(2024, 3, 4, tzinfo=UTC)


def test_business_centrals_blank_date_is_no_date():
    assert order_of(bundle(sales_order("SO1", order_date="0001-01-01"))).created_at is None


def test_updated_at_is_the_latest_change_of_any_document():
    order = sales_order("SO1", modified="2024-03-01T10:00:00.000Z")
    invoice = sales_invoice("PSI-1", order_number="SO1", modified="2024-03-02T10:00:00.000Z")
    memo = sales_credit_memo(
        "PSCM-1", invoice_number="PSI-1", total="1.00", modified="2024-03-03T08:30:00.5+02:00"
    )
    assert order_of(bundle(order, [invoice], [memo])).updated_at == datetime(
        2024, 3, 3, 6, 30, 0, 500000, tzinfo=UTC
    )


# -- currency -----------------------------------------------------------------------------------


def test_local_currency_with_its_code():
    order = sales_order("SO1", currency=None, lcy="EUR")
    assert order["currencyId"] == ZERO_GUID
    assert order_of(bundle(order, local="EUR")).currency == "EUR"


def test_local_currency_with_an_empty_code_takes_the_resolved_local_currency():
    order = sales_order("SO1", currency=None, lcy="")
    assert order["currencyCode"] == ""
    assert order_of(bundle(order, local="CHF")).currency == "CHF"


def test_local_currency_unknown_is_rejected_never_stored_empty():
    reject = reject_of(bundle(sales_order("SO1", currency=None, lcy=""), local=None))
    assert "salesOrder.currencyCode is 'empty'" in reject.reason
    assert "BC_LOCAL_CURRENCY" in reject.reason


def test_a_configured_local_currency_contradicting_business_central_is_rejected():
    reject = reject_of(bundle(sales_order("SO1", currency=None, lcy="GBP"), local="EUR"))
    assert "'GBP'" in reject.reason and "'EUR'" in reject.reason


def test_a_foreign_currency_is_taken_from_the_document():
    order = sales_order("SO1", currency="JPY", total="11800", tax="1800")
    result = order_of(bundle(order, local="EUR"))
    assert (result.currency, result.total_amount) == ("JPY", D("11800"))


def test_documents_in_different_currencies_are_rejected():
    invoices = [sales_invoice("PSI-1", order_number="SO1", currency="USD")]
    reject = reject_of(bundle(sales_order("SO1", currency=None), invoices))
    assert "salesInvoices[0].currencyCode = 'USD' differs from the order's 'EUR'" in reject.reason


def test_a_currency_code_that_is_not_iso_is_rejected_by_the_model():
    reject = reject_of(bundle(sales_order("SO1", currency="EURO")))
    assert "currency" in reject.reason and "ISO 4217" in reject.reason


# -- bad input is a reject, never a crash -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda o: o.pop("totalAmountIncludingTax"), "salesOrder.totalAmountIncludingTax is missing"),
        (lambda o: o.update(totalAmountIncludingTax=-5), "salesOrder.totalAmountIncludingTax = -5"),
        (lambda o: o.update(totalAmountIncludingTax=1.5), "is not an exact decimal amount"),
        (lambda o: o.update(totalAmountIncludingTax="12,50"), "is not a decimal amount"),
        (lambda o: o.update(number=""), "salesOrder.number is missing or empty"),
        (lambda o: o.pop("status"), "salesOrder.status is missing"),
        (lambda o: o.update(fullyShipped="yes"), "salesOrder.fullyShipped = 'yes' is not a boolean"),
        (lambda o: o.update(orderDate="02.04.2022"), "salesOrder.orderDate = '02.04.2022' is not a date"),
        (lambda o: o.pop("lastModifiedDateTime"), "salesOrder.lastModifiedDateTime is missing"),
        (lambda o: o.update(lastModifiedDateTime="2024-03-01T10:00:00"), "has no timezone"),
        (lambda o: o.update(lastModifiedDateTime="yesterday"), "is not an ISO 8601 timestamp"),
        (lambda o: o.update(totalAmountIncludingTax="10.001"), "total_amount"),
    ],
)
def test_unreadable_fields_are_rejects_naming_the_field(mutate, expected):
    order = sales_order("SO1")
    mutate(order)
    # As given (a float cannot come out of the reader's parse_float=Decimal, but is refused).
    assert expected in reject_of(bundle(order, key="SO1", through_json=False)).reason


def test_a_bad_credit_memo_is_named_with_its_position():
    memos = [
        sales_credit_memo("PSCM-1", invoice_number="PSI-1", total="1.00"),
        sales_credit_memo("PSCM-2", invoice_number="PSI-1", total="1.00", status="Sent"),
    ]
    reject = reject_of(bundle(None, [sales_invoice("PSI-1", order_number="SO1")], memos))
    assert "salesCreditMemos[1].status = 'Sent' is not a sales credit memo status" in reject.reason


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "text",
        [],
        {},
        {"salesOrder": None, "salesInvoices": [], "salesCreditMemos": []},
        {"salesOrder": "SO1", "salesInvoices": [], "salesCreditMemos": []},
        {"salesOrder": None, "salesInvoices": {"number": "X"}, "salesCreditMemos": []},
        {"salesOrder": None, "salesInvoices": [1, 2], "salesCreditMemos": []},
    ],
)
def test_payloads_that_are_not_bundles_are_rejected(payload):
    reject = reject_of(Bundle("K1", payload))
    assert reject.reason.startswith("order 'K1': ")


def test_one_bad_bundle_does_not_stop_the_batch():
    items = [
        bundle(sales_order("SO1")),
        bundle(sales_order("SO2", status="Released")),
        bundle(sales_order("SO3")),
    ]
    results = list(normalize(items, resolve_names=no_names))
    assert [type(r).__name__ for r in results] == ["OrderRecord", "Reject", "OrderRecord"]


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 10**6)
    | st.text(max_size=12)
    | st.decimals(allow_nan=True, places=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from(["salesOrder", "salesInvoices", "salesCreditMemos"]),
    field=st.sampled_from(
        [
            "number",
            "status",
            "orderNumber",
            "currencyCode",
            "currencyId",
            "totalAmountIncludingTax",
            "totalTaxAmount",
            "remainingAmount",
            "lastModifiedDateTime",
            "orderDate",
            "invoiceDate",
            "externalDocumentNumber",
            "fullyShipped",
            "customerNumber",
        ]
    ),
    value=_json_values,
    drop=st.booleans(),
)
def test_any_corrupted_field_gives_exactly_one_order_or_reject(which, field, value, drop):
    order = sales_order("SO1", reference="#1")
    invoice = sales_invoice("PSI-1", order_number="SO1")
    memo = sales_credit_memo("PSCM-1", invoice_number="PSI-1", total="10.00")
    payload = {
        "salesOrder": order,
        "salesInvoices": [invoice],
        "salesCreditMemos": [memo],
        "localCurrency": "EUR",
    }
    target = order if which == "salesOrder" else payload[which][0]
    if drop:
        target.pop(field, None)
    else:
        target[field] = value
    results = list(normalize([Bundle("SO1", payload)], resolve_names=lambda names: {"#1": "1"}))
    assert len(results) == 1
    assert isinstance(results[0], OrderRecord | Reject)


# -- what the reader lands, read back ----------------------------------------------------------------


def test_a_landed_bundle_normalizes_like_the_fetched_one():
    # Landing stores Decimals as strings; the normalizer reads both the same.
    invoices = [sales_invoice("PSI-1", order_number="SO1", total="172.94", tax="8.24", status="Paid")]
    memos = [sales_credit_memo("PSCM-1", invoice_number="PSI-1", total="20.00", status="Paid")]
    fetched = bundle(sales_order("SO1", total="172.94", tax="8.24", reference="#1001"), invoices, memos)
    landed = Bundle(fetched.record_key, load_payload(dump_payload(fetched.payload)))
    assert landed.payload["salesInvoices"][0]["totalAmountIncludingTax"] == "172.94"
    resolve = {"#1001": "9001"}.copy
    assert order_of(landed, resolve_names=lambda n: resolve()) == order_of(
        fetched, resolve_names=lambda n: resolve()
    )


# The example response of "Get salesInvoices" in Microsoft's API v2.0 reference
# (MicrosoftDocs/dynamics365smb-devitpro-pb, dynamics_salesinvoice_get.md, CC BY 4.0).
MICROSOFT_INVOICE_EXAMPLE = """{
    "id": "9e0f5c9c-44e3-ea11-bb43-000d3a2feca1", "number": "PS-INV103001", "externalDocumentNumber": "",
    "invoiceDate": "2019-01-15", "postingDate": "2019-01-15", "dueDate": "2019-01-15",
    "customerPurchaseOrderReference": "", "customerId": "f3a5738a-44e3-ea11-bb43-000d3a2feca1",
    "customerNumber": "20000", "customerName": "Trey Research", "billToName": "Trey Research",
    "billToCustomerId": "f3a5738a-44e3-ea11-bb43-000d3a2feca1", "billToCustomerNumber": "20000",
    "shipToName": "Trey Research", "shipToContact": "Helen Ray", "sellToAddressLine1": "153 Thomas Drive",
    "sellToAddressLine2": "", "sellToCity": "Chicago", "sellToCountry": "US", "sellToState": "IL",
    "sellToPostCode": "61236", "billToAddressLine1": "153 Thomas Drive", "billToAddressLine2": "",
    "billToCity": "Chicago", "billToCountry": "US", "billToState": "IL", "billToPostCode": "61236",
    "shipToAddressLine1": "153 Thomas Drive", "shipToAddressLine2": "", "shipToCity": "Chicago",
    "shipToCountry": "US", "shipToState": "IL", "shipToPostCode": "61236",
    "currencyId": "00000000-0000-0000-0000-000000000000", "currencyCode": "USD",
    "orderId": "00000000-0000-0000-0000-000000000000", "orderNumber": "",
    "paymentTermsId": "0ba5738a-44e3-ea11-bb43-000d3a2feca1",
    "shipmentMethodId": "00000000-0000-0000-0000-000000000000", "salesperson": "PS",
    "pricesIncludeTax": false, "remainingAmount": 0, "discountAmount": 0, "discountAppliedBeforeTax": true,
    "totalAmountExcludingTax": 164.7, "totalTaxAmount": 8.24, "totalAmountIncludingTax": 172.94,
    "status": "Paid", "lastModifiedDateTime": "2020-08-21T00:25:58.337Z", "phoneNumber": "",
    "email": "helen.ray@contoso.com"
}"""


def test_microsofts_example_invoice_is_an_erp_order_paid_in_local_currency():
    invoice = json.loads(MICROSOFT_INVOICE_EXAMPLE, parse_float=Decimal)
    item = Bundle(
        "PS-INV103001",
        {"salesOrder": None, "salesInvoices": [invoice], "salesCreditMemos": [], "localCurrency": "USD"},
    )
    result = order_of(item)
    assert (result.external_id, result.number, result.customer_id) == (
        "PS-INV103001",
        "PS-INV103001",
        "20000",
    )
    assert (result.currency, result.total_amount, result.tax_amount) == ("USD", D("172.94"), D("8.24"))
    assert (result.payment_status, result.payment_status_detail) == (PaymentStatus.CAPTURED, "paid")
    assert result.status is OrderStatus.SHIPPED
    assert result.created_at == datetime(2019, 1, 15, tzinfo=UTC)
    assert result.updated_at == datetime(2020, 8, 21, 0, 25, 58, 337000, tzinfo=UTC)
