"""``orders-etl``: sync the sources into the store, print the reconciliation, migrate the store.

``orders-etl sync`` runs the project's Dagster job in this process, as one run over the
days it covers, on the instance in ``DAGSTER_HOME`` when that is set (so the run shows in
the UI next to scheduled ones) or on a throwaway instance otherwise. It prints a line per
stage, a summary table and the reconciliation summary; on failure, one line on stderr
(``orders-etl: <source>: <cause>``) and exit status 1. Usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TextIO

EXIT_FAILED = 1
EXIT_USAGE = 2
SOURCE_COLUMNS = (
    "fetched",
    "landed",
    "inserted",
    "updated",
    "unchanged",
    "stale",
    "rejected",
    "skipped",
    "deleted",
)


class UsageError(Exception):
    """Bad arguments or settings: printed as one line, exit status 2."""


class SyncFailed(Exception):
    """The run failed: ``source`` and ``cause`` make the one line printed."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"{source}: {cause}")


# The steps that take the normalize config (defs/sync.py NormalizeConfig).
NORMALIZE_STEPS = ("shopify__source_orders", "erp__source_orders")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orders-etl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser(
        "sync",
        help="pull, normalize, upsert and reconcile the orders updated in a range of days",
        description="Default range: from the oldest source's high-water mark minus the overlap "
        "(or ORDERS_ETL_START_DATE on a first sync) to today, UTC.",
    )
    sync.add_argument("--start", type=_day, help="first day (YYYY-MM-DD, UTC) of order updates")
    sync.add_argument("--end", type=_day, help="last day, inclusive (default: today)")
    sync.add_argument(
        "--renormalize",
        action="store_true",
        help="normalize every landed version in the range again, not only the new ones "
        "(after an upgrade changed a mapping; from raw_orders, the sources are read as usual)",
    )
    report = commands.add_parser("report", help="print the reconciliation summary and open exceptions")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.add_argument("--since", type=_day, help="only days from this one (order created, UTC)")
    db = commands.add_parser("db", help="order store administration")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="migrate the order store's schema to the latest revision")
    return parser


def main(argv: Sequence[str] | None = None, *, defs: Any = None) -> int:
    """Entry point of the console script; ``defs`` replaces the project's definitions (tests)."""
    args = _parser().parse_args(argv)
    from sqlalchemy.exc import SQLAlchemyError  # here, like every heavy import: --help stays fast

    # Dagster's notes on beta/superseded APIs are for the project's developers, not for
    # someone running a sync.
    for category in ("BetaWarning", "PreviewWarning", "SupersessionWarning"):
        warnings.filterwarnings("ignore", category=getattr(__import__("dagster"), category))
    try:
        if args.command == "sync":
            return sync(args.start, args.end, defs=defs, renormalize=args.renormalize)
        try:
            if args.command == "report":
                return report(args.format, args.since)
            return db_upgrade()
        except SQLAlchemyError as exc:  # e.g. the store is unreachable: one line, URL masked
            from orders_etl.store.engine import database_url_from_env

            raise _store_failure(database_url_from_env(), exc) from None
    except UsageError as exc:
        print(f"orders-etl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SyncFailed as exc:
        print(f"orders-etl: {exc}", file=sys.stderr)
        return EXIT_FAILED


# ---------------------------------------------------------------------------------------
# report, db upgrade


def _settings() -> Any:
    from orders_etl.settings import SettingsError, get_settings

    try:
        return get_settings()
    except SettingsError as exc:
        raise UsageError(f"settings: {exc}") from None


def report(fmt: str, since: date | None) -> int:
    from orders_etl.report import render_report
    from orders_etl.store import OrderStore

    _settings()  # reads .env, so ORDERS_ETL_DATABASE_URL may come from it
    store = OrderStore.from_url()
    try:
        print(render_report(store, fmt=fmt, since=since))
    finally:
        store.dispose()
    return 0


def db_upgrade() -> int:
    from orders_etl.store.engine import create_store_engine, masked_url
    from orders_etl.store.migrate import current_revision, upgrade

    _settings()
    engine = create_store_engine()
    try:
        upgrade(engine)
        print(f"order store {masked_url(engine.url)} is at revision {current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


# ---------------------------------------------------------------------------------------
# sync


def sync(
    start: date | None,
    end: date | None,
    *,
    defs: Any = None,
    out: TextIO | None = None,
    renormalize: bool = False,
) -> int:
    out = out or sys.stdout
    settings = _settings()
    if defs is None:
        from orders_etl.definitions import defs
    job = defs.resolve_job_def("sync_orders")
    partitions = job.partitions_def
    with _open_store(defs.resources["store"]) as store:
        first_day, last_day = _sync_range(start, end, store, defs.resources, settings, partitions)
        days = (last_day - first_day).days + 1
        plural = "s" if days != 1 else ""
        span = f"{first_day}..{last_day} ({days} day{plural})"
        print(f"orders-etl sync {span} into {store.masked_url}", file=out)
        progress = Progress(out)
        with _instance() as instance:
            result = job.with_logger_defs({"progress": progress.logger_def()}).execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": first_day.isoformat(),
                    "dagster/asset_partition_range_end": last_day.isoformat(),
                    "orders_etl/trigger": "cli",
                },
                run_config={
                    "loggers": {"progress": {}},
                    "ops": {step: {"config": {"renormalize": renormalize}} for step in NORMALIZE_STEPS},
                },
                raise_on_error=False,
            )
        if not result.success:
            raise _failure(result)
        print_summary(progress, out)
        from orders_etl.report import render_report

        print("", file=out)
        print(render_report(store, fmt="table"), file=out)
    return 0


def _sync_range(
    start: date | None,
    end: date | None,
    store: Any,
    resources: Mapping[str, Any],
    settings: Any,
    partitions: Any,
) -> tuple[date, date]:
    """The days to sync: as given, else from the oldest cursor (minus the overlap) to today."""
    first_partition = partitions.start.date()
    today = datetime.now(UTC).date()
    if start is None:
        marks = [store.high_water_mark(resources[name].source) for name in ("shopify", "erp")]
        if any(mark is None for mark in marks):
            start = first_partition
        else:
            start = max(first_partition, (min(marks) - settings.overlap).date())
    end = end or today
    if start < first_partition:
        raise UsageError(
            f"--start {start} is before the first partition {first_partition} (ORDERS_ETL_START_DATE)"
        )
    if end > today:
        raise UsageError(f"--end {end} is in the future (today is {today}, UTC)")
    if start > end:
        raise UsageError(f"--start {start} is after --end {end}")
    return start, end


@contextmanager
def _open_store(resource: Any) -> Iterator[Any]:
    """The run's store, opened (and migrated) up front: an unreachable store is one line."""
    import dagster as dg

    url = resource.database_url
    url = url.get_value() if isinstance(url, dg.EnvVar) else url
    with ExitStack() as stack:
        try:
            resources = stack.enter_context(dg.build_resources({"store": resource}))
        except Exception as exc:
            raise _store_failure(url, exc) from None
        yield resources.store.store


def _store_failure(url: str, exc: BaseException) -> SyncFailed:
    """``store: cannot open <masked URL>: <first line of the root cause>``."""
    from orders_etl.store.engine import masked_url

    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    message = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    password = _password(url)
    if password:
        message = message.replace(password, "***")
    return SyncFailed("store", f"cannot open {masked_url(url)}: {message}")


def _password(url: str | None) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password if url else None
    except Exception:
        return None


@contextmanager
def _instance() -> Iterator[Any]:
    """The DAGSTER_HOME instance (runs show in the UI), else a throwaway one."""
    from dagster import DagsterInstance

    home = os.environ.get("DAGSTER_HOME")
    try:
        instance = DagsterInstance.get() if home else DagsterInstance.ephemeral()
    except Exception as exc:  # e.g. DAGSTER_HOME is no directory, or its dagster.yaml is invalid
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"DAGSTER_HOME={home}: {first_line}") from None
    with instance:
        yield instance


def _failure(result: Any) -> SyncFailed:
    """The first failed step as ``<source>: <cause>`` (a SourceError names both itself)."""
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.event_specific_data
        failure = data.user_failure_data
        if failure is not None and "source" in failure.metadata and "cause" in failure.metadata:
            return SyncFailed(failure.metadata["source"].value, failure.metadata["cause"].value)
        error = data.error
        while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
            error = error.cause
        message = error.message.strip().splitlines()[0] if error is not None and error.message else "failed"
        return SyncFailed(_stage_source(event.step_key or "run"), message)
    return SyncFailed("run", "failed before any step ran (see the run's logs)")


def _stage_source(step_key: str) -> str:
    """``shopify__raw_orders`` -> ``shopify``; the golden/reconciliation steps name themselves."""
    return step_key.split("__", 1)[0]


# ---------------------------------------------------------------------------------------
# Progress and summary


@dataclass
class Stage:
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    seconds: float = 0.0


class Progress:
    """Receives the run's events (as a Dagster logger) and prints one line per finished stage."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.stages: dict[str, Stage] = {}
        self._started: dict[str, float] = {}

    def logger_def(self) -> Any:
        import dagster as dg

        progress = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                progress.on_record(record)

        @dg.logger(description="One line per finished stage (orders-etl sync).")
        def progress_logger(_context: Any) -> logging.Logger:
            logger = logging.Logger("orders_etl.progress", level=logging.DEBUG)
            logger.addHandler(_Handler())
            return logger

        return progress_logger

    def on_record(self, record: logging.LogRecord) -> None:
        meta = record.__dict__.get("dagster_meta") or {}
        event = meta.get("dagster_event")
        if event is None or event.step_key is None:
            return
        step = event.step_key
        kind = event.event_type_value
        if kind == "STEP_START":
            self._started[step] = record.created
        elif kind == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            stage = self.stages.setdefault(step, Stage(materialization.asset_key.to_user_string()))
            # A range run materializes each day with the same metadata: keep the first.
            if not stage.metadata:
                stage.metadata = {key: value.value for key, value in materialization.metadata.items()}
        elif kind == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            stage = self.stages.setdefault(step, Stage(f"checks on {evaluation.asset_key.to_user_string()}"))
            stage.checks.append((evaluation.check_name, evaluation.passed, evaluation.severity.value))
        elif kind == "STEP_SUCCESS":
            stage = self.stages.setdefault(step, Stage(step))
            stage.seconds = record.created - self._started.get(step, record.created)
            print(f"  done  {stage.name:<24} {_stage_counts(stage):<60} {stage.seconds:5.1f}s", file=self.out)
            self.out.flush()


def _stage_counts(stage: Stage) -> str:
    if stage.checks and not stage.metadata:
        failed = [f"{name} ({severity.lower()})" for name, passed, severity in stage.checks if not passed]
        return f"{len(stage.checks) - len(failed)} passed" + (
            f", not passed: {', '.join(failed)}" if failed else ""
        )
    m = stage.metadata
    if "unchanged_since_run" in m:
        return f"input unchanged since run {m['unchanged_since_run'][:8]}: not read again"
    if "fetched" in m:
        return f"fetched {m['fetched']}, landed {m['landed']}"
    if "inserted" in m:
        return (
            f"inserted {m['inserted']}, updated {m['updated']}, unchanged {m['unchanged']}, "
            f"stale {m['stale']}, rejected {m['rejected']}"
        )
    if "open_exceptions" in m:
        return f"open exceptions {m['open_exceptions']}"
    return f"rows {m.get('dagster/row_count', '?')}"


def print_summary(progress: Progress, out: TextIO) -> None:
    rows: dict[str, dict[str, Any]] = {}
    reconciliation: dict[str, Any] = {}
    for stage in progress.stages.values():
        source = stage.metadata.get("source")
        if source is not None:  # a source's raw or normalized stage
            rows.setdefault(source, {}).update(stage.metadata)
        elif stage.name == "reconciliation":
            reconciliation = stage.metadata
    print("", file=out)
    header = f"{'source':<10}" + "".join(f"{column:>10}" for column in SOURCE_COLUMNS)
    print(header, file=out)
    for source, metadata in rows.items():
        print(f"{source:<10}" + "".join(f"{metadata.get(c, ''):>10}" for c in SOURCE_COLUMNS), file=out)
    if reconciliation:
        kinds = {
            key.removeprefix("open_"): value
            for key, value in reconciliation.items()
            if key.startswith("open_") and key != "open_exceptions" and value
        }
        detail = ", ".join(f"{kind} {n}" for kind, n in kinds.items()) or "none"
        print(
            f"\nreconciliation: {reconciliation.get('open_exceptions', 0)} open exceptions ({detail})",
            file=out,
        )


if __name__ == "__main__":
    sys.exit(main())
