"""The fast path of the Shopify mapping: a landed order's JSON text straight to an OrderRow.

Why it exists: the record path (``mapping._map_order`` + ``parse_order``) parses the text
into dicts of Decimals, walks them field by field and validates an ``OrderRecord`` with
pydantic, some 150 µs an order: minutes at a million orders. Here the text is decoded by
msgspec into the Structs below (C speed; they mirror the order node of
``queries.ORDER_NODE``, only the fields the mapping reads) and mapped to the canonical
texts the store keeps (``orders_etl.canonical``), a few µs an order.

How it stays equal to the record path: it maps only the ordinary shape of an order and
returns ``None`` for anything else, and then :func:`~orders_etl.sources.shopify.mapping.normalize`
takes the record path, which gives the order, the skip or the reject (with the reason
naming the field) as always. Every rule below is the record path's rule for that ordinary
shape (a test order is skipped before anything else is looked at, as there); each place
that returns None is a value the record path might refuse, convert or name in a reject:

* a type other than the Struct's (a number where a string is expected, a JSON number as
  an amount, a non-object), a lone surrogate escape, NaN: the decode fails; an integer
  too long for ``json.loads`` (``beyond_int_digits``);
* the stand-ins of unusable bulk lines (``_unparsed_line``, ``_orphan_child_line``);
* ``legacyResourceId`` / customer id not plain ASCII digits (1 to 20), a gid that is not
  exactly ``gid://shopify/Order/<legacyResourceId>``;
* an unknown currency, a shop money currency that differs from ``currencyCode``;
* an unknown ``displayFinancialStatus`` / ``displayFulfillmentStatus``;
* a time that is not ISO 8601 UTC (``Z`` / ``+00:00``), an amount that is not a plain
  decimal at most the currency's exponent (bar trailing zeros): see ``orders_etl.canonical``;
* a name that is blank, longer than the key limit or holds NUL; a shipping method or
  tracking number holding NUL.

``orders_etl_tests/test_shopify_fast.py`` proves the equality: for generated orders, plain
and hostile, the fast result is the record path's order as canonical text (or its skip),
or ``None`` wherever the record path rejects.
"""

from __future__ import annotations

import functools
import re
import sys

import msgspec

from orders_etl.canonical import OrderRow, iso_utc_text, money_text
from orders_etl.currencies import CURRENCY_EXPONENTS
from orders_etl.model import MAX_KEY_LENGTH, OrderStatus
from orders_etl.sources.base import Skipped
from orders_etl.sources.shopify.mapping import (
    _PAID_ENOUGH_TO_SHIP,
    _PROCESSING_FULFILLMENT,
    FULFILLMENT_STATUSES,
    PAYMENT_STATUS,
    ShippingMethods,
)

# ---------------------------------------------------------------------------------------
# The order node, as far as the mapping reads it (gc=False: no cycles, cheaper to build)


class _Money(msgspec.Struct, gc=False):
    amount: str
    currencyCode: str


class _MoneyBag(msgspec.Struct, gc=False):
    shopMoney: _Money


class _ShippingLine(msgspec.Struct, gc=False):
    code: str | None = None
    title: str | None = None


class _TrackingInfo(msgspec.Struct, gc=False):
    number: str | None = None


class _Fulfillment(msgspec.Struct, gc=False):
    displayStatus: str | None = None
    createdAt: str | None = None
    trackingInfo: list[_TrackingInfo] | None = None


class _Customer(msgspec.Struct, gc=False):
    legacyResourceId: str


class _Order(msgspec.Struct, gc=False):
    legacyResourceId: str
    name: str
    createdAt: str
    updatedAt: str
    currencyCode: str
    totalPriceSet: _MoneyBag
    id: str | None = None
    cancelledAt: str | None = None
    test: bool | None = None
    displayFinancialStatus: str | None = None
    displayFulfillmentStatus: str | None = None
    totalTaxSet: _MoneyBag | None = None
    totalRefundedSet: _MoneyBag | None = None
    shippingLine: _ShippingLine | None = None
    fulfillments: list[_Fulfillment] | None = None
    customer: _Customer | None = None
    # The bulk reader's stand-ins for unusable lines: present means "not an order".
    unparsed_line: msgspec.Raw | msgspec.UnsetType = msgspec.field(
        default=msgspec.UNSET, name="_unparsed_line"
    )
    orphan_child_line: msgspec.Raw | msgspec.UnsetType = msgspec.field(
        default=msgspec.UNSET, name="_orphan_child_line"
    )


_DECODE = msgspec.json.Decoder(_Order).decode


@functools.lru_cache(2)
def _digit_run(limit: int) -> re.Pattern[str]:
    return re.compile(f"[0-9]{{{limit + 1}}}")


def beyond_int_digits(text: str) -> bool:
    """Whether ``text`` may hold an integer of more digits than Python converts (4300 by
    default, ``sys.get_int_max_str_digits``): ``json.loads`` refuses such a text, msgspec
    skips the number in a field it ignores; so such a text must take the record path."""
    limit = sys.get_int_max_str_digits()
    return 0 < limit < len(text) and _digit_run(limit).search(text) is not None


_PAYMENT_TEXT = {name: (status.value if status else None) for name, status in PAYMENT_STATUS.items()}
_PAID_ENOUGH = frozenset(status.value for status in _PAID_ENOUGH_TO_SHIP)
_CANCELLED, _DELIVERED, _SHIPPED, _PROCESSING, _PENDING = (
    OrderStatus.CANCELLED.value,
    OrderStatus.DELIVERED.value,
    OrderStatus.SHIPPED.value,
    OrderStatus.PROCESSING.value,
    OrderStatus.PENDING.value,
)
_GID_PREFIX = "gid://shopify/Order/"
# A numeric id as the record path takes it unchanged: 1 to 20 ASCII digits.
_DIGITS = re.compile(r"[0-9]{1,20}").fullmatch
_BAD = object()  # "take the record path", where None is a value
_CACHE = 1 << 16  # bound of each cache below: hostile input cannot grow them

# ---------------------------------------------------------------------------------------
# Canonical text, for the forms Shopify sends, at the cost of one regex or dict look-up

# Shopify's form of a time, "2026-09-03T13:47:20Z", for a real date (29 February of leap
# years only) from year 1000; its canonical text is "2026-09-03 13:47:20.000000". Any other
# form goes to the general ``iso_utc_text``.
_LEAP_YEAR = r"(?:[1-9][0-9](?:0[48]|[2468][048]|[13579][26])|(?:1[26]|[2468][048]|[3579][26])00)"
_DAY = (
    r"(?:[1-9][0-9]{3}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
    rf"|(?:0[13578]|1[02])-31)|{_LEAP_YEAR}-02-29)"
)
_SHOPIFY_TIME = re.compile(rf"{_DAY}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z").fullmatch
# The record path's ``datetime.max`` for a fulfillment without createdAt, as canonical text.
_NO_TIME = "9999-12-31 23:59:59.999999"


def _time(text: str) -> str | None:
    """``orders_etl.canonical.iso_utc_text``, its usual case by one regex."""
    if _SHOPIFY_TIME(text) is not None:
        return text[:10] + " " + text[11:19] + ".000000"
    return iso_utc_text(text)


# Canonical amounts per exponent (prices repeat): filled by ``_money_miss``.
_MONEY: dict[int, dict[str, str]] = {exponent: {} for exponent in set(CURRENCY_EXPONENTS.values())}


def _money_miss(amount: str, exponent: int) -> str | None:
    """``orders_etl.canonical.money_text``, kept in ``_MONEY``."""
    text = money_text(amount, exponent)
    if text is not None:
        cache = _MONEY[exponent]
        if len(cache) >= _CACHE:
            cache.clear()
        cache[amount] = text
    return text


def _tracking_number(fulfillments: list[_Fulfillment]) -> str | object | None:
    """The first non-blank number of the earliest fulfillment with one: every createdAt
    must be a time (else ``_BAD``), none sorts last, ties keep their order."""
    if len(fulfillments) == 1:  # the usual case: no order to find
        created = fulfillments[0].createdAt
        if created is not None and _time(created) is None:
            return _BAD
        ordered = fulfillments
    else:
        dated = []
        for index, fulfillment in enumerate(fulfillments):
            moment = _NO_TIME if fulfillment.createdAt is None else _time(fulfillment.createdAt)
            if moment is None:
                return _BAD
            dated.append((moment, index, fulfillment))
        dated.sort(key=lambda item: (item[0], item[1]))
        ordered = [fulfillment for _, _, fulfillment in dated]
    for fulfillment in ordered:
        for info in fulfillment.trackingInfo or ():
            if info.number is not None and (number := info.number.strip()):
                return _BAD if "\x00" in number else number
    return None


def _delivered(fulfillments: list[_Fulfillment]) -> bool:
    # (a loop: all() over a generator costs a third more, per order)
    for fulfillment in fulfillments:  # noqa: SIM110
        if fulfillment.displayStatus != "DELIVERED":
            return False
    return True


class FastMapping:
    """``(record_key, text) -> OrderRow | Skipped | None`` (None: take the record path)."""

    def __init__(self, shipping: ShippingMethods, include_test: bool) -> None:
        self.include_test = include_test
        self._code_for = shipping.code_for
        self._shipping: dict[tuple[str | None, str | None], str | object | None] = {}

    def _shipping_miss(self, code: str | None, title: str | None) -> str | object | None:
        """``ShippingMethods.code_for``, or ``_BAD`` if that holds NUL; kept in ``_shipping``."""
        method = self._code_for(code, title)
        if method is not None and "\x00" in method:
            method = _BAD
        if len(self._shipping) >= _CACHE:
            self._shipping.clear()
        self._shipping[code, title] = method
        return method

    def __call__(self, record_key: str, text: str) -> OrderRow | Skipped | None:
        try:
            order = _DECODE(text)
        except (msgspec.DecodeError, UnicodeError, RecursionError):
            return None
        if beyond_int_digits(text):
            return None
        if order.unparsed_line is not msgspec.UNSET or order.orphan_child_line is not msgspec.UNSET:
            return None
        if order.test and not self.include_test:
            return Skipped(record_key, "test order")

        external_id = order.legacyResourceId
        if _DIGITS(external_id) is None or (order.id is not None and order.id != _GID_PREFIX + external_id):
            return None
        number = order.name
        if "\x00" in number or not number.strip() or len(number) > MAX_KEY_LENGTH:
            return None
        created, updated = _time(order.createdAt), _time(order.updatedAt)
        if created is None or updated is None:
            return None

        currency = order.currencyCode
        exponent = CURRENCY_EXPONENTS.get(currency)
        if exponent is None:
            return None
        amounts = _MONEY[exponent]
        money = order.totalPriceSet.shopMoney
        if money.currencyCode != currency:
            return None
        if (total := amounts.get(money.amount) or _money_miss(money.amount, exponent)) is None:
            return None
        tax = refunded = None
        if order.totalTaxSet is not None:
            money = order.totalTaxSet.shopMoney
            if money.currencyCode != currency:
                return None
            if (tax := amounts.get(money.amount) or _money_miss(money.amount, exponent)) is None:
                return None
        if order.totalRefundedSet is not None:
            money = order.totalRefundedSet.shopMoney
            if money.currencyCode != currency:
                return None
            if (refunded := amounts.get(money.amount) or _money_miss(money.amount, exponent)) is None:
                return None

        financial = order.displayFinancialStatus
        if financial is None:
            payment = detail = None
        elif financial in _PAYMENT_TEXT:
            payment, detail = _PAYMENT_TEXT[financial], financial.lower()
        else:
            return None

        fulfillments = order.fulfillments
        if order.cancelledAt is not None:
            if _time(order.cancelledAt) is None:
                return None
            status = _CANCELLED
        elif fulfillments and _delivered(fulfillments):
            status = _DELIVERED
        else:
            display = order.displayFulfillmentStatus
            if display not in FULFILLMENT_STATUSES:
                return None
            if display == "FULFILLED":
                status = _SHIPPED
            elif display in _PROCESSING_FULFILLMENT or (display == "UNFULFILLED" and payment in _PAID_ENOUGH):
                status = _PROCESSING
            else:
                status = _PENDING
        tracking = _tracking_number(fulfillments) if fulfillments else None
        shipping_method = None
        if (line := order.shippingLine) is not None:
            shipping_method = self._shipping.get((line.code, line.title), _BAD)
            if shipping_method is _BAD:
                shipping_method = self._shipping_miss(line.code, line.title)
        customer_id = None if order.customer is None else order.customer.legacyResourceId
        if (
            tracking is _BAD
            or shipping_method is _BAD
            or (customer_id is not None and _DIGITS(customer_id) is None)
        ):
            return None

        return OrderRow(
            (
                external_id,
                number,
                created,
                currency,
                total,
                tax,
                payment,
                status,
                shipping_method,
                tracking,
                customer_id,
                refunded,
                detail,
                updated,
                None,  # deleted_at: set by the deletion sweep, never by a mapping
            )
        )
