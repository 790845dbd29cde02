"""LangGraph's side of the peer harness (runs in benchmarks/peers/.venv-peers).

    .venv-peers/bin/python langgraph_side.py throughput --runs 2000 --db /tmp/x.db

A ``StateGraph`` of four nodes that only compute (START -> one -> two -> three -> four -> END),
compiled with the async SQLite checkpointer (``AsyncSqliteSaver``: WAL, one aiosqlite
connection, synchronous as SQLite's default), one ``thread_id`` per run, invoked with
``durability="sync"`` (each step's checkpoint written before the next step starts;
``--variant async`` uses LangGraph's default instead). Throughput: all runs started at once
(``ainvoke`` each, results awaited), timed from the first start to the last result.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from typing import Any, TypedDict

from common import STEPS, WARMUP, compute, emit, latency, parse, throughput
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    n: int


def node(state: State) -> State:
    return {"n": compute(state["n"])}


async def anode(state: State) -> State:
    return node(state)


def build() -> StateGraph[State]:
    graph: StateGraph[State] = StateGraph(State)
    names = ["one", "two", "three", "four"]
    for name in names:
        graph.add_node(name, anode)
    graph.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph


async def main_async(mode: str, runs: int, db: str, durability: str) -> dict[str, Any]:
    async with AsyncSqliteSaver.from_conn_string(db) as saver:
        app = build().compile(checkpointer=saver)

        async def one_run(i: int) -> float:
            t0 = time.perf_counter()
            out = await app.ainvoke(
                {"n": i},
                config={"configurable": {"thread_id": f"run-{i}"}},
                durability=durability,  # type: ignore[arg-type]
            )
            if out["n"] != i + STEPS:
                raise AssertionError(f"run {i}: {out['n']} != {i + STEPS}")
            return time.perf_counter() - t0

        if mode == "throughput":
            start = time.perf_counter()
            await asyncio.gather(*(one_run(i) for i in range(runs)))
            figures = throughput(runs, time.perf_counter() - start, durability=durability)
        else:
            for i in range(WARMUP):
                await one_run(i)
            samples = [await one_run(WARMUP + i) for i in range(runs)]
            figures = latency(samples, durability=durability)
        sync = (await (await saver.conn.execute("PRAGMA synchronous")).fetchone() or [None])[0]
    with sqlite3.connect(db) as conn:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    figures["durability"] = (
        f"LangGraph AsyncSqliteSaver, journal_mode={journal},"
        f" synchronous={names.get(sync, sync)}, durability={durability!r}, one thread per run"
    )
    return figures


def main() -> None:
    args = parse(__doc__.splitlines()[0])
    emit(asyncio.run(main_async(args.mode, args.runs, args.db, args.variant or "sync")))


if __name__ == "__main__":
    main()
