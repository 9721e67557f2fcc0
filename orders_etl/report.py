"""The reconciliation report (``orders-etl report``): summary and open exceptions with aging.

Reads what the last reconciliation run wrote (``reconciliation_summary`` and the open rows
of ``reconciliation_exceptions``); it does not reconcile. Three renderings:

* ``table``: for a terminal: totals per currency, open exceptions by kind × aging bucket, and
  the list of open exceptions;
* ``csv``: the open exceptions, one row each (for a spreadsheet);
* ``json``: everything, daily rows included; amounts are exact decimal strings.

``since`` keeps the days (and the orders) created on or after that date.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

import pandas as pd

from orders_etl.reconcile import KINDS
from orders_etl.store import OrderStore
from orders_etl.store.reconciliation import AGING_BUCKETS, open_exceptions
from orders_etl.store.schema import reconciliation_summary

Format = Literal["table", "csv", "json"]
FORMATS: tuple[str, ...] = ("table", "csv", "json")
EXCEPTION_FIELDS: tuple[str, ...] = (
    "external_id",
    "number",
    "kind",
    "currency",
    "order_created_at",
    "shopify_value",
    "erp_value",
    "difference",
    "first_detected_at",
    "age_days",
    "aging",
)
_COUNTS = ("shopify_orders", "erp_orders", "matched", "pending_sync", *KINDS)
_AMOUNTS = ("shopify_total", "erp_total", "difference")


def render_report(
    store: OrderStore,
    *,
    fmt: Format = "table",
    since: date | None = None,
    now: datetime | None = None,
) -> str:
    """The report as text in ``fmt``; ``now`` (default: the current time) dates the ages."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    now = datetime.now(UTC) if now is None else now.astimezone(UTC)
    summary = _summary(store, since)
    exceptions = open_exceptions(store, now=now, since=since)
    if fmt == "csv":
        return _csv(exceptions)
    if fmt == "json":
        return _json(summary, exceptions, now, since)
    return _table(summary, exceptions, now, since)


# ---------------------------------------------------------------------------------------
# Data


def _summary(store: OrderStore, since: date | None) -> pd.DataFrame:
    where = reconciliation_summary.c.day >= since if since is not None else None
    frame = store.read_table(reconciliation_summary, where)
    for column in _AMOUNTS:
        frame[column] = frame[column].astype(object)
    return frame.sort_values(["day", "currency"], kind="stable").reset_index(drop=True)


def _per_currency(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Daily rows added up per currency (exact: Decimal sums, never across currencies)."""
    totals: dict[str, dict[str, Any]] = {}
    for row in summary.to_dict("records"):
        into = totals.setdefault(
            row["currency"],
            {"currency": row["currency"], **dict.fromkeys(_COUNTS, 0), **dict.fromkeys(_AMOUNTS, None)},
        )
        for column in _COUNTS:
            into[column] += int(row[column])
        for column in _AMOUNTS:
            into[column] = row[column] if into[column] is None else into[column] + row[column]
    return [totals[c] for c in sorted(totals)]


def _aging(exceptions: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Open exceptions per kind and aging bucket (every kind and bucket present)."""
    counts = {kind: dict.fromkeys(AGING_BUCKETS, 0) for kind in KINDS}
    for kind, bucket in zip(exceptions["kind"], exceptions["aging"], strict=True):
        counts[kind][bucket] += 1
    return counts


def _text(value: Any) -> str:
    if value is None or value is pd.NaT or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp | datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if value is None or value is pd.NaT or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: never a JSON float
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


# ---------------------------------------------------------------------------------------
# Renderings


def _csv(exceptions: pd.DataFrame) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXCEPTION_FIELDS)
    for row in exceptions.loc[:, list(EXCEPTION_FIELDS)].itertuples(index=False):
        writer.writerow([_jsonable(v) if isinstance(v, pd.Timestamp | datetime) else _text(v) for v in row])
    return out.getvalue()


def _json(summary: pd.DataFrame, exceptions: pd.DataFrame, now: datetime, since: date | None) -> str:
    computed = summary["computed_at"].max() if len(summary) else None
    report = {
        "generated_at": _jsonable(now),
        "since": _jsonable(since),
        "computed_at": _jsonable(computed),
        "per_currency": [{k: _jsonable(v) for k, v in row.items()} for row in _per_currency(summary)],
        "aging": _aging(exceptions),
        "open_exceptions": [
            {k: _jsonable(v) for k, v in row.items()}
            for row in exceptions.loc[:, list(EXCEPTION_FIELDS)].to_dict("records")
        ],
        "daily": [
            {k: _jsonable(v) for k, v in row.items() if k != "computed_at"}
            for row in summary.to_dict("records")
        ],
    }
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _table(summary: pd.DataFrame, exceptions: pd.DataFrame, now: datetime, since: date | None) -> str:
    if summary.empty and exceptions.empty:
        scope = f" for orders since {since}" if since else ""
        return f"No reconciliation results{scope} yet: run `orders-etl sync` first.\n"
    computed = summary["computed_at"].max() if len(summary) else None
    lines = [
        f"Reconciliation Shopify vs ERP — computed {_text(computed)} UTC"
        + (f", orders since {since}" if since else ""),
        "",
        "Per currency (amounts before refunds; difference = Shopify − ERP)",
    ]
    headers = ["currency", "shopify", "erp", "shopify total", "erp total", "difference", "matched", "pending"]
    headers += ["exceptions"]
    rows = [
        [
            row["currency"],
            str(row["shopify_orders"]),
            str(row["erp_orders"]),
            _text(row["shopify_total"]),
            _text(row["erp_total"]),
            _text(row["difference"]),
            str(row["matched"]),
            str(row["pending_sync"]),
            str(sum(row[k] for k in KINDS)),
        ]
        for row in _per_currency(summary)
    ]
    lines += _grid(headers, rows, [False] + [True] * (len(headers) - 1))

    aging = _aging(exceptions)
    lines += ["", f"Open exceptions by age since first detected ({len(exceptions)} open)"]
    rows = [
        [kind, *(str(aging[kind][b]) for b in AGING_BUCKETS), str(sum(aging[kind].values()))]
        for kind in KINDS
    ]
    lines += _grid(["kind", *AGING_BUCKETS, "total"], rows, [False] + [True] * (len(AGING_BUCKETS) + 1))

    if len(exceptions):
        lines += ["", "Open exceptions"]
        headers = ["external_id", "number", "kind", "currency", "shopify", "erp", "difference", "ordered"]
        headers += ["age (d)", "aging"]
        rows = [
            [
                _text(r.external_id),
                _text(r.number),
                r.kind,
                _text(r.currency),
                _text(r.shopify_value) or "—",
                _text(r.erp_value) or "—",
                _text(r.difference),
                _text(r.order_created_at)[:10],
                _text(r.age_days),
                r.aging,
            ]
            for r in exceptions.itertuples(index=False)
        ]
        right = [False, False, False, False, True, True, True, False, True, False]
        lines += _grid(headers, rows, right)
    return "\n".join(lines) + "\n"
