"""DBOS Transact's side of the peer harness (runs in benchmarks/peers/.venv-peers).

    .venv-peers/bin/python dbos_side.py throughput --runs 2000 --db /tmp/x.db [--variant queue]

DBOS with a SQLite system database (its own connection settings; the file's journal mode and
the connection's ``synchronous`` are read back and reported). A workflow of four
``@DBOS.step`` s that only compute; every step's output is recorded before the workflow goes
on. ``--variant start`` (default): ``DBOS.start_workflow_async``; ``--variant queue``:
``Queue.enqueue_async`` on a queue registered with concurrency 64 (tenantflow's slots) and a
50 ms polling interval (DBOS's default is 1 s). Every handle is awaited with
``get_result()``; throughput is timed from the first submit to the last result read.
A ``+wal`` suffix (``start+wal``, ``queue+wal``) switches the file to WAL before DBOS opens it;
DBOS itself leaves SQLite's default rollback journal (``journal_mode=delete``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from common import STEPS, WARMUP, compute, emit, latency, parse, throughput
from dbos import DBOS

QUEUE = "bench"
CONCURRENCY = 64
POLL_S = 0.05


@DBOS.step()
async def one(n: int) -> int:
    return compute(n)


@DBOS.step()
async def two(n: int) -> int:
    return compute(n)


@DBOS.step()
async def three(n: int) -> int:
    return compute(n)


@DBOS.step()
async def four(n: int) -> int:
    return compute(n)


@DBOS.workflow()
async def bench(n: int) -> int:
    return await four(await three(await two(await one(n))))


async def main_async(mode: str, runs: int, db: str, variant: str) -> dict[str, Any]:
    if variant.endswith("+wal"):
        # The same file in WAL mode (persistent in the file; DBOS keeps its own settings).
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    DBOS(config={"name": "peers-bench", "system_database_url": f"sqlite:///{db}"})
    DBOS.launch()
    queue = None
    if variant.startswith("queue"):
        queue = await DBOS.register_queue_async(
            QUEUE, global_concurrency=CONCURRENCY, polling_interval_sec=POLL_S
        )

    async def one_run(i: int) -> float:
        t0 = time.perf_counter()
        if queue is not None:
            handle = await queue.enqueue_async(bench, i)
        else:
            handle = await DBOS.start_workflow_async(bench, i)
        out = await handle.get_result()
        if out != i + STEPS:
            raise AssertionError(f"run {i}: {out} != {i + STEPS}")
        return time.perf_counter() - t0

    try:
        if mode == "throughput":
            start = time.perf_counter()
            await asyncio.gather(*(one_run(i) for i in range(runs)))
            figures = throughput(runs, time.perf_counter() - start, variant=variant)
        else:
            for i in range(WARMUP):
                await one_run(i)
            figures = latency([await one_run(WARMUP + i) for i in range(runs)], variant=variant)
    finally:
        DBOS.destroy()
    with sqlite3.connect(db) as conn:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
            conn.execute("PRAGMA synchronous").fetchone()[0], "?"
        )
    figures["durability"] = (
        f"DBOS SQLite system database, journal_mode={journal}, synchronous={sync} (SQLite's"
        " default; DBOS sets only busy_timeout and foreign_keys), each step recorded"
        f" before the next; {variant}"
    )
    return figures


def main() -> None:
    args = parse(__doc__.splitlines()[0])
    emit(asyncio.run(main_async(args.mode, args.runs, args.db, args.variant or "start")))


if __name__ == "__main__":
    main()
