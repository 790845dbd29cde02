"""Throughput of durable four-step workflows on the embedded SQLite store.

    python benchmarks/throughput.py                  # N=5,000 runs, synchronous=full
    python benchmarks/throughput.py --runs 500 --synchronous normal

Every step transition is committed before it is acted on (group commit batches them). Prints
workflows/s, steps/s, p50/p99 end-to-end latency (submission to completion) and peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

import tenantflow as tf


class Item(BaseModel):
    n: int


wf = tf.Workflow("bench", input=Item)


@wf.step
async def one(ctx: tf.StepContext, input: Item) -> Item:
    return Item(n=input.n + 1)


@wf.step
async def two(ctx: tf.StepContext, one: Item) -> Item:
    return Item(n=one.n + 1)


@wf.step
async def three(ctx: tf.StepContext, two: Item) -> Item:
    return Item(n=two.n + 1)


@wf.step
async def four(ctx: tf.StepContext, three: Item) -> Item:
    return Item(n=three.n + 1)


async def run(n: int, url: str, slots: int, tenants: int) -> dict[str, float]:
    latencies: list[float] = []
    async with tf.Engine.open(url, slots=slots, auto_tenant="enterprise") as engine:
        engine.register(wf)

        async def one_run(i: int) -> None:
            t0 = time.perf_counter()
            handle = await engine.submit("bench", tenant=f"t{i % tenants}", input={"n": i})
            out = await handle.result()
            assert out.n == i + 4
            latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(one_run(i) for i in range(n)))
        elapsed = time.perf_counter() - start
        writer = engine.runtime.writer
        batches, ops = writer.batches, writer.ops
    latencies.sort()
    return {
        "elapsed_s": elapsed,
        "workflows_per_s": n / elapsed,
        "steps_per_s": 4 * n / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "ops_per_commit": ops / max(1, batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--synchronous", default="full", choices=["full", "normal"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}?synchronous={args.synchronous}"
        figures = asyncio.run(run(args.runs, url, args.slots, args.tenants))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"throughput: {args.runs} four-step workflows, SQLite synchronous={args.synchronous}, "
        f"slots={args.slots}"
    )
    print(f"  workflows/s      {figures['workflows_per_s']:10.1f}")
    print(f"  steps/s          {figures['steps_per_s']:10.1f}")
    print(f"  p50 latency ms   {figures['p50_ms']:10.1f}")
    print(f"  p99 latency ms   {figures['p99_ms']:10.1f}")
    print(f"  ops per commit   {figures['ops_per_commit']:10.1f}")
    print(f"  peak RSS MB      {peak_mb:10.1f}")
    print(f"  elapsed s        {figures['elapsed_s']:10.2f}")


if __name__ == "__main__":
    main()
