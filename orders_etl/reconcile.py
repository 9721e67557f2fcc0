"""Reconciliation of Shopify against the ERP: pure functions over two DataFrames (DESIGN.md §4, §5).

``reconcile(shopify, erp, now=...)`` matches both sides on ``external_id`` (an ERP record that
refers to a Shopify order already carries that order's id) and returns per-order exceptions and
a summary per day × currency. :class:`Reconciler` does the same over sides too large for
memory, fed in chunks split on ``external_id``. Nothing here reads or writes the store; see
:mod:`orders_etl.store.reconciliation` for the ledger built on top.

The rules, each one a decision a reader of the report relies on:

* **Exact money.** Amounts are compared as integers of the currency's minor unit (JPY 0, USD 2,
  KWD 3 decimals), never as floats. An amount finer than its currency allows is an error, not
  something to round. Tolerance is exact (0) unless configured per currency in minor units.
* **Like for like.** Totals before refunds against totals before refunds; refunds (Shopify
  ``totalRefundedSet``) against refunds (ERP credit memos). A refund booked on both sides is
  therefore never a total mismatch. A side that does not report refunds or tax at all (null,
  e.g. a CSV export without that column) is not compared on them.
* **Currencies are never mixed.** When both sides disagree on the currency the order gets
  ``currency_mismatch`` and its amounts are not compared (comparing 100 USD with 100 EUR means
  nothing); its payment status still is. Summaries are per currency, never added together.
* **Payment status.** Shopify ``authorized`` against an ERP with no payment yet (null) is how an
  order looks before capture: not a mismatch. Any other difference is one.
* **Missing.** A Shopify order without ERP record is ``missing_in_erp`` unless it was created
  less than ``grace`` before ``now`` (default 2 h): then it is *pending sync* and only counted.
  An ERP record without Shopify order is ``missing_in_shopify`` (no grace: it cannot be late).
* **Deleted orders.** A record deleted at its source (``deleted_at`` set) is handled by side:
  - Shopify: deleting an archived or cancelled order in Shopify does not undo the sale in the
    books, so when the ERP holds the order it is still compared, on its last known values. When
    the ERP does not hold it, neither system has a live order any more: nothing to fix, so it is
    not ``missing_in_erp`` (counted as ``deleted_in_shopify``).
  - ERP: a deleted ERP record is absent from the books, so the Shopify order is missing there.
* **ERP sources.** Business Central and flat-file exports form one ERP side; when both hold
  the same order, Business Central (the API, fresher than an export) wins.
* **Days** are the order's creation day (Shopify's when it has the order, else the ERP's; the
  source's ``updated_at`` when a source gives no creation time) in ``config.timezone``.

Input frames hold source_orders rows (``OrderStore.read_table`` output works as is): columns
``external_id``, ``currency``, ``created_at``, ``payment_status`` and the money columns
``total_amount``, ``tax_amount``, ``refunded_amount`` as exact ``Decimal`` (or decimal strings).
A money column may instead be given as ``<name>_minor``: integers of the currency's minor unit
(what the store loader streams: a tenth of the memory of Decimal objects).
Optional: ``updated_at``, ``deleted_at``, and ``source`` on the ERP side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from orders_etl.currencies import exponent_of, is_iso_currency
from orders_etl.model import ERP_SOURCES

KINDS: tuple[str, ...] = (
    "missing_in_erp",
    "missing_in_shopify",
    "total_mismatch",
    "tax_mismatch",
    "refund_mismatch",
    "payment_status_mismatch",
    "currency_mismatch",
)
# Kinds whose difference is an amount of money (the others compare codes or statuses).
MONEY_KINDS = frozenset(
    {"missing_in_erp", "missing_in_shopify", "total_mismatch", "tax_mismatch", "refund_mismatch"}
)
MONEY_COLUMNS: tuple[str, ...] = ("total_amount", "tax_amount", "refunded_amount")
EXCEPTION_COLUMNS: tuple[str, ...] = (
    "external_id",
    "kind",
    "currency",
    "order_created_at",
    "shopify_value",
    "erp_value",
    "difference",
)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "day",
    "currency",
    "shopify_orders",
    "erp_orders",
    "shopify_total",
    "erp_total",
    "difference",
    "matched",
    "pending_sync",
    *KINDS,
)
# Payment statuses as small integer codes; 0 is "nothing paid yet" (null).
_PAYMENT_CODES: tuple[str, ...] = ("authorized", "captured", "refunded", "voided")
_AUTHORIZED, _NULL = 1, 0
# Business Central first: when both ERP sources hold an order, the API's record wins.
ERP_SOURCE_PRECEDENCE: tuple[str, ...] = tuple(source.value for source in ERP_SOURCES)
_DAY_NS = 86_400 * 10**9
# Amounts stay below 2**62 minor units so that a difference of two never overflows int64.
_MAX_UNITS = 2**62
# Exact decimal arithmetic: any rounding at all raises instead of quietly changing an amount.
_EXACT = Context(prec=60, traps=[Inexact, InvalidOperation])


@dataclass(frozen=True)
class ReconcileConfig:
    """How strict the comparison is.

    ``tolerance_minor_units`` maps a currency to the largest difference (in minor units,
    e.g. ``{"JPY": 1, "USD": 1}`` = 1 yen, 1 cent) still counted as agreement; exact when absent.
    """

    grace: timedelta = timedelta(hours=2)
    tolerance_minor_units: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.grace < timedelta(0):
            raise ValueError(f"grace must not be negative, got {self.grace}")
        for currency, units in self.tolerance_minor_units.items():
            if not is_iso_currency(currency):
                raise ValueError(f"tolerance for {currency!r}: not an ISO 4217 currency code")
            if isinstance(units, bool) or not isinstance(units, int) or units < 0:
                raise ValueError(f"tolerance for {currency}: must be a whole number of minor units ≥ 0")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}") from exc
        # Freeze a copy, so a caller mutating its dict cannot change a config in use.
        object.__setattr__(self, "tolerance_minor_units", MappingProxyType(dict(self.tolerance_minor_units)))


DEFAULT_CONFIG = ReconcileConfig()


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconciliation found.

    ``exceptions``: one row per (external_id, kind), columns :data:`EXCEPTION_COLUMNS`;
    ``shopify_value`` / ``erp_value`` are text (amounts at the currency's exponent, payment
    statuses, currency codes; None when the side has nothing), ``difference`` is the exact
    ``Decimal`` Shopify minus ERP for money kinds (a missing side counts as 0), else None.
    ``summary``: one row per day × currency, columns :data:`SUMMARY_COLUMNS`.
    ``pending``: Shopify orders inside the grace period (external_id, currency, order_created_at).
    """

    exceptions: pd.DataFrame
    summary: pd.DataFrame
    pending: pd.DataFrame
    matched: int
    compared: int
    shopify_orders: int
    erp_orders: int
    deleted_in_shopify: int

    @property
    def pending_sync(self) -> int:
        return len(self.pending)

    @property
    def counts(self) -> dict[str, int]:
        """Exceptions per kind (every kind present, zero when none)."""
        found = self.exceptions["kind"].value_counts()
        return {kind: int(found.get(kind, 0)) for kind in KINDS}


# ---------------------------------------------------------------------------------------
# Money: exact conversion between Decimal and integer minor units


def currency_exponents(currencies: Sequence[str] | np.ndarray) -> np.ndarray:
    """The minor-unit exponent of each currency code; ValueError naming an unknown code."""
    codes, uniques = pd.factorize(np.asarray(currencies, dtype=object), use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError("currency is missing on some rows")
    table = []
    for code in uniques:
        if not isinstance(code, str) or not is_iso_currency(code):
            raise ValueError(f"currency {code!r} is not an ISO 4217 code")
        table.append(exponent_of(code))
    return np.asarray(table, dtype=np.int64)[codes]


def _as_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool | float):
        # A float has already lost the exact amount: refuse it rather than guess.
        raise ValueError(f"money must be Decimal or a decimal string, not {type(value).__name__} {value!r}")
    if isinstance(value, int | np.integer):
        return Decimal(int(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal amount") from None
    raise ValueError(f"money must be Decimal or a decimal string, not {type(value).__name__}")


def to_minor_units(
    values: Sequence[Any] | np.ndarray | pd.Series, exponents: np.ndarray
) -> pd.arrays.IntegerArray:
    """Exact amounts as integers of the currency's minor unit (nullable Int64).

    ``exponents`` holds each row's currency exponent. Null stays null; an amount with more
    decimals than its currency has, a non-finite or a float amount raises ValueError.
    """
    if isinstance(values, pd.Series):
        values = values.to_numpy(dtype=object)
    obj = np.asarray(values, dtype=object)
    missing = np.asarray(pd.isna(obj), dtype=bool)
    units = np.zeros(len(obj), dtype=np.int64)
    present = ~missing
    if missing.any():
        # pandas calls Decimal('NaN') "missing"; an amount that is not a number is an error.
        for value in obj[missing]:
            if isinstance(value, Decimal):
                raise ValueError(f"amount {value!r} is not a finite number")
    if present.any():
        with localcontext(_EXACT):
            for exponent in np.unique(exponents[present]):
                rows = np.flatnonzero(present & (exponents == exponent))
                amounts = obj[rows]
                if pd.api.types.infer_dtype(amounts, skipna=False) != "decimal":
                    amounts = np.asarray([_as_decimal(v) for v in amounts], dtype=object)
                try:
                    scaled = amounts * Decimal(10) ** int(exponent)
                    whole = scaled.astype(np.int64)
                except (ArithmeticError, OverflowError, ValueError) as exc:
                    bad = _first_bad(amounts, int(exponent))
                    raise ValueError(f"amount {bad!r} cannot be held exactly in minor units") from exc
                inexact = scaled != whole
                if inexact.any():
                    bad = amounts[np.flatnonzero(inexact)[0]]
                    raise ValueError(f"amount {bad} has more decimals than its currency allows ({exponent})")
                out_of_range = (whole >= _MAX_UNITS) | (whole <= -_MAX_UNITS)
                if out_of_range.any():
                    raise ValueError(f"amount {amounts[np.flatnonzero(out_of_range)[0]]} is out of range")
                units[rows] = whole
    return pd.arrays.IntegerArray(units, missing)


def _first_bad(amounts: np.ndarray, exponent: int) -> Any:
    for amount in amounts:
        try:
            with localcontext(_EXACT):
                int((amount * Decimal(10) ** exponent).to_integral_exact())
        except (ArithmeticError, OverflowError, ValueError):
            return amount
    return None


def from_minor_units(
    units: Sequence[int] | np.ndarray, exponents: Sequence[int] | np.ndarray
) -> list[Decimal]:
    """Integers of minor units back to exact Decimals at the currency's exponent."""
    with localcontext(_EXACT):
        return [Decimal(int(u)).scaleb(-int(e)) for u, e in zip(units, exponents, strict=True)]


# ---------------------------------------------------------------------------------------
# Preparing one side: flat arrays, row i of each is the same order


_NAT = np.iinfo(np.int64).min  # how int64 nanoseconds spell NaT


@dataclass
class _Side:
    ids: pd.Series  # external_id as given
    currency: np.ndarray  # int codes into ``currency_names`` (re-coded to the shared table later)
    currency_names: np.ndarray
    money: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (int64 minor units, present)
    payment: np.ndarray  # int8: 0 null, then _PAYMENT_CODES in order
    created_ns: np.ndarray  # int64 ns since the epoch, UTC; _NAT when unknown
    day_ns: np.ndarray  # created_ns, or updated_ns when the source gives no creation time
    deleted: np.ndarray  # bool
    source_rank: np.ndarray | None  # ERP only: precedence of the row's source, 0 wins

    def __len__(self) -> int:
        return len(self.ids)


def _utc_ns(frame: pd.DataFrame, column: str, side: str) -> np.ndarray:
    """A datetime column as int64 ns since the epoch (UTC). Naive time is refused: it is ambiguous."""
    if column not in frame.columns:
        return np.full(len(frame), _NAT, dtype=np.int64)
    series = frame[column]
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        converted = series.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(series.dtype):
        raise ValueError(f"{side}.{column} holds naive timestamps (ambiguous); give aware UTC times")
    else:
        present = series.dropna()
        if any(not isinstance(v, datetime) or v.utcoffset() is None for v in present):
            raise ValueError(f"{side}.{column} holds naive or non-datetime values (ambiguous)")
        converted = pd.to_datetime(series, utc=True)
    return converted.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)


def _codes(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Factorized values (-1 for null) and the distinct values, as plain numpy."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object)


def _payment_codes(series: pd.Series, side: str) -> np.ndarray:
    codes, uniques = _codes(series)
    known = pd.Index(_PAYMENT_CODES).get_indexer(uniques)
    if (known < 0).any():
        raise ValueError(f"{side}.payment_status has unknown values {sorted(map(str, uniques[known < 0]))}")
    # Shift by one so that 0 means null.
    return np.append(known + 1, 0)[codes].astype(np.int8)


def _money(frame: pd.DataFrame, name: str, exponents: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    minor = f"{name}_minor"
    try:
        if minor in frame.columns:
            if not pd.api.types.is_integer_dtype(frame[minor].dtype):
                raise ValueError(f"{minor} must hold integers of minor units, not {frame[minor].dtype}")
            array = pd.array(frame[minor], dtype="Int64")
            units = array.to_numpy(dtype=np.int64, na_value=0)
            if ((units >= _MAX_UNITS) | (units <= -_MAX_UNITS)).any():
                raise ValueError("an amount is out of range")
        else:
            array = to_minor_units(frame[name], exponents)
            units = array.to_numpy(dtype=np.int64, na_value=0)
    except ValueError as exc:
        raise ValueError(f"{side}.{name}: {exc}") from None
    return units, ~np.asarray(array.isna(), dtype=bool)


def _prepare(frame: pd.DataFrame, side: str) -> _Side:
    required = ["external_id", "currency", "created_at", "payment_status"]
    required += [m for m in MONEY_COLUMNS if f"{m}_minor" not in frame.columns]
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise ValueError(f"{side} frame lacks columns {absent}")
    currency, currency_names = _codes(frame["currency"])
    if (currency < 0).any():
        raise ValueError(f"{side}.currency is missing on some rows")
    try:
        exponent = currency_exponents(currency_names)[currency]
    except ValueError as exc:
        raise ValueError(f"{side}: {exc}") from None
    money = {name: _money(frame, name, exponent, side) for name in MONEY_COLUMNS}
    if not money["total_amount"][1].all():
        raise ValueError(f"{side}.total_amount is required and missing on some rows")
    created_ns = _utc_ns(frame, "created_at", side)
    day_ns = np.where(created_ns == _NAT, _utc_ns(frame, "updated_at", side), created_ns)
    if (day_ns == _NAT).any():
        where = frame["external_id"].iloc[int(np.flatnonzero(day_ns == _NAT)[0])]
        raise ValueError(
            f"{side} order {where!r} has neither created_at nor updated_at: no day to count it on"
        )
    source_rank = None
    if "source" in frame.columns:
        source_rank = pd.Index(ERP_SOURCE_PRECEDENCE).get_indexer(frame["source"].astype(object))
    return _Side(
        ids=frame["external_id"].reset_index(drop=True),
        currency=currency,
        currency_names=currency_names,
        money=money,
        payment=_payment_codes(frame["payment_status"], side),
        created_ns=created_ns,
        day_ns=day_ns,
        deleted=(
            frame["deleted_at"].notna().to_numpy()
            if "deleted_at" in frame.columns
            else np.zeros(len(frame), dtype=bool)
        ),
        source_rank=source_rank,
    )


def _share_currencies(*sides: _Side) -> np.ndarray:
    """Re-code every side's currencies into one sorted table, which is returned."""
    names = np.array(sorted({str(n) for side in sides for n in side.currency_names}), dtype=object)
    for side in sides:
        side.currency = pd.Index(names).get_indexer(side.currency_names)[side.currency]
        side.currency_names = names
    return names


# ---------------------------------------------------------------------------------------
# Matching both sides on external_id


@dataclass
class _Match:
    paired_shop: np.ndarray  # Shopify row of each pair
    paired_erp: np.ndarray  # ERP row of each pair
    erp_only: np.ndarray  # ERP rows without Shopify order
    shop_unpaired: np.ndarray  # Shopify rows without ERP record
    erp_rows: np.ndarray  # ERP rows taking part (one per order, not deleted)


def _duplicates(ids: pd.Series, rows: np.ndarray) -> list[str]:
    return sorted({str(v) for v in ids.iloc[rows[:5]]})


def _match(shop: _Side, books: _Side) -> _Match:
    ids = pd.concat([shop.ids, books.ids], ignore_index=True)
    codes, uniques = pd.factorize(ids, use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError("some rows have no external_id")
    shop_codes, erp_codes = codes[: len(shop)], codes[len(shop) :]
    if len(shop) and np.bincount(shop_codes).max() > 1:
        twice = np.flatnonzero(pd.Series(shop_codes).duplicated().to_numpy())
        raise ValueError(f"shopify holds external_id more than once: {_duplicates(shop.ids, twice)}")

    erp_rows = np.arange(len(books))
    if len(books) and np.bincount(erp_codes).max() > 1:
        twice = np.flatnonzero(pd.Series(erp_codes).duplicated().to_numpy())
        rank = books.source_rank
        if rank is None or (rank < 0).any():
            raise ValueError(f"erp holds external_id more than once: {_duplicates(books.ids, twice)}")
        # One record per order: the best-ranked source's (Business Central before files).
        by_order = np.lexsort((rank, erp_codes))
        first = np.r_[True, erp_codes[by_order][1:] != erp_codes[by_order][:-1]]
        same_rank_twice = ~first & np.r_[False, rank[by_order][1:] == rank[by_order][:-1]]
        if same_rank_twice.any():
            rows = by_order[same_rank_twice]
            raise ValueError(f"erp holds external_id twice from one source: {_duplicates(books.ids, rows)}")
        erp_rows = np.sort(by_order[first])
    # A record deleted in the ERP is no longer in the books.
    erp_rows = erp_rows[~books.deleted[erp_rows]]

    where = np.full(len(uniques), -1, dtype=np.int64)
    where[shop_codes] = np.arange(len(shop))
    position = where[erp_codes[erp_rows]]
    has_erp = np.zeros(len(shop), dtype=bool)
    has_erp[position[position >= 0]] = True
    return _Match(
        paired_shop=position[position >= 0],
        paired_erp=erp_rows[position >= 0],
        erp_only=erp_rows[position < 0],
        shop_unpaired=np.flatnonzero(~has_erp),
        erp_rows=erp_rows,
    )


# ---------------------------------------------------------------------------------------
# Exception rows


class _Exceptions:
    """Collects exception rows kind by kind, then builds one frame."""

    def __init__(self, currencies: np.ndarray, exponents: np.ndarray) -> None:
        self.currencies = currencies
        self.exponents = exponents
        self.parts: list[dict[str, Any]] = []

    def money_text(self, units: np.ndarray, present: np.ndarray, currency: np.ndarray) -> list[str | None]:
        amounts = from_minor_units(units, self.exponents[currency])
        return [str(a) if p else None for a, p in zip(amounts, present, strict=True)]

    def add(
        self,
        kind: str,
        side: _Side,
        rows: np.ndarray,
        shopify_value: Sequence[str | None],
        erp_value: Sequence[str | None],
        difference: np.ndarray | None,
        day_ns: np.ndarray | None = None,
    ) -> None:
        currency = side.currency[rows]
        self.parts.append(
            {
                "external_id": side.ids.iloc[rows].to_numpy(dtype=object),
                "kind": np.full(len(rows), kind, dtype=object),
                "currency": self.currencies[currency],
                "order_created_at": side.created_ns[rows],
                "shopify_value": np.asarray(list(shopify_value), dtype=object).reshape(-1),
                "erp_value": np.asarray(list(erp_value), dtype=object).reshape(-1),
                "difference": np.asarray(
                    [None] * len(rows)
                    if difference is None
                    else from_minor_units(difference, self.exponents[currency]),
                    dtype=object,
                ).reshape(-1),
                "_day_ns": side.day_ns[rows] if day_ns is None else day_ns,
                "_currency": currency,
            }
        )

    def frame(self) -> pd.DataFrame:
        columns = {name: np.concatenate([p[name] for p in self.parts]) for name in self.parts[0]}
        columns["order_created_at"] = _timestamps(columns["order_created_at"])
        frame = pd.DataFrame(
            {name: pd.Series(values, dtype=_dtype(name)) for name, values in columns.items()}
        )
        rank = frame["kind"].map({k: i for i, k in enumerate(KINDS)})
        return (
            frame.assign(_rank=rank)
            .sort_values(["external_id", "_rank"], kind="stable")
            .drop(columns="_rank")
            .reset_index(drop=True)
        )


def _dtype(column: str) -> Any:
    if column == "order_created_at":
        return "datetime64[ns, UTC]"
    if column.startswith("_"):
        return np.int64
    return object


def _timestamps(ns: np.ndarray) -> pd.DatetimeIndex:
    """int64 ns (_NAT for none) back to aware UTC datetimes."""
    return pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC")


def _payment_text(codes: np.ndarray) -> list[str | None]:
    names = (None, *_PAYMENT_CODES)
    return [names[c] for c in codes]


# ---------------------------------------------------------------------------------------
# The comparison


@dataclass(frozen=True)
class Found:
    """What one chunk held: its exceptions (as in :class:`ReconcileResult`) and pending orders."""

    exceptions: pd.DataFrame
    pending: pd.DataFrame


class Reconciler:
    """Reconciles both sides fed in chunks, so that a store of any size fits in memory.

    A chunk is a pair of frames holding *every* record, on both sides, of the orders it holds:
    chunks split the orders by ``external_id``, so matching never crosses two chunks and
    comparing chunk by chunk finds exactly what comparing everything at once would.
    :meth:`add` compares a chunk and returns its exceptions; the counts and the per
    day × currency summary add up across chunks (integers, exact) until :meth:`summary`.
    """

    def __init__(self, *, now: datetime, config: ReconcileConfig = DEFAULT_CONFIG) -> None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        self.config = config
        self._cutoff_ns = pd.Timestamp(now).tz_convert("UTC").as_unit("ns").value - _ns(config.grace)
        self._summary = _SUMMARY_PART_EMPTY
        self.matched = 0  # orders on both sides without any exception
        self.compared = 0  # orders on both sides
        self.shopify_orders = 0  # Shopify orders counted (those deleted and absent from the ERP are not)
        self.erp_orders = 0  # ERP orders counted (one per order, deleted ones not)
        self.deleted_in_shopify = 0
        self.pending_sync = 0
        self.counts = dict.fromkeys(KINDS, 0)  # exceptions per kind

    def add(self, shopify: pd.DataFrame, erp: pd.DataFrame) -> Found:
        """Compare one chunk (see the module docstring for the rules); returns what it found."""
        shop = _prepare(shopify, "shopify")
        books = _prepare(erp, "erp")
        currencies = _share_currencies(shop, books)
        exponents = currency_exponents(currencies)
        match = _match(shop, books)
        found = _Exceptions(currencies, exponents)

        # Shopify orders without ERP record: deleted ones are out, recent ones pending, others missing.
        unpaired = match.shop_unpaired
        deleted_unpaired = unpaired[shop.deleted[unpaired]]
        unpaired = unpaired[~shop.deleted[unpaired]]
        recent = shop.created_ns[unpaired] > self._cutoff_ns
        pending, missing = unpaired[recent], unpaired[~recent]
        # The amount at stake is the whole order: the absent side counts as 0.
        total, present = shop.money["total_amount"]
        found.add(
            "missing_in_erp",
            shop,
            missing,
            found.money_text(total[missing], present[missing], shop.currency[missing]),
            [None] * len(missing),
            total[missing],
        )
        total, present = books.money["total_amount"]
        only = match.erp_only
        found.add(
            "missing_in_shopify",
            books,
            only,
            [None] * len(only),
            found.money_text(total[only], present[only], books.currency[only]),
            -total[only],
        )

        flagged = _compare_pairs(shop, books, match, found, self.config, currencies)
        exceptions = found.frame()

        # Both halves of a pair count on the Shopify order's day: ERP dates are often date-only
        # and would put the ERP half on another day.
        erp_day = books.day_ns.copy()
        erp_day[match.paired_erp] = shop.day_ns[match.paired_shop]
        shop_rows = np.setdiff1d(np.arange(len(shop)), deleted_unpaired, assume_unique=True)
        kind = exceptions["kind"].to_numpy()
        part = _summary_part(
            {
                "shopify": (
                    shop.day_ns[shop_rows],
                    shop.currency[shop_rows],
                    shop.money["total_amount"][0][shop_rows],
                ),
                "erp": (
                    erp_day[match.erp_rows],
                    books.currency[match.erp_rows],
                    books.money["total_amount"][0][match.erp_rows],
                ),
                "matched": _where(shop, match.paired_shop[~flagged]),
                "pending": _where(shop, pending),
                **{
                    name: (
                        exceptions["_day_ns"].to_numpy()[kind == name],
                        exceptions["_currency"].to_numpy()[kind == name],
                    )
                    for name in KINDS
                },
            },
            currencies,
            self.config.timezone,
        )
        self._summary = _add_summary_parts(self._summary, part)
        self.matched += int((~flagged).sum())
        self.compared += len(match.paired_shop)
        self.shopify_orders += len(shop_rows)
        self.erp_orders += len(match.erp_rows)
        self.deleted_in_shopify += len(deleted_unpaired)
        self.pending_sync += len(pending)
        for name in KINDS:
            self.counts[name] += int((kind == name).sum())
        return Found(
            exceptions=exceptions.drop(columns=["_day_ns", "_currency"]),
            pending=pd.DataFrame(
                {
                    "external_id": shop.ids.iloc[pending].to_numpy(dtype=object),
                    "currency": currencies[shop.currency[pending]],
                    "order_created_at": _timestamps(shop.created_ns[pending]),
                }
            ),
        )

    def summary(self) -> pd.DataFrame:
        """The summary per day × currency of every chunk so far (columns :data:`SUMMARY_COLUMNS`)."""
        return _summary_frame(self._summary)


def reconcile(
    shopify: pd.DataFrame,
    erp: pd.DataFrame,
    *,
    now: datetime,
    config: ReconcileConfig = DEFAULT_CONFIG,
) -> ReconcileResult:
    """Compare the Shopify side with the ERP side (see the module docstring for the rules)."""
    run = Reconciler(now=now, config=config)
    found = run.add(shopify, erp)
    return ReconcileResult(
        exceptions=found.exceptions,
        summary=run.summary(),
        pending=found.pending,
        matched=run.matched,
        compared=run.compared,
        shopify_orders=run.shopify_orders,
        erp_orders=run.erp_orders,
        deleted_in_shopify=run.deleted_in_shopify,
    )


def _where(side: _Side, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return side.day_ns[rows], side.currency[rows]


def _compare_pairs(
    shop: _Side,
    books: _Side,
    match: _Match,
    found: _Exceptions,
    config: ReconcileConfig,
    currencies: np.ndarray,
) -> np.ndarray:
    """Exceptions of orders on both sides; returns which pairs have at least one."""
    s, e = match.paired_shop, match.paired_erp
    flagged = np.zeros(len(s), dtype=bool)
    currency = shop.currency[s]
    same_currency = currency == books.currency[e]
    tolerance = np.array([config.tolerance_minor_units.get(c, 0) for c in currencies], dtype=np.int64)[
        currency
    ]
    for kind, name in (
        ("total_mismatch", "total_amount"),
        ("tax_mismatch", "tax_amount"),
        ("refund_mismatch", "refunded_amount"),
    ):
        (left, left_present), (right, right_present) = shop.money[name], books.money[name]
        left, left_present, right, right_present = left[s], left_present[s], right[e], right_present[e]
        # A side that does not report the amount (null) is not compared on it.
        difference = left - right
        rows = np.flatnonzero(same_currency & left_present & right_present & (np.abs(difference) > tolerance))
        flagged[rows] = True
        found.add(
            kind,
            shop,
            s[rows],
            found.money_text(left[rows], left_present[rows], currency[rows]),
            found.money_text(right[rows], right_present[rows], currency[rows]),
            difference[rows],
        )

    # Authorized in Shopify with nothing paid yet in the ERP is how an order looks before capture.
    left, right = shop.payment[s], books.payment[e]
    rows = np.flatnonzero((left != right) & ~((left == _AUTHORIZED) & (right == _NULL)))
    flagged[rows] = True
    found.add(
        "payment_status_mismatch", shop, s[rows], _payment_text(left[rows]), _payment_text(right[rows]), None
    )

    rows = np.flatnonzero(~same_currency)
    flagged[rows] = True
    found.add(
        "currency_mismatch",
        shop,
        s[rows],
        list(currencies[currency[rows]]),
        list(currencies[books.currency[e[rows]]]),
        None,
    )
    return flagged


def _ns(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


# ---------------------------------------------------------------------------------------
# Summary per day × currency


def _local_days(ns: np.ndarray, timezone: str) -> np.ndarray:
    """Day number (days since 1970-01-01) of each instant, in ``timezone``."""
    if timezone == "UTC":
        return ns // _DAY_NS
    local = pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC").tz_convert(timezone)
    return local.tz_localize(None).asi8 // _DAY_NS


def _exact_sums(groups: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Exact integer sums per group: int64 when no sum can overflow, else Python ints (object)."""
    if len(values) == 0:
        return np.zeros(size, dtype=np.int64)
    if int(np.abs(values).max()) * len(values) < 2**63:
        sums = np.zeros(size, dtype=np.int64)
        np.add.at(sums, groups, values)
        return sums
    exact = [0] * size
    for group, value in zip(groups.tolist(), values.tolist(), strict=True):
        exact[group] += value
    return np.array(exact, dtype=object)


# A summary in the making: per (day number, currency) the counts and the totals in minor units
# (int64 while no total can overflow it, Python ints beyond: exact however many chunks add up).
_SUMMARY_COUNTS: tuple[str, ...] = ("shopify_orders", "erp_orders", "matched", "pending_sync", *KINDS)
_SUMMARY_PART_EMPTY = pd.DataFrame(
    {
        "day": pd.Series(dtype=np.int64),
        "currency": pd.Series(dtype=object),
        **{name: pd.Series(dtype=np.int64) for name in _SUMMARY_COUNTS},
        "shopify_total": pd.Series(dtype=np.int64),
        "erp_total": pd.Series(dtype=np.int64),
    }
)
_COUNTED_AS = {"shopify": "shopify_orders", "erp": "erp_orders", "pending": "pending_sync"}


def _summary_part(
    parts: dict[str, tuple[np.ndarray, ...]], currencies: np.ndarray, timezone: str
) -> pd.DataFrame:
    """Counts and totals per day × currency of one chunk (``parts``: name -> day_ns, currency[, amounts])."""
    width = max(len(currencies), 1)
    keys = [_local_days(part[0], timezone) * width + part[1] for part in parts.values()]
    group, unique = pd.factorize(np.concatenate(keys), sort=True)
    size = len(unique)
    bounds = np.cumsum([0, *(len(k) for k in keys)])
    groups = {name: group[bounds[i] : bounds[i + 1]] for i, name in enumerate(parts)}
    frame = pd.DataFrame(
        {
            "day": unique // width,
            "currency": currencies[unique % width] if size else np.zeros(0, dtype=object),
            **{
                _COUNTED_AS.get(name, name): np.bincount(groups[name], minlength=size).astype(np.int64)
                for name in parts
            },
            "shopify_total": _exact_sums(groups["shopify"], parts["shopify"][2], size),
            "erp_total": _exact_sums(groups["erp"], parts["erp"][2], size),
        }
    )
    return frame.loc[:, list(_SUMMARY_PART_EMPTY.columns)]


def _add_summary_parts(total: pd.DataFrame, part: pd.DataFrame) -> pd.DataFrame:
    if total.empty:
        return part
    both = pd.concat([total, part], ignore_index=True)
    for name in ("shopify_total", "erp_total"):
        column = both[name]
        if column.dtype != object and max(-int(column.min()), int(column.max())) * len(column) >= 2**63:
            both[name] = column.astype(object)  # Python ints: exact however large the totals grow
    return both.groupby(["day", "currency"], sort=True, as_index=False).sum()


def _summary_frame(part: pd.DataFrame) -> pd.DataFrame:
    """The summary rows (SUMMARY_COLUMNS) of a summary in the making: Decimal totals, dates."""
    currency = part["currency"].to_numpy(dtype=object)
    exponent = currency_exponents(currency) if len(part) else np.zeros(0, dtype=np.int64)
    shopify_sum, erp_sum = part["shopify_total"].tolist(), part["erp_total"].tolist()
    frame = pd.DataFrame(
        {
            "day": [date(1970, 1, 1) + timedelta(days=int(d)) for d in part["day"]],
            "currency": pd.Series(currency, dtype=object),
            **{name: part[name].to_numpy(dtype=np.int64) for name in _SUMMARY_COUNTS},
            "shopify_total": pd.Series(from_minor_units(shopify_sum, exponent), dtype=object),
            "erp_total": pd.Series(from_minor_units(erp_sum, exponent), dtype=object),
            "difference": pd.Series(
                from_minor_units([a - b for a, b in zip(shopify_sum, erp_sum, strict=True)], exponent),
                dtype=object,
            ),
        }
    )
    return frame.loc[:, list(SUMMARY_COLUMNS)]
