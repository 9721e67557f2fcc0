"""End to end at scale: the whole Dagster graph over N orders, on SQLite and PostgreSQL.

For each size N it generates (before any timer) a Shopify bulk-operation result of N orders
as JSONL and the ERP's CSV export of the same orders, planted differences included
(``data/samples/generate.py``, the generator of the bundled samples), plus a copy of both
in which 10 % of the orders were updated. Then, for each store, it runs the project's
``sync_orders`` job in-process over every day three times into one new store, each run in a
fresh process, exactly as ``orders-etl sync`` does (file-backed Shopify and ERP resources, a
throwaway Dagster instance):

* ``e2e``: into an empty store (read, land, normalize, dedupe, upsert, golden merge,
  checks, reconciliation);
* ``rerun``: the same files again (nothing changed);
* ``update``: the files with 10 % of the orders updated.

It prints, per stage and in total, wall seconds, orders per second, the process's CPU
seconds (every thread, and its reading processes once they end; the cores kept busy) and the
peak memory seen during the stage (its RSS every 20 ms, plus its reading processes' own
memory every 500 ms), on a PostgreSQL of this machine the server's CPU seconds too (every
100 ms: its share of the work, on the same cores), and then verifies the store (row counts,
and the open reconciliation exceptions against the planted differences). Each run's peak
RSS is its own; a size's is the highest of its three. The last line is one JSON object::

    {"sqlite": {"1000000": {"e2e_s": …, "rerun_s": …, "update_s": …, "peak_rss_mb": …}}, …}

    python bench/bench_e2e.py [--sizes 100000,300000,1000000] [--stores sqlite,postgresql]
                              [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
                              [--data DIR]   # keep (and reuse) the generated files there
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data" / "samples"))

import generate  # noqa: E402 (the samples' generator lives next to the samples)

DEFAULT_SIZES = (100_000, 300_000, 1_000_000)
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
START_DATE = generate.START.date().isoformat()
UPDATED_EVERY = 10  # one order in ten is updated in the "update" files
UPDATE_SHIFT = timedelta(days=1)
STAGES = {
    "shopify__raw_orders": "shopify raw (read + land)",
    "shopify__source_orders": "shopify normalize + upsert",
    "erp__raw_orders": "erp raw (read + land)",
    "erp__source_orders": "erp normalize + upsert",
    "orders": "orders (golden)",
    "orders_checks": "checks",
    "reconciliation": "reconciliation",
}


# ---------------------------------------------------------------------------------------
# Inputs


def write_inputs(directory: Path, n: int) -> list[tuple[str, str]]:
    """``cold/``: the generated files; ``update/``: the same with 10 % of the orders updated."""
    planted = generate.write_samples(directory / "cold", n, generate.DEFAULT_SEED)
    updated = directory / "update"
    updated.mkdir(exist_ok=True)
    for name in (generate.DIALECT_FILE, generate.PLAN_FILE):
        (updated / name).write_bytes((directory / "cold" / name).read_bytes())
    _update_shopify(directory / "cold" / generate.SHOPIFY_FILE, updated / generate.SHOPIFY_FILE)
    _update_erp(directory / "cold" / generate.ERP_FILE, updated / generate.ERP_FILE)
    (directory / "ready").write_text(json.dumps(planted))
    return planted


def _later(text: str) -> str:
    moment = datetime.fromisoformat(text) + UPDATE_SHIFT
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _update_shopify(source: Path, target: Path) -> None:
    """Every tenth order a day later, and shipped if it was waiting for fulfillment."""
    with source.open(encoding="utf-8") as lines, target.open("w", encoding="utf-8", newline="\n") as out:
        for index, line in enumerate(lines):
            if index % UPDATED_EVERY == 0:
                try:
                    node = json.loads(line)
                except ValueError:
                    node = None  # the planted malformed lines stay as they are
                if isinstance(node, dict) and isinstance(node.get("updatedAt"), str):
                    node["updatedAt"] = _later(node["updatedAt"])
                    if node.get("displayFulfillmentStatus") == "UNFULFILLED":
                        node["displayFulfillmentStatus"] = "FULFILLED"
                    line = json.dumps(node, ensure_ascii=False, separators=(",", ":")) + "\n"
            out.write(line)


def _update_erp(source: Path, target: Path) -> None:
    """Every tenth ERP row modified a day later (its ``Last Modified``, Berlin time)."""
    text = source.read_bytes().decode("cp1252")
    preamble, _, body = text.partition("\r\n")
    rows = list(csv.reader(io.StringIO(body, newline=""), delimiter=";"))
    header = rows[0]
    modified = header.index("Last Modified")
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(header)
    for index, row in enumerate(rows[1:]):
        if index % UPDATED_EVERY == 0 and len(row) > modified:
            try:
                when = datetime.strptime(row[modified], "%d.%m.%Y %H:%M") + UPDATE_SHIFT
                row[modified] = when.strftime("%d.%m.%Y %H:%M")
            except ValueError:
                pass
        writer.writerow(row)
    target.write_bytes((preamble + "\r\n" + out.getvalue()).encode("cp1252"))


# ---------------------------------------------------------------------------------------
# One store, one size: the child process


class RssSampler:
    """The run's memory and CPU seconds every 20 ms, so each stage's peak and the cores it
    kept busy can be told apart; with ``server`` (a local PostgreSQL's postmaster), the
    server's CPU seconds too, every 100 ms.

    The run includes the processes it starts (a file is read in a forked child): their CPU
    once they are reaped (exact, and inside the stage that started them), and their memory
    of their own (USS, every 500 ms; their RSS would count again the pages they share with
    this process since the fork).
    """

    SERVER_EVERY = 5  # samples: reading every server process's times costs ~0.5 ms
    # Samples: listing the children reads every process's stat, and a child's USS is read
    # from its smaps: every 100 ms, they took 4 % of the sampled process's CPU (py-spy).
    CHILDREN_EVERY = 25

    def __init__(self, interval: float = 0.02, server: Any = None) -> None:
        import psutil

        self._process = psutil.Process()
        self._server = None if server is None else ServerCpu(server)
        self._interval = interval
        # (time, MB with the reading processes' own, CPU s, the reading processes' own MB)
        self.samples: list[tuple[float, float, float, float]] = []
        self.server_samples: list[tuple[float, float]] = []  # (time, the server's CPU s)
        self._children_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            cpu = self._process.cpu_times()
            if tick % self.CHILDREN_EVERY == 0:
                self._children_mb = self._children_uss_mb()
            rss = self._process.memory_info().rss / 2**20 + self._children_mb
            self.samples.append(
                (
                    time.time(),
                    rss,
                    cpu.user + cpu.system + cpu.children_user + cpu.children_system,
                    self._children_mb,
                )
            )
            if self._server is not None and tick % self.SERVER_EVERY == 0:
                self.server_samples.append((time.time(), self._server()))
            tick += 1
            self._stop.wait(self._interval)

    def _children_uss_mb(self) -> float:
        import psutil

        total = 0
        for child in self._process.children(recursive=True):
            try:
                total += child.memory_full_info().uss
            except psutil.Error:  # ended between the listing and the reading
                continue
        return total / 2**20

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> float:
        return self.peak_parts(start, end)[0]

    def peak_parts(self, start: float, end: float) -> tuple[float, float]:
        """The peak in ``[start, end]``, and how much of it the reading processes' own memory was."""
        inside = [(rss, children) for at, rss, _, children in self.samples if start <= at <= end]
        return max(inside, default=(0.0, 0.0))

    def cpu(self, start: float, end: float) -> float:
        """CPU seconds (user + system, every thread of this process and its children) spent
        in ``[start, end]``.

        On PostgreSQL the server's own work is in its processes: see :meth:`server_cpu`."""
        inside = [cpu for at, _, cpu, _ in self.samples if start <= at <= end]
        return inside[-1] - inside[0] if inside else 0.0

    def server_cpu(self, start: float, end: float) -> float | None:
        """The local PostgreSQL server's CPU seconds in ``[start, end]`` (every process of it:
        its share of the same work, on the same two cores); None without one."""
        if self._server is None:
            return None
        inside = [cpu for at, cpu in self.server_samples if start <= at <= end]
        return inside[-1] - inside[0] if inside else 0.0


def local_postgres_server(url: str) -> Any:
    """The postmaster of the PostgreSQL server at ``url`` if it runs on this machine, else None.

    Found as the ``postgres`` process listening on the URL's port (5432 if none)."""
    import psutil
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.host not in (None, "", "localhost", "127.0.0.1", "::1"):
        return None
    port = parsed.port or 5432
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "postgres":
            continue
        try:
            sockets = process.net_connections("tcp")
        except psutil.Error:
            continue
        if any(s.laddr.port == port and s.status == psutil.CONN_LISTEN for s in sockets):
            return process
    return None


class ServerCpu:
    """CPU seconds of a local PostgreSQL server so far: the postmaster and every process it
    runs (the backends serving the run, the checkpointer, the WAL writer...).

    Each process is remembered with its last reading: a backend that ended keeps what it
    spent (reading the postmaster's reaped-children times instead races with the listing of
    its children, and a process counted in neither made a stage's figure negative). What a
    process spent after its last reading, at most one interval, is missed."""

    def __init__(self, postmaster: Any) -> None:
        self._postmaster = postmaster
        self._seen: dict[tuple[int, float], float] = {}

    def __call__(self) -> float:
        import psutil

        for process in self._postmaster.children():
            try:
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()
            except psutil.Error:  # ended between the listing and the reading
                continue
            self._seen[key] = times.user + times.system
        own = self._postmaster.cpu_times()
        return own.user + own.system + sum(self._seen.values())


def run_case(defs: Any, end_day: str, sampler: RssSampler) -> dict[str, Any]:
    """One in-process run of ``sync_orders`` over every day: per-stage seconds and peak RSS."""
    from dagster import DagsterInstance

    job = defs.resolve_job_def("sync_orders")
    started = time.time()
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": START_DATE,
                "dagster/asset_partition_range_end": end_day,
                "orders_etl/trigger": "bench",
            },
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=True,
        )
        entries = instance.all_logs(result.run_id)
    finished = time.time()
    starts: dict[str, float] = {}
    stages: dict[str, dict[str, float]] = {}
    for entry in entries:
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            begin, end = starts[event.step_key], entry.timestamp
            rss_mb, children_mb = sampler.peak_parts(begin, end)
            stages[event.step_key] = {
                "s": end - begin,
                "cpu_s": sampler.cpu(begin, end),
                "server_cpu_s": sampler.server_cpu(begin, end),
                "rss_mb": rss_mb,
                "children_mb": children_mb,
            }
    return {
        "total_s": finished - started,
        "cpu_s": sampler.cpu(started, finished),
        "server_cpu_s": sampler.server_cpu(started, finished),
        "stages": stages,
        "rss_mb": sampler.peak(started, finished),
    }


CASES = {"e2e": "cold", "rerun": "cold", "update": "update"}  # run -> the inputs it reads
STORE_URL_VARIABLE = "ORDERS_ETL_BENCH_STORE_URL"  # the parent's store, handed to each run


def child(size: int, store: str, data: Path, case: str, pg_url: str) -> None:
    """Runs in a fresh process: one run (``case``) into the parent's store; one JSON line out.

    Every run has a process of its own, as every sync has: ``orders-etl sync`` runs one and
    exits, and Dagster's run launcher starts a process per run (schedules, UI backfills).
    """
    os.environ["ORDERS_ETL_START_DATE"] = START_DATE
    from orders_etl.definitions import build_defs
    from orders_etl.defs.erp.resources import ErpFilesResource
    from orders_etl.defs.shopify.resources import ShopifyBulkFileResource
    from orders_etl.defs.store.resources import StoreResource

    url = os.environ[STORE_URL_VARIABLE]
    files = data / CASES[case]
    defs = build_defs(
        {
            "store": StoreResource(database_url=url),
            "shopify": ShopifyBulkFileResource(path=str(files / generate.SHOPIFY_FILE)),
            "erp": ErpFilesResource(
                path=str(files / generate.ERP_FILE), dialect_path=str(files / generate.DIALECT_FILE)
            ),
        }
    )
    end_day = datetime.now(UTC).date().isoformat()
    server = local_postgres_server(pg_url) if store == "postgresql" else None
    with RssSampler(server=server) as sampler:
        figures = run_case(defs, end_day, sampler)
    print(_case_lines(size, store, case, figures), file=sys.stderr, flush=True)
    if case == "update":
        figures["verified"] = verify(url, data)
    # The process's own high-water mark: ru_maxrss would count the parent's RSS at the fork
    # (2 GB right after generating 1M orders); or, when more, the highest sample of it and
    # its reading processes together.
    from bench_reconcile import peak_rss_mb

    figures["peak_rss_mb"] = max(peak_rss_mb(), sampler.peak(0, time.time()))
    print(json.dumps(figures))


@contextmanager
def _store_url(store: str, data: Path, pg_url: str) -> Iterator[str]:
    if store == "sqlite":
        path = data / f"bench-{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield (
            sa.make_url(pg_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def verify(url: str, data: Path) -> dict[str, Any]:
    """The store after the runs: counts, and the reconciliation against what was planted."""
    from orders_etl.store import OrderStore

    planted = {tuple(item) for item in json.loads((data / "ready").read_text())}
    store = OrderStore.from_url(url)
    try:
        exceptions = store.read_table("reconciliation_exceptions")
        open_now = exceptions[exceptions["resolved_at"].isna()]
        found = set(zip(open_now["external_id"], open_now["kind"], strict=True))
        return {
            "orders": store.count("orders"),
            "source_orders": store.count("source_orders"),
            "raw_orders": store.count("raw_orders"),
            "rejects": store.count("order_rejects"),
            "open_exceptions": len(found),
            "planted_found": len(planted & found),
            "planted": len(planted),
        }
    finally:
        store.dispose()


def _case_lines(size: int, store: str, case: str, figures: dict[str, Any]) -> str:
    lines = [
        f"{store} {size:>9,} {case}: {figures['total_s']:.1f} s, CPU {figures['cpu_s']:.1f} s "
        f"({_cores(figures['cpu_s'], figures['total_s'])} cores busy)"
        f"{_server_part(figures['cpu_s'], figures['server_cpu_s'], figures['total_s'])}, "
        f"peak {figures['rss_mb']:.0f} MB"
    ]
    for step, stage in figures["stages"].items():
        rate = size / stage["s"] if stage["s"] else float("inf")
        label = STAGES.get(step, step)
        server = _server_part(stage["cpu_s"], stage["server_cpu_s"], stage["s"])
        lines.append(
            f"    {label:<28} {stage['s']:7.2f} s {rate:>12,.0f} orders/s  CPU {stage['cpu_s']:6.1f} s "
            f"({_cores(stage['cpu_s'], stage['s'])} cores){server}  peak {stage['rss_mb']:5.0f} MB"
            f" (reading process {stage['children_mb']:.0f})"
        )
    return "\n".join(lines)


def _server_part(cpu_s: float, server_cpu_s: float | None, wall_s: float) -> str:
    """`` + server N s (C cores together)`` for a local PostgreSQL: what both sides of the
    work cost on the machine's cores; nothing for SQLite (its work is in the process)."""
    if server_cpu_s is None:
        return ""
    return f" + server {server_cpu_s:.1f} s ({_cores(cpu_s + server_cpu_s, wall_s)} cores together)"


def _cores(cpu_s: float, wall_s: float) -> str:
    """How many cores the work kept busy on average: what running it wider could still gain."""
    return f"{cpu_s / wall_s:.2f}" if wall_s else "-"


# ---------------------------------------------------------------------------------------
# The parent: inputs, one child per (size, store), the summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("ORDERS_ETL_BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--data", type=Path, help="where the generated inputs are kept (reused if present)")
    parser.add_argument("--child", nargs=4, metavar=("SIZE", "STORE", "DIR", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, store, directory, case = args.child
        child(int(size), store, Path(directory), case, args.pg_url)
        return
    sizes = [int(size.replace("_", "")) for size in args.sizes.split(",")]
    stores = args.stores.split(",")
    with _data_dir(args.data) as root:
        results: dict[str, dict[str, Any]] = {store: {} for store in stores}
        for size in sizes:
            directory = root / str(size)
            if not (directory / "ready").exists():
                began = time.perf_counter()
                print(f"generating {size:,} orders into {directory} ...", file=sys.stderr, flush=True)
                write_inputs(directory, size)
                print(f"  generated in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
            for store in stores:
                results[store][str(size)] = run_child(size, store, directory, args.pg_url)
        print_table(results)
        summary = {
            store: {
                size: {
                    "e2e_s": round(r["e2e"]["total_s"], 1),
                    "rerun_s": round(r["rerun"]["total_s"], 1),
                    "update_s": round(r["update"]["total_s"], 1),
                    "peak_rss_mb": round(r["peak_rss_mb"]),
                }
                for size, r in by_size.items()
            }
            for store, by_size in results.items()
        }
        print(json.dumps(summary))


@contextmanager
def _data_dir(kept: Path | None) -> Iterator[Path]:
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as directory:
        yield Path(directory)


def run_child(size: int, store: str, directory: Path, pg_url: str) -> dict[str, Any]:
    """The three runs into a new store, each in a fresh process; the store dropped after."""
    with _store_url(store, directory, pg_url) as url:
        runs = {}
        for case in CASES:
            arguments = ["--pg-url", pg_url, "--child", str(size), store, str(directory), case]
            completed = subprocess.run(
                [sys.executable, __file__, *arguments],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                check=True,
                env={**os.environ, STORE_URL_VARIABLE: url},
            )
            runs[case] = json.loads(completed.stdout.strip().splitlines()[-1])
    return {
        **runs,
        "verified": runs["update"].pop("verified"),
        "peak_rss_mb": max(run.pop("peak_rss_mb") for run in runs.values()),
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'store':<11}{'orders':>10}{'e2e s':>8}{'rerun s':>9}{'update s':>10}{'orders/s':>10}"
          f"{'peak MB':>9}  verified")  # fmt: skip
    for store, by_size in results.items():
        for size, r in by_size.items():
            v = r["verified"]
            rate = int(size) / r["e2e"]["total_s"]
            check = f"{v['planted_found']}/{v['planted']} planted found, {v['open_exceptions']} open"
            print(
                f"{store:<11}{int(size):>10,}{r['e2e']['total_s']:>8.1f}{r['rerun']['total_s']:>9.1f}"
                f"{r['update']['total_s']:>10.1f}{rate:>10,.0f}{r['peak_rss_mb']:>9.0f}  {check}"
            )


if __name__ == "__main__":
    main()
