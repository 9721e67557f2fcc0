"""Orders destroyed in Shopify, from the ``events`` query (subject ORDER, action destroy).

List queries never return a deleted order, so without this the store would keep it forever
as if it were live. Events can appear seconds to minutes late, which the reader's overlap
re-read covers. ``deletionEvents`` is no help: it is deprecated and covers only products
and collections.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

from orders_etl.sources.base import Log, SourceError
from orders_etl.sources.shopify.client import ShopifyGraphQLClient
from orders_etl.sources.shopify.errors import SOURCE
from orders_etl.sources.shopify.mapping import parse_time
from orders_etl.sources.shopify.queries import EVENTS_PAGE_SIZE, EVENTS_QUERY, destroyed_orders_search

_ORDER_GID = re.compile(r"^gid://shopify/Order/([0-9]+)$")


def destroyed_orders(
    client: ShopifyGraphQLClient,
    start: datetime | None,
    end: datetime | None,
    *,
    log: Log,
    page_size: int = EVENTS_PAGE_SIZE,
) -> Iterator[tuple[str, datetime]]:
    """(legacy order id, deletion time) for each order destroyed in [start, end)."""
    search = destroyed_orders_search(start, end)
    after: str | None = None
    pages = found = unusable = 0
    cursors: dict[str, int] = {}  # cursor -> the page that gave it
    while True:
        data = client.execute(EVENTS_QUERY, {"first": page_size, "after": after, "query": search}, log=log)
        connection = data.get("events")
        if not isinstance(connection, dict) or not isinstance(connection.get("nodes"), list):
            raise SourceError(SOURCE, "events answer without a list of nodes")
        pages += 1
        for event in connection["nodes"]:
            # The server filters already; checking again costs nothing and guards the store.
            if not isinstance(event, dict) or event.get("action") != "destroy":
                continue
            if event.get("subjectType") not in (None, "ORDER"):
                continue
            match = _ORDER_GID.match(str(event.get("subjectId") or ""))
            try:
                when = parse_time(event.get("createdAt"))
            except ValueError:
                match = None
            if match is None:
                unusable += 1
                log(f"shopify: ignoring destroy event {event.get('id')!r}: no order id or time in it")
                continue
            found += 1
            yield match.group(1), when
        page_info = connection.get("pageInfo")
        if not isinstance(page_info, dict) or not isinstance(page_info.get("hasNextPage"), bool):
            # Without pageInfo the last page cannot be told from a cut one: never guess.
            raise SourceError(SOURCE, f"events page {pages} came without pageInfo.hasNextPage")
        log(f"shopify: deleted orders page {pages}: {found} destroyed orders so far")
        if not page_info["hasNextPage"]:
            break
        if not connection["nodes"]:
            raise SourceError(SOURCE, f"events page {pages} is empty but says there is a next page")
        after = page_info.get("endCursor")
        if not isinstance(after, str) or not after:
            raise SourceError(SOURCE, "events page says there is a next page but gives no cursor")
        if after in cursors:
            raise SourceError(
                SOURCE, f"events page {pages} repeats the cursor of page {cursors[after]}: paging in a loop"
            )
        cursors[after] = pages
    log(
        f"shopify: {found} orders destroyed in the window"
        + (f", {unusable} events unusable" if unusable else "")
    )
