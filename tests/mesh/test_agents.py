"""Agent processes run the workload's DAG off JetStream through the core's driver: every run
completes with the right outputs, every step completes once, and the run's execution log (facts
and the state-version chain) can be read back from the stream alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.nats.log import ExecutionLog
from tenantflow.selftest.workload import (
    STEPS,
    WORKFLOW,
    expected_outputs,
    read_executions,
    tenant_of,
)

from .helpers import agents, create_tenants, submitter, wait_all, wait_log

pytestmark = pytest.mark.timeout(90)


async def test_two_agents_run_every_run_once(
    mesh_server: Any, admin: Any, postgres_url: str, tmp_path: Path
) -> None:
    await create_tenants(postgres_url)
    exec_log = tmp_path / "exec.log"
    driver, store = await submitter(postgres_url, admin, "eu")
    procs = agents(2, mesh_server, postgres_url, tmp_path, exec_log=exec_log)
    try:
        runs = []
        for i in range(20):
            tenant = tenant_of(i)
            runs.append((tenant, await driver.submit(tenant, WORKFLOW, {"i": i})))
        records = await wait_all(store, runs)
        for i, record in enumerate(records):
            assert record.status == tf.RunStatus.COMPLETED, (record.id, record.error)
            steps = {s.key: s for s in await store.get_steps(record.tenant_id, record.id)}
            outputs = {k: int(steps[k].output_json or b"0") for k in STEPS}
            assert outputs == expected_outputs(i)
        # Each step's work was done exactly once (nothing was killed).
        done = Counter((e.run, e.step) for e in read_executions(exec_log) if e.kind == "E")
        assert len(done) == 20 * len(STEPS) and set(done.values()) == {1}
        # Both agents took work.
        pids = {e.pid for e in read_executions(exec_log)}
        assert len(pids) == 2
        # The log: facts, and a state chain that only moves forward, ending completed.
        log = ExecutionLog(admin)
        tenant, run_id = runs[0]
        timeline = await wait_log(log, "eu", tenant, run_id)
        facts = [e["fact"] for e in timeline if "fact" in e]
        assert facts[0] == "run.submitted" and facts[-1] == "run.completed"
        assert facts.count("step.succeeded") == len(STEPS)
        versions = [e["version"] for e in timeline if e["subject"].endswith(".state")]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        assert [e for e in timeline if e["subject"].endswith(".state")][-1]["status"] == "completed"
        heads = [e["headers"] for e in timeline if e.get("fact") == "step.succeeded"]
        assert all(h["Tf-Tenant"] == tenant and h["Tf-Run"] == run_id for h in heads)
        assert {h["Tf-Step"] for h in heads} == set(STEPS)
    finally:
        for p in procs:
            p.stop()
        await driver.queue.close()
        await driver.close()
        await store.close()
    for p in procs:
        assert p.proc is not None and p.proc.returncode == 0, (tmp_path / "agent-0.log").read_text()


async def test_a_region_without_agents_is_refused_before_recording(
    mesh_server: Any, admin: Any, postgres_url: str
) -> None:
    await create_tenants(postgres_url, ["far"], region="ap-southeast-1")
    driver, store = await submitter(postgres_url, admin, "eu")
    try:
        with pytest.raises(tf.ResidencyError, match="ap-southeast-1"):
            await driver.submit("far", WORKFLOW, {"i": 1})
        assert await store.list_runs("far") == []
    finally:
        await driver.queue.close()
        await driver.close()
        await store.close()
