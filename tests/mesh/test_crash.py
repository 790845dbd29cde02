"""SIGKILL agents and the NATS server under load: no run is lost, no step completes twice.

Three agent processes run 45 runs of the workload's DAG (submitted before the agents start).
Once work is flowing, one agent is killed (SIGKILL), then the NATS server is killed and
restarted on the same store, then a fresh agent joins. Every run must complete with the right
outputs; every step must have exactly one completion record (KV, create-if-absent) and exactly
one ``step.succeeded`` fact on the log.
Execution itself is at-least-once (a killed attempt runs again), which the test reports but
does not forbid."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.nats.fabric import wait_connected
from tenantflow.adapters.nats.log import ExecutionLog
from tenantflow.selftest.workload import (
    STEPS,
    WORKFLOW,
    expected_outputs,
    read_executions,
    tenant_of,
)

from .helpers import (
    agents,
    completion_records,
    create_tenants,
    submitter,
    wait_all,
    wait_log,
)

pytestmark = pytest.mark.timeout(120)

RUNS = 45


async def _until(predicate: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def test_kill_agents_and_server_under_load(
    mesh_server: Any, admin: Any, postgres_url: str, tmp_path: Path
) -> None:
    await create_tenants(postgres_url)
    exec_log = tmp_path / "exec.log"
    driver, store = await submitter(postgres_url, admin, "eu")
    procs: list[Any] = []
    try:
        runs = []
        for i in range(RUNS):
            runs.append((tenant_of(i), await driver.submit(tenant_of(i), WORKFLOW, {"i": i})))
        # The agents start once every run is on the stream: the kills below happen with most of
        # the work still to do, however slowly the submissions went (agents running during a
        # slow submission could finish nearly everything before the first kill, and the wait
        # for 40 more executions after it could then never be met).
        procs += agents(3, mesh_server, postgres_url, tmp_path, exec_log=exec_log, step_ms="20,60")
        await _until(lambda: len(read_executions(exec_log)) > 40)
        procs[0].kill()
        n = len(read_executions(exec_log))
        await _until(lambda: len(read_executions(exec_log)) > n + 40)
        mesh_server.kill()
        await asyncio.sleep(0.3)
        mesh_server.start()
        await wait_connected(admin)
        (tmp_path / "late").mkdir()
        procs += agents(1, mesh_server, postgres_url, tmp_path / "late", exec_log=exec_log)
        records = await wait_all(store, runs, timeout_s=80.0)
        for i, record in enumerate(records):
            assert record.status == tf.RunStatus.COMPLETED, (record.id, record.error)
            steps = {s.key: s for s in await store.get_steps(record.tenant_id, record.id)}
            assert {k: int(steps[k].output_json or b"0") for k in STEPS} == expected_outputs(i)
        # Exactly one completion record per step, and one step.succeeded fact per step.
        records = await completion_records(admin, "eu")
        assert len(records) == RUNS * len(STEPS) and set(records.values()) == {1}
        log = ExecutionLog(admin)
        for tenant, run_id in runs:
            timeline = await wait_log(log, "eu", tenant, run_id)
            succeeded = Counter(e["step"] for e in timeline if e.get("fact") == "step.succeeded")
            assert succeeded == dict.fromkeys(STEPS, 1), (run_id, succeeded)
            assert [e["fact"] for e in timeline if "fact" in e][-1] == "run.completed"
        executions = Counter((e.run, e.step) for e in read_executions(exec_log) if e.kind == "S")
        again = sum(1 for c in executions.values() if c > 1)
        print(f"steps executed more than once (at-least-once after kills): {again}")
    finally:
        for p in procs:
            p.stop()
        await driver.queue.close()
        await driver.close()
        await store.close()
