"""The GraphQL documents this source sends, and the search strings that bound a window.

Every document here is validated against the real Admin API schema (2026-07) by
``orders_etl_tests/test_shopify_queries.py``: a misspelt field is a GraphQL error on a real
shop, so it must fail in the test suite first.

Query cost (Shopify: object 1, scalar/enum 0, connection or sized list 2 + ``first`` x its
node): one order node below costs 1 (order) + 9 (three MoneyBags of two MoneyV2) + 1
(shippingLine) + 1 (customer) + 10 x 2 (fulfillments with one tracking entry) = 32, so a
page of 25 requests about 803 of the 1,000 points a single query may cost. The actual cost
is far lower (most orders have zero or one fulfillment) and is what the bucket is charged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# Fulfillments fetched per order: "every fulfillment delivered" needs them all; orders with
# more than this many shipments are vanishingly rare and would only delay `delivered`.
MAX_FULFILLMENTS = 10
DEFAULT_PAGE_SIZE = 25
EVENTS_PAGE_SIZE = 250

_MONEY_BAG = "{ shopMoney { amount currencyCode } presentmentMoney { amount currencyCode } }"

# The canonical order node: the paging query and the bulk query select exactly this, so the
# paging client and the bulk JSONL parser hand the mapping the same dict shape.
ORDER_NODE = f"""
      id
      legacyResourceId
      name
      createdAt
      updatedAt
      cancelledAt
      test
      currencyCode
      presentmentCurrencyCode
      displayFinancialStatus
      displayFulfillmentStatus
      totalPriceSet {_MONEY_BAG}
      totalTaxSet {_MONEY_BAG}
      totalRefundedSet {_MONEY_BAG}
      shippingLine {{ code title source }}
      fulfillments(first: {MAX_FULFILLMENTS}) {{
        displayStatus
        createdAt
        deliveredAt
        trackingInfo(first: 1) {{ number company }}
      }}
      customer {{ id legacyResourceId }}
"""

ORDERS_PAGE_QUERY = f"""
query OrdersPage($first: Int!, $after: String, $query: String) {{
  orders(first: $first, after: $after, sortKey: UPDATED_AT, query: $query) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{{ORDER_NODE}    }}
  }}
}}
"""

ORDERS_COUNT_QUERY = """
query OrdersCount($query: String, $limit: Int) {
  ordersCount(query: $query, limit: $limit) { count precision }
}
"""

EVENTS_QUERY = """
query DestroyedOrders($first: Int!, $after: String, $query: String) {
  events(first: $first, after: $after, sortKey: CREATED_AT, query: $query) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id
      action
      createdAt
      ... on BasicEvent { subjectId subjectType }
    }
  }
}
"""

BULK_RUN_MUTATION = """
mutation RunOrdersBulk($query: String!) {
  bulkOperationRunQuery(query: $query) {
    bulkOperation { id status }
    userErrors { field message code }
  }
}
"""

BULK_STATUS_QUERY = """
query BulkStatus($id: ID!) {
  bulkOperation(id: $id) {
    id
    status
    errorCode
    objectCount
    rootObjectCount
    fileSize
    url
    partialDataUrl
  }
}
"""


def bulk_orders_query(search: str | None) -> str:
    """The document a bulk operation runs: every order of the window, one JSONL line each.

    Bulk queries take no ``first``; ``edges { node }`` is the form the bulk guide documents.
    """
    arguments = "sortKey: UPDATED_AT"
    if search:
        arguments += f", query: {_graphql_string(search)}"
    return (
        f"{{\n  orders({arguments}) {{\n    edges {{\n      node {{{ORDER_NODE}      }}\n    }}\n  }}\n}}\n"
    )


def _graphql_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# ---------------------------------------------------------------------------------------
# Search strings (Shopify search syntax) for half-open windows


def _utc_seconds(moment: datetime, *, round_up: bool) -> str:
    """``moment`` as ``YYYY-MM-DDTHH:MM:SSZ``; sub-seconds widen the window, never narrow it."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"window bound {moment!r} must be timezone-aware")
    moment = moment.astimezone(UTC)
    whole = moment.replace(microsecond=0)
    if round_up and whole != moment:
        whole += timedelta(seconds=1)
    return whole.strftime("%Y-%m-%dT%H:%M:%SZ")


def window_terms(field: str, start: datetime | None, end: datetime | None) -> list[str]:
    """``field:>='start'`` and ``field:<'end'`` terms for the half-open window [start, end)."""
    terms = []
    if start is not None:
        terms.append(f"{field}:>='{_utc_seconds(start, round_up=False)}'")
    if end is not None:
        terms.append(f"{field}:<'{_utc_seconds(end, round_up=True)}'")
    return terms


def orders_search(start: datetime | None, end: datetime | None) -> str | None:
    """Orders updated in [start, end), every status (closed and cancelled too).

    Unlike REST (whose default is ``status=open``), the GraphQL ``orders`` connection applies
    no status filter unless the search string has a ``status:`` term, so none is added.
    """
    terms = window_terms("updated_at", start, end)
    return " AND ".join(terms) if terms else None


def destroyed_orders_search(start: datetime | None, end: datetime | None) -> str:
    return " AND ".join(["subject_type:ORDER", "action:destroy", *window_terms("created_at", start, end)])
