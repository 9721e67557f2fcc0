"""Reads Business Central sales documents and yields one raw *bundle* per order.

An order's state in Business Central is spread over three entity sets: the sales order
itself (deleted once fully posted), its posted sales invoices (``orderNumber`` points back
at the order) and the credit memos booked against those invoices (``invoiceNumber``).
Payment status and the posted totals can only be derived from all of them together, so the
unit landed in ``raw_orders`` is the bundle::

    {"salesOrder": {...} | None, "salesInvoices": [...], "salesCreditMemos": [...],
     "localCurrency": "EUR" | None}

keyed on the order number (a posted order: its invoices' ``orderNumber``; an invoice made
without an order: the invoice's own number).

A fetch runs in two phases, so memory stays bounded by the chunk size, not the window:

1. **Scan**: list the numbers of every order, invoice and credit memo modified in the
   window (``$select`` keeps these pages small) and turn them into order keys; a credit
   memo's invoice is looked up to find its order.
2. **Assemble**, ``chunk_size`` keys at a time: fetch the orders, *all* their invoices and
   *all* those invoices' credit memos with batched ``or`` filters, then yield each bundle
   complete. Documents modified outside the window are included: a bundle is the order's
   current state, never a partial one.

Any failure raises :class:`~orders_etl.sources.base.SourceError`; bundles already yielded
are complete and safe to land, and the caller must not advance its cursor. After a fetch ran
to its end, ``complete_until`` is where the cursor may move once the data is committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from orders_etl.sources.base import Log, no_log
from orders_etl.sources.business_central import odata
from orders_etl.sources.business_central.auth import ClientCredentials, StaticToken, TokenSource
from orders_etl.sources.business_central.client import DEFAULT_PAGE_SIZE, BusinessCentralClient, NotFound
from orders_etl.store import RawRecord

ORDERS = "salesOrders"
INVOICES = "salesInvoices"
CREDIT_MEMOS = "salesCreditMemos"
DEFAULT_OVERLAP = timedelta(minutes=10)
DEFAULT_CHUNK_SIZE = 500


@dataclass(frozen=True, slots=True)
class _Key:
    """An order key: an order number, or the number of an invoice made without an order."""

    number: str
    invoice_only: bool


class BusinessCentralReader:
    """``fetch(start, end, log)`` -> order bundles (RawRecord) for one company."""

    def __init__(
        self,
        base_url: str,
        company_id: str,
        *,
        access_token: str | None = None,
        tenant_id: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_url: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        overlap: timedelta = DEFAULT_OVERLAP,
        timeout_s: float = 60.0,
        max_attempts: int = 6,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        local_currency: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if overlap < timedelta(0):
            raise ValueError("overlap must not be negative")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)
        self._auth = _token_source(
            self._http, access_token, tenant_id, client_id, client_secret, token_url, clock
        )
        self.client = BusinessCentralClient(
            base_url,
            company_id,
            self._auth,
            http=self._http,
            page_size=page_size,
            max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            max_retry_after_s=max_retry_after_s,
            sleep=sleep,
        )
        self.overlap = overlap
        self.chunk_size = chunk_size
        self._configured_lcy = (local_currency or "").strip().upper() or None
        self._company_lcy: str | None = None
        self._company_lcy_known = False
        #: After a fetch ran to its end: the time up to which every change was delivered
        #: (``end``, or when the fetch began); None while a fetch runs or after one failed.
        self.complete_until: datetime | None = None

    def __repr__(self) -> str:
        return f"BusinessCentralReader({self.client.company_url!r}, auth={self._auth!r})"

    def __enter__(self) -> BusinessCentralReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the reader contract ------------------------------------------------------------

    def fetch(self, start: datetime | None, end: datetime | None, log: Log = no_log) -> Iterator[RawRecord]:
        """Bundles of every order with a document modified in ``[start - overlap, end)``."""
        for name, moment in (("start", start), ("end", end)):
            if moment is not None and (moment.tzinfo is None or moment.utcoffset() is None):
                raise ValueError(f"{name} must be timezone-aware")
        self.complete_until = None
        started = datetime.now(UTC)
        since = start - self.overlap if start is not None else None
        window = odata.modified_between(since, end)
        local_currency = self.local_currency(log)
        keys = self._scan(window, log)
        log(f"business_central: {len(keys)} orders to assemble")
        assembled = vanished = 0
        for chunk in _chunks(keys, self.chunk_size):
            bundles, missing = self._assemble(chunk, local_currency)
            assembled += len(bundles)
            vanished += missing
            log(
                f"business_central: assembled {assembled}/{len(keys)} orders "
                f"({self.client.requests} requests, retries {self.client.retries or 'none'})"
            )
            yield from bundles
        if vanished:
            # Deleted between scan and assembly without being posted: nothing left to land.
            log(f"business_central: {vanished} orders vanished while reading (deleted at the source)")
        # Every change before this moment has now been delivered: the cursor may move here
        # (not to the bundles' latest updated_at, which can run ahead of unread changes).
        self.complete_until = end if end is not None else started

    def local_currency(self, log: Log = no_log) -> str | None:
        """The configured local currency, else the company's LCY code (fetched once)."""
        if self._configured_lcy is not None:
            return self._configured_lcy
        if not self._company_lcy_known:
            self._company_lcy = self._fetch_company_lcy()
            self._company_lcy_known = True
            if self._company_lcy is None:
                log(
                    "business_central: the company has no local currency code (General Ledger Setup > "
                    "LCY Code); documents in local currency will be rejected until BC_LOCAL_CURRENCY is set"
                )
        return self._company_lcy

    # -- phase 1: which orders changed --------------------------------------------------

    def _scan(self, window: str | None, log: Log) -> list[_Key]:
        keys: dict[_Key, None] = {}  # insertion-ordered set: deterministic output order
        for doc in self._scan_entity(ORDERS, window, "number", log):
            number = _text(doc.get("number"))
            if number:
                keys[_Key(number, invoice_only=False)] = None
        invoice_keys: dict[str, _Key] = {}
        for doc in self._scan_entity(INVOICES, window, "number,orderNumber", log):
            key = _invoice_key(doc)
            if key is not None:
                keys[key] = None
                invoice_keys[_text(doc.get("number"))] = key
        wanted_invoices: dict[str, None] = {}
        unlinked = 0
        for doc in self._scan_entity(CREDIT_MEMOS, window, "number,invoiceNumber", log):
            invoice_number = _text(doc.get("invoiceNumber"))
            if not invoice_number:
                unlinked += 1
            elif invoice_number in invoice_keys:
                keys[invoice_keys[invoice_number]] = None
            else:
                wanted_invoices[invoice_number] = None
        for filter_ in odata.any_of("number", wanted_invoices):
            for page in self.client.pages(INVOICES, filter=filter_, select="number,orderNumber"):
                for doc in page:
                    key = _invoice_key(doc)
                    if key is not None:
                        keys[key] = None
        if unlinked:
            # A credit memo not applied to an invoice belongs to no order (e.g. a goodwill credit).
            log(f"business_central: {unlinked} credit memos without an invoice number belong to no order")
        return list(keys)

    def _scan_entity(self, entity: str, window: str | None, select: str, log: Log) -> Iterator[dict]:
        seen = 0
        for page in self.client.pages(entity, filter=window, select=select):
            seen += len(page)
            log(f"business_central: scanned {seen} {entity} modified in the window")
            yield from page

    # -- phase 2: whole bundles ----------------------------------------------------------

    def _assemble(self, chunk: list[_Key], local_currency: str | None) -> tuple[list[RawRecord], int]:
        order_numbers = [k.number for k in chunk if not k.invoice_only]
        loose_numbers = [k.number for k in chunk if k.invoice_only]
        orders = {_text(d.get("number")): d for d in self._documents(ORDERS, "number", order_numbers)}
        invoices: dict[str, list[dict]] = {}
        for doc in self._documents(INVOICES, "orderNumber", order_numbers):
            invoices.setdefault(_text(doc.get("orderNumber")), []).append(doc)
        for doc in self._documents(INVOICES, "number", loose_numbers):
            if not _text(doc.get("orderNumber")):
                invoices.setdefault(_text(doc.get("number")), []).append(doc)
        invoice_numbers = [_text(d.get("number")) for docs in invoices.values() for d in docs]
        memos: dict[str, list[dict]] = {}
        for doc in self._documents(CREDIT_MEMOS, "invoiceNumber", invoice_numbers):
            memos.setdefault(_text(doc.get("invoiceNumber")), []).append(doc)

        bundles: list[RawRecord] = []
        vanished = 0
        for key in chunk:
            order = None if key.invoice_only else orders.get(key.number)
            order_invoices = sorted(invoices.get(key.number, []), key=_number)
            order_memos = sorted(
                (m for inv in order_invoices for m in memos.get(_text(inv.get("number")), [])), key=_number
            )
            if order is None and not order_invoices:
                vanished += 1
                continue
            payload = {
                "salesOrder": order,
                "salesInvoices": order_invoices,
                "salesCreditMemos": order_memos,
                "localCurrency": local_currency,
            }
            documents = [order, *order_invoices, *order_memos] if order else [*order_invoices, *order_memos]
            bundles.append(RawRecord(key.number, _latest_modification(documents), payload))
        return bundles, vanished

    def _documents(self, entity: str, field: str, values: Iterable[str]) -> Iterator[dict]:
        """Every document whose ``field`` is one of ``values``, in batched ``or`` filters."""
        for filter_ in odata.any_of(field, dict.fromkeys(v for v in values if v)):
            for page in self.client.pages(entity, filter=filter_):
                yield from page

    def _fetch_company_lcy(self) -> str | None:
        # generalLedgerSetup.localCurrencyCode is the code the API itself uses for LCY
        # documents; servers older than that endpoint still have companyInformation.
        try:
            rows = self.client.collection("generalLedgerSetup")
            field = "localCurrencyCode"
        except NotFound:
            rows = self.client.collection("companyInformation")
            field = "currencyCode"
        for row in rows:
            code = _text(row.get(field)).upper()
            if code:
                return code
        return None


def _token_source(
    http: httpx.Client,
    access_token: str | None,
    tenant_id: str | None,
    client_id: str | None,
    client_secret: str | None,
    token_url: str | None,
    clock: Callable[[], float],
) -> TokenSource:
    oauth = any((tenant_id, client_id, client_secret))
    if access_token and oauth:
        raise ValueError("set either BC_ACCESS_TOKEN or BC_TENANT_ID/BC_CLIENT_ID/BC_CLIENT_SECRET, not both")
    if access_token:
        return StaticToken(access_token)
    if oauth:
        return ClientCredentials(
            tenant_id or "", client_id or "", client_secret or "", http=http, token_url=token_url, clock=clock
        )
    raise ValueError(
        "Business Central needs BC_ACCESS_TOKEN, or BC_TENANT_ID + BC_CLIENT_ID + BC_CLIENT_SECRET"
    )


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _number(doc: dict) -> str:
    return _text(doc.get("number"))


def _invoice_key(doc: dict) -> _Key | None:
    order_number = _text(doc.get("orderNumber"))
    if order_number:
        return _Key(order_number, invoice_only=False)
    number = _text(doc.get("number"))
    return _Key(number, invoice_only=True) if number else None


def _latest_modification(documents: list[dict]) -> datetime | None:
    """The bundle's ``updated_at``: the latest ``lastModifiedDateTime`` of its documents."""
    moments = []
    for doc in documents:
        value = doc.get("lastModifiedDateTime")
        if not isinstance(value, str):
            continue
        try:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                moments.append(moment.astimezone(UTC))
        except (ValueError, OverflowError):  # e.g. 9999-12-31T23:00:00-05:00 is past year 9999 in UTC
            continue  # the normalizer rejects the bundle, naming the field
    return max(moments, default=None)


def _chunks(items: list[_Key], size: int) -> Iterator[list[_Key]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]
