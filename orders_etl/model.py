"""The canonical Order (DESIGN.md §4) and the rules every source maps onto.

Sources produce :class:`OrderRecord` (a normalized order before the store mints its ``id``);
the store hands out :class:`Order`, the product's public shape. Validation happens here,
at the boundary, so nothing downstream has to re-check money, currency or time:

* money is ``Decimal``, never ``float``, non-negative, finite, and quantized to the
  currency's own exponent (an amount that would need rounding is an error, not a guess);
* time is timezone-aware and converted to UTC (a naive timestamp is ambiguous: rejected);
* text must be storable byte for byte on SQLite and PostgreSQL (no NUL, valid UTF-8).

:func:`parse_order` turns a mapping into an ``OrderRecord`` or raises :class:`InvalidOrder`
whose message names the record, the field and the bad value.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from orders_etl.currencies import exponent_of, is_iso_currency

ORDER_ID_PREFIX = "ord_"
# Largest amount we accept: far above any real order, far below NUMERIC(24, 4)'s limit.
MAX_AMOUNT = Decimal(10) ** 15
# Keys are indexed; PostgreSQL's btree refuses entries much past 2.7 kB.
MAX_KEY_LENGTH = 255


class PaymentStatus(StrEnum):
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    REFUNDED = "refunded"
    VOIDED = "voided"


class OrderStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class Source(StrEnum):
    """Sources, in order of precedence: the first one holding an order is its origin."""

    SHOPIFY = "shopify"
    BUSINESS_CENTRAL = "business_central"
    ERP_FILES = "erp_files"


ERP_SOURCES = (Source.BUSINESS_CENTRAL, Source.ERP_FILES)


# ---------------------------------------------------------------------------------------
# Field validators


def _text(value: Any) -> Any:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("contains a NUL character, which the store cannot keep")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("is not valid Unicode text (lone surrogate)") from exc
    return value


def _key(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"is longer than {MAX_KEY_LENGTH} characters")
    return value


def _decimal(value: Any) -> Any:
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a decimal amount, not a boolean")
    if isinstance(value, float):
        # A float has already lost the exact amount the source sent; parse JSON with
        # parse_float=Decimal instead of guessing here.
        raise ValueError("must be a decimal string or Decimal, not a float")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("is not a decimal number") from None
    raise ValueError(f"must be a decimal amount, not {type(value).__name__}")


def _currency(value: str) -> str:
    if not is_iso_currency(value):
        raise ValueError("is not an ISO 4217 currency code")
    return value


def _money(value: Decimal | None) -> Decimal | None:
    if value is None:
        return None
    if not value.is_finite():
        raise ValueError("must be a finite amount")
    if value < 0:
        raise ValueError("must not be negative")
    if value >= MAX_AMOUNT:
        raise ValueError("is out of range")
    return value


def _aware_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must carry a timezone (a naive timestamp is ambiguous)")
    return value.astimezone(UTC)


Text = Annotated[str, BeforeValidator(_text)]
Key = Annotated[str, BeforeValidator(_text), AfterValidator(_key)]
Money = Annotated[Decimal, BeforeValidator(_decimal), AfterValidator(_money)]
UtcDatetime = Annotated[datetime, AfterValidator(_aware_utc)]


def quantize_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` at ``currency``'s exponent; ValueError if that would change its value."""
    exponent = exponent_of(currency)
    quantum = Decimal(1).scaleb(-exponent)
    quantized = amount.quantize(quantum)
    if quantized != amount:
        raise ValueError(f"has more decimals than {currency} allows ({exponent})")
    # `+ 0` folds -0.00 into 0.00, so equal amounts always print the same.
    return quantized + 0


# ---------------------------------------------------------------------------------------
# Models

_MONEY_FIELDS = ("total_amount", "tax_amount", "refunded_amount")


class OrderRecord(BaseModel):
    """One source's normalized view of an order, before the store gives it an ``id``."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    external_id: Key
    number: Key
    created_at: UtcDatetime | None = None
    currency: Annotated[str, BeforeValidator(_text), AfterValidator(_currency)]
    total_amount: Money
    tax_amount: Money | None = None
    payment_status: PaymentStatus | None = None
    status: OrderStatus
    shipping_method: Text | None = None
    tracking_number: Text | None = None
    customer_id: Text | None = None
    refunded_amount: Money | None = None
    payment_status_detail: Text | None = None
    updated_at: UtcDatetime
    deleted_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _amounts_at_currency_exponent(self) -> Self:
        for name in _MONEY_FIELDS:
            amount = getattr(self, name)
            if amount is not None:
                try:
                    object.__setattr__(self, name, quantize_money(amount, self.currency))
                except ValueError as exc:
                    raise ValueError(f"field {name!r} = {str(amount)!r}: {exc}") from None
        return self


class Order(OrderRecord):
    """The canonical Order as the store holds it (DESIGN.md §4)."""

    id: Annotated[str, Field(pattern=r"^ord_[0-9A-HJKMNP-TV-Z]{26}$")]
    origin: Source
    synced_at: UtcDatetime


# ---------------------------------------------------------------------------------------
# Boundary parsing and rejects


class InvalidOrder(ValueError):
    """A record that cannot be normalized; the message names record, field and value."""

    def __init__(self, record_key: str, problems: list[str]) -> None:
        self.record_key = record_key
        self.problems = problems
        super().__init__(f"order {record_key!r}: " + "; ".join(problems))

    def __reduce__(self) -> tuple[type[InvalidOrder], tuple[str, list[str]]]:
        # Rebuilt from its parts (it may be raised in a normalizing process).
        return type(self), (self.record_key, self.problems)


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "record"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "missing":
        return f"field {field!r} is required"
    if not error["loc"]:
        return message
    value = error.get("input")
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"field {field!r} = {shown}: {message}"


def parse_order(data: dict[str, Any], record_key: str | None = None) -> OrderRecord:
    """Validate a mapped record; raise :class:`InvalidOrder` naming record, field and value."""
    key = record_key if record_key is not None else str(data.get("external_id", "<no key>"))
    try:
        return OrderRecord.model_validate(data)
    except ValidationError as exc:
        raise InvalidOrder(key, [_describe(e) for e in exc.errors()]) from None


@dataclass(frozen=True, slots=True)
class Reject:
    """A source record that could not be normalized, kept with the reason (order_rejects)."""

    source: str
    record_key: str
    reason: str
    payload: Any


# ---------------------------------------------------------------------------------------
# Shared mapping helpers

_NON_WORD = re.compile(r"[^a-z0-9]+")


def snake_code(text: str) -> str:
    """``"FedEx Ground®"`` -> ``"fedex_ground"``: the slug used for unknown shipping titles."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NON_WORD.sub("_", folded.lower()).strip("_")
