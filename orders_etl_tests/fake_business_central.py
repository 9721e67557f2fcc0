"""A fake Business Central API v2.0 + Entra ID token endpoint, speaking real HTTP on 127.0.0.1.

What it implements, as the real service does it:

* ``POST /{tenant}/oauth2/v2.0/token`` — client-credentials grant; wrong client id or
  secret -> 401 ``invalid_client`` with an AADSTS code; tokens expire after ``token_ttl_s``.
* ``GET /v2.0/{tenant}/{environment}/api/v2.0/companies({id})/{entity}`` for
  ``salesOrders``, ``salesInvoices``, ``salesCreditMemos``, ``generalLedgerSetup``,
  ``companyInformation``: bearer auth (401 with BC's error body), ``$filter`` (``eq ne gt ge
  lt le``, ``and``, ``or``, ``in``, parentheses; an unknown property is a 400 as in BC),
  ``$select``, server-driven paging honouring ``Prefer: odata.maxpagesize`` (capped at
  20,000) with an ``@odata.nextLink`` carrying a ``$skiptoken``.
* Amounts go out as exact JSON numbers (``172.94``), written from ``Decimal``.

Faults are injected per request (token requests included), queued (``inject``) or at
random with a seed (``random_faults``): HTTP 500/502/503/504 with BC's error body, 429 with
``Retry-After``, a response slower than the client's timeout, a body cut short, a
connection closed without an answer, an HTML page instead of JSON. Every fault sent is
counted in ``injected``, every request logged (without its token) in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
SCOPE = "https://api.businesscentral.dynamics.com/.default"
SERVER_MAX_PAGE = 20_000
DOCUMENT_SETS = ("salesOrders", "salesInvoices", "salesCreditMemos")

# ---------------------------------------------------------------------------------------
# JSON with exact decimals


def dumps(value: Any) -> str:
    """JSON text in which Decimal amounts are numbers with their exact digits."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        raise TypeError("the fake keeps amounts as Decimal")
    return json.dumps(value)


# ---------------------------------------------------------------------------------------
# $filter: a small OData expression parser


class FilterError(ValueError):
    pass


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<lit>[0-9][0-9A-Za-z:.+\-]*))"
)
_OPERATORS = {"eq", "ne", "gt", "ge", "lt", "le"}


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise FilterError(f"syntax error at position {position} in $filter")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _literal(kind: str, text: str) -> Any:
    if kind == "str":
        return text[1:-1].replace("''", "'")
    if kind == "word" and text in ("true", "false"):
        return text == "true"
    if kind == "word" and text == "null":
        return None
    if kind == "lit":
        if "T" in text:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                raise FilterError(f"date-time literal {text!r} needs an offset")
            return moment
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
        return Decimal(text)
    raise FilterError(f"expected a literal, found {text!r}")


@dataclass
class Node:
    kind: str  # "or" | "and" | "cmp" | "in"
    children: list[Node] = field(default_factory=list)
    prop: str = ""
    op: str = ""
    values: list[Any] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    def parse(self) -> Node:
        node = self.expr()
        if self.i != len(self.tokens):
            raise FilterError(f"unexpected {self.tokens[self.i][1]!r} in $filter")
        return node

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise FilterError("$filter ends too early")
        self.i += 1
        return self.tokens[self.i - 1]

    def expr(self) -> Node:
        children = [self.term()]
        while self.peek() == ("word", "or"):
            self.take()
            children.append(self.term())
        return children[0] if len(children) == 1 else Node("or", children)

    def term(self) -> Node:
        children = [self.factor()]
        while self.peek() == ("word", "and"):
            self.take()
            children.append(self.factor())
        return children[0] if len(children) == 1 else Node("and", children)

    def factor(self) -> Node:
        kind, text = self.take()
        if kind == "lp":
            node = self.expr()
            if self.take()[0] != "rp":
                raise FilterError("missing ')' in $filter")
            return node
        if kind != "word":
            raise FilterError(f"expected a property name, found {text!r}")
        op_kind, op = self.take()
        if op_kind == "word" and op.lower() == "in":
            if self.take()[0] != "lp":
                raise FilterError("'in' needs a parenthesised list")
            values = [_literal(*self.take())]
            while self.peek() == ("comma", ","):
                self.take()
                values.append(_literal(*self.take()))
            if self.take()[0] != "rp":
                raise FilterError("missing ')' after the 'in' list")
            return Node("in", prop=text, values=values)
        if op not in _OPERATORS:
            raise FilterError(f"unsupported operator {op!r}")
        return Node("cmp", prop=text, op=op, values=[_literal(*self.take())])


def _comparable(doc_value: Any, literal: Any) -> tuple[Any, Any]:
    if isinstance(literal, datetime):
        moment = datetime.fromisoformat(doc_value) if isinstance(doc_value, str) else doc_value
        return moment, literal
    if isinstance(literal, date):
        return (date.fromisoformat(doc_value) if isinstance(doc_value, str) else doc_value), literal
    return doc_value, literal


def _matches(node: Node, doc: dict) -> bool:
    if node.kind == "or":
        return any(_matches(child, doc) for child in node.children)
    if node.kind == "and":
        return all(_matches(child, doc) for child in node.children)
    if node.prop not in doc:
        raise FilterError(f"Could not find a property named '{node.prop}'")
    value = doc[node.prop]
    if node.kind == "in":
        return value in node.values
    left, right = _comparable(value, node.values[0])
    if node.op == "eq":
        return left == right
    if node.op == "ne":
        return left != right
    if left is None or right is None:
        return False
    return {"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[node.op]


def _equality_keys(node: Node) -> tuple[str, list[Any]] | None:
    """``(field, values)`` when the filter is only ``field eq v`` alternatives (index lookup)."""
    if node.kind == "cmp" and node.op == "eq":
        return node.prop, list(node.values)
    if node.kind == "in":
        return node.prop, list(node.values)
    if node.kind == "or":
        parts = [_equality_keys(child) for child in node.children]
        if all(parts) and len({p[0] for p in parts if p}) == 1:
            return parts[0][0], [v for p in parts if p for v in p[1]]  # type: ignore[index]
    return None


def parse_filter(text: str) -> Node:
    return _Parser(text).parse()


# ---------------------------------------------------------------------------------------
# Real-shaped documents (properties as listed in Microsoft's API v2.0 resource docs)


def _guid(*parts: object) -> str:
    digest = hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _money(value: str | Decimal | int) -> Decimal:
    return Decimal(str(value))


def _currency_fields(currency: str | None, lcy: str) -> dict[str, str]:
    # The local currency travels with an all-zero id and the LCY code (empty if none is set).
    if currency is None:
        return {"currencyId": ZERO_GUID, "currencyCode": lcy}
    return {"currencyId": _guid("currency", currency), "currencyCode": currency}


def _address(prefix: str) -> dict[str, str]:
    return {
        f"{prefix}AddressLine1": "Station Road, 21",
        f"{prefix}AddressLine2": "",
        f"{prefix}City": "Cambridge",
        f"{prefix}Country": "GB",
        f"{prefix}State": "",
        f"{prefix}PostCode": "CB1 2FB",
    }


def sales_order(
    number: str,
    *,
    total: str | Decimal = "118.00",
    tax: str | Decimal = "18.00",
    status: str = "Open",
    fully_shipped: bool = False,
    reference: str = "",
    customer: str = "10000",
    currency: str | None = None,
    lcy: str = "EUR",
    order_date: str = "2024-03-01",
    modified: str = "2024-03-01T10:00:00.000Z",
) -> dict[str, Any]:
    total, tax = _money(total), _money(tax)
    return {
        "id": _guid("order", number),
        "number": number,
        "externalDocumentNumber": reference,
        "orderDate": order_date,
        "postingDate": order_date,
        "customerId": _guid("customer", customer),
        "customerNumber": customer,
        "customerName": "Adatum Corporation",
        "billToName": "Adatum Corporation",
        "billToCustomerId": _guid("customer", customer),
        "billToCustomerNumber": customer,
        "shipToName": "Adatum Corporation",
        "shipToContact": "Robert Townes",
        **_address("sellTo"),
        **_address("billTo"),
        **_address("shipTo"),
        "shortcutDimension1Code": "",
        "shortcutDimension2Code": "MEDIUM",
        **_currency_fields(currency, lcy),
        "pricesIncludeTax": False,
        "paymentTermsId": _guid("terms", "14 DAYS"),
        "shipmentMethodId": _guid("shipment", "DHL"),
        "salesperson": "JO",
        "partialShipping": True,
        "requestedDeliveryDate": order_date,
        "discountAmount": Decimal(0),
        "discountAppliedBeforeTax": True,
        "totalAmountExcludingTax": total - tax,
        "totalTaxAmount": tax,
        "totalAmountIncludingTax": total,
        "fullyShipped": fully_shipped,
        "status": status,
        "lastModifiedDateTime": modified,
        "phoneNumber": "",
        "email": "robert.townes@contoso.com",
    }


def sales_invoice(
    number: str,
    *,
    order_number: str = "",
    total: str | Decimal = "118.00",
    tax: str | Decimal = "18.00",
    status: str = "Paid",
    remaining: str | Decimal | None = None,
    reference: str = "",
    customer: str = "10000",
    currency: str | None = None,
    lcy: str = "EUR",
    invoice_date: str = "2024-03-02",
    modified: str = "2024-03-02T10:00:00.000Z",
) -> dict[str, Any]:
    total, tax = _money(total), _money(tax)
    if remaining is None:
        remaining = Decimal(0) if status in ("Paid", "Canceled") else total
    return {
        "id": _guid("invoice", number),
        "number": number,
        "externalDocumentNumber": reference,
        "invoiceDate": invoice_date,
        "postingDate": invoice_date,
        "dueDate": invoice_date,
        "customerPurchaseOrderReference": "",
        "customerId": _guid("customer", customer),
        "customerNumber": customer,
        "customerName": "Trey Research",
        "billToName": "Trey Research",
        "billToCustomerId": _guid("customer", customer),
        "billToCustomerNumber": customer,
        "shipToName": "Trey Research",
        "shipToContact": "Helen Ray",
        **_address("sellTo"),
        **_address("billTo"),
        **_address("shipTo"),
        **_currency_fields(currency, lcy),
        "shortcutDimension1Code": "",
        "shortcutDimension2Code": "",
        "orderId": _guid("order", order_number) if order_number else ZERO_GUID,
        "orderNumber": order_number,
        "paymentTermsId": _guid("terms", "14 DAYS"),
        "shipmentMethodId": ZERO_GUID,
        "salesperson": "PS",
        "pricesIncludeTax": False,
        "remainingAmount": _money(remaining),
        "discountAmount": Decimal(0),
        "discountAppliedBeforeTax": True,
        "totalAmountExcludingTax": total - tax,
        "totalTaxAmount": tax,
        "totalAmountIncludingTax": total,
        "status": status,
        "lastModifiedDateTime": modified,
        "phoneNumber": "",
        "email": "helen.ray@contoso.com",
    }


def sales_credit_memo(
    number: str,
    *,
    invoice_number: str,
    total: str | Decimal = "118.00",
    tax: str | Decimal = "18.00",
    status: str = "Paid",
    customer: str = "10000",
    currency: str | None = None,
    lcy: str = "EUR",
    memo_date: str = "2024-03-05",
    modified: str = "2024-03-05T10:00:00.000Z",
) -> dict[str, Any]:
    total, tax = _money(total), _money(tax)
    return {
        "id": _guid("credit memo", number),
        "number": number,
        "externalDocumentNumber": "",
        "creditMemoDate": memo_date,
        "postingDate": memo_date,
        "dueDate": memo_date,
        "customerId": _guid("customer", customer),
        "customerNumber": customer,
        "customerName": "Trey Research",
        "billToName": "Trey Research",
        "billToCustomerId": _guid("customer", customer),
        "billToCustomerNumber": customer,
        **_address("sellTo"),
        **_address("billTo"),
        "shortcutDimension1Code": "",
        "shortcutDimension2Code": "",
        **_currency_fields(currency, lcy),
        "paymentTermsId": _guid("terms", "14 DAYS"),
        "shipmentMethodId": ZERO_GUID,
        "salesperson": "PS",
        "pricesIncludeTax": False,
        "discountAmount": Decimal(0),
        "discountAppliedBeforeTax": True,
        "totalAmountExcludingTax": total - tax,
        "totalTaxAmount": tax,
        "totalAmountIncludingTax": total,
        "status": status,
        "lastModifiedDateTime": modified,
        "invoiceId": _guid("invoice", invoice_number) if invoice_number else ZERO_GUID,
        "invoiceNumber": invoice_number,
        "phoneNumber": "",
        "email": "helen.ray@contoso.com",
        "customerReturnReasonId": ZERO_GUID,
    }


def bc_time(moment: datetime) -> str:
    """A ``lastModifiedDateTime`` as Business Central writes it (UTC, milliseconds, ``Z``)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Fault:
    """One injected failure. kinds: status, throttle, slow, truncate, reset, garbage."""

    kind: str
    status: int = 503
    retry_after: str | None = "1"
    delay_s: float = 1.0


FAULT_KINDS: dict[str, Fault] = {
    "503": Fault("status", 503),
    "500": Fault("status", 500),
    "502": Fault("status", 502),
    "504": Fault("status", 504),
    "429": Fault("throttle", 429, retry_after="1"),
    "slow": Fault("slow"),
    "truncate": Fault("truncate"),
    "reset": Fault("reset"),
    "garbage": Fault("garbage"),
}


# ---------------------------------------------------------------------------------------
# The server


@dataclass
class LoggedRequest:
    method: str
    path: str
    params: dict[str, str]
    prefer: str | None
    authorized: bool


class FakeBusinessCentral:
    """State of one tenant/company plus the HTTP server exposing it."""

    def __init__(
        self,
        *,
        tenant_id: str = "11111111-2222-3333-4444-555555555555",
        environment: str = "production",
        company_id: str = "a19eca60-4a86-ed11-aad5-000d3a38ed32",
        client_id: str = "bc-orders-etl",
        client_secret: str | None = None,
        token_ttl_s: float = 3600.0,
        lcy_code: str = "EUR",
        has_gl_setup_endpoint: bool = True,
    ) -> None:
        self.tenant_id = tenant_id
        self.environment = environment
        self.company_id = company_id
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.token_ttl_s = token_ttl_s
        self.lcy_code = lcy_code
        self.has_gl_setup_endpoint = has_gl_setup_endpoint
        self.static_tokens: set[str] = set()
        self.issued_tokens: dict[str, float] = {}
        #: Every token ever handed out (tests check none of them leaks into logs or errors).
        self.all_tokens: list[str] = []
        #: When set, every authenticated API request is refused with this status (401 or 403).
        self.refuse_with: int | None = None
        #: OData lets a next link be relative to the request URL; BC sends absolute ones.
        self.relative_next_links = False
        self.documents: dict[str, dict[str, dict]] = {name: {} for name in DOCUMENT_SETS}
        self.requests: list[LoggedRequest] = []
        self.token_requests = 0
        self.injected: Counter[str] = Counter()
        self._queue: deque[Fault] = deque()
        self._rng: random.Random | None = None
        self._rates: list[tuple[float, Fault]] = []
        self._indexes: dict[tuple[str, str], dict[Any, list[dict]]] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: Called with each API request (entity, params) before it is answered (tests).
        self.on_request: Callable[[str, dict[str, str]], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> FakeBusinessCentral:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-bc", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def origin(self) -> str:
        assert self._server is not None, "start the fake with 'with FakeBusinessCentral() as bc:'"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v2.0/{self.tenant_id}/{self.environment}/api/v2.0"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/{self.tenant_id}/oauth2/v2.0/token"

    # -- data -----------------------------------------------------------------------------

    def put(self, entity: str, *docs: dict) -> None:
        with self._lock:
            for doc in docs:
                stored = dict(doc)
                stored["@odata.etag"] = 'W/"' + hashlib.sha1(dumps(doc).encode()).hexdigest()[:24] + '"'
                self.documents[entity][doc["number"]] = stored
            self._indexes.clear()

    def delete(self, entity: str, number: str) -> None:
        with self._lock:
            del self.documents[entity][number]
            self._indexes.clear()

    def update(self, entity: str, number: str, **changes: Any) -> None:
        with self._lock:
            doc = {k: v for k, v in self.documents[entity][number].items() if k != "@odata.etag"}
            doc.update(changes)
            self.put(entity, doc)

    def issue_static_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self.static_tokens.add(token)
        self.all_tokens.append(token)
        return token

    def revoke_tokens(self) -> None:
        with self._lock:
            self.static_tokens.clear()
            self.issued_tokens.clear()

    # -- faults ---------------------------------------------------------------------------

    def inject(self, *faults: Fault | str) -> None:
        """Fail the next requests, one fault each, in order."""
        with self._lock:
            self._queue.extend(FAULT_KINDS[f] if isinstance(f, str) else f for f in faults)

    def random_faults(self, rates: dict[str, float], *, seed: int, slow_delay_s: float = 1.0) -> None:
        """Fail each request with the given probabilities (seeded, so runs repeat)."""
        with self._lock:
            self._rng = random.Random(seed)
            self._rates = []
            for name, rate in rates.items():
                fault = FAULT_KINDS[name]
                if fault.kind == "slow":
                    fault = Fault("slow", delay_s=slow_delay_s)
                self._rates.append((rate, fault))

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if self._rng is not None:
                draw = self._rng.random()
                for rate, fault in self._rates:
                    if draw < rate:
                        return fault
                    draw -= rate
            return None

    # -- queries --------------------------------------------------------------------------

    def query(self, entity: str, params: dict[str, str], page_size: int) -> tuple[list[dict], str | None]:
        """One page of ``entity`` and the skip token of the next page (None: last page)."""
        with self._lock:
            documents = self.documents[entity]
            candidates: Iterable[dict]
            node = parse_filter(params["$filter"]) if params.get("$filter") else None
            keys = _equality_keys(node) if node else None
            if keys and documents and keys[0] in next(iter(documents.values())):
                index = self._index(entity, keys[0])
                candidates = [doc for value in dict.fromkeys(keys[1]) for doc in index.get(value, [])]
            else:
                candidates = documents.values()
            selected = [doc for doc in candidates if node is None or _matches(node, doc)]
        selected.sort(key=lambda doc: doc["number"])
        after = params.get("$skiptoken")
        if after is not None:
            selected = [doc for doc in selected if doc["number"] > after]
        page = selected[:page_size]
        next_token = page[-1]["number"] if len(selected) > page_size else None
        if params.get("$select"):
            wanted = {name.strip() for name in params["$select"].split(",")} | {"@odata.etag"}
            known = set(next(iter(documents.values()))) if documents else wanted
            if unknown := wanted - known:
                raise FilterError(f"Could not find a property named '{sorted(unknown)[0]}'")
            page = [{k: v for k, v in doc.items() if k in wanted} for doc in page]
        return page, next_token

    def _index(self, entity: str, name: str) -> dict[Any, list[dict]]:
        key = (entity, name)
        if key not in self._indexes:
            index: dict[Any, list[dict]] = {}
            for doc in self.documents[entity].values():
                index.setdefault(doc.get(name), []).append(doc)
            self._indexes[key] = index
        return self._indexes[key]

    def is_authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        token = header.removeprefix("Bearer ").strip()
        with self._lock:
            if token in self.static_tokens:
                return True
            expires = self.issued_tokens.get(token)
            return expires is not None and time.monotonic() < expires

    def issue_token(self, form: dict[str, str]) -> tuple[int, dict]:
        with self._lock:
            self.token_requests += 1
            if form.get("grant_type") != "client_credentials":
                return 400, {"error": "unsupported_grant_type", "error_codes": [70003]}
            if form.get("client_id") != self.client_id:
                return 400, {
                    "error": "unauthorized_client",
                    "error_description": "AADSTS700016: Application not found in the directory.",
                    "error_codes": [700016],
                }
            if form.get("client_secret") != self.client_secret:
                return 401, {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                }
            if form.get("scope") != SCOPE:
                return 400, {"error": "invalid_scope", "error_codes": [70011]}
            token = secrets.token_urlsafe(32)
            self.issued_tokens[token] = time.monotonic() + self.token_ttl_s
            self.all_tokens.append(token)
            ttl = int(self.token_ttl_s) if self.token_ttl_s >= 1 else self.token_ttl_s
            return 200, {
                "token_type": "Bearer",
                "expires_in": ttl,
                "ext_expires_in": ttl,
                "access_token": token,
            }

    def api_requests(self, entity: str | None = None) -> list[LoggedRequest]:
        return [
            r
            for r in self.requests
            if "/companies(" in r.path and (entity is None or r.path.endswith(entity))
        ]


_API_PATH = re.compile(
    r"^/v2\.0/(?P<tenant>[^/]+)/(?P<env>[^/]+)/api/v2\.0/companies\((?P<company>[^)]+)\)/(?P<entity>\w+)$"
)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBusinessCentral
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # delayed ACKs stall every keep-alive response by ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return None

    # -- plumbing ---------------------------------------------------------------------------

    def _send(
        self, status: int, body: str, headers: dict[str, str] | None = None, *, cut: bool = False
    ) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; odata.metadata=minimal; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            if cut:
                # Promise the whole body, send half, hang up: a truncated response.
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, dumps({"error": {"code": code, "message": message}}), headers)

    def _apply_fault(self, fault: Fault) -> bool:
        """Answer with the fault; True when the request is done."""
        name = {"status": str(fault.status), "throttle": "429"}.get(fault.kind, fault.kind)
        self.fake.injected[name] += 1
        if fault.kind == "status":
            self._error(fault.status, "Internal_ServerError", "Injected server error.  CorrelationId:  fake.")
        elif fault.kind == "throttle":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._error(429, "Application_TooManyRequests", "Too many requests reached.", headers)
        elif fault.kind == "slow":
            time.sleep(fault.delay_s)
            return False  # answer normally, too late for the client
        elif fault.kind == "truncate":
            self._send(200, dumps({"value": [{"number": "x" * 200}] * 20}), cut=True)
        elif fault.kind == "reset":
            self.close_connection = True
        elif fault.kind == "garbage":
            self._send(200, "<html><body>502 Bad Gateway</body></html>")
        return True

    # -- token endpoint ---------------------------------------------------------------------

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if urlsplit(self.path).path != f"/{self.fake.tenant_id}/oauth2/v2.0/token":
            self._send(404, dumps({"error": "not_found"}))
            return
        fault = self.fake._next_fault()
        if fault is not None and self._apply_fault(fault):
            return
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        status, body = self.fake.issue_token(form)
        self._send(status, dumps(body))

    # -- API --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        authorized = fake.is_authorized(self.headers.get("Authorization"))
        with fake._lock:
            fake.requests.append(
                LoggedRequest("GET", parts.path, params, self.headers.get("Prefer"), authorized)
            )
        fault = fake._next_fault()
        if fault is not None and self._apply_fault(fault):
            return
        match = _API_PATH.match(parts.path)
        if not match or match["tenant"] != fake.tenant_id:
            self._error(404, "BadRequest_NotFound", "The request URL is not valid.")
            return
        if authorized and fake.refuse_with == 403:
            self._error(403, "Authorization_InsufficientPermissions", "You do not have the permissions.")
            return
        if not authorized or fake.refuse_with == 401:
            self._error(
                401,
                "Authentication_InvalidCredentials",
                "The server has rejected the client credentials.  CorrelationId:  fake.",
                {"WWW-Authenticate": 'Bearer realm=""'},
            )
            return
        if match["company"] != fake.company_id:
            self._error(404, "Internal_CompanyNotFound", "The company does not exist.")
            return
        entity = match["entity"]
        if fake.on_request is not None:
            fake.on_request(entity, params)
        if entity == "generalLedgerSetup" and fake.has_gl_setup_endpoint:
            row = {"id": _guid("gl"), "localCurrencyCode": fake.lcy_code, "localCurrencySymbol": "€"}
            self._send(200, dumps({"value": [row]}))
            return
        if entity == "companyInformation":
            row = {"id": _guid("company"), "displayName": "CRONUS", "currencyCode": fake.lcy_code}
            self._send(200, dumps({"value": [row]}))
            return
        if entity not in DOCUMENT_SETS:
            self._error(404, "BadRequest_NotFound", f"The resource '{entity}' was not found.")
            return
        page_size = SERVER_MAX_PAGE
        prefer = self.headers.get("Prefer") or ""
        if m := re.search(r"odata\.maxpagesize=(\d+)", prefer):
            page_size = max(1, min(int(m.group(1)), SERVER_MAX_PAGE))
        try:
            page, next_token = fake.query(entity, params, page_size)
        except FilterError as exc:
            self._error(400, "BadRequest", str(exc))
            return
        body: dict[str, Any] = {
            "@odata.context": f"{fake.base_url}/$metadata#companies({fake.company_id})/{entity}",
            "value": page,
        }
        if next_token is not None:
            next_params = {k: v for k, v in params.items() if k != "$skiptoken"} | {"$skiptoken": next_token}
            query = urlencode(next_params, quote_via=quote, safe="$")
            prefix = "" if fake.relative_next_links else f"{fake.origin}{parts.path.rsplit('/', 1)[0]}/"
            body["@odata.nextLink"] = f"{prefix}{entity}?{query}"
        self._send(200, dumps(body), {"Preference-Applied": f"odata.maxpagesize={page_size}"})


# ---------------------------------------------------------------------------------------
# A population of orders in every state the mapping distinguishes


@dataclass
class PlannedOrder:
    """One order put on the fake, with the scenario it was built for."""

    key: str  # the BC order number (or the invoice number of an invoice-only sale)
    scenario: str
    reference: str  # externalDocumentNumber ("" = none)
    currency: str  # expected ISO code
    total: Decimal  # expected total_amount
    tax: Decimal
    refunded: Decimal


SCENARIOS = (
    "draft",
    "in_review",
    "open",
    "fully_shipped",
    "partly_invoiced_paid",
    "posted_paid",
    "posted_open",
    "posted_partly_paid",
    "posted_partly_refunded",
    "posted_refunded",
    "posted_voided",
    "posted_reinvoiced",
    "invoice_only_paid",
    "bad_order_status",
    "bad_invoice_status",
)


def populate(
    fake: FakeBusinessCentral,
    count: int,
    *,
    seed: int,
    start: datetime,
    names: Callable[[int], str] = lambda i: f"#{1001 + i}",
) -> list[PlannedOrder]:
    """Put ``count`` orders on ``fake``, cycling through :data:`SCENARIOS` with seeded variety.

    Three in ten orders are in USD (a real currency id), the rest in the local currency
    (all-zero id; every seventh of those with an empty code, as when LCY Code is blank).
    One in six has no Shopify reference (an ERP-origin order).
    """
    rng = random.Random(seed)
    planned: list[PlannedOrder] = []
    orders, invoices, memos = [], [], []
    lcy = fake.lcy_code
    for i in range(count):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        number = f"SO{100000 + i}"
        reference = "" if i % 6 == 5 else names(i)
        foreign = rng.random() < 0.3
        currency = "USD" if foreign else None
        code = "USD" if foreign else lcy
        doc_lcy = "" if (not foreign and i % 7 == 3) else lcy
        net = Decimal(rng.randint(1_000, 500_000)) / 100
        tax = (net * Decimal("0.19")).quantize(Decimal("0.01"))
        total = net + tax
        moment = start + timedelta(minutes=i)
        common = {"currency": currency, "lcy": doc_lcy, "customer": f"C{rng.randint(10000, 10999)}"}

        def stamp(offset_min: int = 0) -> str:
            return bc_time(moment + timedelta(minutes=offset_min))  # noqa: B023 - built and used per order

        expected_total, expected_tax, refunded = total, tax, Decimal(0)
        key = number
        if scenario in ("draft", "in_review", "open", "fully_shipped", "bad_order_status"):
            status = {
                "draft": "Draft",
                "in_review": "In_x0020_Review",
                "bad_order_status": "Released",
            }.get(scenario, "Open")
            orders.append(
                sales_order(
                    number,
                    total=total,
                    tax=tax,
                    status=status,
                    fully_shipped=scenario == "fully_shipped",
                    reference=reference,
                    modified=stamp(),
                    **common,
                )
            )
        elif scenario == "partly_invoiced_paid":
            orders.append(
                sales_order(number, total=total, tax=tax, reference=reference, modified=stamp(), **common)
            )
            half, half_tax = (total / 2).quantize(Decimal("0.01")), (tax / 2).quantize(Decimal("0.01"))
            invoices.append(
                sales_invoice(
                    f"INV{number}",
                    order_number=number,
                    total=half,
                    tax=half_tax,
                    status="Paid",
                    reference=reference,
                    modified=stamp(1),
                    **common,
                )
            )
        elif scenario == "invoice_only_paid":
            key = f"INV{number}"
            invoices.append(
                sales_invoice(
                    key, total=total, tax=tax, status="Paid", reference=reference, modified=stamp(), **common
                )
            )
        else:  # posted: the order is gone, its invoices carry its number
            invoice = f"INV{number}"
            status, remaining = "Paid", None
            if scenario == "posted_open":
                status = "Open"
            elif scenario == "posted_partly_paid":
                status, remaining = "Open", (total / 3).quantize(Decimal("0.01"))
            elif scenario in ("posted_voided", "posted_reinvoiced"):
                status = "Canceled"
            elif scenario == "bad_invoice_status":
                status = "Sent"
            invoices.append(
                sales_invoice(
                    invoice,
                    order_number=number,
                    total=total,
                    tax=tax,
                    status=status,
                    remaining=remaining,
                    reference=reference,
                    modified=stamp(),
                    **common,
                )
            )
            if scenario in ("posted_voided", "posted_reinvoiced"):
                # Cancelling a posted invoice posts a corrective credit memo for all of it.
                memos.append(
                    sales_credit_memo(
                        f"CM{number}",
                        invoice_number=invoice,
                        total=total,
                        tax=tax,
                        status="Corrective",
                        modified=stamp(2),
                        **common,
                    )
                )
            if scenario == "posted_reinvoiced":
                new_net = net + Decimal(5)
                new_tax = (new_net * Decimal("0.19")).quantize(Decimal("0.01"))
                expected_total, expected_tax = new_net + new_tax, new_tax
                invoices.append(
                    sales_invoice(
                        f"INV{number}B",
                        order_number=number,
                        total=expected_total,
                        tax=new_tax,
                        status="Paid",
                        reference=reference,
                        modified=stamp(3),
                        **common,
                    )
                )
            if scenario == "posted_partly_refunded":
                refunded = (total / 4).quantize(Decimal("0.01"))
                memos.append(
                    sales_credit_memo(
                        f"CM{number}",
                        invoice_number=invoice,
                        total=refunded,
                        tax=Decimal(0),
                        status="Paid",
                        modified=stamp(2),
                        **common,
                    )
                )
            if scenario == "posted_refunded":
                first = (total / 2).quantize(Decimal("0.01"))
                memos.append(
                    sales_credit_memo(
                        f"CM{number}",
                        invoice_number=invoice,
                        total=first,
                        tax=Decimal(0),
                        status="Paid",
                        modified=stamp(2),
                        **common,
                    )
                )
                memos.append(
                    sales_credit_memo(
                        f"CM{number}B",
                        invoice_number=invoice,
                        total=total - first,
                        tax=Decimal(0),
                        status="Open",
                        modified=stamp(3),
                        **common,
                    )
                )
                refunded = total
        planned.append(PlannedOrder(key, scenario, reference, code, expected_total, expected_tax, refunded))
    fake.put("salesOrders", *orders)
    fake.put("salesInvoices", *invoices)
    fake.put("salesCreditMemos", *memos)
    return planned
