"""The execution log under a backlog: while work waits for an agent, a decision that hands its
run on to the steps it published leaves its log entry to a later decision of the run, whose
shipper publishes every event after the last one shipped. The log of every run still ends
complete (each store event a fact, once and in order; the last state entry at the run's last
version, covering its last event), and with no backlog, or ``defer_log`` off, every decision
ships its own. A run whose later decisions do not come (here: its next step is a review no
agent of the test takes) gets its log shipped by the agent's catch-up after ``log_lag_s``, or
when the agent closes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.nats.log import ExecutionLog
from tenantflow.placement.mesh.agent import AgentOptions, close_agent, open_agent
from tenantflow.placement.mesh.control import open_submitter
from tenantflow.selftest.workload import STEPS, TENANTS, WORKFLOW, Job, setup

from .helpers import create_tenants, submitter, wait_all, wait_log

pytestmark = pytest.mark.timeout(90)


async def _drive(
    server: Any, admin: Any, url: str, runs: int, *, defer_log: bool
) -> tuple[int, int, list[int]]:
    """Submit ``runs`` runs of one tenant, then start one agent of one slot (so that the runs
    queue for it); once they ended, check each run's log against the store. The agent's
    shipped and deferred counts, and each run's state entries."""
    tenant = TENANTS[0]
    await create_tenants(url, [tenant])
    driver, store = await submitter(url, admin, "eu")
    try:
        ids = [(tenant, await driver.submit(tenant, WORKFLOW, {"i": i})) for i in range(runs)]
        await driver.queue.flush()  # every first step on the stream before the agent pulls
        options = AgentOptions(
            url,
            server.url,
            server.creds["agent-eu"],
            ["eu"],
            default_region="eu",
            slots=1,
            express_slots=0,
            sweep=False,
            setups=(setup,),
            defer_log=defer_log,
        )
        agent = await open_agent(options)
        try:
            await wait_all(store, ids)
            log = ExecutionLog(admin)
            entries = []
            for tenant_id, run_id in ids:
                timeline = await wait_log(log, "eu", tenant_id, run_id)
                facts = [e for e in timeline if "fact" in e]
                states = [e for e in timeline if e["subject"].endswith(".state")]
                events = await store.events(tenant_id, run_id)
                record = await store.get_run(tenant_id, run_id)
                assert [(f["event_id"], f["fact"], f["step"]) for f in facts] == [
                    (e.id, e.kind, e.step) for e in events
                ]
                assert states[-1]["version"] == record.state_version
                assert states[-1]["events_upto"] == events[-1].id
                assert states[-1]["status"] == record.status.value == "completed"
                entries.append(len(states))
            shipped, deferred = agent[0].shipped, agent[0].deferred
        finally:
            await close_agent(*agent)
    finally:
        await driver.queue.close()
        await driver.close()
        await store.close()
    return shipped, deferred, entries


async def test_a_backlogged_agent_leaves_a_handing_on_decisions_log_to_the_next(
    mesh_server: Any, admin: Any, postgres_url: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TF_SELFTEST_STEP_MS", "1,2")
    shipped, deferred, entries = await _drive(mesh_server, admin, postgres_url, 6, defer_log=True)
    # The first run's first decision already met the five other runs waiting on the server.
    assert deferred >= 1
    # Every run's log: its submission's entry, then an entry for each of the agent's ships that
    # found more to ship (one asked for while the run's last ran goes round once more and
    # appends only if there is more), at least the one of its end.
    assert sum(entries) == 6 + shipped
    assert shipped <= 6 * len(STEPS) - deferred
    assert all(n >= 2 for n in entries)


async def test_with_defer_log_off_every_decision_ships(
    mesh_server: Any, admin: Any, postgres_url: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TF_SELFTEST_STEP_MS", "1,2")
    shipped, deferred, entries = await _drive(mesh_server, admin, postgres_url, 6, defer_log=False)
    assert deferred == 0
    assert sum(entries) == 6 + shipped
    assert all(n >= 2 for n in entries)


async def test_with_no_backlog_every_decision_ships(
    mesh_server: Any, admin: Any, postgres_url: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TF_SELFTEST_STEP_MS", "1,2")
    shipped, deferred, entries = await _drive(mesh_server, admin, postgres_url, 1, defer_log=True)
    # Its first step's decision hands it on to two steps, its third to one, its fourth to the
    # last: with nothing else waiting, none of them is left to the next.
    assert deferred == 0
    assert entries == [1 + shipped]


@pytest.mark.parametrize("eager", [False, True])
def test_eager_log_reaches_the_agent_from_its_command_line(eager: bool, monkeypatch: Any) -> None:
    """``AgentProcess(eager_log=...)`` writes ``--eager-log``, and ``tenantflow agent`` turns
    it into ``AgentOptions(defer_log=False)``; ``--log-lag`` into ``log_lag_s``."""
    import os

    from typer.testing import CliRunner

    from tenantflow.cli.main import app
    from tenantflow.placement.mesh import agent as agent_module
    from tenantflow.placement.mesh.procs import AgentProcess

    seen: list[AgentOptions] = []

    async def run_agent(options: AgentOptions, stop: Any) -> None:
        seen.append(options)

    monkeypatch.setattr(agent_module, "run_agent", run_agent)
    proc = AgentProcess(
        "postgresql://h/db", "nats://127.0.0.1:4222", None, ["eu"], [], eager_log=eager
    )
    args = proc.command()[3:]  # past `python -m tenantflow.cli.main`
    assert ("--eager-log" in args) is eager
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    result = CliRunner().invoke(app, [*args, "--log-lag", "2.5"], env=env)
    assert result.exit_code == 0, result.output
    assert [(o.defer_log, o.log_lag_s) for o in seen] == [(not eager, 2.5)]


def test_a_log_lag_that_is_not_positive_is_refused() -> None:
    import os

    from typer.testing import CliRunner

    from tenantflow.adapters.nats.queue import JetStreamQueue
    from tenantflow.cli.main import app
    from tenantflow.errors import ConfigurationError
    from tenantflow.placement.mesh.driver import MeshDriver

    for lag in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigurationError, match="log_lag_s must be > 0"):
            MeshDriver(
                {},
                bus=JetStreamQueue(None),  # type: ignore[arg-type]  # (refused before use)
                default_region="eu",
                workflows=[],
                log_lag_s=lag,
            )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    args = ["agent", "--db", "postgresql://h/db", "--log-lag", "0"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--log-lag" in lines[0]


def _gated() -> tf.Workflow:
    """A step, then a review: an agent that takes only function steps hands the run on to an
    item it never takes, so no later decision of the run ships its log."""
    wf = tf.Workflow("log-lag", input=Job)

    @wf.step
    async def work(ctx: tf.StepContext, input: Job) -> int:
        return input.i

    @wf.review(after=[work])
    async def check(ctx: tf.StepContext, work: int) -> dict[str, int]:
        return {"n": work}

    return wf


async def _work_succeeded(store: Any, tenant: str, run_id: str) -> bool:
    steps = {s.key: s.status for s in await store.get_steps(tenant, run_id)}
    return steps["work"] == tf.StepStatus.SUCCEEDED


async def _succeeded_on_log(log: ExecutionLog, tenant: str, run_id: str) -> bool:
    timeline = await log.timeline("eu", tenant, run_id)
    return any(e.get("fact") == "step.succeeded" and e.get("step") == "work" for e in timeline)


@pytest.mark.parametrize("lag_s", [0.2, 3600.0])
async def test_a_log_left_by_a_decision_is_shipped_after_the_lag_or_at_close(
    lag_s: float, mesh_server: Any, admin: Any, postgres_url: str
) -> None:
    tenant = TENANTS[0]
    await create_tenants(postgres_url, [tenant])
    wf = _gated()
    driver, store = await open_submitter(postgres_url, admin, "eu", [wf.spec])
    log = ExecutionLog(admin)
    try:
        ids = [await driver.submit(tenant, "log-lag", {"i": i}) for i in range(3)]
        await driver.queue.flush()
        options = AgentOptions(
            postgres_url,
            mesh_server.url,
            mesh_server.creds["agent-eu"],
            ["eu"],
            kinds=("function",),
            default_region="eu",
            slots=1,
            express_slots=0,
            sweep=False,
            setups=(lambda engine: engine.register(wf),),
            log_lag_s=lag_s,
        )
        agent = await open_agent(options)
        closed = False
        try:
            deadline = time.monotonic() + 20
            while not all([await _work_succeeded(store, tenant, run_id) for run_id in ids]):
                assert time.monotonic() < deadline, "the runs' first steps did not finish"
                await asyncio.sleep(0.05)
            # The first run's decision met the two others waiting: its log was left.
            assert agent[0].deferred >= 1
            first = ids[0]
            if lag_s > 60:  # nothing else ships it while the agent runs
                assert not await _succeeded_on_log(log, tenant, first)
                await close_agent(*agent)
                closed = True
            deadline = time.monotonic() + 10
            for run_id in ids:
                while not await _succeeded_on_log(log, tenant, run_id):
                    assert time.monotonic() < deadline, f"the log of {run_id} was never shipped"
                    await asyncio.sleep(0.05)
            if not closed:
                assert agent[0].caught_up >= 1
            for run_id in ids:  # every run's log now says what the store says
                facts = [
                    (e["event_id"], e["fact"])
                    for e in await log.timeline("eu", tenant, run_id)
                    if "fact" in e
                ]
                assert facts == [(e.id, e.kind) for e in await store.events(tenant, run_id)]
        finally:
            if not closed:
                await close_agent(*agent)
    finally:
        await driver.queue.close()
        await driver.close()
        await store.close()
