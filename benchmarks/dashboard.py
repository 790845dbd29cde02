"""How long the dashboard takes to render its heaviest pages (target: under a second each).

    python benchmarks/dashboard.py                       # 100,000 runs, a 5,000-step run
    python benchmarks/dashboard.py --runs 20000 --steps 1000 --repeat 3

On a SQLite store in a temporary directory: a tenant with ``--runs`` finished runs (each with a
1 KB input and result, so that a list reading payloads would show it), and one run that
really executes a fan-out of ``--steps`` elements. Then, through the app in-process
(``httpx.ASGITransport``, signed in with the tenant's key like a browser), each page is fetched
``--repeat`` times and every fetch's time is printed: the runs list (first page, a filtered
page, a deep cursor page) and the big run's page (first and last page of its steps, and the
live part the page reloads on each event), the filters the store cannot apply (a cost bound,
an "until" time: each page reads at most 2,000 runs without payloads, then links on), and the
memory page.

The finished runs are written with SQL straight into the store's file (submitting 100,000 runs
through the engine would take minutes and measure the engine, not the page).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

import tenantflow as tf
from tenantflow.api import create_app

TENANT = "bench"
PAYLOAD = {"text": "x" * 1000}


def fan_workflow(steps: int) -> tf.Workflow:
    wf = tf.Workflow("fan", input=int)

    @wf.step
    async def items(ctx: tf.StepContext, input: int) -> list[int]:
        return list(range(input))

    @wf.step(fan_out="items")
    async def square(ctx: tf.StepContext, items: int) -> int:
        return items * items

    @wf.step
    async def total(ctx: tf.StepContext, square: list[int]) -> int:
        return sum(square)

    return wf


def seed(db: Path, count: int, now: float) -> None:
    """``count`` finished runs of the tenant, one a second back from ``now``."""
    payload = json.dumps(PAYLOAD).encode()
    statuses = ("completed", "completed", "completed", "failed", "cancelled")
    rows = [
        (
            f"run_{i:024x}",
            TENANT,
            "seeded" if i % 2 else "other",
            "1",
            statuses[i % len(statuses)],
            "normal",
            payload,
            payload,
            "0" * 64,
            "{}",
            now - (count - i),
            now - (count - i) + 1,
            now - (count - i) + 1,
        )
        for i in range(count)
    ]
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO runs (id, tenant_id, workflow, workflow_version, status, lane, input,"
            " result, state_hash, meta, created_at, updated_at, finished_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )


async def timed(client: httpx.AsyncClient, url: str, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        r = await client.get(url)
        out.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return out


async def main(runs: int, steps: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        url = f"sqlite:///{db}?synchronous=normal"
        wf = fan_workflow(steps)
        # First start: the schema, the tenant, its key, and the big run executed for real.
        engine = tf.Engine.open(url, slots=64)
        app = create_app(engine, setup=[lambda e: e.register(wf)])
        async with app.router.lifespan_context(app):
            await engine.tenants.create(TENANT, max_running_steps=64, max_active_runs=10)
            _, key = await engine.keys.create(TENANT, name="bench")
            started = time.perf_counter()
            handle = await engine.submit("fan", tenant=TENANT, input=steps)
            await handle.result()
            big = handle.id
            ran_s = time.perf_counter() - started
            now = engine.clock.now()
        print(f"dashboard: a run of {steps + 2} steps executed in {ran_s:.1f} s")
        started = time.perf_counter()
        seed(db, runs, now - 10)
        print(f"dashboard: {runs:,} finished runs written in {time.perf_counter() - started:.1f} s")

        engine = tf.Engine.open(url, slots=64)
        app = create_app(engine, setup=[lambda e: e.register(wf)])
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ui") as client:
                login = await client.get("/ui/login")
                token = re.search(r'name="csrf" value="([^"]+)"', login.text)
                assert token is not None
                r = await client.post("/ui/login", data={"csrf": token.group(1), "key": key})
                assert r.status_code == 303, r.text
                deep = f"run_{runs // 2:024x}"
                day_back = datetime.fromtimestamp(now - 86_400, UTC).strftime("%Y-%m-%dT%H:%M")
                pages = -(-(steps + 2) // 200)
                cases = [
                    ("runs list, first page", "/ui/runs"),
                    ("runs list, status=failed", "/ui/runs?status=failed"),
                    ("runs list, workflow + 7d", "/ui/runs?workflow=seeded&window=7d"),
                    ("runs list, cursor mid-way", f"/ui/runs?cursor={deep}"),
                    ("runs list, cost >= $0.01 (2,000 read)", "/ui/runs?min_cost=0.01"),
                    ("runs list, until a day back (2,000 read)", f"/ui/runs?until={day_back}"),
                    ("memory page", "/ui/memory"),
                    (f"run page ({steps + 2} steps), page 1", f"/ui/runs/{big}"),
                    (f"run page, steps page {pages}", f"/ui/runs/{big}?page={pages}"),
                    ("run page, live part", f"/ui/runs/{big}/live"),
                ]
                print(f"{'page':38} {'each fetch, ms':>40}   median")
                for label, path in cases:
                    figures = await timed(client, path, repeat)
                    each = " ".join(f"{ms:7.1f}" for ms in figures)
                    print(f"{label:38} {each:>40}   {statistics.median(figures):7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.steps, args.repeat))
