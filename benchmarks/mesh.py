"""The mesh under a burst: quiet tenants' latency, the burster's drain, steps/s, hop latency,
memory and connections per agent — on a private NATS server (2.15), real agent processes and
PostgreSQL.

    python benchmarks/mesh.py                 # burst of 2,000 runs (a few minutes, loaded box)
    python benchmarks/mesh.py --burst 300 --quiet-seconds 10   # a quick look

Workload: the selftest's five-step DAG (a -> (b, c) -> d -> e), each step sleeping
``--step-ms`` to stand in for work, run by ``--agents`` agent processes (``--slots`` each) of one
region; runs are recorded in PostgreSQL and their steps flow over JetStream (a consumer per
tenant and kind, picked by each agent's fair scheduler).

Scenarios, each on a fresh schema and a fresh NATS store:

1. **quiet**: ``--quiet-tenants`` tenants submit runs as Poisson processes totalling
   ``--quiet-rate`` runs/s for ``--quiet-seconds``; their end-to-end latency (from each
   arrival's scheduled time to the run's ``finished_at``; every arrival is submitted in a task
   of its own, an open loop) gives the baseline p50/p99.
2. **burst**: the same quiet arrivals (same seed) while tenant ``burster`` submits ``--burst``
   runs at once at the start; quiet p99 again, and how long the burst took to drain.
3. **alone**: only the burst; its drain time and steps/s.

Printed: quiet p99 with burst / without (target <= 1.2), burster drain speed with quiet traffic /
alone (target >= 0.8, work-conserving), steps/s, hop latency p50/p99 (work item published ->
delivered to an agent, from the agents' own counters), RSS and sockets per agent, and the log
entries the agents shipped and the decisions whose entry they left to a later one
(``--eager-log``: none). On a shared, loaded machine these numbers are noisy: run it more than
once and report every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import tenantflow as tf
from tenantflow.adapters.nats.fabric import (
    auth_config,
    connect,
    make_credentials,
    provision,
    save_credentials,
)
from tenantflow.adapters.nats.queue import JetStreamQueue
from tenantflow.adapters.nats.server import NatsServer
from tenantflow.domain.ids import DEFAULT_STORE
from tenantflow.domain.records import TERMINAL_RUN
from tenantflow.placement.mesh.driver import MeshDriver
from tenantflow.placement.mesh.procs import AgentProcess
from tenantflow.selftest.workload import STEPS, WORKFLOW, build

REGION = "bench"
PG = os.environ.get("TENANTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _schema() -> tuple[str, str]:
    import psycopg

    name = f"tf_bench_mesh_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in PG else "?"
    return name, f"{PG}{sep}schema={name}"


def _drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _unfinished(schema: str) -> int:
    """How many runs of the scenario's schema have not ended (every tenant's)."""
    import psycopg

    ended = ", ".join(f"'{s.value}'" for s in TERMINAL_RUN)
    with psycopg.connect(PG, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {schema}.runs WHERE status NOT IN ({ended})"
        ).fetchone()
    return int(row[0]) if row else 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _rss_and_sockets(pid: int) -> tuple[float, int]:
    rss = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = float(line.split()[1]) / 1024.0
        sockets = sum(
            1 for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:")
        )
    except OSError:
        return rss, 0
    return rss, sockets


def start_agents(
    procs: list[AgentProcess],
    url: str,
    nats_url: str,
    creds: Path,
    tmp: Path,
    agents: int,
    slots: int,
    step_ms: float,
    express: int | None = None,
    eager_log: bool = False,
) -> None:
    """Start ``agents`` agent processes of region :data:`REGION` running the selftest's
    workload with ``step_ms`` steps, each appended to ``procs`` as it starts (a start that
    fails leaves the ones before it to be stopped)."""
    for i in range(agents):
        procs.append(
            AgentProcess(
                url,
                nats_url,
                creds,
                [REGION],
                ["tenantflow.selftest.workload:setup"],
                default_region=REGION,
                slots=slots,
                express_slots=express,
                eager_log=eager_log,
                env={"TF_SELFTEST_STEP_MS": f"{step_ms},{step_ms}"},
                log_file=tmp / f"agent-{i}.log",
            ).start()
        )


async def _phases(
    store: Any, submitted: dict[str, tuple[str, float]], created: dict[str, float]
) -> dict[str, Any]:
    """Where the quiet runs' time went, from their events' timestamps (p50 / p99, ms): the
    submission (its due time -> the submit call returned); first: the submit call returned ->
    the first step claimed (negative when an agent claimed it before the submitter heard back);
    a step's claim -> its decision (the work, the reads around it, the completion record); a
    decision -> the next step's claim (the commit, the publish, the delivery, the wait for a
    slot, the read before the claim); the last decision -> the run's end."""
    found: dict[str, list[float]] = {"submit": [], "first": [], "step": [], "hop": [], "end": []}
    for run_id, (tenant, due) in submitted.items():
        record = await store.get_run(tenant, run_id)
        started: dict[str, float] = {}
        decided: dict[str, float] = {}
        for event in await store.events(tenant, run_id):
            if event.step is None:
                continue
            if event.kind == "step.started":
                started.setdefault(event.step, event.ts)
            elif event.kind == "step.succeeded":
                decided[event.step] = event.ts
        found["submit"].append(created[run_id] - due)
        if "a" in started:
            found["first"].append(started["a"] - created[run_id])
        for step, at in started.items():
            if step in decided:
                found["step"].append(decided[step] - at)
        for parent, child in (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")):
            if parent in decided and child in started:
                found["hop"].append(started[child] - decided[parent])
        if "e" in decided and record.finished_at:
            found["end"].append(record.finished_at - decided["e"])
    return {
        f"phase_{name}_ms": [round(1000 * _pct(v, 0.5), 1), round(1000 * _pct(v, 0.99), 1)]
        for name, v in found.items()
    }


async def scenario(args: argparse.Namespace, *, quiet: bool, burst: int) -> dict[str, Any]:
    schema, url = _schema()
    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-mesh-"))
    creds = make_credentials([REGION])
    server = NatsServer(store_dir=tmp / "nats", config=auth_config(creds.values())).start()
    procs: list[AgentProcess] = []
    try:
        quiet_tenants = [f"quiet-{i}" for i in range(args.quiet_tenants)]
        async with tf.Engine.open(url) as control:
            for tenant in [*quiet_tenants, "burster"]:
                await control.tenants.create(tenant, tier="standard")
        fabric = await connect(server.url, creds["admin"])
        await provision(fabric, REGION)
        store = tf.Engine.open(url, tf.EngineConfig(execute=False)).store
        await store.open(execute=True)
        engine = tf.Engine(store)
        driver = MeshDriver(
            {DEFAULT_STORE: store},
            home=DEFAULT_STORE,
            bus=JetStreamQueue(fabric),
            clock=engine.clock,
            gateway=engine.gateway,
            workflows=[build(None).spec],
            default_region=REGION,
            owner="bench",
        )
        await driver.start()
        agent_creds = save_credentials(creds[f"agent-{REGION}"], tmp / "agent.json")
        agents = (args.agents, args.slots, args.step_ms, args.express_slots, args.eager_log)
        start_agents(procs, url, server.url, agent_creds, tmp, *agents)
        await asyncio.sleep(3.0)  # the agents connect and sweep
        rng = random.Random(args.seed)
        submitted: dict[str, tuple[str, float]] = {}
        burst_ids: list[str] = []
        t0 = time.time()

        async def submit_burst() -> None:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with sem:
                    burst_ids.append(await driver.submit("burster", WORKFLOW, {"i": i}))

            await asyncio.gather(*(one(i) for i in range(burst)))

        submit_s: list[float] = []

        created: dict[str, float] = {}

        async def one_quiet(tenant: str, n: int, due: float) -> None:
            run_id = await driver.submit(tenant, WORKFLOW, {"i": n})
            created[run_id] = time.time()
            submit_s.append(time.time() - due)
            submitted[run_id] = (tenant, due)

        async def submit_quiet() -> None:
            # Open loop: each arrival is submitted at its time in a task of its own, and its
            # latency counts from that time, so a slow submission (the burst's submissions
            # share this process and the store) neither delays the next arrivals nor hides
            # its own wait.
            at = 0.0
            n = 0
            pending = []
            while True:
                at += rng.expovariate(args.quiet_rate)
                if at > args.quiet_seconds:
                    break
                await asyncio.sleep(max(0.0, t0 + at - time.time()))
                tenant = quiet_tenants[n % len(quiet_tenants)]
                pending.append(asyncio.create_task(one_quiet(tenant, n, t0 + at)))
                n += 1
            await asyncio.gather(*pending)

        tasks = []
        if burst:
            tasks.append(asyncio.create_task(submit_burst()))
        if quiet:
            tasks.append(asyncio.create_task(submit_quiet()))
        await asyncio.gather(*tasks)
        peak = [_rss_and_sockets(p.pid or 0) for p in procs]
        # Wait for everything to finish (bounded), asking the database how many runs are
        # unfinished: one query a poll, not a read of every run and its steps.
        deadline = time.time() + args.limit_s
        while await asyncio.to_thread(_unfinished, schema):
            if time.time() > deadline:
                raise RuntimeError("the scenario did not finish in --limit-s")
            await asyncio.sleep(0.25)
        elapsed = time.time() - t0
        quiet_records = [await store.get_run(t, r) for r, (t, _) in submitted.items()]
        assert all(r.status in TERMINAL_RUN for r in quiet_records)
        latencies = [(r.finished_at or 0.0) - submitted[r.id][1] for r in quiet_records]
        burst_done = 0.0
        if burst_ids:
            finished = [(await store.get_run("burster", b)).finished_at or 0.0 for b in burst_ids]
            burst_done = max(finished) - t0
        phases = await _phases(store, submitted, created) if args.phases else {}
        cpu = sum(_cpu_s(p.pid or 0) for p in procs)
        for p in procs:
            p.stop()
        stats = []
        for i in range(args.agents):
            text = (tmp / f"agent-{i}.log").read_text()
            found = re.findall(r"stats (\{.*\})", text)
            if found:
                stats.append(json.loads(found[-1]))
        await driver.queue.close()
        await driver.close()
        await fabric.close()
        await store.close()
        steps = (len(submitted) + len(burst_ids)) * len(STEPS)
        return {
            "quiet_runs": len(submitted),
            "quiet_p50_s": _pct(latencies, 0.5),
            "quiet_submit_p99_s": _pct(submit_s, 0.99),
            "quiet_p99_s": _pct(latencies, 0.99),
            "burst_runs": len(burst_ids),
            "burst_drain_s": burst_done,
            "steps_per_s": steps / elapsed,
            "hop_p50_ms": 1000 * _pct([s["hop_p50_s"] for s in stats if s["hop_p50_s"]], 0.5),
            "hop_p99_ms": 1000 * max((s["hop_p99_s"] or 0.0) for s in stats) if stats else 0.0,
            "rss_mb_per_agent": [round(r, 1) for r, _ in peak],
            "sockets_per_agent": [s for _, s in peak],
            "agent_cpu_ms_per_step": round(1000 * cpu / steps, 2) if steps else None,
            "load_avg_1_5_15_at_end": _load(),
            "redelivered": sum(s["redelivered"] for s in stats),
            "consumers_created": sum(s["consumers_created"] for s in stats),
            "log_shipped": sum(s["log_versions_shipped"] for s in stats),
            "log_deferred": sum(s["log_deferred"] for s in stats),
            **phases,
        }
    finally:
        for p in procs:
            p.stop()
        server.close()
        _drop(schema)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--step-ms", type=int, default=10)
    parser.add_argument(
        "--express-slots",
        type=int,
        default=None,
        help="Each agent's express slots (default: the agent's, half of --slots; 0: none).",
    )
    parser.add_argument(
        "--eager-log",
        action="store_true",
        help="The agents ship every decision's log entry, even under a backlog (their"
        " --eager-log; by default a decision that hands its run on leaves it to a later one).",
    )
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--quiet-tenants", type=int, default=8)
    parser.add_argument("--quiet-rate", type=float, default=4.0)
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=60.0,
        help="How long the quiet tenants submit (60 s at 4/s: ~240 runs, so that the p99 is"
        " not the second-largest of ~80).",
    )
    parser.add_argument("--limit-s", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--phases",
        action="store_true",
        help="Also print where the quiet runs' time went (p50 / p99 of each phase, ms).",
    )
    parser.add_argument(
        "--scenarios",
        default="quiet,burst,alone",
        help="Which scenarios to run (the ratios need all three).",
    )
    args = parser.parse_args(argv)
    print(
        f"mesh benchmark: {args.agents} agents x {args.slots} slots"
        f" (+{'default' if args.express_slots is None else args.express_slots} express),"
        f" {args.step_ms} ms steps,"
        f" burst {args.burst}, {args.quiet_tenants} quiet tenants at {args.quiet_rate}/s"
        f" for {args.quiet_seconds} s (NATS 2.15, PostgreSQL, loopback; a shared machine)",
        flush=True,
    )
    print(f"load average (1/5/15 min) at start: {_load()}", flush=True)
    results = {}
    wanted = set(args.scenarios.split(","))
    for name, quiet, burst in (
        ("quiet", True, 0),
        ("burst", True, args.burst),
        ("alone", False, args.burst),
    ):
        if name not in wanted:
            continue
        results[name] = await scenario(args, quiet=quiet, burst=burst)
        print(f"{name:6s} {json.dumps(results[name])}", flush=True)
    if not {"quiet", "burst", "alone"} <= set(results):
        return 0
    q, b, a = results["quiet"], results["burst"], results["alone"]
    ratio = b["quiet_p99_s"] / q["quiet_p99_s"]
    drain = a["burst_drain_s"] / b["burst_drain_s"]
    print(f"quiet p99 with burst / without: {ratio:.2f} (target <= 1.2)")
    print(f"burster drain speed with quiet traffic / alone: {drain:.2f} (target >= 0.8)")
    print(f"steps/s (burst alone): {a['steps_per_s']:.0f}")
    print(
        f"hop latency p50/p99 (quiet: a successor published -> delivered to an agent):"
        f" {q['hop_p50_ms']:.2f} / {q['hop_p99_ms']:.2f} ms; under the burst, with queueing:"
        f" {b['hop_p50_ms']:.0f} / {b['hop_p99_ms']:.0f} ms"
    )
    print(f"RSS MB per agent: {b['rss_mb_per_agent']}, sockets per agent: {b['sockets_per_agent']}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
