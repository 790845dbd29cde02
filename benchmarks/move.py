"""How long a live tenant move takes: a busy tenant from the shared pool (PostgreSQL) to a cell
(SQLite) and back, with runs in flight.

    python benchmarks/move.py                                   # 200 and 1000 runs in flight
    python benchmarks/move.py --runs 500 --postgres postgresql://postgres@127.0.0.1:5432/test

For each size it submits that many runs of a three-step workflow (a priced tool call in the
first step) for the busy tenant, holds 8 attempts of the middle step at a gate (the tenant's
running-step cap) with the rest queued, starts the move, opens the gate once the fence is up
(so those attempts finish at the source) and prints, for each direction: rows copied, the time
submissions were refused (fence up to the tenant resumed at the target) and the time until
every moved run completed at the target. A schema of its own is created on the server and
dropped afterwards. Figures measured on a loaded machine are noisy: run it a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import tenantflow as tf
from tenantflow.placement.move import move_tenant, moved_to

CAP = 8


def workflow(gate: asyncio.Event) -> tf.Workflow:
    wf = tf.Workflow("three", input=int)

    @wf.step
    async def first(ctx: tf.StepContext, input: int) -> int:
        await ctx.tool("charge", amount=input)
        return input + 1

    @wf.step
    async def second(ctx: tf.StepContext, first: int) -> int:
        await gate.wait()
        return first * 2

    @wf.step
    async def third(ctx: tf.StepContext, second: int) -> int:
        return second + 1

    return wf


def engine(url: str, gate: asyncio.Event) -> tf.Engine:
    e = tf.Engine.open(url, slots=16)
    e.register(workflow(gate))

    @e.tools.register(cost_usd=0.01)
    async def charge(amount: int) -> int:
        return amount

    return e


async def until(predicate: Callable[[], bool]) -> None:
    while True:
        if predicate():
            return
        await asyncio.sleep(0.002)


async def leg(source: tf.Engine, target: tf.Engine, n: int, gate: asyncio.Event) -> str:
    gate.clear()
    ids = [(await source.submit("three", tenant="busy", input=i)).id for i in range(n)]
    await until(
        lambda: (
            sum(len(r.executing) for rt in source.runtimes.values() for r in rt.active.values())
            >= CAP
        )
    )
    started = time.perf_counter()
    move = asyncio.create_task(move_tenant(source, target, "busy", location="elsewhere"))
    await until(lambda: moved_to(source, "busy") is not None)
    gate.set()
    report = await move
    moved = time.perf_counter() - started
    for run_id in ids:
        record = await target.wait("busy", run_id, timedelta(seconds=600))
        assert record.status == tf.RunStatus.COMPLETED, record
    done = time.perf_counter() - started
    assert report.drained and set(report.left.values()) == {0}
    assert (await target.audit_verify("busy")).ok
    return (
        f"{report.in_flight} in flight, {sum(report.rows.values())} rows;"
        f" submissions refused {report.fenced_s * 1000:.0f} ms; move {moved * 1000:.0f} ms;"
        f" all moved runs completed {done:.2f} s after it started"
    )


async def run(postgres: str, sizes: list[int]) -> None:
    import psycopg

    schema = f"tf_bench_move_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in postgres else "?"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            gate = asyncio.Event()
            for n in sizes:
                pool = engine(f"{postgres}{sep}schema={schema}", gate)
                cell = engine(f"sqlite:///{Path(tmp) / f'cell-{n}.db'}", gate)
                async with pool, cell:
                    await pool.tenants.create(
                        "busy",
                        tier="enterprise",
                        max_active_runs=n + 10,
                        max_running_steps=CAP,
                        guaranteed_slots=0,
                        burst_slots=0,
                    )
                    print(f"{n} runs, pool -> cell: {await leg(pool, cell, n, gate)}")
                    print(f"{n} runs, cell -> pool: {await leg(cell, pool, n, gate)}")
                    await pool.tenants.delete("busy", purge_audit=True)
    finally:
        with psycopg.connect(postgres, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, action="append", help="runs in flight (repeatable)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    asyncio.run(run(args.postgres, args.runs or [200, 1000]))


if __name__ == "__main__":
    main()
