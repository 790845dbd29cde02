"""tenantflow's side of the peer harness (runs in the project's virtual environment).

    python benchmarks/peers/tf_side.py throughput --runs 2000 --db /tmp/x.db
    python benchmarks/peers/tf_side.py latency --runs 300 --db /tmp/y.db

The embedded engine on SQLite with ``synchronous=FULL`` (the default): every step transition is
committed (group commit) before it is acted on. Throughput: all runs submitted at once, each
awaited with ``handle.result()``; timed from the first submit to the last result read.
Latency: one run at a time, submit -> result.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

from common import STEPS, WARMUP, compute, emit, latency, parse, throughput
from pydantic import BaseModel

import tenantflow as tf

SLOTS = 64
TENANTS = 10


class Item(BaseModel):
    n: int


wf = tf.Workflow("bench", input=Item)


@wf.step
async def one(ctx: tf.StepContext, input: Item) -> Item:
    return Item(n=compute(input.n))


@wf.step
async def two(ctx: tf.StepContext, one: Item) -> Item:
    return Item(n=compute(one.n))


@wf.step
async def three(ctx: tf.StepContext, two: Item) -> Item:
    return Item(n=compute(two.n))


@wf.step
async def four(ctx: tf.StepContext, three: Item) -> Item:
    return Item(n=compute(three.n))


async def main_async(mode: str, runs: int, db: str) -> dict[str, object]:
    url = f"sqlite:///{db}?synchronous=full"
    async with tf.Engine.open(url, slots=SLOTS, auto_tenant="enterprise") as engine:
        engine.register(wf)

        async def one_run(i: int) -> float:
            t0 = time.perf_counter()
            handle = await engine.submit("bench", tenant=f"t{i % TENANTS}", input={"n": i})
            out = await handle.result()
            if out.n != i + STEPS:
                raise AssertionError(f"run {i}: {out.n} != {i + STEPS}")
            return time.perf_counter() - t0

        if mode == "throughput":
            start = time.perf_counter()
            await asyncio.gather(*(one_run(i) for i in range(runs)))
            elapsed = time.perf_counter() - start
            figures = throughput(runs, elapsed, slots=SLOTS, tenants=TENANTS)
        else:
            for i in range(WARMUP):
                await one_run(i)
            figures = latency([await one_run(WARMUP + i) for i in range(runs)])
    with sqlite3.connect(db) as conn:
        figures["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
    figures["durability"] = "SQLite synchronous=FULL, WAL, group commit before acting"
    return figures


def main() -> None:
    args = parse(__doc__.splitlines()[0])
    emit(asyncio.run(main_async(args.mode, args.runs, args.db)))


if __name__ == "__main__":
    main()
