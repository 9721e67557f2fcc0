"""Benchmark of orders_etl.reconcile: N orders per side with planted differences.

    PYTHONPATH=. python bench/bench_reconcile.py [--n 900000] [--seed 7] [--decimal]

Both sides are built the way the store loader hands them to ``reconcile`` (money as integer
minor units, aware UTC timestamps) in four currencies of exponents 0, 2 and 3. Planted:
0.5 % of orders missing in the ERP, 0.5 % ERP-only orders, 2 % amount differences (total, tax
or refund, from one minor unit up) and 3 % payment-status differences; besides, 10 % of the
Shopify-authorized orders have no ERP payment yet (normal, must not be reported) and 5 % of
ERP rows report no tax (not compared). ``--decimal`` passes money as Decimal objects instead
(what ``OrderStore.read_table`` returns), to time the conversion too.

Timed: the ``reconcile()`` call only (``compare_s``); peak RSS is the whole process's. Then
every exception is checked against the plan. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from orders_etl.reconcile import from_minor_units, reconcile

CURRENCIES = np.array(["USD", "EUR", "JPY", "KWD"], dtype=object)
EXPONENTS = np.array([2, 2, 0, 3])
PAYMENTS = np.array([None, "authorized", "captured", "refunded", "voided"], dtype=object)
START = pd.Timestamp("2024-01-01", tz="UTC")
NOW = datetime(2026, 11, 27, tzinfo=UTC)


def _side(ids: np.ndarray, currency: np.ndarray, created: np.ndarray, money: dict, payment: np.ndarray):
    frame = pd.DataFrame(
        {
            "external_id": ids,
            "currency": currency,
            "created_at": pd.DatetimeIndex(created).tz_localize("UTC"),
            "updated_at": pd.DatetimeIndex(created).tz_localize("UTC"),
            "payment_status": payment,
        }
    )
    for name, (units, present) in money.items():
        frame[f"{name}_minor"] = pd.arrays.IntegerArray(units, ~present)
    return frame


def build(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, set[tuple[str, str]]]:
    rng = np.random.default_rng(seed)
    ids = np.array([str(6_000_000_000_000 + i) for i in range(n)], dtype=object)
    cur = rng.integers(0, len(CURRENCIES), n)
    exponent = EXPONENTS[cur]
    scale = 10**exponent
    total = rng.integers(100, 250_000, n) * scale // 100
    tax = total * 19 // 119
    refunded = np.where(rng.random(n) < 0.1, total // 3, 0)
    pay = rng.choice([0, 1, 2, 2, 2, 3, 4], n)
    created = (START.value + rng.integers(0, 1_000 * 86_400, n) * 10**9).view("datetime64[ns]")
    all_present = np.ones(n, dtype=bool)

    order = rng.permutation(n)
    cut = np.cumsum([int(n * 0.005), int(n * 0.02), int(n * 0.03)])
    missing_in_erp, amount_diff, status_diff = np.split(order[: cut[-1]], cut[:-1])
    planted = {(ids[i], "missing_in_erp") for i in missing_in_erp}

    erp_total, erp_tax, erp_refunded, erp_pay = total.copy(), tax.copy(), refunded.copy(), pay.copy()
    erp_tax_present = rng.random(n) >= 0.05
    which = rng.integers(0, 3, len(amount_diff))
    delta = rng.integers(1, 1_000, len(amount_diff)) * rng.choice([-1, 1], len(amount_diff))
    for column, kind, k in ((erp_total, "total_mismatch", 0), (erp_tax, "tax_mismatch", 1)):
        rows = amount_diff[which == k]
        changed = column[rows] + delta[which == k]
        # Never below zero: a negative delta larger than the amount is applied upwards.
        column[rows] = np.where(changed >= 0, changed, column[rows] - delta[which == k])
        planted |= {(ids[i], kind) for i in rows}
    rows = amount_diff[which == 2]
    erp_refunded[rows] = refunded[rows] + np.abs(delta[which == 2])
    planted |= {(ids[i], "refund_mismatch") for i in rows}
    erp_tax_present[amount_diff[which == 1]] = True
    # (code + 1) % 5 is always a real disagreement, never "authorized vs nothing paid yet".
    erp_pay[status_diff] = (pay[status_diff] + 1) % 5
    planted |= {(ids[i], "payment_status_mismatch") for i in status_diff}
    untouched = order[cut[-1] :]
    not_yet_paid = untouched[(pay[untouched] == 1) & (rng.random(len(untouched)) < 0.1)]
    erp_pay[not_yet_paid] = 0

    keep = np.ones(n, dtype=bool)
    keep[missing_in_erp] = False
    extra = int(n * 0.005)
    extra_ids = np.array([f"SO-{100_000_000 + i}" for i in range(extra)], dtype=object)
    planted |= {(i, "missing_in_shopify") for i in extra_ids}
    extra_cur = rng.integers(0, len(CURRENCIES), extra)
    extra_total = rng.integers(100, 250_000, extra) * 10 ** EXPONENTS[extra_cur] // 100

    def erp_column(values: np.ndarray, extra_values: np.ndarray) -> np.ndarray:
        return np.concatenate([values[keep], extra_values])

    shopify = _side(
        ids,
        CURRENCIES[cur],
        created,
        {
            "total_amount": (total, all_present),
            "tax_amount": (tax, all_present),
            "refunded_amount": (refunded, all_present),
        },
        PAYMENTS[pay],
    )
    m = keep.sum() + extra
    erp = _side(
        erp_column(ids, extra_ids),
        erp_column(CURRENCIES[cur], CURRENCIES[extra_cur]),
        erp_column(created, created[:extra]),
        {
            "total_amount": (erp_column(erp_total, extra_total), np.ones(m, dtype=bool)),
            "tax_amount": (
                erp_column(erp_tax, extra_total * 19 // 119),
                erp_column(erp_tax_present, np.ones(extra, bool)),
            ),
            "refunded_amount": (erp_column(erp_refunded, np.zeros(extra, np.int64)), np.ones(m, dtype=bool)),
        },
        PAYMENTS[erp_column(erp_pay, np.full(extra, 2))],
    )
    erp["source"] = "business_central"
    return shopify, erp, planted


def as_decimal(frame: pd.DataFrame) -> pd.DataFrame:
    exponents = frame["currency"].map({"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3}).to_numpy()
    for name in ("total_amount", "tax_amount", "refunded_amount"):
        minor = frame.pop(f"{name}_minor")
        values = from_minor_units(minor.to_numpy(dtype=np.int64, na_value=0), exponents)
        frame[name] = pd.Series(
            [None if m else v for v, m in zip(values, minor.isna(), strict=True)], dtype=object
        )
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=900_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--decimal", action="store_true", help="money as Decimal objects")
    args = parser.parse_args()

    t0 = time.perf_counter()
    shopify, erp, planted = build(args.n, args.seed)
    if args.decimal:
        shopify, erp = as_decimal(shopify), as_decimal(erp)
    print(
        f"built {len(shopify):,} Shopify and {len(erp):,} ERP orders in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )

    t0 = time.perf_counter()
    result = reconcile(shopify, erp, now=NOW)
    compare_s = time.perf_counter() - t0

    found = set(zip(result.exceptions["external_id"], result.exceptions["kind"], strict=True))
    missed = planted - found
    false_positives = found - planted
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"compare {compare_s:.2f} s, {len(found):,} exceptions, {result.matched:,} matched, "
        f"missed {len(missed)}, false {len(false_positives)}, summary rows {len(result.summary)}",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "n": args.n,
                "compare_s": round(compare_s, 3),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "planted": len(planted),
                "found": len(planted & found),
                "false_positives": len(false_positives),
            }
        )
    )
    if missed or false_positives:
        sys.exit(1)


if __name__ == "__main__":
    main()
