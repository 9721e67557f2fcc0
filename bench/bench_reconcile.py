"""Benchmark of the reconciliation: N orders per side with planted differences.

    PYTHONPATH=. python bench/bench_reconcile.py [--n 900000] [--seed 7] [--decimal]
    PYTHONPATH=. python bench/bench_reconcile.py --store [--sizes 100000,1000000]
        [--stores sqlite,postgresql] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Both modes build the same plan: N Shopify orders in four currencies of exponents 0, 2 and 3,
and an ERP side from it with, planted: 0.5 % of orders missing in the ERP, 0.5 % ERP-only
orders, 2 % amount differences (total, tax or refund, from one minor unit up) and 3 %
payment-status differences. Besides (none of these may be reported): 10 % of the
Shopify-authorized orders have no ERP payment yet, 5 % of ERP rows report no tax (not
compared); with ``--store`` also 1 % of the orders are in a flat-file export too, with a
wrong total (Business Central wins), 0.1 % of the orders missing in the ERP were deleted in
Shopify, and 0.1 % are younger than the grace period (pending sync).

By default it times the pure ``reconcile()`` call on in-memory frames (money as integer minor
units, or ``--decimal`` as Decimal objects); peak RSS is the whole process's.

``--store`` fills, per size and store, an order store through ``OrderStore.upsert_frames``
(frames of canonical text, built column-wise), then times the whole ``run_reconciliation``
(load from the store, compare, ledger and summary written) in a fresh process: ``cold``
(empty ledger) and ``rerun`` (the ledger already holds the same exceptions: nothing new,
nothing resolved). Each process reports its peak RSS, and a process that only imports and
opens the store gives the baseline, so ``recon_rss_mb`` is what the run itself adds. Then the
ledger's open exceptions are checked against the plan, as are the outcome's counts.

Every exception is checked against the plan (nothing missed, nothing extra); the last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orders_etl.reconcile import from_minor_units, reconcile

CURRENCIES = np.array(["USD", "EUR", "JPY", "KWD"], dtype=object)
EXPONENTS = np.array([2, 2, 0, 3])
PAYMENTS = np.array([None, "authorized", "captured", "refunded", "voided"], dtype=object)
START = pd.Timestamp("2024-01-01", tz="UTC")
NOW = datetime(2026, 11, 27, tzinfo=UTC)
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FILL_CHUNK = 50_000


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent into a forked and exec'd child, which would charge the filler's memory to the run."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------
# The plan: both sides as arrays, and what must be found


@dataclass
class Side:
    ids: np.ndarray  # external_id (str objects)
    numbers: np.ndarray  # the order number the source shows
    currency: np.ndarray  # index into CURRENCIES
    total: np.ndarray  # minor units
    tax: np.ndarray
    tax_present: np.ndarray
    refunded: np.ndarray
    payment: np.ndarray  # index into PAYMENTS
    created_s: np.ndarray  # seconds since the epoch
    deleted: np.ndarray  # bool

    def take(self, rows: np.ndarray) -> Side:
        return Side(**{name: value[rows] for name, value in self.__dict__.items()})


@dataclass
class Plan:
    shopify: Side
    business_central: Side
    erp_files: Side  # a flat-file export of some orders too: Business Central's record wins
    planted: set[tuple[str, str]]
    pending: int  # Shopify orders missing in the ERP but younger than the grace period
    matched: int


def build_plan(n: int, seed: int, extras: bool) -> Plan:
    """The sides and the planted differences; ``extras`` adds flat-file duplicates, Shopify
    deletions and orders inside the grace period (the store mode's additions)."""
    rng = np.random.default_rng(seed)
    ids = np.array([str(6_000_000_000_000 + i) for i in range(n)], dtype=object)
    cur = rng.integers(0, len(CURRENCIES), n)
    scale = 10 ** EXPONENTS[cur]
    total = rng.integers(100, 250_000, n) * scale // 100
    tax = total * 19 // 119
    refunded = np.where(rng.random(n) < 0.1, total // 3, 0)
    pay = rng.choice([0, 1, 2, 2, 2, 3, 4], n)
    created = START.value // 10**9 + rng.integers(0, 1_000 * 86_400, n)
    all_present = np.ones(n, dtype=bool)

    order = rng.permutation(n)
    cut = np.cumsum([int(n * 0.005), int(n * 0.02), int(n * 0.03)])
    missing_in_erp, amount_diff, status_diff = np.split(order[: cut[-1]], cut[:-1])
    deleted = np.zeros(n, dtype=bool)
    pending = np.zeros(0, dtype=np.int64)
    if extras:
        # Of the orders missing in the ERP: some deleted in Shopify, some younger than the grace.
        few = max(1, n // 1000)
        deleted[missing_in_erp[:few]] = True
        pending = missing_in_erp[few : 2 * few]
        created[pending] = int(NOW.timestamp()) - 30 * 60
        missing_in_erp = missing_in_erp[2 * few :]
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
    keep[pending] = False
    keep[deleted] = False
    extra = int(n * 0.005)
    extra_ids = np.array([f"SO-{100_000_000 + i}" for i in range(extra)], dtype=object)
    planted |= {(i, "missing_in_shopify") for i in extra_ids}
    extra_cur = rng.integers(0, len(CURRENCIES), extra)
    extra_total = rng.integers(100, 250_000, extra) * 10 ** EXPONENTS[extra_cur] // 100

    def erp(values: np.ndarray, extra_values: np.ndarray) -> np.ndarray:
        return np.concatenate([values[keep], extra_values])

    def numbers(prefix: str, start: int) -> np.ndarray:
        """Order numbers: only the store shows them (in memory, the ids will do)."""
        return np.array([f"{prefix}{start + i}" for i in range(n)], dtype=object) if extras else ids

    shopify = Side(
        ids=ids,
        numbers=numbers("#", 1000),
        currency=cur,
        total=total,
        tax=tax,
        tax_present=all_present,
        refunded=refunded,
        payment=pay,
        created_s=created,
        deleted=deleted,
    )
    m = int(keep.sum()) + extra
    business_central = Side(
        ids=erp(ids, extra_ids),
        numbers=erp(numbers("BC-", 0), extra_ids),
        currency=erp(cur, extra_cur),
        total=erp(erp_total, extra_total),
        tax=erp(erp_tax, extra_total * 19 // 119),
        tax_present=erp(erp_tax_present, np.ones(extra, dtype=bool)),
        refunded=erp(erp_refunded, np.zeros(extra, dtype=np.int64)),
        payment=erp(erp_pay, np.full(extra, 2)),
        created_s=erp(created, created[:extra]),
        deleted=np.zeros(m, dtype=bool),
    )
    # One order in a hundred of the agreeing ones is in a flat-file export too, its total off
    # by one minor unit: Business Central's record wins, so nothing is reported.
    files_rows = np.flatnonzero(np.isin(business_central.ids, ids[untouched[: n // 100 if extras else 0]]))
    erp_files = business_central.take(files_rows)
    erp_files.numbers = np.array([f"FILE-{i}" for i in range(len(files_rows))], dtype=object)
    erp_files.total = erp_files.total + 1
    unpaired = len(missing_in_erp) + len(pending) + int(deleted.sum())
    matched = n - unpaired - len(amount_diff) - len(status_diff)
    return Plan(shopify, business_central, erp_files, planted, len(pending), matched)


# ---------------------------------------------------------------------------------------
# Mode "compare": the pure reconcile() over in-memory frames


def _frame(side: Side) -> pd.DataFrame:
    created = pd.DatetimeIndex((side.created_s * 10**9).view("datetime64[ns]")).tz_localize("UTC")
    frame = pd.DataFrame(
        {
            "external_id": side.ids,
            "currency": CURRENCIES[side.currency],
            "created_at": created,
            "updated_at": created,
            "payment_status": PAYMENTS[side.payment],
        }
    )
    present = np.ones(len(side.ids), dtype=bool)
    for name, units, there in (
        ("total_amount", side.total, present),
        ("tax_amount", side.tax, side.tax_present),
        ("refunded_amount", side.refunded, present),
    ):
        frame[f"{name}_minor"] = pd.arrays.IntegerArray(units, ~there)
    return frame


def as_decimal(frame: pd.DataFrame) -> pd.DataFrame:
    exponents = frame["currency"].map({"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3}).to_numpy()
    for name in ("total_amount", "tax_amount", "refunded_amount"):
        minor = frame.pop(f"{name}_minor")
        values = from_minor_units(minor.to_numpy(dtype=np.int64, na_value=0), exponents)
        frame[name] = pd.Series(
            [None if m else v for v, m in zip(values, minor.isna(), strict=True)], dtype=object
        )
    return frame


def compare_mode(args: argparse.Namespace) -> bool:
    t0 = time.perf_counter()
    plan = build_plan(args.n, args.seed, extras=False)
    shopify, erp = _frame(plan.shopify), _frame(plan.business_central)
    erp["source"] = "business_central"
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
    missed = plan.planted - found
    false_positives = found - plan.planted
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
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "planted": len(plan.planted),
                "found": len(plan.planted & found),
                "false_positives": len(false_positives),
            }
        )
    )
    return not missed and not false_positives


# ---------------------------------------------------------------------------------------
# Mode "store": fill a store, then time run_reconciliation in fresh processes


def _money_text(minor: np.ndarray, exponents: np.ndarray):  # -> pa.Array
    """Minor units as canonical decimal text at each row's exponent (``1234`` -> ``12.34``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    scale = 10**exponents
    units = pc.cast(pa.array(minor // scale), pa.string())
    # minor % scale + scale has exactly exponent + 1 digits; dropping the leading 1 pads with zeros.
    fraction = pc.utf8_slice_codeunits(pc.cast(pa.array(minor % scale + scale), pa.string()), 1)
    return pc.if_else(pa.array(exponents == 0), units, pc.binary_join_element_wise(units, fraction, "."))


def _time_text(seconds: np.ndarray):  # -> pa.Array
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(seconds.astype("datetime64[s]").astype("datetime64[us]")), pa.string())


def order_frames(side: Side, deleted_at_s: int) -> Iterator:  # Iterator[pa.Table]
    """The side as frames of canonical text (orders_etl.store.frames), FILL_CHUNK orders each."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for start in range(0, len(side.ids), FILL_CHUNK):
        part = side.take(np.arange(start, min(start + FILL_CHUNK, len(side.ids))))
        exponents = EXPONENTS[part.currency]
        nulls = pa.nulls(len(part.ids), pa.string())
        payment = pa.array(PAYMENTS[part.payment].tolist(), pa.string())
        deleted = pa.array(part.deleted)
        yield pa.table(
            {
                "external_id": pa.array(part.ids.tolist(), pa.string()),
                "number": pa.array(part.numbers.tolist(), pa.string()),
                "created_at": _time_text(part.created_s),
                "currency": pa.array(CURRENCIES[part.currency].tolist(), pa.string()),
                "total_amount": _money_text(part.total, exponents),
                "tax_amount": pc.if_else(pa.array(part.tax_present), _money_text(part.tax, exponents), nulls),
                "payment_status": payment,
                "status": pa.array(np.where(part.payment == 0, "pending", "shipped").tolist(), pa.string()),
                "shipping_method": nulls,
                "tracking_number": nulls,
                "customer_id": nulls,
                "refunded_amount": _money_text(part.refunded, exponents),
                "payment_status_detail": payment,
                "updated_at": _time_text(part.created_s + 60),
                "deleted_at": pc.if_else(deleted, _time_text(np.full(len(part.ids), deleted_at_s)), nulls),
            }
        )


def fill(url: str, plan: Plan) -> float:
    from orders_etl.store import OrderStore

    started = time.perf_counter()
    store = OrderStore.from_url(url)
    deleted_at = int(NOW.timestamp()) - 86_400
    for source, side in (
        ("shopify", plan.shopify),
        ("business_central", plan.business_central),
        ("erp_files", plan.erp_files),
    ):
        store.upsert_frames(source, order_frames(side, deleted_at))
    store.dispose()
    return time.perf_counter() - started


def child_run(args: argparse.Namespace) -> None:
    """One run_reconciliation in this fresh process (or none: the baseline); prints JSON."""
    from orders_etl.store import OrderStore
    from orders_etl.store.reconciliation import run_reconciliation

    store = OrderStore.from_url(args.child)
    figures: dict = {"baseline_rss_mb": round(peak_rss_mb(), 1)}
    if not args.baseline:
        started, cpu = time.perf_counter(), time.process_time()
        outcome = run_reconciliation(store, now=datetime.fromisoformat(args.now))
        figures |= {
            "wall_s": round(time.perf_counter() - started, 3),
            # This process's CPU time, all threads (the database server's not included): on a
            # shared machine, the figure that other loads do not inflate.
            "cpu_s": round(time.process_time() - cpu, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            **{key: outcome.as_dict()[key] for key in ("open", "new", "resolved", "reopened", "matched")},
            **{key: outcome.as_dict()[key] for key in ("pending_sync", "shopify_orders", "erp_orders")},
            "counts": outcome.counts,
            "worst": len(outcome.worst),
        }
    store.dispose()
    print(json.dumps(figures))


def _in_child(url: str, *extra: str) -> dict:
    command = [sys.executable, __file__, "--child", url, "--now", NOW.isoformat(), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ)
    if done.returncode:
        raise RuntimeError(f"reconciliation run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def verify(url: str, plan: Plan, cold: dict, rerun: dict, n: int) -> bool:
    import sqlalchemy as sa

    from orders_etl.store import OrderStore

    store = OrderStore.from_url(url)
    with store.engine.connect() as conn:
        open_rows = set(
            conn.execute(
                sa.text("SELECT external_id, kind FROM reconciliation_exceptions WHERE resolved_at IS NULL")
            ).all()
        )
        resolved = conn.execute(
            sa.text("SELECT COUNT(*) FROM reconciliation_exceptions WHERE resolved_at IS NOT NULL")
        ).scalar_one()
    store.dispose()
    planted = len(plan.planted)

    def lifecycle(run: dict) -> tuple[int, int, int, int]:
        return run["open"], run["new"], run["resolved"], run["reopened"]

    checks = {
        "ledger = plan": open_rows == plan.planted and resolved == 0,
        "cold outcome": lifecycle(cold) == (planted, planted, 0, 0),
        "rerun outcome": lifecycle(rerun) == (planted, 0, 0, 0),
        "matched": cold["matched"] == rerun["matched"] == plan.matched,
        "pending": cold["pending_sync"] == plan.pending,
        "orders": cold["shopify_orders"] == n - int(plan.shopify.deleted.sum())
        and cold["erp_orders"] == len(plan.business_central.ids),
    }
    failed = [name for name, ok in checks.items() if not ok]
    print(f"  verify: {'OK' if not failed else 'FAILED ' + ', '.join(failed)}", flush=True)
    return not failed


def bench_store(url: str, n: int, seed: int) -> tuple[dict, bool]:
    plan = build_plan(n, seed, extras=True)
    fill_s = fill(url, plan)
    print(f"  filled {n:,} + {len(plan.business_central.ids):,} orders in {fill_s:.1f} s", flush=True)
    baseline = _in_child(url, "--baseline")
    cold = _in_child(url)
    rerun = _in_child(url)
    for name, run in (("cold", cold), ("rerun", rerun)):
        added = run["peak_rss_mb"] - baseline["baseline_rss_mb"]
        print(
            f"  {name:<5} {run['wall_s']:6.2f} s (CPU {run['cpu_s']:.2f} s)  "
            f"peak RSS {run['peak_rss_mb']:6.0f} MB (+{added:.0f} MB over the baseline)  "
            f"open {run['open']:,} new {run['new']:,} resolved {run['resolved']} "
            f"reopened {run['reopened']} matched {run['matched']:,}",
            flush=True,
        )
    ok = verify(url, plan, cold, rerun, n)
    figures = {
        "cold_s": cold["wall_s"],
        "rerun_s": rerun["wall_s"],
        "cold_cpu_s": cold["cpu_s"],
        "rerun_cpu_s": rerun["cpu_s"],
        "peak_rss_mb": max(cold["peak_rss_mb"], rerun["peak_rss_mb"]),
        "recon_rss_mb": round(max(cold["peak_rss_mb"], rerun["peak_rss_mb"]) - baseline["baseline_rss_mb"]),
    }
    return figures, ok


def store_mode(args: argparse.Namespace) -> bool:
    import sqlalchemy as sa

    results: dict = {}
    ok = True
    for n in (int(size) for size in args.sizes.split(",")):
        for kind in args.stores.split(","):
            print(f"{kind}, {n:,} orders per side", flush=True)
            if kind == "sqlite":
                with tempfile.TemporaryDirectory() as tmp:
                    figures, good = bench_store(f"sqlite:///{tmp}/bench.db", n, args.seed)
            else:
                schema = f"bench_{uuid.uuid4().hex[:8]}"
                admin = sa.create_engine(args.pg_url)
                with admin.begin() as conn:
                    conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
                try:
                    url = sa.make_url(args.pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
                    figures, good = bench_store(url.render_as_string(hide_password=False), n, args.seed)
                finally:
                    with admin.begin() as conn:
                        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
                    admin.dispose()
            results.setdefault(kind, {})[str(n)] = figures
            ok = ok and good
    print(json.dumps({**results, "verified": ok}))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=900_000, help="compare: orders per side")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--decimal", action="store_true", help="compare: money as Decimal objects")
    parser.add_argument("--store", action="store_true", help="fill stores, time run_reconciliation")
    parser.add_argument("--sizes", default="100000,1000000", help="store: orders per side")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    # One timed run in a fresh process (what --store starts for each run).
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_run(args)
        return
    ok = store_mode(args) if args.store else compare_mode(args)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
