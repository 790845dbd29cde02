"""Throughput on PostgreSQL: one embedded engine, then a front with N worker processes.

    python benchmarks/cluster_throughput.py                  # 3,000 runs, 3 workers
    python benchmarks/cluster_throughput.py --runs 1000 --workers 2 --tenants 20
    python benchmarks/cluster_throughput.py --url postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/cluster_throughput.py --await-results   # the client reads every result

The same four-step workflow as ``benchmarks/throughput.py`` (steps that only compute: what is
measured is the engine and the database), on a fresh schema of the given database (dropped at
the end), in two set-ups one after the other:

1. embedded — one executing engine in this process submits and drives every run;
2. cluster  — this process is a front (``cluster="front"``): it only submits; ``--workers``
   ``tenantflow worker`` processes drive the runs, each the tenants it owns.

Each set-up first runs a tenth of the runs and ANALYZEs the schema, so that the measured runs
meet tables with statistics, as in a database in use: on a fresh schema PostgreSQL plans the hot
statements blind until autovacuum's first analyse, and the figures halve and vary from run to
run. Prints submissions/s (how fast the runs were durably recorded), workflows/s and steps/s
(first measured submission to last completion), p50/p99 latency (a run's ``created_at`` to
``finished_at`` in the store) and, for the cluster, how the tenants were spread over the workers
and where the CPU went while the measured runs ran (from ``/proc``: Linux).

By default the end is found by counting completed runs in the store. With ``--await-results``
the client reads every run's result through its handle instead (``await handle.result()``),
and the time runs from the first measured submission to the last result read: the definition
peer comparisons use. An embedded engine answers a run it drove from memory; a front reads
each run it waits on from the store, when it starts waiting and when the run's worker announces
its end, so the client waits on 64 runs at a time.

The cluster set-up ends with ``--sequential`` runs (100) submitted through the front one at a
time, each awaited before the next, and prints their p50 / p99 submit → result latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import tenantflow as tf

HERE = Path(__file__).parent
STEPS = 4
wf = tf.Workflow("bench", input=int)


@wf.step
async def one(ctx: tf.StepContext, input: int) -> int:
    return input + 1


@wf.step
async def two(ctx: tf.StepContext, one: int) -> int:
    return one + 1


@wf.step
async def three(ctx: tf.StepContext, two: int) -> int:
    return two + 1


@wf.step
async def four(ctx: tf.StepContext, three: int) -> int:
    return three + 1


def setup(engine: tf.Engine) -> None:
    """The workers' ``--app``."""
    engine.register(wf)


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, f"schema={schema}") if q)
    return urlunsplit(parts._replace(query=query))


async def create_tenants(engine: tf.Engine, tenants: int) -> list[str]:
    names = [f"t{i}" for i in range(tenants)]
    for name in names:
        if engine.tenants.cached(name) is None:
            await engine.tenants.create(name, tier="enterprise")
    return names


async def submit_all(
    engine: tf.Engine, names: list[str], runs: int, handles: list[tf.RunHandle] | None = None
) -> tuple[float, float]:
    """Submit ``runs`` runs, 64 at a time (their handles appended to ``handles`` if given);
    (start, seconds it took)."""
    start = time.perf_counter()
    pending = iter(range(runs))

    async def submitter() -> None:
        for i in pending:
            handle = await engine.submit("bench", tenant=names[i % len(names)], input=i)
            if handles is not None:
                handles.append(handle)

    await asyncio.gather(*(submitter() for _ in range(64)))
    return start, time.perf_counter() - start


async def submit_and_finish(
    engine: tf.Engine, names: list[str], runs: int, done_before: int, await_results: bool
) -> tuple[float, float]:
    """Submit ``runs`` runs and wait until they have ended: by counting completed runs in the
    store, or (``await_results``) by reading every run's result through its handle, each
    checked. (start, seconds the submissions took)."""
    handles: list[tf.RunHandle] | None = [] if await_results else None
    start, submit_s = await submit_all(engine, names, runs, handles)
    if handles is None:
        await wait_all(engine.store, done_before + runs, 600)
        return start, submit_s
    # 64 readers, as there are 64 submitters: a front answers each wait by reading the store,
    # and thousands of concurrent reads would queue on its connection pool.
    readers = asyncio.Semaphore(64)

    async def read(handle: tf.RunHandle) -> int:
        async with readers:
            return int(await handle.result())

    results = await asyncio.wait_for(asyncio.gather(*(read(h) for h in handles)), 600)
    if sorted(results) != [i + STEPS for i in range(runs)]:
        raise SystemExit("a result differs from its input + 4")
    return start, submit_s


async def wait_all(store: object, runs: int, deadline_s: float) -> None:
    started = time.perf_counter()
    while True:
        rows = await store.execute_sql(  # type: ignore[attr-defined]
            "SELECT count(*) FROM runs WHERE status = 'completed'"
        )
        if rows[0][0] >= runs:
            return
        if time.perf_counter() - started > deadline_s:
            raise SystemExit(f"only {rows[0][0]} of {runs} runs completed in {deadline_s:.0f}s")
        await asyncio.sleep(0.05)


async def warm_up(engine: tf.Engine, names: list[str], runs: int) -> tuple[int, float]:
    """A tenth of the runs first, then ANALYZE, so that the measured runs meet tables with
    statistics, as in a database that has been in use (a fresh schema has none, and the plans
    PostgreSQL picks before autovacuum's first analyse vary from run to run). Returns the runs
    done and the time the measured ones start after."""
    warm = max(1, runs // 10)
    await submit_all(engine, names, warm)
    await wait_all(engine.store, warm, 600)
    await engine.store.execute_sql("ANALYZE")  # type: ignore[attr-defined]
    return warm, time.time()


async def latencies(store: object, since: float) -> tuple[float, float]:
    rows = await store.execute_sql(  # type: ignore[attr-defined]
        "SELECT finished_at - created_at FROM runs WHERE status = 'completed'"
        " AND created_at >= ? ORDER BY 1",
        (since,),
    )
    values = [float(r[0]) for r in rows]
    return values[len(values) // 2], values[min(len(values) - 1, int(0.99 * len(values)))]


async def one_at_a_time(engine: tf.Engine, names: list[str], runs: int) -> tuple[float, float]:
    """Submit ``runs`` runs one after the other, each awaited before the next: p50 and p99 of
    submit → result read by the client, in seconds (a front learns of each end from its
    worker's announcement, see ``tenantflow.engine.ends``)."""
    took = []
    for i in range(runs):
        started = time.perf_counter()
        handle = await engine.submit("bench", tenant=names[i % len(names)], input=i)
        if await handle.result() != i + STEPS:
            raise SystemExit("a result differs from its input + 4")
        took.append(time.perf_counter() - started)
    took.sort()
    return took[len(took) // 2], took[min(len(took) - 1, int(0.99 * len(took)))]


async def embedded(
    url: str, runs: int, tenants: int, slots: int, await_results: bool
) -> dict[str, float]:
    async with tf.Engine.open(url, slots=slots) as engine:
        engine.register(wf)
        names = await create_tenants(engine, tenants)
        warm, since = await warm_up(engine, names, runs)
        start, submit_s = await submit_and_finish(engine, names, runs, warm, await_results)
        elapsed = time.perf_counter() - start
        p50, p99 = await latencies(engine.store, since)
    return {"submit_s": submit_s, "elapsed_s": elapsed, "p50_s": p50, "p99_s": p99}


def start_workers(command: list[str], env: dict[str, str], n: int) -> list[subprocess.Popen[bytes]]:
    out = subprocess.DEVNULL
    return [subprocess.Popen(command, env=env, stdout=out, stderr=out) for _ in range(n)]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has used (user + system), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    ticks = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # all but idle, iowait
    return ticks / os.sysconf("SC_CLK_TCK")


def processes_cpu_s(procs: list[subprocess.Popen[bytes]]) -> float:
    """CPU seconds (user + system) the processes have used so far, from /proc/<pid>/stat."""
    ticks = 0
    for proc in procs:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def cluster(
    url: str,
    runs: int,
    tenants: int,
    slots: int,
    workers: int,
    await_results: bool,
    sequential: int,
) -> dict[str, float | str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    command = [str(Path(sys.executable).with_name("tenantflow")), "worker", "--db", url]
    command += ["--app", "cluster_throughput:setup", "--slots", str(slots), "--lease", "10"]
    front = tf.Engine.open(url, cluster="front")
    front.register(wf)
    async with front:
        names = await create_tenants(front, tenants)
        procs = start_workers(command, env, workers)
        try:
            # Wait until every worker has joined and the tenants are spread over all of them.
            while True:
                owners = await front.store.execute_sql(  # type: ignore[attr-defined]
                    "SELECT owner, count(*) FROM tenant_owners GROUP BY owner"
                )
                if len(owners) == workers and sum(int(n) for _, n in owners) == tenants:
                    break
                await asyncio.sleep(0.1)
            spread = sorted(int(n) for _, n in owners)
            warm, since = await warm_up(front, names, runs)
            machine0, front0 = machine_cpu_s(), own_cpu_s(resource.RUSAGE_SELF)
            workers0 = processes_cpu_s(procs)
            start, submit_s = await submit_and_finish(front, names, runs, warm, await_results)
            elapsed = time.perf_counter() - start
            machine, front_cpu = (
                machine_cpu_s() - machine0,
                own_cpu_s(resource.RUSAGE_SELF) - front0,
            )
            workers_cpu = processes_cpu_s(procs) - workers0
            p50, p99 = await latencies(front.store, since)
            one = await one_at_a_time(front, names, sequential) if sequential > 0 else None
        finally:
            stop_workers(procs)
    return {
        "submit_s": submit_s,
        "elapsed_s": elapsed,
        "p50_s": p50,
        "p99_s": p99,
        **({"one_p50_s": one[0], "one_p99_s": one[1]} if one is not None else {}),
        "spread": "/".join(map(str, spread)),
        "cpu": f"machine {machine / elapsed:.2f} cores: workers {workers_cpu / elapsed:.2f},"
        f" front {front_cpu / elapsed:.2f}, rest (PostgreSQL) "
        f"{max(0.0, machine - workers_cpu - front_cpu) / elapsed:.2f}",
    }


async def drop(url: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def report(name: str, runs: int, figures: dict[str, float | str]) -> None:
    submit_s, elapsed = float(figures["submit_s"]), float(figures["elapsed_s"])
    print(f"{name}")
    print(f"  submissions/s    {runs / submit_s:10.1f}")
    print(f"  workflows/s      {runs / elapsed:10.1f}")
    print(f"  steps/s          {STEPS * runs / elapsed:10.1f}")
    print(f"  p50 latency ms   {1000 * float(figures['p50_s']):10.1f}")
    print(f"  p99 latency ms   {1000 * float(figures['p99_s']):10.1f}")
    if "one_p50_s" in figures:
        p50, p99 = 1000 * float(figures["one_p50_s"]), 1000 * float(figures["one_p99_s"])
        print(f"  one at a time    p50 {p50:.1f} / p99 {p99:.1f} ms")
    if "spread" in figures:
        print(f"  tenants/worker   {figures['spread']:>10}")
        print(f"  CPU              {figures['cpu']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--tenants", type=int, default=30)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument(
        "--await-results", action="store_true", help="the client reads every run's result"
    )
    parser.add_argument(
        "--sequential",
        type=int,
        default=100,
        help="runs submitted through the front one at a time at the end, each awaited",
    )
    args = parser.parse_args()
    ending = "every result awaited" if args.await_results else "completions counted in the store"
    print(
        f"{args.runs} four-step workflows, {args.tenants} tenants, PostgreSQL,"
        f" {os.cpu_count()} CPUs, {ending}"
    )
    for name in (["embedded"] if not args.skip_embedded else []) + ["cluster"]:
        schema = f"tf_bench_{secrets.token_hex(4)}"
        url = with_schema(args.url, schema)
        try:
            if name == "embedded":
                figures: dict[str, float | str] = dict(
                    asyncio.run(
                        embedded(url, args.runs, args.tenants, args.slots, args.await_results)
                    )
                )
                report("embedded: one engine submits and executes", args.runs, figures)
            else:
                figures = asyncio.run(
                    cluster(
                        url,
                        args.runs,
                        args.tenants,
                        args.slots,
                        args.workers,
                        args.await_results,
                        args.sequential,
                    )
                )
                report(
                    f"cluster: a front submits, {args.workers} worker processes execute",
                    args.runs,
                    figures,
                )
        finally:
            asyncio.run(drop(args.url, schema))


if __name__ == "__main__":
    main()
