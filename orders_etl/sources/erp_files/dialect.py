"""The dialect of an ERP export: how to read its bytes and what its columns and values mean.

A dialect is a small TOML file kept in the repository next to the export's configuration
(see ``docs/erp-files.md``). It is validated when loaded, so a typo (``seperator``), an
unknown canonical field or a status mapped to a value the Order does not know fails at
start-up with the offending key named, not halfway through a million rows.
"""

from __future__ import annotations

import codecs
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from orders_etl.currencies import is_iso_currency
from orders_etl.model import OrderStatus, PaymentStatus

# The canonical fields a column can be mapped to (the Order's fields, seen from a file).
CANONICAL_FIELDS: tuple[str, ...] = (
    "order_number",
    "shopify_ref",
    "created_at",
    "updated_at",
    "currency",
    "total_amount",
    "tax_amount",
    "refunded_amount",
    "status",
    "payment_status",
    "shipping_method",
    "tracking_number",
    "customer_id",
)
# Without these a file cannot produce a single valid order: the reader refuses such a file.
REQUIRED_COLUMNS: tuple[str, ...] = ("order_number", "total_amount", "status")


class DialectError(ValueError):
    """A dialect file that cannot be used; the message names the file and the key."""


def fold(text: str) -> str:
    """The form header names and vocabulary values are compared in: no case, no spaces."""
    return "".join(text.split()).casefold()


def resolve_columns(headers: list[str], dialect: Dialect) -> dict[str, str]:
    """Canonical field -> the header holding it: the first alias present wins (case/space-blind)."""
    by_folded: dict[str, str] = {}
    for name in headers:
        by_folded.setdefault(fold(name), name)
    resolved: dict[str, str] = {}
    for field, aliases in dialect.columns.items():
        for alias in aliases:
            if (header := by_folded.get(fold(alias))) is not None:
                resolved[field] = header
                break
    return resolved


def _single_char(value: str) -> str:
    if len(value) != 1 or value in "\r\n":
        raise ValueError("must be exactly one character (not a line break)")
    return value


def _encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"{value!r} is not an encoding Python knows (e.g. utf-8, cp1252, cp850)") from None
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin, UTC)") from None
    return value


def _currency(value: str) -> str:
    if not is_iso_currency(value):
        raise ValueError(f"{value!r} is not an ISO 4217 currency code")
    return value


def _aliases(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _empty_is_null(value: Any) -> Any:
    # TOML has no null: "" on the right-hand side of the payment map means "no payment yet".
    return None if value == "" else value


Aliases = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_aliases), Field(min_length=1)]


class Dialect(BaseModel):
    """How one ERP export is written. Field names are the TOML keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encoding: Annotated[str, AfterValidator(_encoding)] = "utf-8"
    separator: Annotated[str, AfterValidator(_single_char)] = ","
    # "" means the export does not quote at all (e.g. a BC XMLport without a field delimiter).
    quotechar: str = '"'
    decimal: Annotated[str, AfterValidator(_single_char)] = "."
    thousands: str = ""
    date_formats: Annotated[list[str], Field(min_length=1)] = ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    preamble_lines: Annotated[int, Field(ge=0)] = 0
    skip_rows_after_header: Annotated[int, Field(ge=0)] = 0
    row_shape: Literal["order", "line"] = "order"
    default_currency: Annotated[str, AfterValidator(_currency)]
    shopify_ref_kind: Literal["id", "name"] = "name"
    columns: dict[str, Aliases]
    status_map: Annotated[dict[str, OrderStatus], Field(min_length=1)]
    payment_status_map: dict[str, Annotated[PaymentStatus | None, BeforeValidator(_empty_is_null)]] = {}
    # Carrier service codes for shipping methods; unknown ones are slugified (DESIGN.md §4).
    shipping_map: dict[str, str] = {}

    @field_validator("quotechar", "thousands")
    @classmethod
    def _empty_or_single_char(cls, value: str) -> str:
        return value if value == "" else _single_char(value)

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(columns) - set(CANONICAL_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; the fields are {list(CANONICAL_FIELDS)}")
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"required field(s) {missing} have no column aliases")
        return columns

    @field_validator("status_map", "payment_status_map", "shipping_map")
    @classmethod
    def _no_clashing_keys(cls, mapping: dict[str, Any]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        for key in mapping:
            if fold(key) in seen:
                raise ValueError(f"keys {seen[fold(key)]!r} and {key!r} differ only in case or spaces")
            seen[fold(key)] = key
        return mapping

    @model_validator(mode="after")
    def _separators_distinct(self) -> Dialect:
        if self.separator == self.quotechar:
            raise ValueError("separator and quotechar must differ")
        if self.decimal == self.thousands:
            raise ValueError("decimal and thousands separators must differ")
        return self

    # Lookups in the folded form, built once per dialect.

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def status_lookup(self) -> dict[str, OrderStatus]:
        return {fold(k): v for k, v in self.status_map.items()}

    @cached_property
    def payment_status_lookup(self) -> dict[str, PaymentStatus | None]:
        # An empty cell means no payment yet unless the dialect says otherwise.
        return {"": None} | {fold(k): v for k, v in self.payment_status_map.items()}

    @cached_property
    def shipping_lookup(self) -> dict[str, str]:
        return {fold(k): v for k, v in self.shipping_map.items()}


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"key {key!r} is required"
    if error["type"] == "extra_forbidden":
        return f"key {key!r} is not a dialect setting (misspelt?)"
    return f"key {key!r}: {message}"


def parse_dialect(data: dict[str, Any], origin: str = "dialect") -> Dialect:
    try:
        return Dialect.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise DialectError(f"{origin}: {problems}") from None


def load_dialect(path: str | Path) -> Dialect:
    """Read and validate a dialect TOML file; :class:`DialectError` names the file and key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DialectError(f"dialect file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DialectError(f"{path}: not a valid UTF-8 TOML file: {exc}") from None
    return parse_dialect(data, str(path))
