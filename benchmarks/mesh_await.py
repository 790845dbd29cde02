"""One run at a time through a mesh's control plane: submit → the run's end awaited.

    python benchmarks/mesh_await.py               # 100 runs, 2 agent processes
    python benchmarks/mesh_await.py --runs 30     # a quick look

The control plane is ``MeshControl`` over a front engine on the deployment's PostgreSQL (as
``tenantflow mesh up`` serves it, here without a separate read model); the agents are
``tenantflow agent`` processes on a private NATS server (2.15), running the selftest's
five-step DAG (a -> (b, c) -> d -> e) with ``--step-ms`` steps. Each run is awaited through its
handle (``RunHandle.wait``, as ``result`` waits) before the next is submitted: the figure is
what a client waiting on its run sees, the run's own work (four levels of steps) included.

Printed: p50, p90 and the largest of submit → the end awaited, and of submit → the run's
``finished_at`` (the time its last decision was taken, before its commit), in ms. A wait
through the control plane is woken by the agent's announcement of the run's end
(``tenantflow.engine.ends``), or reads the run again every 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import tenantflow as tf
from mesh import PG, REGION, _pct, _schema, start_agents
from tenantflow.adapters.nats.fabric import (
    auth_config,
    connect,
    make_credentials,
    provision,
    save_credentials,
)
from tenantflow.adapters.nats.server import NatsServer
from tenantflow.placement.centralized import open_front
from tenantflow.placement.mesh.control import MeshControl
from tenantflow.placement.mesh.procs import AgentProcess
from tenantflow.selftest.workload import WORKFLOW
from tenantflow.selftest.workload import setup as workload


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    schema, url = _schema()
    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-mesh-await-"))
    procs: list[AgentProcess] = []
    server: NatsServer | None = None
    try:
        creds = make_credentials([REGION])
        server = NatsServer(store_dir=tmp / "nats", config=auth_config(creds.values())).start()
        fabric = await connect(server.url, creds["admin"])
        try:
            await provision(fabric, REGION)
        finally:
            await fabric.close()
        front = open_front(url)
        workload(front)
        control = MeshControl(
            front,
            nats_url=server.url,
            creds=creds["admin"],
            regions=[REGION],
            default_region=REGION,
        )
        try:
            await control.start()
            await control.tenants.create("acme")
            agent_creds = save_credentials(creds[f"agent-{REGION}"], tmp / "agent.json")
            start_agents(procs, url, server.url, agent_creds, tmp, args.agents, 8, args.step_ms)
            awaited: list[float] = []
            finished: list[float] = []
            for i in range(args.warm + args.runs):
                started = time.perf_counter()
                at = time.time()
                handle = await control.submit(WORKFLOW, tenant="acme", input={"i": i})
                record = await asyncio.wait_for(handle.wait(), 60)
                took = time.perf_counter() - started
                if record.status != tf.RunStatus.COMPLETED:
                    raise SystemExit(f"run {record.id} ended {record.status.value}: {record.error}")
                if i >= args.warm:  # the first runs meet cold connections and consumers
                    awaited.append(took)
                    finished.append(float(record.finished_at or at) - at)
            return {"awaited": awaited, "finished": finished}
        finally:
            await control.close()
    finally:
        for proc in procs:
            proc.stop()
        if server is not None:
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)
        import psycopg

        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--step-ms", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"{args.runs} runs one at a time through a mesh control plane, {args.agents} agents,"
        f" {args.step_ms:g} ms steps (five-step DAG), NATS 2.15 and PostgreSQL on loopback"
    )
    figures = asyncio.run(measure(args))
    labels = {"awaited": "submit -> end awaited", "finished": "submit -> finished_at"}
    for name, label in labels.items():
        values = figures[name]
        p50, p90 = 1000 * _pct(values, 0.5), 1000 * _pct(values, 0.9)
        print(f"  {label:22} p50 {p50:6.1f}  p90 {p90:6.1f}  max {1000 * max(values):6.1f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
