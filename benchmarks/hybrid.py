"""The hybrid placement's price and payoff: critical-path latency with side effects
choreographed (outbox → JetStream → side-effect agent) vs fully orchestrated (the engine runs
them), and the outbox lag.

    python benchmarks/hybrid.py                          # 200 runs x 3 repeats, 20 in flight
    python benchmarks/hybrid.py --runs 500 --effect-ms 50 --repeats 5

A run is ``charge`` → ``ship`` on the critical path, plus two side effects of ``charge``:
``notify`` and ``track`` (each an HTTP POST to a local receiver that takes ``--effect-ms`` to
answer, standing for a webhook or an analytics sink). Fully orchestrated, a run completes once
both side effects returned; choreographed, once ``ship`` did, and the side effects land later.

Prints, for every repeat and mode: run latency p50/p99 (submission → completed, from the
store's timestamps), runs/s, and for the hybrid: outbox lag p50/p99 (commit → the broker's
acknowledgement of the published row), effect lag p50/p99 (commit → the receiver applied it),
side effects applied, duplicate requests at the receiver and failed runs. A private
nats-server 2.15 (the ``mesh`` extra) is started on a free port. On a shared or loaded machine
the figures are noisy: compare modes within one repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

import tenantflow as tf
from tenantflow.adapters.nats.server import NatsServer
from tenantflow.placement.hybrid import open_hybrid
from tenantflow.placement.hybrid.agent import FxAgent

wf = tf.Workflow("hybrid-bench")
RECEIVER = "TF_BENCH_RECEIVER"


@wf.step
async def charge(ctx: tf.StepContext, input: dict[str, Any]) -> dict[str, Any]:
    return {"order": input["order"]}


async def _post(ctx: Any, what: str, order: int) -> None:
    async with httpx.AsyncClient(verify=False) as client:  # plain HTTP on loopback: no TLS
        reply = await client.post(
            os.environ[RECEIVER],
            json={"key": f"{ctx.idempotency_key}", "what": what, "order": order},
            timeout=10,
        )
        reply.raise_for_status()


@wf.step(side_effect=True)
async def notify(ctx: Any, charge: dict[str, Any]) -> None:
    await _post(ctx, "notify", charge["order"])


@wf.step(side_effect=True)
async def track(ctx: Any, charge: dict[str, Any]) -> None:
    await _post(ctx, "track", charge["order"])


@wf.step
async def ship(ctx: tf.StepContext, charge: dict[str, Any]) -> str:
    return f"shipped {charge['order']}"


class Receiver:
    """Applies each key once; answers after ``delay_s``; notes when each key arrived."""

    def __init__(self, delay_s: float) -> None:
        self.posts: Counter[str] = Counter()
        self.arrived: dict[str, float] = {}
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay_s)
                with lock:
                    receiver.posts[body["key"]] += 1
                    receiver.arrived.setdefault(body["key"], time.time())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(engine: tf.Engine, runs: int, in_flight: int) -> tuple[list[float], int, float]:
    """Submit ``runs`` runs, ``in_flight`` at a time; their latencies (s), failures, wall s."""
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            handle = await engine.submit("hybrid-bench", tenant=f"t{i % 4}", input={"order": i})
            record = await engine.wait(f"t{i % 4}", handle.id, timeout=timedelta(seconds=120))
            if record.status != "completed" or record.finished_at is None:
                failed += 1
                return
            latencies.append(record.finished_at - record.created_at)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(runs)))
    return latencies, failed, time.perf_counter() - start


async def orchestrated(url: str, runs: int, in_flight: int) -> dict[str, Any]:
    async with tf.Engine.open(url, auto_tenant="enterprise") as engine:
        engine.register(wf)
        latencies, failed, wall = await drive(engine, runs, in_flight)
    return {"latencies": latencies, "failed": failed, "wall": wall}


async def choreographed(
    url: str, nats_url: str, runs: int, in_flight: int, receiver: Receiver
) -> dict[str, Any]:
    hybrid = open_hybrid(url, nats_url, auto_tenant="enterprise")
    hybrid.engine.register(wf)
    agent = FxAgent(nats_url, lambda name, version: wf.spec)
    stop = asyncio.Event()
    async with hybrid:
        agent_task = asyncio.create_task(agent.run(stop))
        latencies, failed, wall = await drive(hybrid.engine, runs, in_flight)
        store: Any = hybrid.engine.store
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until every outcome is recorded
            if not await store.outbox(None, limit=1):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await agent_task
        await agent.close()
        created = {}
        for tenant in ("t0", "t1", "t2", "t3"):
            for record in await store.list_runs(tenant, workflow="hybrid-bench", limit=10_000):
                for event in await store.events(tenant, record.id):
                    if event.kind == "fx.enqueued":
                        created[event.data["outbox_id"]] = event.ts
    lags = hybrid.relays[0].stats.lags_s
    effect = [receiver.arrived[k] - ts for k, ts in created.items() if k in receiver.arrived]
    return {
        "latencies": latencies,
        "failed": failed,
        "wall": wall,
        "outbox_lag": lags,
        "effect_lag": effect,
        "expected": len(created),
        "applied": len(set(created) & set(receiver.arrived)),
    }


def line(label: str, r: dict[str, Any], runs: int) -> str:
    lat = r["latencies"]
    return (
        f"  {label:<13} run p50 {pct(lat, 0.5) * 1000:7.1f} ms  p99 {pct(lat, 0.99) * 1000:7.1f} ms"
        f"  {runs / r['wall']:6.1f} runs/s  failed {r['failed']}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--effect-ms", type=float, default=20.0, help="each side effect's time")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    receiver = Receiver(args.effect_ms / 1000)
    os.environ[RECEIVER] = receiver.url
    print(
        f"hybrid benchmark: {args.runs} runs x {args.repeats} repeats, {args.in_flight} in"
        f" flight, 2 side effects per run of {args.effect_ms:.0f} ms each; SQLite store,"
        f" nats-server from the venv; cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}"
    )
    summary: dict[str, list[float]] = {"orch": [], "chor": []}
    with tempfile.TemporaryDirectory() as tmp, NatsServer(store_dir=Path(tmp) / "nats") as nats:
        for rep in range(1, args.repeats + 1):
            o = await orchestrated(f"sqlite:///{tmp}/orch{rep}.db", args.runs, args.in_flight)
            receiver.posts.clear()
            receiver.arrived.clear()
            c = await choreographed(
                f"sqlite:///{tmp}/chor{rep}.db", nats.url, args.runs, args.in_flight, receiver
            )
            dups = sum(n - 1 for n in receiver.posts.values())
            print(f"repeat {rep}:")
            print(line("orchestrated", o, args.runs))
            print(line("choreographed", c, args.runs))
            print(
                f"  {'':<13} outbox lag p50 {pct(c['outbox_lag'], 0.5) * 1000:6.1f} ms"
                f"  p99 {pct(c['outbox_lag'], 0.99) * 1000:6.1f} ms;"
                f" effect lag p50 {pct(c['effect_lag'], 0.5) * 1000:6.1f} ms"
                f"  p99 {pct(c['effect_lag'], 0.99) * 1000:6.1f} ms;"
                f" effects applied {c['applied']}/{c['expected']}, duplicate requests {dups}"
            )
            summary["orch"].append(pct(o["latencies"], 0.5))
            summary["chor"].append(pct(c["latencies"], 0.5))
    ratio = statistics.median(summary["chor"]) / statistics.median(summary["orch"])
    print(f"median over repeats of run p50: choreographed / orchestrated = {ratio:.2f}")
    receiver.close()


if __name__ == "__main__":
    asyncio.run(main())
