"""Scale of state: submit, list, show and the scheduler's cost with an empty store and with a
tenant of 1,000,000 finished runs in a store of 10,000 tenants; and whether purging those runs
stalls the tenants that keep running.

    python benchmarks/state_scale.py                                    # SQLite, target sizes
    python benchmarks/state_scale.py --runs 100000 --tenants 1000       # a quick look
    python benchmarks/state_scale.py --store postgres                   # 127.0.0.1:5432/test
    python benchmarks/state_scale.py --skip-purge                       # no purge phase

Two stores of the same kind (temporary SQLite files, or fresh PostgreSQL schemas dropped
afterwards), each with tenant ``big`` (whose policy keeps finished runs 30 days) and
``--workers`` steady tenants:

* **empty**: nothing else.
* **loaded**: ``--tenants`` more tenants, created through the API (``engine.tenants.create``,
  each with its policy version and audit row), and ``--runs`` finished runs of ``big``
  bulk-inserted through the store's own schema: each a copy of a run that finished through the
  engine (its ``runs``, ``steps``, ``state_versions`` and ``events`` rows; tenant replaced,
  times shifted, ids made from the new times as the engine makes them), spread over the 400
  to 35 days before now, with the per-day ``usage`` rows they would have added. SQLite by
  ``executemany`` in transactions of 50,000 runs, PostgreSQL by ``INSERT ... SELECT`` over
  ``generate_series`` (then ``ANALYZE``, as autovacuum would).

Both engines are then open in one process and every operation is timed ``--reps`` times on
each, the stores taking turns (so the rest of a shared machine weighs on both alike), through
the public ``tenantflow.Engine`` API: *submit* of a two-step workflow (the call returns once the
run is durably recorded; the run is then awaited, untimed), *list* (the tenant's first page, 51
runs as the API asks for a page of 50), *show* (``get_run`` + ``steps`` of a random run of the
tenant's whole history, as the API's show and steps do), and the *scheduler*: every call the
engine makes to its admission controller (``submit``, ``finished``) and its fair scheduler
(``push``, ``pop``, ``done``) while the submitted runs go through, timed in place.

Then **purge**, on the loaded store: the steady tenants run closed loops of the same workflow
(submit, await the result) for ``--steady-s`` seconds, ``engine.purge_expired()`` deletes
``big``'s expired runs while they keep running (at most ``--batch`` runs a transaction, on
SQLite sized to 2 ms of the store's time or ``--target-s``, taking at most ``--share`` of it),
and they run ``--steady-s`` seconds more; the latency of their runs that overlapped the purge
is compared with that of the runs before and after it.

Printed: every figure of every phase, the ratios loaded / empty (target <= 1.5x for submit,
list, show and the scheduler) and with purge / without (target p99 <= 1.2x), and the load
average before and after. The machine may be shared: run it more than once and report every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

try:
    import tenantflow as tf
    from tenantflow.domain.ids import new_run_id
    from tenantflow.engine.tenants import PURGE_BATCH, PURGE_SHARE
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import tenantflow as tf
    from tenantflow.domain.ids import new_run_id
    from tenantflow.engine.tenants import PURGE_BATCH, PURGE_SHARE

PG = os.environ.get("TENANTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BIG = "big"
DAY = 86_400.0
RUN_TABLES = ("runs", "steps", "state_versions", "events")
TIME_COLS = {"created_at", "updated_at", "finished_at", "started_at", "ts"}
CHUNK = 50_000  # seeded runs per transaction


class Item(BaseModel):
    n: int


wf = tf.Workflow("small", input=Item)


@wf.step
async def a(ctx: tf.StepContext, input: Item) -> Item:
    return Item(n=input.n + 1)


@wf.step
async def b(ctx: tf.StepContext, a: Item) -> Item:
    return Item(n=a.n + 1)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# -- the stores ------------------------------------------------------------------------------


class Target:
    """Where the benchmark's store lives, and how to bulk-seed it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.tmp = Path(tempfile.mkdtemp(prefix="tf-bench-state-"))
            self.url = f"sqlite:///{self.tmp / 'state.db'}"
            self.schema = ""
        else:
            import psycopg

            self.schema = f"tf_bench_state_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {self.schema}")
            sep = "&" if "?" in PG else "?"
            self.url = f"{PG}{sep}schema={self.schema}&pool_size=4"

    def close(self) -> None:
        if self.kind == "sqlite":
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            import psycopg

            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def rows(self, sql: str, *args: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of one query (as the owner, outside the engine)."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.tmp / "state.db")
            try:
                cur = conn.execute(sql, args)
                return [d[0] for d in cur.description], cur.fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(PG, options=f"-c search_path={self.schema}") as conn:
            cur = conn.execute(sql.replace("?", "%s"), args)
            assert cur.description is not None
            return [d.name for d in cur.description], cur.fetchall()

    def seed(self, template_run: str, runs: int, now: float) -> float:
        """Insert ``runs`` finished runs of ``big`` copied from ``template_run``; seconds."""
        templates: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
        for table in RUN_TABLES:
            key = "id" if table == "runs" else "run_id"
            order = " ORDER BY id" if table == "events" else ""
            cols, found = self.rows(f"SELECT * FROM {table} WHERE {key} = ?{order}", template_run)
            keep = [c for c in cols if not (table == "events" and c == "id")]
            templates[table] = (keep, [tuple(r[cols.index(c)] for c in keep) for r in found])
        created0 = templates["runs"][1][0][templates["runs"][0].index("created_at")]
        first, last = now - 400 * DAY, now - 35 * DAY
        spacing = (last - first) / max(1, runs)
        usage = self._usage_rows(template_run, runs, first, spacing)
        started = time.perf_counter()
        if self.kind == "sqlite":
            self._seed_sqlite(templates, runs, created0, first, spacing, usage)
        else:
            self._seed_postgres(templates, runs, created0, first, spacing, usage)
        return time.perf_counter() - started

    def _usage_rows(
        self, template_run: str, runs: int, first: float, spacing: float
    ) -> list[tuple[Any, ...]]:
        """Per-day usage the seeded runs add: the tenant's counters so far per run, times the
        runs of each day."""
        _, found = self.rows(
            "SELECT metric, dim, value FROM usage WHERE tenant_id = ? AND metric IN"
            " ('steps', 'slot_seconds')",
            BIG,
        )
        per_run: dict[tuple[str, str], float] = {}
        _, done = self.rows("SELECT COUNT(*) FROM runs WHERE tenant_id = ?", BIG)
        n_done = max(1, int(done[0][0]))
        for metric, dim, value in found:
            per_run[(metric, dim)] = float(value) / n_done
        by_day: dict[str, int] = defaultdict(int)
        for i in range(runs):
            by_day[time.strftime("%Y-%m-%d", time.gmtime(first + i * spacing))] += 1
        return [
            (BIG, day, metric, dim, value * count)
            for day, count in by_day.items()
            for (metric, dim), value in per_run.items()
        ]

    def _seed_sqlite(
        self,
        templates: dict[str, tuple[list[str], list[tuple[Any, ...]]]],
        runs: int,
        created0: float,
        first: float,
        spacing: float,
        usage: list[tuple[Any, ...]],
    ) -> None:
        conn = sqlite3.connect(self.tmp / "state.db", isolation_level=None)
        conn.execute("PRAGMA cache_size = -262144")  # 256 MB: the runs' other indexes
        try:
            for lo in range(0, runs, CHUNK):
                made = [first + k * spacing for k in range(lo, min(runs, lo + CHUNK))]
                ids = [new_run_id(at) for at in made]  # as the engine makes them
                shifts = [at - created0 for at in made]
                conn.execute("BEGIN IMMEDIATE")
                for table in RUN_TABLES:
                    cols, tmpl_rows = templates[table]
                    maker = _row_maker(cols, "id" if table == "runs" else "run_id")
                    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({_qs(len(cols))})"
                    for tmpl in tmpl_rows:
                        conn.executemany(
                            sql, (maker(tmpl, i, s) for i, s in zip(ids, shifts, strict=True))
                        )
                conn.execute("COMMIT")
            conn.executemany(
                "INSERT INTO usage (tenant_id, day, metric, dim, value) VALUES (?,?,?,?,?)"
                " ON CONFLICT (tenant_id, day, metric, dim) DO UPDATE"
                " SET value = value + excluded.value",
                usage,
            )
        finally:
            conn.close()

    def _seed_postgres(
        self,
        templates: dict[str, tuple[list[str], list[tuple[Any, ...]]]],
        runs: int,
        created0: float,
        first: float,
        spacing: float,
        usage: list[tuple[Any, ...]],
    ) -> None:
        import psycopg

        salt = secrets.token_hex(4)
        # as the engine makes them (tenantflow.domain.ids.new_run_id): creation ms, then random
        run_id = (
            "'run_' || lpad(to_hex(floor((%s::float8 + g.i * %s::float8) * 1000)::bigint), 12, '0')"
            f" || substr(md5('{salt}' || g.i::text), 1, 12)"
        )
        with psycopg.connect(PG, options=f"-c search_path={self.schema}") as conn:
            for lo in range(0, runs, CHUNK * 2):
                hi = min(runs, lo + CHUNK * 2) - 1
                for table in RUN_TABLES:
                    cols, tmpl_rows = templates[table]
                    id_col = "id" if table == "runs" else "run_id"
                    for tmpl in tmpl_rows:
                        exprs: list[str] = []
                        args: list[Any] = []
                        for col, value in zip(cols, tmpl, strict=True):
                            if col == id_col:
                                exprs.append(run_id)
                                args.extend([first, spacing])
                            elif col == "tenant_id":
                                exprs.append("%s")
                                args.append(BIG)
                            elif col in TIME_COLS and value is not None:
                                exprs.append("%s::float8 + g.i * %s::float8")
                                args.extend([value - created0 + first, spacing])
                            else:
                                exprs.append("%s")
                                args.append(value)
                        conn.execute(
                            f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(exprs)}"
                            " FROM generate_series(%s::bigint, %s::bigint) AS g(i)",
                            [*args, lo, hi],
                        )
                conn.commit()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO usage (tenant_id, day, metric, dim, value)"
                    " VALUES (%s,%s,%s,%s,%s) ON CONFLICT (tenant_id, day, metric, dim)"
                    " DO UPDATE SET value = usage.value + excluded.value",
                    usage,
                )
            conn.commit()
            conn.autocommit = True
            for table in (*RUN_TABLES, "tenants", "policy_versions", "audit_log", "usage"):
                conn.execute(f"ANALYZE {table}")


def _qs(n: int) -> str:
    return ",".join("?" * n)


def _row_maker(cols: list[str], id_col: str) -> Callable[[tuple[Any, ...], str, float], tuple]:
    kinds = [
        "id" if c == id_col else "tenant" if c == "tenant_id" else "time" if c in TIME_COLS else ""
        for c in cols
    ]

    def make(tmpl: tuple[Any, ...], run_id: str, shift: float) -> tuple[Any, ...]:
        return tuple(
            run_id
            if k == "id"
            else BIG
            if k == "tenant"
            else v + shift
            if k == "time" and v is not None
            else v
            for k, v in zip(kinds, tmpl, strict=True)
        )

    return make


# -- timing ----------------------------------------------------------------------------------


class SchedulerTimer:
    """Times, in place, every call the engine makes to its admission controller and its fair
    scheduler (the per-admission and per-pick work)."""

    CALLS = (("admission", ("submit", "finished")), ("scheduler", ("push", "pop", "done")))

    def __init__(self, engine: tf.Engine) -> None:
        self.ns: list[int] = []
        self.on = False
        owners = {"admission": engine.admission, "scheduler": engine.dispatcher.scheduler}
        for owner_name, methods in self.CALLS:
            owner = owners[owner_name]
            for name in methods:
                setattr(owner, name, self._timed(getattr(owner, name)))

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            started = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ns.append(time.perf_counter_ns() - started)

        return timed


async def measure(
    engines: dict[str, tf.Engine], targets: dict[str, Target], reps: int, rng: random.Random
) -> dict[str, dict[str, list[float]]]:
    """Latency (s) of each operation ``reps`` times on each store, the stores taking turns (one
    op on one, the same on the other, the order swapped every repetition) so that the rest of
    the machine weighs on both alike; and the scheduler's calls (s) while the submitted runs go
    through."""
    timers = {label: SchedulerTimer(engine) for label, engine in engines.items()}
    out = {label: {"submit": [], "list": [], "show": [], "scheduler": []} for label in engines}
    order = list(engines)

    def turns(i: int) -> list[str]:
        return order if i % 2 == 0 else order[::-1]

    for i in range(reps):
        for label in turns(i):
            engine, timer = engines[label], timers[label]
            timer.on = True
            t0 = time.perf_counter()
            handle = await engine.submit("small", tenant=BIG, input={"n": i})
            out[label]["submit"].append(time.perf_counter() - t0)
            await handle.result()
            timer.on = False
    samples: dict[str, list[str]] = {}
    for label, timer in timers.items():
        out[label]["scheduler"] = [ns / 1e9 for ns in timer.ns]
        # Runs of the tenant's whole history, drawn outside the engine (untimed).
        _, found = targets[label].rows(
            "SELECT id FROM runs WHERE tenant_id = ? ORDER BY random() LIMIT 1000", BIG
        )
        samples[label] = [r[0] for r in found]
    for i in range(reps):
        for label in turns(i):
            t0 = time.perf_counter()
            await engines[label].list_runs(BIG, limit=51)
            out[label]["list"].append(time.perf_counter() - t0)
    for i in range(reps):
        for label in turns(i):
            engine, run_id = engines[label], rng.choice(samples[label])
            t0 = time.perf_counter()
            await engine.get_run(BIG, run_id)
            await engine.steps(BIG, run_id)
            out[label]["show"].append(time.perf_counter() - t0)
    return out


async def steady(engine: tf.Engine, workers: list[str], stop: asyncio.Event) -> list[tuple]:
    """Closed loops of the workflow for each worker tenant: (started, finished) of every run."""
    spans: list[tuple[float, float]] = []

    async def loop(tenant: str) -> None:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            handle = await engine.submit("small", tenant=tenant, input={"n": i})
            await handle.result()
            spans.append((t0, time.perf_counter()))
            i += 1

    await asyncio.gather(*(loop(t) for t in workers))
    return spans


def _row(name: str, values: list[float], scale: float, unit: str) -> str:
    return (
        f"  {name:<10} n={len(values):>6}  p50 {_pct(values, 0.5) * scale:>9.3f} {unit}"
        f"  p99 {_pct(values, 0.99) * scale:>9.3f} {unit}"
        f"  mean {statistics.fmean(values) * scale:>9.3f} {unit}"
    )


def report(label: str, figures: dict[str, list[float]]) -> None:
    print(f"{label}:")
    for name in ("submit", "list", "show"):
        print(_row(name, figures[name], 1e3, "ms"))
    print(_row("scheduler", figures["scheduler"], 1e6, "us") + "  (per admission/pick call)")


async def bench(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    workers = [f"steady-{i}" for i in range(args.workers)]
    print(
        f"state scale: {args.store}, {args.runs:,} finished runs for one tenant, "
        f"{args.tenants:,} tenants, {args.reps} repetitions per operation"
    )
    print(f"load average before: {_load()}  ({os.cpu_count()} CPUs, shared machine)")
    targets: dict[str, Target] = {}
    try:
        for label in ("empty", "loaded"):
            targets[label] = Target(args.store)
            async with tf.Engine.open(targets[label].url) as engine:
                engine.register(wf)
                await engine.tenants.create(BIG, tier="standard", data_retention=timedelta(days=30))
                for tenant in workers:
                    await engine.tenants.create(tenant, tier="standard")
                if label == "loaded":
                    first = await engine.submit("small", tenant=BIG, input={"n": 0})
                    await first.result()
                    template = first.id
                    started = time.perf_counter()
                    names = [f"tenant-{i:06d}" for i in range(args.tenants)]
                    for lo in range(0, len(names), 50):
                        await asyncio.gather(
                            *(
                                engine.tenants.create(t, tier="standard")
                                for t in names[lo : lo + 50]
                            )
                        )
                    tenants_s = time.perf_counter() - started
        seed_s = targets["loaded"].seed(template, args.runs, time.time())
        print(
            f"seeded: {args.tenants:,} tenants through the API in {tenants_s:.1f} s, "
            f"{args.runs:,} finished runs in {seed_s:.1f} s (load average {_load()})"
        )

        engines: dict[str, tf.Engine] = {}
        async with contextlib.AsyncExitStack() as stack:
            for label, target in targets.items():
                started = time.perf_counter()
                engines[label] = await stack.enter_async_context(tf.Engine.open(target.url))
                engines[label].register(wf)
                tenants = len(engines[label].tenants.list())
                open_s = time.perf_counter() - started
                print(f"engine open, {label} store ({tenants:,} tenants): {open_s:.2f} s")
            figures = await measure(engines, targets, args.reps, rng)
            report("empty store (a few tenants)", figures["empty"])
            report(
                f"loaded store ({args.runs:,} runs, {args.tenants:,} tenants)", figures["loaded"]
            )
            print(f"load average: {_load()}")

            if args.skip_purge:
                _ratios(figures, purge=False)
                return
            engine = engines["loaded"]
            stop = asyncio.Event()
            loops = asyncio.create_task(steady(engine, workers, stop))
            await asyncio.sleep(args.steady_s)
            purge_from = time.perf_counter()
            purged = await engine.purge_expired(
                batch=args.batch, share=args.share, target_s=args.target_s
            )
            purge_to = time.perf_counter()
            await asyncio.sleep(args.steady_s)
            stop.set()
            spans = await loops
        # Runs that overlapped the purge, against those wholly before or after it.
        quiet = [t1 - t0 for t0, t1 in spans if t1 < purge_from or t0 > purge_to]
        during = [t1 - t0 for t0, t1 in spans if t1 >= purge_from and t0 <= purge_to]
        deleted = purged.get(BIG, {})
        target = "the store's" if args.target_s is None else f"{1000 * args.target_s:g} ms"
        print(
            f"purge_expired (target {target}, batch <= {args.batch}, share {args.share}): "
            f"{purge_to - purge_from:.2f} s, deleted "
            + ", ".join(f"{k} {v:,}" for k, v in deleted.items())
        )
        print(f"steady tenants ({args.workers}, closed loops) run latency:")
        print(_row("no purge", quiet, 1e3, "ms") + "  (before and after it)")
        print(_row("purge", during, 1e3, "ms"))

        _ratios(figures, purge=True)
        ratio = _pct(during, 0.99) / _pct(quiet, 0.99)
        print(f"  purge      p99 {ratio:5.2f}x  {'met' if ratio <= 1.2 else 'MISSED'}")
    finally:
        print(f"load average after: {_load()}")
        for target in targets.values():
            target.close()


def _ratios(figures: dict[str, dict[str, list[float]]], *, purge: bool) -> None:
    empty, loaded = figures["empty"], figures["loaded"]
    print()
    also = "; purge / no purge p99 <= 1.2x" if purge else ""
    print(f"ratios (target: loaded / empty <= 1.5x{also}):")
    for name in ("submit", "list", "show", "scheduler"):
        p50 = _pct(loaded[name], 0.5) / _pct(empty[name], 0.5)
        p99 = _pct(loaded[name], 0.99) / _pct(empty[name], 0.99)
        verdict = "met" if max(p50, p99) <= 1.5 else "MISSED"
        print(f"  {name:<10} p50 {p50:5.2f}x  p99 {p99:5.2f}x  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--runs", type=int, default=1_000_000, help="finished runs of one tenant")
    parser.add_argument("--tenants", type=int, default=10_000, help="tenants in the store")
    parser.add_argument("--reps", type=int, default=400, help="repetitions per operation")
    parser.add_argument("--workers", type=int, default=3, help="steady tenants during purge")
    parser.add_argument(
        "--steady-s", type=float, default=10.0, help="seconds without purge, before and after"
    )
    parser.add_argument("--batch", type=int, default=PURGE_BATCH, help="most runs a purge batch")
    parser.add_argument(
        "--target-s",
        type=float,
        help="a purge transaction's target time (default: the store's own, SQLite's 2 ms)",
    )
    parser.add_argument(
        "--share", type=float, default=PURGE_SHARE, help="most of the store's time purge takes"
    )
    parser.add_argument(
        "--skip-purge",
        action="store_true",
        help="measure submit, list, show and the scheduler only, not the purge",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
