"""What one read of a run costs the client on PostgreSQL: wall time and this process's CPU per
call, for ``get_run`` (the run) and ``read_run`` (the run and its steps), one call at a time.

    python benchmarks/store_reads.py
    python benchmarks/store_reads.py --url postgresql://postgres@127.0.0.1:5432/test --calls 5000

A finished run of ``cluster_throughput.py``'s four-step workflow is written by an embedded
engine on a fresh schema (dropped at the end); then each read is called ``--calls`` times after
a warm-up, and the figures are the totals divided by the calls (``time.perf_counter`` and
``time.process_time``). The server's own CPU is not counted: this is the cost on the side of
the engine, the workers and agents.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from cluster_throughput import wf  # the same four-step workflow (benchmarks/ is on the path)

import tenantflow as tf

PG = os.environ.get("TENANTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def measure(url: str, calls: int) -> None:
    import psycopg

    schema = f"tf_bench_reads_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    try:
        async with tf.Engine.open(f"{url}{sep}schema={schema}", auto_tenant="standard") as engine:
            engine.register(wf)
            handle = await engine.submit(wf.name, tenant="t1", input=1)
            await handle.result()
            store: Any = engine.store
            reads: dict[str, Callable[[], Awaitable[Any]]] = {
                "get_run": lambda: store.get_run("t1", handle.id),
                "read_run": lambda: store.read_run("t1", handle.id),
            }
            for name, read in reads.items():
                for _ in range(min(200, calls)):
                    await read()
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    await read()
                wall = (time.perf_counter() - wall0) / calls
                cpu = (time.process_time() - cpu0) / calls
                print(f"{name:9s} {1e6 * wall:7.0f} us wall {1e6 * cpu:7.0f} us client CPU a call")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=PG)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    load = os.getloadavg()[0]
    print(f"one read at a time on {args.url} ({args.calls} calls each), load {load:.1f}")
    asyncio.run(measure(args.url, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
