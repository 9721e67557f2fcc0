"""Every document the Shopify source sends is valid against the real Admin schema (2026-07)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import graphql
import pytest

from orders_etl.sources.shopify import queries
from orders_etl_tests.fake_shopify import admin_schema, operation_cost, validation_errors

# The canonical node shape other parts of the project build against (paging and bulk alike).
CONTRACT_FIELDS = {
    "id", "legacyResourceId", "name", "createdAt", "updatedAt", "cancelledAt", "test", "currencyCode",
    "presentmentCurrencyCode", "displayFinancialStatus", "displayFulfillmentStatus", "totalPriceSet",
    "totalTaxSet", "totalRefundedSet", "shippingLine", "fulfillments", "customer",
}  # fmt: skip
WINDOW = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, 6, 30, tzinfo=UTC))


@pytest.mark.parametrize(
    "document",
    [
        queries.ORDERS_PAGE_QUERY,
        queries.ORDERS_COUNT_QUERY,
        queries.EVENTS_QUERY,
        queries.BULK_RUN_MUTATION,
        queries.BULK_STATUS_QUERY,
        queries.bulk_orders_query(queries.orders_search(*WINDOW)),
        queries.bulk_orders_query(None),
    ],
    ids=["orders-page", "orders-count", "events", "bulk-run", "bulk-status", "bulk-window", "bulk-all"],
)
def test_document_is_valid_against_the_admin_schema(document):
    assert validation_errors(document) == []


def test_the_validator_does_catch_a_wrong_field_name():
    broken = queries.ORDERS_PAGE_QUERY.replace("displayFinancialStatus", "financialStatus")
    errors = validation_errors(broken)
    assert errors and "financialStatus" in errors[0]


def _selected_fields(document: str) -> set[str]:
    """Field names selected on Order nodes in ``document`` (paging: nodes; bulk: edges.node)."""
    tree = graphql.parse(document)
    operation = tree.definitions[0]
    (orders,) = operation.selection_set.selections
    for selection in orders.selection_set.selections:
        if selection.name.value == "nodes":
            return {s.name.value for s in selection.selection_set.selections}
        if selection.name.value == "edges":
            (node,) = selection.selection_set.selections
            return {s.name.value for s in node.selection_set.selections}
    raise AssertionError("no order nodes selected")


def test_paging_and_bulk_select_the_same_contract_fields():
    paging = _selected_fields(queries.ORDERS_PAGE_QUERY)
    bulk = _selected_fields(queries.bulk_orders_query("updated_at:>='2026-01-01T00:00:00Z'"))
    assert paging == bulk
    assert paging >= CONTRACT_FIELDS
    assert "currentTotalPriceSet" not in paging  # totals before refunds/returns only


def test_a_default_page_stays_under_the_single_query_cost_limit():
    operation = graphql.parse(queries.ORDERS_PAGE_QUERY).definitions[0]
    cost = operation_cost(operation, {"first": queries.DEFAULT_PAGE_SIZE})
    assert 2 + queries.DEFAULT_PAGE_SIZE <= cost <= 1000
    assert operation_cost(operation, {"first": 250}) > 1000  # why the default is not 250


def test_window_search_is_half_open_in_utc_and_never_narrower():
    start = datetime(2026, 3, 1, 1, 0, 0, 500_000, tzinfo=timezone(timedelta(hours=2)))
    end = datetime(2026, 3, 2, 0, 0, 0, 1, tzinfo=UTC)
    assert queries.orders_search(start, end) == (
        "updated_at:>='2026-02-28T23:00:00Z' AND updated_at:<'2026-03-02T00:00:01Z'"
    )
    assert queries.orders_search(None, None) is None
    assert queries.orders_search(None, end) == "updated_at:<'2026-03-02T00:00:01Z'"
    with pytest.raises(ValueError, match="timezone"):
        queries.orders_search(datetime(2026, 3, 1), None)


def test_destroyed_orders_search_names_subject_and_action():
    assert queries.destroyed_orders_search(*WINDOW) == (
        "subject_type:ORDER AND action:destroy AND created_at:>='2026-03-01T00:00:00Z' "
        "AND created_at:<'2026-03-02T06:30:00Z'"
    )


def test_bulk_query_escapes_the_search_string():
    document = queries.bulk_orders_query("name:\"#1001\" AND updated_at:>='2026-01-01T00:00:00Z'")
    assert validation_errors(document) == []
    orders_field = graphql.parse(document).definitions[0].selection_set.selections[0]
    (query_argument,) = [a for a in orders_field.arguments if a.name.value == "query"]
    assert query_argument.value.value == "name:\"#1001\" AND updated_at:>='2026-01-01T00:00:00Z'"


def test_schema_is_the_real_admin_schema():
    schema = admin_schema()
    order = schema.get_type("Order")
    assert "legacyResourceId" in order.fields and "totalRefundedSet" in order.fields
    assert "bulkOperationRunQuery" in schema.mutation_type.fields
