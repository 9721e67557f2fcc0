"""Deterministic sample data: Shopify orders, the ERP export of the same orders, and the plan.

    python data/samples/generate.py                 # rewrites the files next to this script
    python data/samples/generate.py --n 100000 --out /tmp/big   # any size, streamed to disk

Writes (stdlib only, same bytes for the same n and seed):

* ``shopify_orders.jsonl``: a Shopify bulk-operation result (one order node per line) with
  every financial and fulfillment status, partial refunds, cancellations, shop currencies
  JPY/USD/EUR/KWD (amounts at each currency's exponent), some presentment currencies that
  differ from the shop's, test orders and a few malformed records;
* ``erp_orders.csv`` + ``erp_orders.dialect.toml``: the ERP side of the same orders as a
  European export (cp1252, ``;``, decimal comma, ``dd.mm.yyyy``, Europe/Berlin), with planted
  differences and exactly one malformed row;
* ``planted_differences.csv``: every (external_id, kind) the reconciliation must report.

From other code: ``sys.path.insert(0, "data/samples"); import generate`` then
``generate.generate(n, seed)`` (in memory) or ``generate.write_samples(directory, n, seed)``
(streamed: memory stays flat for millions of orders).

How the ERP side agrees with Shopify (DESIGN.md §4): same total before refunds, same tax, the
refunds as "Credit Memo Amount", a payment status mapping to the same canonical value ("Open",
i.e. nothing paid yet, where Shopify is only authorized), "External Document No." = the Shopify
order name. Everything else is planted on purpose and listed in the plan; test orders and
malformed Shopify records have no ERP row.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
DEFAULT_N = 300
DEFAULT_SEED = 20_261_031
START = datetime(2026, 9, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)  # exclusive: every Shopify time is before this
LAST = END - timedelta(seconds=1)
BERLIN = ZoneInfo("Europe/Berlin")
EXPORTED_AT = datetime(2026, 11, 1, 6, 0, tzinfo=BERLIN)

SHOPIFY_FILE = "shopify_orders.jsonl"
ERP_FILE = "erp_orders.csv"
DIALECT_FILE = "erp_orders.dialect.toml"
PLAN_FILE = "planted_differences.csv"

EXPONENT = {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3, "CAD": 2, "CHF": 2}
SHOP_CURRENCIES = ("USD", "EUR", "JPY", "KWD")
CURRENCY_WEIGHTS = (45, 30, 15, 10)
# VAT per shop currency as (numerator, denominator): integer arithmetic in minor units.
TAX_RATE = {"USD": (825, 10_000), "EUR": (19, 100), "JPY": (10, 100), "KWD": (5, 100)}
# Presentment currency a buyer may see instead of the shop's, and a fixed rate to it.
PRESENTMENT = {
    "USD": ("CAD", Decimal("1.3712")),
    "EUR": ("CHF", Decimal("0.9408")),
    "JPY": ("USD", Decimal("0.006712")),
    "KWD": ("USD", Decimal("3.2541")),
}

# Shopify financial status -> canonical payment_status (DESIGN.md §4), and the ERP's words.
PAYMENT = {
    "AUTHORIZED": "authorized",
    "EXPIRED": "voided",
    "PAID": "captured",
    "PARTIALLY_PAID": "authorized",
    "PARTIALLY_REFUNDED": "captured",
    "PENDING": None,
    "REFUNDED": "refunded",
    "VOIDED": "voided",
}
ERP_PAYMENT_MAP = {
    "Open": "",
    "Authorized": "authorized",
    "Paid": "captured",
    "Partially Refunded": "captured",
    "Refunded": "refunded",
    "Cancelled": "voided",
}
ERP_STATUS_MAP = {
    "Open": "pending",
    "Pending Approval": "pending",
    "Released": "processing",
    "Shipped": "shipped",
    "Invoiced": "shipped",
    "Cancelled": "cancelled",
}
ERP_COLUMNS = (
    "Document No.",
    "External Document No.",
    "Order Date",
    "Last Modified",
    "Customer No.",
    "Customer Name",
    "Currency Code",
    "Amount Including VAT",
    "VAT Amount",
    "Credit Memo Amount",
    "Status",
    "Payment Status",
    "Shipment Method",
    "Package Tracking No.",
)
PREAMBLE = f"Sales Orders;CRONUS Deutschland GmbH;Export {EXPORTED_AT:%d.%m.%Y %H:%M}"

# (financial status, fulfillment status, cancelled): the first orders take each in turn so that
# every status appears whatever the seed; later orders draw from them with these weights.
SCENARIOS = (
    ("PAID", "FULFILLED", False, 40),
    ("PAID", "UNFULFILLED", False, 8),
    ("AUTHORIZED", "UNFULFILLED", False, 6),
    ("PARTIALLY_PAID", "PARTIALLY_FULFILLED", False, 2),
    ("PARTIALLY_REFUNDED", "FULFILLED", False, 6),
    ("PENDING", "UNFULFILLED", False, 4),
    ("REFUNDED", "RESTOCKED", True, 3),
    ("VOIDED", "UNFULFILLED", True, 3),
    ("EXPIRED", "UNFULFILLED", True, 2),
    ("PAID", "IN_PROGRESS", False, 3),
    ("PAID", "ON_HOLD", False, 1),
    ("PAID", "OPEN", False, 2),
    ("PAID", "PENDING_FULFILLMENT", False, 3),
    ("PAID", "SCHEDULED", False, 1),
    ("PAID", "PARTIALLY_FULFILLED", False, 3),
    ("REFUNDED", "FULFILLED", False, 2),
    ("AUTHORIZED", "ON_HOLD", False, 1),
)
SCENARIO_WEIGHTS = tuple(s[3] for s in SCENARIOS)

# Shipping line as Shopify sends it, carrier, and the ERP's shipment method code.
SHIPPING = (
    ({"code": "Standard", "title": "Standard Shipping", "source": "shopify"}, "DHL", "DHL"),
    ({"code": "03", "title": "UPS® Ground", "source": "ups_shipping"}, "UPS", "UPS"),
    ({"code": "FEDEX_GROUND", "title": "FedEx Ground", "source": "fedex"}, "FedEx", "FEDEX"),
    (
        {"code": "Express", "title": "DHL Express Worldwide", "source": "shopify"},
        "DHL Express",
        "DHL-EXPRESS",
    ),
    (None, None, "PICKUP"),
)
SHIPPING_WEIGHTS = (40, 25, 15, 12, 8)
SUBTOTAL = {"USD": (500, 40_000), "EUR": (500, 40_000), "JPY": (500, 60_000), "KWD": (1_000, 150_000)}
SHIPPING_FEE = {"USD": (0, 499, 999), "EUR": (0, 495, 990), "JPY": (0, 800), "KWD": (0, 2_000)}

# Customers, many names not ASCII (all of it representable in cp1252).
FIRST_NAMES = (
    "Jürgen", "Zoë", "François", "Søren", "José", "Ana Sofía", "Björn", "Šimon", "Chloé", "Günther",
    "Émilie", "Ingrid", "Mary", "Sarah", "Tomás", "Renée", "Ólafur", "Kenji", "Fatima", "Agnès", "Maël",
)  # fmt: skip
LAST_NAMES = (
    "Müller", "Brontë", "Lefèvre", "Ødegård", "Peña", "Núñez", "Åström", "Žák", "Dubois", "Groß",
    "Fontaine", "Hägglund", "O'Brien", "Connor", "Ó Súilleabháin", "Laurent", "Þórsson", "Watanabe",
)  # fmt: skip
COMPANY = "Schmidt; Söhne & Co. KG"  # a separator inside a value: the field is quoted
GUEST = ("WEB-GUEST", "Webshop Gast")

FULFILLMENT_DISPLAY = ("DELIVERED", "DELIVERED", "DELIVERED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "FULFILLED")
MALFORMED = ("bad_amount", "no_currency", "unknown_status", "not_json")


# ---------------------------------------------------------------------------------------
# One order as both systems should know it


@dataclass
class Base:
    index: int
    legacy_id: int
    name: str
    created: datetime
    updated: datetime
    cancelled: datetime | None
    currency: str
    presentment: str
    financial: str
    fulfillment: str
    subtotal: int  # minor units
    shipping_fee: int
    tax: int
    refunded: int
    shipping: int  # index into SHIPPING
    fulfillments: list[dict] = field(default_factory=list)
    customer: int | None = None

    @property
    def total(self) -> int:
        return self.subtotal + self.shipping_fee + self.tax

    @property
    def external_id(self) -> str:
        return str(self.legacy_id)


def _clamp(moment: datetime) -> datetime:
    return min(moment, LAST)


def _bases(n: int, seed: int) -> Iterator[Base]:
    """The n orders in creation order; the same sequence every time for the same seed."""
    rng = random.Random(seed)
    span = (END - START).total_seconds() - 3 * 3600  # leave room for same-day updates
    customers = max(40, n // 3)
    for i in range(n):
        created = START + timedelta(seconds=int((i + rng.random()) * span / n))
        if i < len(SCENARIOS):
            financial, fulfillment, cancelled, _ = SCENARIOS[i]
        else:
            financial, fulfillment, cancelled, _ = rng.choices(SCENARIOS, SCENARIO_WEIGHTS)[0]
        currency = rng.choices(SHOP_CURRENCIES, CURRENCY_WEIGHTS)[0]
        low, high = SUBTOTAL[currency]
        # Mostly everyday baskets, some large orders (thousands separators in the export).
        subtotal = rng.randrange(low, high) if rng.random() < 0.85 else rng.randrange(high, high * 10)
        shipping = rng.choices(range(len(SHIPPING)), SHIPPING_WEIGHTS)[0]
        fee = 0 if SHIPPING[shipping][0] is None else rng.choice(SHIPPING_FEE[currency])
        numerator, denominator = TAX_RATE[currency]
        tax = (subtotal * numerator + denominator // 2) // denominator
        base = Base(
            index=i,
            legacy_id=5_600_000_000_000 + i * 1_009 + rng.randrange(1_000),
            name=f"BS-{10_001 + i}" if i % 10 == 7 else f"#{1_001 + i}",
            created=created,
            updated=created,
            cancelled=None,
            currency=currency,
            presentment=PRESENTMENT[currency][0] if rng.random() < 0.15 else currency,
            financial=financial,
            fulfillment=fulfillment,
            subtotal=subtotal,
            shipping_fee=fee,
            tax=tax,
            refunded=0,
            shipping=shipping,
            customer=None if rng.random() < 0.05 else rng.randrange(customers),
        )
        if financial == "PARTIALLY_REFUNDED":
            base.refunded = max(1, subtotal // 3)
        elif financial == "REFUNDED":
            base.refunded = base.total
        moments = [created + timedelta(minutes=rng.randrange(1, 90))]
        if cancelled:
            base.cancelled = _clamp(created + timedelta(hours=rng.randrange(1, 48)))
            moments.append(base.cancelled)
        carrier = SHIPPING[shipping][1] or "DHL"
        shipments = {"FULFILLED": rng.choice((1, 1, 1, 2)), "PARTIALLY_FULFILLED": 1}.get(fulfillment, 0)
        for k in range(shipments):
            shipped = _clamp(created + timedelta(hours=rng.randrange(4, 72)))
            status = rng.choice(FULFILLMENT_DISPLAY)
            delivered = (
                _clamp(shipped + timedelta(hours=rng.randrange(12, 96))) if status == "DELIVERED" else None
            )
            base.fulfillments.append(
                {
                    "displayStatus": status,
                    "createdAt": _iso(shipped),
                    "deliveredAt": _iso(delivered) if delivered else None,
                    "trackingInfo": [{"number": _tracking(rng, carrier, i, k), "company": carrier}],
                }
            )
            moments += [shipped, delivered or shipped]
        if financial in ("PARTIALLY_REFUNDED", "REFUNDED"):
            moments.append(_clamp(max(moments) + timedelta(hours=rng.randrange(1, 200))))
        base.updated = _clamp(max(moments) + timedelta(minutes=rng.randrange(0, 30)))
        yield base


def _tracking(rng: random.Random, carrier: str, i: int, k: int) -> str:
    if carrier == "UPS":
        return f"1Z{rng.randrange(16**6):06X}03{i:07d}{k}"
    if carrier == "FedEx":
        return f"{7_700_000_000 + i * 10 + k:012d}"
    return f"JJD{rng.randrange(10**8):08d}{i:06d}{k}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal(units: int, currency: str) -> Decimal:
    return Decimal(units).scaleb(-EXPONENT[currency])


# ---------------------------------------------------------------------------------------
# The plan: which orders are tests, malformed, or carry a planted difference


@dataclass
class Plan:
    tests: set[int] = field(default_factory=set)
    malformed: dict[int, str] = field(default_factory=dict)  # index -> kind of damage
    erp: dict[int, str] = field(default_factory=dict)  # index -> planted ERP difference
    erp_only_after: dict[int, str] = field(default_factory=dict)  # index -> "none" | "unknown"
    malformed_erp_row: int = -1


def _count(n: int, rate: float, minimum: int) -> int:
    return max(minimum, round(n * rate))


def make_plan(n: int, seed: int) -> Plan:
    """Choose, deterministically, the orders that carry each planted difference."""
    currency: list[str] = []
    financial: list[str] = []
    for base in _bases(n, seed):
        currency.append(base.currency)
        financial.append(base.financial)
    rng = random.Random(seed ^ 0x5EED)
    plan = Plan()
    # The first orders show every status: they are never test or malformed records, and carry
    # a planted ERP difference only when no other order qualifies (they come last in line).
    shown = len(SCENARIOS)
    free = list(range(shown, n))
    rng.shuffle(free)
    free += rng.sample(range(shown), shown)

    used: set[int] = set()

    def take(count: int, accept: Callable[[int], bool] = lambda i: True) -> list[int]:
        chosen: list[int] = []
        for i in free:
            if len(chosen) == count:
                break
            if i not in used and accept(i):
                chosen.append(i)
                used.add(i)
        return chosen

    plan.tests = set(take(_count(n, 0.02, 4), lambda i: i >= shown))
    for k, i in enumerate(take(_count(n, 0.005, len(MALFORMED)), lambda i: i >= shown)):
        plan.malformed[i] = MALFORMED[k % len(MALFORMED)]

    def plant(kind: str, count: int, accept: Callable[[int], bool] = lambda i: True) -> None:
        chosen = take(count, accept)
        if len(chosen) < count:
            raise ValueError(f"n={n} is too small to plant {count} × {kind}")
        for i in chosen:
            plan.erp[i] = kind

    plant("missing", _count(n, 0.02, 5))
    for cur in SHOP_CURRENCIES:  # one total mismatch per currency, of one minor unit
        plant("total_one_unit", _count(n, 0.0025, 1), lambda i, c=cur: currency[i] == c)
    plant("total", _count(n, 0.003, 1))
    for cur in ("JPY", "KWD", "EUR"):
        plant("tax", _count(n, 0.0025, 1), lambda i, c=cur: currency[i] == c and financial[i] != "REFUNDED")
    plant("total_and_tax", _count(n, 0.002, 1), lambda i: financial[i] != "REFUNDED")
    plant("refund_not_booked", _count(n, 0.002, 1), lambda i: financial[i] == "PARTIALLY_REFUNDED")
    plant("refund_partial", _count(n, 0.002, 1), lambda i: financial[i] == "REFUNDED")
    plant("payment", _count(n, 0.012, 4))
    plant("payment_paid_vs_open", _count(n, 0.003, 1), lambda i: financial[i] == "PAID")
    plant("currency", _count(n, 0.004, 1), lambda i: currency[i] in ("USD", "EUR"))
    plan.malformed_erp_row = take(1)[0]
    for k, i in enumerate(sorted(take(_count(n, 0.01, 4)))):
        # ERP-only orders sit after these orders in the export; one names no real Shopify order.
        plan.erp_only_after[i] = "unknown" if k == 1 else "none"
    return plan


# ---------------------------------------------------------------------------------------
# Shopify bulk-result lines


def _money_set(units: int, base: Base) -> dict:
    shop = _decimal(units, base.currency)
    if base.presentment == base.currency:
        shown = shop
    else:
        quantum = Decimal(1).scaleb(-EXPONENT[base.presentment])
        shown = (shop * PRESENTMENT[base.currency][1]).quantize(quantum, rounding=ROUND_HALF_EVEN)
    return {
        "shopMoney": {"amount": str(shop), "currencyCode": base.currency},
        "presentmentMoney": {"amount": str(shown), "currencyCode": base.presentment},
    }


def shopify_node(base: Base, *, test: bool = False) -> dict:
    customer = None
    if base.customer is not None:
        legacy = 7_100_000_000 + base.customer * 37
        customer = {"id": f"gid://shopify/Customer/{legacy}", "legacyResourceId": str(legacy)}
    return {
        "id": f"gid://shopify/Order/{base.legacy_id}",
        "legacyResourceId": base.external_id,
        "name": base.name,
        "createdAt": _iso(base.created),
        "updatedAt": _iso(base.updated),
        "cancelledAt": _iso(base.cancelled) if base.cancelled else None,
        "test": test,
        "currencyCode": base.currency,
        "presentmentCurrencyCode": base.presentment,
        "displayFinancialStatus": base.financial,
        "displayFulfillmentStatus": base.fulfillment,
        "totalPriceSet": _money_set(base.total, base),
        "totalTaxSet": _money_set(base.tax, base),
        "totalRefundedSet": _money_set(base.refunded, base),
        "shippingLine": SHIPPING[base.shipping][0],
        "fulfillments": base.fulfillments,
        "customer": customer,
    }


def _dump(node: dict) -> str:
    return json.dumps(node, ensure_ascii=False, separators=(",", ":"))


def malformed_line(base: Base, damage: str) -> str:
    node = shopify_node(base)
    if damage == "bad_amount":
        node["totalPriceSet"]["shopMoney"]["amount"] = "12,5x"
        node["totalPriceSet"]["presentmentMoney"]["amount"] = "12,5x"
    elif damage == "no_currency":
        node["currencyCode"] = None
        for name in ("totalPriceSet", "totalTaxSet", "totalRefundedSet"):
            node[name]["shopMoney"]["currencyCode"] = None
    elif damage == "unknown_status":
        node["displayFinancialStatus"] = "SETTLED"
    else:  # a line cut short, as a truncated download would leave it
        text = _dump(node)
        return text[: len(text) // 2]
    return _dump(node)


# ---------------------------------------------------------------------------------------
# ERP export rows


def _european(units: int, currency: str) -> str:
    """``1234567`` USD -> ``12.345,67``; JPY ``12800`` -> ``12.800``; KWD ``1250`` -> ``1,250``."""
    exponent = EXPONENT[currency]
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10**exponent)
    text = f"{whole:,}".replace(",", ".")
    if exponent:
        text += "," + f"{fraction:0{exponent}d}"
    return sign + text


def _erp_status(base: Base) -> str:
    if base.cancelled:
        return "Cancelled"
    if base.fulfillment == "FULFILLED":
        # Posted orders live on as invoices: the export says Invoiced.
        return "Invoiced" if base.index % 3 else "Shipped"
    if base.fulfillment in ("PARTIALLY_FULFILLED", "IN_PROGRESS") or PAYMENT[base.financial]:
        return "Released"
    return "Pending Approval" if base.index % 2 else "Open"


def _erp_payment(base: Base) -> str:
    """The ERP's word for the same canonical payment status as Shopify's."""
    canonical = PAYMENT[base.financial]
    if base.financial == "PARTIALLY_REFUNDED":
        return "Partially Refunded"
    if canonical == "authorized":
        # Most ERPs do not know authorizations: nothing paid yet is the normal picture.
        return "Authorized" if base.index % 4 == 0 else "Open"
    return {"captured": "Paid", "refunded": "Refunded", "voided": "Cancelled", None: "Open"}[canonical]


def _wrong_payment(base: Base) -> str:
    """An ERP payment status that disagrees with Shopify (never 'authorized vs nothing paid')."""
    canonical = PAYMENT[base.financial]
    return {"captured": "Open", "authorized": "Paid", "refunded": "Paid", "voided": "Paid", None: "Paid"}[
        canonical
    ]


def _customer(base: Base) -> tuple[str, str]:
    if base.customer is None:
        return GUEST
    c = base.customer
    first, last = FIRST_NAMES[c % len(FIRST_NAMES)], LAST_NAMES[(c * 7 + c // 21) % len(LAST_NAMES)]
    return f"C{10_000 + c:05d}", COMPANY if c % 17 == 5 else f"{first} {last}"


def _berlin(moment: datetime, with_time: bool) -> str:
    local = moment.astimezone(BERLIN)
    return local.strftime("%d.%m.%Y %H:%M" if with_time else "%d.%m.%Y")


def erp_row(base: Base, document_no: str, difference: str | None) -> tuple[list[str], list[str]]:
    """The ERP export row of ``base`` with ``difference`` planted; and the kinds it must cause."""
    total, tax, refunded = base.total, base.tax, base.refunded
    currency = base.currency
    payment = _erp_payment(base)
    kinds: list[str] = []
    unit = 1
    if difference == "total_one_unit":
        total += unit if base.index % 2 else -unit
        kinds.append("total_mismatch")
    elif difference == "total":
        total += 10 ** EXPONENT[currency] * 10  # ten in major units (a shipping fee booked twice)
        kinds.append("total_mismatch")
    elif difference == "tax":
        tax += unit if currency in ("JPY", "KWD") else 10 ** EXPONENT[currency]
        kinds.append("tax_mismatch")
    elif difference == "total_and_tax":
        tax += 10 ** EXPONENT[currency]
        total += 10 ** EXPONENT[currency]
        kinds += ["total_mismatch", "tax_mismatch"]
    elif difference == "refund_not_booked":
        refunded = 0
        kinds.append("refund_mismatch")
    elif difference == "refund_partial":
        refunded = base.refunded // 2
        kinds.append("refund_mismatch")
    elif difference in ("payment", "payment_paid_vs_open"):
        payment = _wrong_payment(base)
        kinds.append("payment_status_mismatch")
    elif difference == "currency":
        currency = "USD" if base.currency == "EUR" else "EUR"  # booked in another currency, same digits
        kinds.append("currency_mismatch")
    customer_no, customer_name = _customer(base)
    tracking = base.fulfillments[0]["trackingInfo"][0]["number"] if base.fulfillments else ""
    # A credit memo column left empty says "not reported": harmless where nothing was refunded.
    unreported = difference is None and base.refunded == 0 and base.index % 9 == 4
    credit_memo = "" if unreported else _european(refunded, currency)
    row = [
        document_no,
        base.name,
        _berlin(base.created, with_time=False),
        _berlin(_clamp(base.updated + timedelta(hours=1 + base.index % 5)), with_time=True),
        customer_no,
        customer_name,
        "" if currency == "EUR" else currency,  # empty: the company's local currency
        _european(total, currency),
        _european(tax, currency),
        credit_memo,
        _erp_status(base),
        payment,
        SHIPPING[base.shipping][2],
        tracking,
    ]
    return row, kinds


def erp_only_row(base: Base, document_no: str, reference: str) -> list[str]:
    """An order the ERP has and Shopify does not (a phone order, or a reference to nothing)."""
    total = 10_000 + (base.index * 7_919) % 90_000
    tax = (total * 19 + 59) // 119
    customer_no, customer_name = _customer(base)
    return [
        document_no,
        reference,
        _berlin(base.created, with_time=False),
        _berlin(_clamp(base.created + timedelta(hours=2)), with_time=True),
        customer_no,
        customer_name,
        "",
        _european(total, "EUR"),
        _european(tax, "EUR"),
        _european(0, "EUR"),
        "Released",
        "Paid",
        "DHL",
        "",
    ]


DIALECT = f"""\
# How to read erp_orders.csv (generated by generate.py; see the README for every key).
encoding = "cp1252"
separator = ";"
quotechar = '"'
decimal = ","
thousands = "."
date_formats = ["%d.%m.%Y %H:%M", "%d.%m.%Y"]
timezone = "Europe/Berlin"
preamble_lines = 1
skip_rows_after_header = 0
row_shape = "order"
default_currency = "EUR"
shopify_ref_kind = "name"

[columns]
order_number = ["Document No."]
shopify_ref = ["External Document No."]
created_at = ["Order Date"]
updated_at = ["Last Modified"]
currency = ["Currency Code"]
total_amount = ["Amount Including VAT"]
tax_amount = ["VAT Amount"]
refunded_amount = ["Credit Memo Amount"]
status = ["Status"]
payment_status = ["Payment Status"]
shipping_method = ["Shipment Method"]
tracking_number = ["Package Tracking No."]
customer_id = ["Customer No."]

[status_map]
{chr(10).join(f'"{k}" = "{v}"' for k, v in ERP_STATUS_MAP.items())}

[payment_status_map]
{chr(10).join(f'"{k}" = "{v}"' for k, v in ERP_PAYMENT_MAP.items())}
"""


# ---------------------------------------------------------------------------------------
# Putting it together


def produce(
    n: int,
    seed: int,
    shopify_line: Callable[[str], None],
    erp_line: Callable[[list[str]], None],
) -> list[tuple[str, str]]:
    """Emit every Shopify line and ERP row in order; return the planted (external_id, kind)."""
    if n < 60:
        raise ValueError("n must be at least 60 to plant every kind of difference")
    plan = make_plan(n, seed)
    planted: list[tuple[str, str]] = []
    documents = 0
    unknown_name = f"#{1_001 + n + 90_000}"  # a name no Shopify order carries

    def document_no() -> str:
        nonlocal documents
        documents += 1
        return f"SO-{100_000 + documents}"

    for base in _bases(n, seed):
        i = base.index
        if i in plan.malformed:
            shopify_line(malformed_line(base, plan.malformed[i]))
            continue
        shopify_line(_dump(shopify_node(base, test=i in plan.tests)))
        if i in plan.tests:
            continue
        difference = plan.erp.get(i)
        if difference == "missing":
            planted.append((base.external_id, "missing_in_erp"))
        else:
            row, kinds = erp_row(base, document_no(), difference)
            if i == plan.malformed_erp_row:
                row[7] = "abc"  # unreadable amount: the reader rejects the row, so the order is missing
                kinds = ["missing_in_erp"]
            erp_line(row)
            planted += [(base.external_id, kind) for kind in kinds]
        if i in plan.erp_only_after:
            number = document_no()
            erp_line(erp_only_row(base, number, unknown_name if plan.erp_only_after[i] == "unknown" else ""))
            planted.append((number, "missing_in_shopify"))
    return sorted(planted)


@dataclass
class Sample:
    shopify_jsonl: str
    erp_csv: bytes
    dialect_toml: str
    planted: list[tuple[str, str]]

    @property
    def planted_csv(self) -> str:
        return _plan_text(self.planted)


def _plan_text(planted: list[tuple[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("external_id", "kind"))
    writer.writerows(planted)
    return out.getvalue()


class _ErpWriter:
    """CSV rows as a Windows ERP writes them: cp1252, ';', CRLF, a preamble line first."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self.sink = sink
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, delimiter=";", quotechar='"', lineterminator="\r\n")
        self.sink((PREAMBLE + "\r\n").encode("cp1252"))
        self.row(list(ERP_COLUMNS))

    def row(self, cells: list[str]) -> None:
        self.writer.writerow(cells)
        self.sink(self.buffer.getvalue().encode("cp1252"))
        self.buffer.seek(0)
        self.buffer.truncate()


def generate(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> Sample:
    """The whole sample in memory (for tests and small sizes)."""
    lines: list[str] = []
    erp = io.BytesIO()
    writer = _ErpWriter(erp.write)
    planted = produce(n, seed, lines.append, writer.row)
    return Sample("".join(line + "\n" for line in lines), erp.getvalue(), DIALECT, planted)


def write_samples(
    directory: Path = HERE, n: int = DEFAULT_N, seed: int = DEFAULT_SEED
) -> list[tuple[str, str]]:
    """Write the four files into ``directory``, streaming; returns the planted differences."""
    directory.mkdir(parents=True, exist_ok=True)
    with (
        open(directory / SHOPIFY_FILE, "w", encoding="utf-8", newline="\n") as shopify,
        open(directory / ERP_FILE, "wb") as erp,
    ):
        writer = _ErpWriter(erp.write)
        planted = produce(n, seed, lambda line: shopify.write(line + "\n"), writer.row)
    (directory / DIALECT_FILE).write_text(DIALECT, encoding="utf-8", newline="\n")
    (directory / PLAN_FILE).write_text(_plan_text(planted), encoding="utf-8", newline="\n")
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the deterministic Shopify and ERP samples.")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="Shopify records (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=HERE, help="directory (default: next to this script)")
    args = parser.parse_args()
    planted = write_samples(args.out, args.n, args.seed)
    print(f"wrote {args.n} Shopify records and {len(planted)} planted differences to {args.out}")


if __name__ == "__main__":
    main()
