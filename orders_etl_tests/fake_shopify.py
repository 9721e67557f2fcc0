"""A fake Shopify Admin API on 127.0.0.1, real HTTP, for the Shopify source's tests and bench.

It behaves like the parts of Shopify the connector relies on, closely enough to catch the
bugs that lose data:

* ``POST /admin/api/{version}/graphql.json`` parses and **validates every document against
  the real 2026-07 Admin schema** (graphql-core) and answers a GraphQL error for an invalid
  one, as Shopify does; valid documents are *executed* by graphql-core over the dataset, so
  the answer has exactly the requested shape;
* ``orders`` (cursor paging keyed on the sort values, like Shopify's opaque cursors, so an
  order updated while paging moves instead of shifting every later page), ``ordersCount``,
  ``events`` (destroyed orders), search strings ``updated_at:>='…' AND updated_at:<'…'``;
* the cost bucket: requested cost from static analysis of the document (object 1,
  connection/sized list 2 + first x node, mutation 10), a leaky bucket with
  ``restoreRate`` and ``maximumAvailable``, ``THROTTLED`` when the requested cost is not
  available, refund down to the actual cost, ``extensions.cost`` on every answer,
  ``MAX_COST_EXCEEDED`` above 1,000 points;
* bulk operations: ``bulkOperationRunQuery`` (optionally busy first), polling through
  ``bulkOperation(id:)`` / ``currentBulkOperation``, a JSONL result served at ``/bulk/…``
  (no token needed, like a signed storage URL), FAILED outcomes with partial data;
* ``POST /admin/oauth/access_token`` (client-credentials grant) with expiring tokens, and 401s;
* faults: 500/502/503, stalled answers (client timeouts), bodies cut short of their
  Content-Length, complete answers whose JSON is cut, connection resets; at a random rate
  (seeded) or scripted one by one.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import gzip
import json
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import graphql
from graphql import (
    FieldNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    is_leaf_type,
)

SCHEMA_PATH = Path(__file__).with_name("shopify_admin_2026-07.graphql.gz")
FAULT_KINDS = ("500", "502", "503", "timeout", "truncated", "cut_json", "reset")
MAX_QUERY_COST = 1000


@cache
def admin_schema() -> GraphQLSchema:
    """The real Admin API schema (2026-07), built once per process (~1.5 s)."""
    return graphql.build_schema(gzip.decompress(SCHEMA_PATH.read_bytes()).decode("utf-8"))


def validation_errors(document_text: str) -> list[str]:
    """Messages of everything wrong with a document against the Admin schema ([] if valid)."""
    try:
        document = graphql.parse(document_text)
    except graphql.GraphQLError as exc:
        return [exc.message]
    return [error.message for error in graphql.validate(admin_schema(), document)]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# ---------------------------------------------------------------------------------------
# Realistic order nodes (the canonical node shape of the connector's queries)

_CURRENCY_DECIMALS = {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3, "GBP": 2}
_FINANCIAL = ["PAID", "PAID", "PAID", "AUTHORIZED", "PARTIALLY_PAID", "PARTIALLY_REFUNDED", "REFUNDED",
              "VOIDED", "EXPIRED", "PENDING", None]  # fmt: skip
_SHIPPING = [
    {"code": "Standard", "title": "Standard Shipping", "source": "shopify"},
    {"code": "FEDEX_GROUND", "title": "FedEx Ground", "source": "fedex"},
    {"code": "03", "title": "UPS Ground", "source": "ups_shipping"},
    {"code": None, "title": "Hand-delivered by bicycle", "source": None},
    None,
]


def money(amount: Decimal, currency: str, presentment: str | None = None, rate: Decimal = Decimal(1)) -> dict:
    def fmt(value: Decimal, code: str) -> str:
        return str(value.quantize(Decimal(1).scaleb(-_CURRENCY_DECIMALS.get(code, 2))))

    other = presentment or currency
    return {
        "shopMoney": {"amount": fmt(amount, currency), "currencyCode": currency},
        "presentmentMoney": {"amount": fmt(amount * rate, other), "currencyCode": other},
    }


def make_order(
    legacy_id: int,
    *,
    updated_at: datetime,
    currency: str = "USD",
    financial: str | None = "PAID",
    fulfillment: str = "UNFULFILLED",
    fulfillments: list[dict] | None = None,
    cancelled_at: datetime | None = None,
    test: bool = False,
    total: str = "100.00",
    tax: str | None = "8.00",
    refunded: str = "0.00",
    shipping: dict | None = None,
    customer_id: int | None = 7,
    name: str | None = None,
    presentment: str | None = None,
) -> dict[str, Any]:
    created = updated_at - timedelta(hours=1)
    rate = Decimal("1.1") if presentment and presentment != currency else Decimal(1)
    return {
        "id": f"gid://shopify/Order/{legacy_id}",
        "legacyResourceId": str(legacy_id),
        "name": name or f"#{1000 + legacy_id}",
        "createdAt": iso(created),
        "updatedAt": iso(updated_at),
        "cancelledAt": iso(cancelled_at) if cancelled_at else None,
        "test": test,
        "currencyCode": currency,
        "presentmentCurrencyCode": presentment or currency,
        "displayFinancialStatus": financial,
        "displayFulfillmentStatus": fulfillment,
        "totalPriceSet": money(Decimal(total), currency, presentment, rate),
        "totalTaxSet": money(Decimal(tax), currency, presentment, rate) if tax is not None else None,
        "totalRefundedSet": money(Decimal(refunded), currency, presentment, rate),
        "shippingLine": shipping,
        "fulfillments": fulfillments or [],
        "customer": (
            {"id": f"gid://shopify/Customer/{customer_id}", "legacyResourceId": str(customer_id)}
            if customer_id is not None
            else None
        ),
    }


def fulfillment(
    status: str, created: datetime, tracking: str | None = None, company: str | None = "UPS"
) -> dict:
    return {
        "displayStatus": status,
        "createdAt": iso(created),
        "deliveredAt": iso(created + timedelta(days=2)) if status == "DELIVERED" else None,
        "trackingInfo": [{"number": tracking, "company": company}] if tracking else [],
    }


def make_orders(
    count: int,
    *,
    seed: int = 7,
    start: datetime = datetime(2026, 3, 1, tzinfo=UTC),
    step: timedelta = timedelta(seconds=20),
    first_id: int = 5001,
) -> list[dict[str, Any]]:
    """``count`` varied orders, updated ``step`` apart from ``start`` (deterministic)."""
    rng = random.Random(seed)
    orders = []
    for index in range(count):
        updated = start + step * index
        currency = rng.choice(["USD", "USD", "EUR", "JPY", "KWD"])
        decimals = _CURRENCY_DECIMALS[currency]
        total = Decimal(rng.randint(100, 500_000)).scaleb(-decimals)
        tax = (total / 11).quantize(Decimal(1).scaleb(-decimals))
        financial = rng.choice(_FINANCIAL)
        display = rng.choice(["UNFULFILLED", "FULFILLED", "PARTIALLY_FULFILLED", "IN_PROGRESS", "ON_HOLD"])
        shipments = []
        if display in ("FULFILLED", "PARTIALLY_FULFILLED"):
            for n in range(rng.choice([1, 1, 2])):
                status = rng.choice(["DELIVERED", "IN_TRANSIT", "DELIVERED"])
                shipments.append(
                    fulfillment(status, updated - timedelta(days=3 - n), f"1Z{first_id + index:08d}{n}")
                )
        refunded = (
            total if financial == "REFUNDED" else (tax if financial == "PARTIALLY_REFUNDED" else Decimal(0))
        )
        orders.append(
            make_order(
                first_id + index,
                updated_at=updated,
                currency=currency,
                financial=financial,
                fulfillment=display,
                fulfillments=shipments,
                cancelled_at=updated - timedelta(minutes=5) if rng.random() < 0.05 else None,
                test=rng.random() < 0.02,
                total=str(total),
                tax=str(tax),
                refunded=str(refunded.quantize(Decimal(1).scaleb(-decimals))),
                shipping=rng.choice(_SHIPPING),
                customer_id=rng.choice([None, rng.randint(1, 10_000)]),
                presentment=rng.choice([None, "EUR", "GBP"]) if currency == "USD" else None,
            )
        )
    return orders


# ---------------------------------------------------------------------------------------
# Query cost (Shopify's documented rules)


def _unwrap(gql_type: Any) -> tuple[Any, bool]:
    """(named type, is a list) of a field type."""
    is_list = False
    while isinstance(gql_type, GraphQLNonNull | GraphQLList):
        if isinstance(gql_type, GraphQLList):
            is_list = True
        gql_type = gql_type.of_type
    return gql_type, is_list


def _argument(node: FieldNode, name: str, variables: dict[str, Any]) -> Any:
    for argument in node.arguments or ():
        if argument.name.value == name:
            return graphql.value_from_ast_untyped(argument.value, variables)
    return None


def _fields(parent: Any, selection_set: Any) -> Iterable[tuple[Any, FieldNode]]:
    """(type the field is on, field node), flattening inline fragments."""
    for selection in selection_set.selections if selection_set else ():
        if isinstance(selection, FieldNode):
            yield parent, selection
        elif isinstance(selection, InlineFragmentNode):
            condition = (
                admin_schema().get_type(selection.type_condition.name.value)
                if selection.type_condition
                else parent
            )
            yield from _fields(condition, selection.selection_set)


def selection_cost(
    parent: Any, selection_set: Any, variables: dict[str, Any], data: Any = None, actual: bool = False
) -> float:
    """Cost of a selection on ``parent``: requested (static) or actual (over ``data``)."""
    total = 0.0
    for owner, node in _fields(parent, selection_set):
        name = node.name.value
        if name.startswith("__") or not hasattr(owner, "fields") or name not in owner.fields:
            continue
        named, is_list = _unwrap(owner.fields[name].type)
        if is_leaf_type(named):
            continue
        key = node.alias.value if node.alias else name
        value = data.get(key) if actual and isinstance(data, dict) else None
        if named.name.endswith("Connection"):
            item_type = named.fields["nodes"].type
            item_named, _ = _unwrap(item_type)
            first = _argument(node, "first", variables) or _argument(node, "last", variables) or 1
            inner = 0.0
            for _, child in _fields(named, node.selection_set):
                if child.name.value == "nodes":
                    items = (value or {}).get("nodes") or [] if actual else [None] * int(first)
                    inner += sum(
                        1 + selection_cost(item_named, child.selection_set, variables, i, actual)
                        for i in items
                    )
                elif child.name.value == "edges":
                    edge_type, _ = _unwrap(named.fields["edges"].type)
                    for _, edge_field in _fields(edge_type, child.selection_set):
                        if edge_field.name.value == "node":
                            edges = (value or {}).get("edges") or [] if actual else [None] * int(first)
                            inner += sum(
                                1 + selection_cost(item_named, edge_field.selection_set, variables,
                                                   (e or {}).get("node") if actual else None, actual)
                                for e in edges
                            )  # fmt: skip
            total += 2 + inner
        elif is_list:
            first = _argument(node, "first", variables) or 1
            items = (value or []) if actual else [None] * int(first)
            total += sum(1 + selection_cost(named, node.selection_set, variables, i, actual) for i in items)
        else:
            if actual and value is None:
                continue
            total += 1 + selection_cost(named, node.selection_set, variables, value, actual)
    return total


def operation_cost(
    operation: OperationDefinitionNode, variables: dict[str, Any], data: Any = None, actual: bool = False
) -> float:
    schema = admin_schema()
    if operation.operation == graphql.OperationType.MUTATION:
        return 10.0 * len(operation.selection_set.selections)
    return selection_cost(schema.query_type, operation.selection_set, variables, data, actual)


# ---------------------------------------------------------------------------------------
# Execution: documents are validated by graphql-core; executing them is a projection of the
# dataset's dicts onto the selection (graphql-core's executor is ~10x slower, too slow for
# the 10,000-order tests).


def execute(operation: OperationDefinitionNode, root: Any, variables: dict[str, Any]) -> dict[str, Any]:
    schema = admin_schema()
    root_type = (
        schema.mutation_type if operation.operation == graphql.OperationType.MUTATION else schema.query_type
    )
    data: dict[str, Any] = {}
    for _, node in _fields(root_type, operation.selection_set):
        field_def = root_type.fields[node.name.value]
        arguments = graphql.get_argument_values(field_def, node, variables)
        value = getattr(root, node.name.value)(None, **arguments)
        data[node.alias.value if node.alias else node.name.value] = _complete(
            field_def.type, node, value, variables
        )
    return data


def _complete(field_type: Any, node: FieldNode, value: Any, variables: dict[str, Any]) -> Any:
    if value is None or node.selection_set is None:
        return value
    named, _ = _unwrap(field_type)
    if isinstance(value, list):
        first = _argument(node, "first", variables)
        items = value[:first] if isinstance(first, int) else value
        return [_project(named, node.selection_set, item, variables) for item in items]
    return _project(named, node.selection_set, value, variables)


def _project(
    parent: Any, selection_set: Any, value: dict[str, Any], variables: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for selection in selection_set.selections:
        if isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition.name.value if selection.type_condition else None
            if condition is None or value.get("__typename", condition) == condition:
                target = admin_schema().get_type(condition) if condition else parent
                out.update(_project(target, selection.selection_set, value, variables))
            continue
        name = selection.name.value
        key = selection.alias.value if selection.alias else name
        if name == "__typename":
            out[key] = value.get("__typename", parent.name)
            continue
        out[key] = _complete(parent.fields[name].type, selection, value.get(name), variables)
    return out


# ---------------------------------------------------------------------------------------
# Search strings and cursors

_TERM = re.compile(r"^(?P<field>[a-z_]+):(?P<op>>=|<=|>|<)?'?(?P<value>[^']*)'?$")


def parse_search(text: str | None) -> list[tuple[str, str, str]]:
    if not text:
        return []
    terms = []
    for raw in re.split(r"\s+AND\s+|\s+", text.strip()):
        match = _TERM.match(raw)
        if not match:
            raise ValueError(f"cannot parse search term {raw!r}")
        terms.append((match["field"], match["op"] or "=", match["value"]))
    return terms


def _compare(left: Any, op: str, right: Any) -> bool:
    return {
        "=": left == right,
        ">=": left >= right,
        "<=": left <= right,
        ">": left > right,
        "<": left < right,
    }[op]


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def decode_cursor(cursor: str) -> list[Any]:
    return json.loads(base64.urlsafe_b64decode(cursor.encode()))


# ---------------------------------------------------------------------------------------
# The server


@dataclass
class Faults:
    """Random faults on GraphQL requests: each request fails with ``rate`` probability."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 1
    stall_s: float = 2.0  # how long a "timeout" answer stalls (longer than the client's timeout)


@dataclass
class FakeStats:
    requests: int = 0
    graphql: int = 0
    throttled: int = 0
    invalid_queries: int = 0
    cost_requested: float = 0.0
    cost_actual: float = 0.0
    faults: Counter = field(default_factory=Counter)
    token_requests: int = 0
    unauthorized: int = 0
    downloads: int = 0
    operations: Counter = field(default_factory=Counter)
    paths: Counter = field(default_factory=Counter)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeShopify

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # injected resets and clients that gave up are expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.fake._dispatch(self, "POST")

    def do_GET(self) -> None:
        self.server.fake._dispatch(self, "GET")


class FakeShopify:
    def __init__(
        self,
        orders: Iterable[dict[str, Any]] = (),
        *,
        access_token: str | None = "shpat_fake_static_token_0123456789",
        client_id: str | None = None,
        client_secret: str | None = None,
        token_ttl_s: float = 86_400.0,
        restore_rate: float = 1_000_000.0,
        maximum_available: float = 2_000.0,
        max_query_cost: float = MAX_QUERY_COST,
        faults: Faults | None = None,
        bulk_polls: int = 2,
        bulk_busy: int = 0,
        bulk_outcome: str = "COMPLETED",
        bulk_error_code: str | None = None,
        bulk_children_first: bool = False,
        now: Callable[[], datetime] = lambda: datetime.now(UTC).replace(microsecond=0),
    ) -> None:
        self._lock = threading.RLock()
        self._version = 0
        self._sort_cache: dict[str, tuple[list[list[Any]], list[dict[str, Any]], int]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        for order in orders:
            self.put_order(order)
        self.events: list[dict[str, Any]] = []
        self.access_token = access_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl_s = token_ttl_s
        self.issued_tokens: dict[str, float] = {}
        self.restore_rate = restore_rate
        self.maximum_available = maximum_available
        self.available = maximum_available
        self._refilled_at = time.monotonic()
        self.max_query_cost = max_query_cost
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self.scripted: list[str] = []
        self.download_faults: list[str] = []
        self.bulk_polls = bulk_polls
        self.bulk_busy = bulk_busy
        self.bulk_outcome = bulk_outcome
        self.bulk_error_code = bulk_error_code
        self.bulk_children_first = bulk_children_first
        self.bulk_operations: dict[str, dict[str, Any]] = {}
        self.bulk_results: dict[str, bytes] = {}
        self.download_headers: list[dict[str, str]] = []
        self.after_orders_page: Callable[[int], None] | None = None
        # Rewrites an answer before it is sent: for answers no valid query could get.
        self.tamper: Callable[[dict[str, Any]], None] | None = None
        self.now = now
        self.stats = FakeStats()
        self.seen_queries: list[str] = []
        self._valid_cache: dict[str, list[str]] = {}
        self._cost_cache: dict[tuple[str, str], float] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        admin_schema()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeShopify:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        # A short poll interval: shutdown() waits up to one interval, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-shopify",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeShopify:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- dataset --------------------------------------------------------------------------

    def put_order(self, order: dict[str, Any]) -> None:
        with self._lock:
            self.orders[order["id"]] = copy.deepcopy(order)
            self._version += 1

    def update_order(self, legacy_id: int | str, **changes: Any) -> dict[str, Any]:
        """Change an order as a merchant would: its updatedAt moves to now."""
        with self._lock:
            order = self.orders[f"gid://shopify/Order/{legacy_id}"]
            order.update(changes)
            order["updatedAt"] = iso(self.now())
            self._version += 1
            return copy.deepcopy(order)

    def destroy_order(self, legacy_id: int | str, at: datetime | None = None) -> None:
        with self._lock:
            del self.orders[f"gid://shopify/Order/{legacy_id}"]
            self._version += 1
            number = len(self.events) + 1
            self.events.append(
                {
                    "__typename": "BasicEvent",
                    "id": f"gid://shopify/BasicEvent/{900_000 + number}",
                    "action": "destroy",
                    "createdAt": iso(at or self.now()),
                    "message": f"Order {legacy_id} was deleted.",
                    "subjectId": f"gid://shopify/Order/{legacy_id}",
                    "subjectType": "ORDER",
                }
            )

    def add_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append({"__typename": "BasicEvent", **event})

    def fail_next(self, kind: str, times: int = 1) -> None:
        assert kind in FAULT_KINDS
        self.scripted.extend([kind] * times)

    def expire_tokens(self) -> None:
        with self._lock:
            self.issued_tokens = dict.fromkeys(self.issued_tokens, 0.0)

    # -- HTTP -----------------------------------------------------------------------------

    def _dispatch(self, handler: _Handler, method: str) -> None:
        self.stats.requests += 1
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path.split("?", 1)[0]
        try:
            if method == "POST" and re.fullmatch(r"/admin/api/[0-9a-z-]+/graphql\.json", path):
                self._graphql(handler, body)
            elif method == "POST" and path == "/admin/oauth/access_token":
                self._token(handler, body)
            elif method == "GET" and path.startswith("/bulk/"):
                self._download(handler, path.removeprefix("/bulk/"))
            else:
                _send(handler, 404, b'{"errors":"Not Found"}')
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def _token(self, handler: _Handler, body: bytes) -> None:
        self.stats.token_requests += 1
        content_type = handler.headers.get("Content-Type", "")
        if "json" in content_type:
            form = json.loads(body or b"{}")
        else:
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if (
            form.get("grant_type") != "client_credentials"
            or self.client_id is None
            or form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            _send(
                handler,
                401,
                json.dumps(
                    {"error": "invalid_client", "error_description": "Client authentication failed"}
                ).encode(),
            )
            return
        token = f"shpca_{len(self.issued_tokens) + 1:04d}_{random.getrandbits(64):016x}"
        with self._lock:
            self.issued_tokens[token] = time.monotonic() + self.token_ttl_s
        _send(
            handler,
            200,
            json.dumps(
                {
                    "access_token": token,
                    "scope": "read_orders,read_all_orders",
                    "expires_in": self.token_ttl_s,
                }
            ).encode(),
        )

    def _authorized(self, handler: _Handler) -> bool:
        token = handler.headers.get("X-Shopify-Access-Token")
        if token is None:
            return False
        if self.access_token is not None and token == self.access_token:
            return True
        expiry = self.issued_tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def _next_fault(self) -> str | None:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
            if self.faults.rate and self._rng.random() < self.faults.rate:
                return self._rng.choice(self.faults.kinds)
        return None

    def _graphql(self, handler: _Handler, body: bytes) -> None:
        self.stats.graphql += 1
        self.stats.paths[handler.path] += 1
        if not self._authorized(handler):
            self.stats.unauthorized += 1
            _send(
                handler,
                401,
                b'{"errors":"[API] Invalid API key or access token (unrecognized login or wrong password)"}',
            )
            return
        fault = self._next_fault()
        if fault:
            self.stats.faults[fault] += 1
        if fault in ("500", "502", "503"):
            page = (
                b"<html><body><h1>Bad gateway</h1></body></html>"
                if fault == "502"
                else b'{"errors":"Internal Server Error"}'
            )
            _send(handler, int(fault), page, "text/html" if fault == "502" else "application/json")
            return
        if fault == "reset":
            _reset(handler)
            return
        answer = self._answer(body)
        if self.tamper is not None:
            self.tamper(answer)
        payload = json.dumps(answer, default=str).encode()
        if fault == "timeout":
            time.sleep(self.faults.stall_s)
        if fault == "truncated":
            _send(handler, 200, payload, truncate=True)
        elif fault == "cut_json":
            _send(handler, 200, payload[: len(payload) // 2])
        else:
            _send(handler, 200, payload)

    # -- GraphQL --------------------------------------------------------------------------

    def _answer(self, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body)
            text = request["query"]
            variables = request.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return {"errors": [{"message": "Parse error: body is not a GraphQL request"}]}
        with self._lock:
            self.seen_queries.append(text)
            problems = self._valid_cache.get(text)
            if problems is None:
                problems = self._valid_cache[text] = validation_errors(text)
            if problems:
                self.stats.invalid_queries += 1
                return {
                    "errors": [
                        {"message": m, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}} for m in problems
                    ]
                }
            document = graphql.parse(text)
            operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
            self.stats.operations[operation.name.value if operation.name else "anonymous"] += 1
            cost_key = (text, json.dumps(variables, sort_keys=True, default=str))
            requested = self._cost_cache.get(cost_key)
            if requested is None:
                requested = self._cost_cache[cost_key] = operation_cost(operation, variables)
            if requested > self.max_query_cost:
                return {
                    "errors": [
                        {
                            "message": f"Query cost is {requested:.0f}, which exceeds the single query max "
                            f"cost limit ({self.max_query_cost:.0f}).",
                            "extensions": {
                                "code": "MAX_COST_EXCEEDED",
                                "cost": requested,
                                "maxCost": self.max_query_cost,
                            },
                        }
                    ],
                    "extensions": {"cost": self._cost(requested, None)},
                }
            self._refill()
            if self.available < requested:
                self.stats.throttled += 1
                return {
                    "errors": [
                        {
                            "message": "Throttled",
                            "extensions": {
                                "code": "THROTTLED",
                                "documentation": "https://shopify.dev/api/usage/rate-limits",
                            },
                        }
                    ],
                    "extensions": {"cost": self._cost(requested, None)},
                }
            self.available -= requested
            try:
                data = execute(operation, _Root(self), variables)
            except ValueError as exc:  # e.g. a search field the fake does not know: a test bug
                self.available += requested
                return {"errors": [{"message": f"fake Shopify: {exc}"}]}
            actual = operation_cost(operation, variables, data, actual=True)
            self.available = min(self.maximum_available, self.available + requested - actual)
            self.stats.cost_requested += requested
            self.stats.cost_actual += actual
            answer = {"data": data, "extensions": {"cost": self._cost(requested, actual)}}
        if operation.name and operation.name.value == "OrdersPage" and self.after_orders_page is not None:
            self.after_orders_page(self.stats.operations["OrdersPage"])
        return answer

    def _refill(self) -> None:
        now = time.monotonic()
        self.available = min(
            self.maximum_available, self.available + (now - self._refilled_at) * self.restore_rate
        )
        self._refilled_at = now

    def _cost(self, requested: float, actual: float | None) -> dict[str, Any]:
        self._refill()
        return {
            "requestedQueryCost": int(requested),
            "actualQueryCost": int(actual) if actual is not None else None,
            "throttleStatus": {
                "maximumAvailable": self.maximum_available,
                "currentlyAvailable": int(self.available),
                "restoreRate": self.restore_rate,
            },
        }

    # -- resolvers (called by graphql-core through _Root) -----------------------------------

    def _order_filter(self, query: str | None) -> Callable[[dict[str, Any]], bool]:
        """A predicate for an orders search string (timestamps compared in canonical form)."""
        checks = []
        for name, op, value in parse_search(query):
            if name not in ("updated_at", "created_at"):
                raise ValueError(f"the fake does not know the orders search field {name!r}")
            checks.append(("updatedAt" if name == "updated_at" else "createdAt", op, iso(parse_iso(value))))
        return lambda order: all(_compare(order[key], op, value) for key, op, value in checks)

    def _match_orders(self, query: str | None) -> list[dict[str, Any]]:
        keep = self._order_filter(query)
        return [order for order in self.orders.values() if keep(order)]

    @staticmethod
    def _sort_values(order: dict[str, Any], sort_key: str) -> list[Any]:
        number = int(order["id"].rsplit("/", 1)[1])
        return [order["updatedAt"], number] if sort_key == "UPDATED_AT" else [number]

    def _sorted(self, sort_key: str) -> tuple[list[list[Any]], list[dict[str, Any]]]:
        cached = self._sort_cache.get(sort_key)
        if cached is None or cached[2] != self._version:
            pairs = sorted(
                ((self._sort_values(o, sort_key), o) for o in self.orders.values()), key=lambda p: p[0]
            )
            cached = ([k for k, _ in pairs], [o for _, o in pairs], self._version)
            self._sort_cache[sort_key] = cached
        return cached[0], cached[1]

    def orders_connection(
        self, first: int | None, after: str | None, sort_key: str, query: str | None, reverse: bool
    ) -> dict:
        """A page after the cursor, which holds the sort values of the last order served."""
        if reverse:
            raise ValueError("the fake does not page orders in reverse")
        keys, ordered = self._sorted(sort_key)
        keep = self._order_filter(query)
        start = bisect.bisect_right(keys, decode_cursor(after)) if after else 0
        page: list[dict[str, Any]] = []
        has_next = False
        for order in ordered[start:]:
            if keep(order):
                if first is not None and len(page) == first:
                    has_next = True
                    break
                page.append(order)
        return {
            "nodes": page,
            "edges": [{"cursor": encode_cursor(self._sort_values(n, sort_key)), "node": n} for n in page],
            "pageInfo": {
                "hasNextPage": has_next,
                "hasPreviousPage": bool(after),
                "startCursor": encode_cursor(self._sort_values(page[0], sort_key)) if page else None,
                "endCursor": encode_cursor(self._sort_values(page[-1], sort_key)) if page else None,
            },
        }

    def events_connection(self, first: int, after: str | None, query: str | None) -> dict:
        matched = []
        for event in self.events:
            keep = True
            for name, op, value in parse_search(query):
                if name == "subject_type":
                    keep = event.get("subjectType") == value
                elif name == "action":
                    keep = event.get("action") == value
                elif name == "created_at":
                    keep = _compare(parse_iso(event["createdAt"]), op, parse_iso(value))
                else:
                    raise ValueError(f"the fake does not know the events search field {name!r}")
                if not keep:
                    break
            if keep:
                matched.append(event)
        ordered = sorted(matched, key=lambda e: (e["createdAt"], e["id"]))
        if after:
            position = decode_cursor(after)
            ordered = [e for e in ordered if [e["createdAt"], e["id"]] > position]
        page = ordered[:first]
        return {
            "nodes": page,
            "edges": [{"cursor": encode_cursor([e["createdAt"], e["id"]]), "node": e} for e in page],
            "pageInfo": {
                "hasNextPage": len(ordered) > len(page),
                "hasPreviousPage": bool(after),
                "startCursor": None,
                "endCursor": encode_cursor([page[-1]["createdAt"], page[-1]["id"]]) if page else None,
            },
        }

    # -- bulk operations ------------------------------------------------------------------

    def run_bulk(self, query: str) -> dict[str, Any]:
        if self.bulk_busy > 0:
            self.bulk_busy -= 1
            return {
                "bulkOperation": None,
                "userErrors": [
                    {
                        "field": None,
                        "message": "A bulk query operation for this app and shop is already in progress.",
                        "code": "OPERATION_IN_PROGRESS",
                    }
                ],
            }
        problems = validation_errors(query)
        if problems:
            return {
                "bulkOperation": None,
                "userErrors": [{"field": ["query"], "message": m, "code": "INVALID"} for m in problems],
            }
        number = len(self.bulk_operations) + 1
        operation = {
            "id": f"gid://shopify/BulkOperation/{number}",
            "status": "CREATED",
            "type": "QUERY",
            "query": query,
            "createdAt": iso(self.now()),
            "completedAt": None,
            "errorCode": None,
            "objectCount": "0",
            "rootObjectCount": "0",
            "fileSize": None,
            "url": None,
            "partialDataUrl": None,
            "_polls": 0,
        }
        self.bulk_operations[operation["id"]] = operation
        return {"bulkOperation": operation, "userErrors": []}

    def poll_bulk(self, operation_id: str) -> dict[str, Any] | None:
        operation = self.bulk_operations.get(operation_id)
        if operation is None or operation["status"] not in ("CREATED", "RUNNING"):
            return operation
        operation["_polls"] += 1
        if operation["_polls"] < self.bulk_polls:
            operation["status"] = "RUNNING"
            return operation
        lines = self._bulk_lines(operation["query"])
        number = operation["id"].rsplit("/", 1)[1]
        payload = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        if self.bulk_outcome == "COMPLETED":
            self.bulk_results[number] = payload
            operation.update(
                status="COMPLETED",
                completedAt=iso(self.now()),
                objectCount=str(len(lines)),
                rootObjectCount=str(sum(1 for line in lines if "__parentId" not in line)),
                fileSize=str(len(payload)),
                url=f"{self.url}/bulk/{number}.jsonl" if lines else None,
            )
        else:
            half = lines[: len(lines) // 2]
            partial = "".join(json.dumps(line) + "\n" for line in half).encode()
            self.bulk_results[f"{number}-partial"] = partial
            operation.update(
                status=self.bulk_outcome,
                errorCode=self.bulk_error_code,
                completedAt=iso(self.now()),
                objectCount=str(len(half)),
                partialDataUrl=f"{self.url}/bulk/{number}-partial.jsonl",
            )
        return operation

    def _bulk_lines(self, query: str) -> list[dict[str, Any]]:
        """Execute a bulk query over the dataset and flatten it the way Shopify writes JSONL."""
        document = graphql.parse(query)
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        (connection,) = execute(operation, _Root(self), {}).values()
        lines: list[dict[str, Any]] = []
        nodes = connection.get("nodes") or [edge["node"] for edge in connection.get("edges") or []]
        for node in nodes:
            children = _split_children(node)
            lines.extend([*children, node] if self.bulk_children_first else [node, *children])
        return lines

    def _download(self, handler: _Handler, name: str) -> None:
        self.stats.downloads += 1
        self.download_headers.append({k.lower(): v for k, v in handler.headers.items()})
        payload = self.bulk_results.get(name.removesuffix(".jsonl"))
        if payload is None:
            _send(handler, 403, b"<Error><Code>ExpiredToken</Code></Error>", "application/xml")
            return
        fault = self.download_faults.pop(0) if self.download_faults else None
        if fault == "truncated":
            _send(handler, 200, payload, "application/jsonl", truncate=True)
        elif fault == "short":
            _send(handler, 200, payload[: len(payload) // 2], "application/jsonl")
        elif fault in ("500", "503"):
            _send(handler, int(fault), b"busy", "text/plain")
        else:
            _send(handler, 200, payload, "application/jsonl")


def _split_children(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Move nested connections out of ``node`` into child lines with ``__parentId``."""
    children = []
    for key in list(node):
        value = node[key]
        if isinstance(value, dict) and ("edges" in value or "nodes" in value):
            del node[key]
            items = value.get("nodes") or [edge["node"] for edge in value.get("edges") or []]
            for item in items:
                grandchildren = _split_children(item)
                children.append({**item, "__parentId": node["id"]})
                children.extend(grandchildren)
    return children


class _Root:
    """Root value for graphql-core: QueryRoot and Mutation fields as methods."""

    def __init__(self, fake: FakeShopify) -> None:
        self.fake = fake

    def orders(self, info: Any, **args: Any) -> dict:
        return self.fake.orders_connection(
            args.get("first"),
            args.get("after"),
            args.get("sortKey", "PROCESSED_AT"),
            args.get("query"),
            args.get("reverse", False),
        )

    def ordersCount(self, info: Any, **args: Any) -> dict:
        count = len(self.fake._match_orders(args.get("query")))
        limit = args.get("limit")
        if limit is not None and count > limit:
            return {"count": limit, "precision": "AT_LEAST"}
        return {"count": count, "precision": "EXACT"}

    def events(self, info: Any, **args: Any) -> dict:
        return self.fake.events_connection(args.get("first") or 50, args.get("after"), args.get("query"))

    def bulkOperationRunQuery(self, info: Any, **args: Any) -> dict:
        return self.fake.run_bulk(args["query"])

    def bulkOperation(self, info: Any, **args: Any) -> dict | None:
        return self.fake.poll_bulk(args["id"])

    def currentBulkOperation(self, info: Any, **args: Any) -> dict | None:
        if not self.fake.bulk_operations:
            return None
        latest = list(self.fake.bulk_operations)[-1]
        return self.fake.poll_bulk(latest)


def _send(
    handler: _Handler,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    *,
    truncate: bool = False,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    if truncate:
        handler.send_header("Connection", "close")
    handler.end_headers()
    if truncate:
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)
    else:
        handler.wfile.write(body)


def _reset(handler: _Handler) -> None:
    """Abort the connection with a TCP RST, as a crashing proxy would."""
    handler.close_connection = True
    with contextlib.suppress(OSError):
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()


# ---------------------------------------------------------------------------------------
# Test helpers


def api_reader(fake: FakeShopify, **overrides: Any) -> Any:
    """A ShopifyApiReader against ``fake`` with test-speed timeouts and backoff."""
    from orders_etl.sources.shopify import ShopifyApiReader

    settings: dict[str, Any] = {
        "access_token": fake.access_token,
        # Well above what a loaded 2-core CI machine takes to answer, below the fake's stall:
        # only an injected "timeout" fault times out, so retry counts are exact.
        "timeout_s": 1.5,
        "connect_timeout_s": 1.5,
        "max_attempts": 8,
        "backoff_base_s": 0.002,
        "backoff_max_s": 0.02,
        "bulk_poll_interval_s": 0.005,
        "bulk_max_poll_interval_s": 0.01,
        "bulk_threshold": 1_000_000,
    }
    settings.update(overrides)
    if settings.get("client_id"):
        settings.pop("access_token", None)
    return ShopifyApiReader(fake.url, **settings)


def node_key(node: dict[str, Any]) -> str:
    return str(node["legacyResourceId"])
