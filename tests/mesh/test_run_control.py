"""Run control against a mesh deployment, as embedded: a review decided through the control
plane resumes its run on the agents, a cancel compensates and ends the run, a paused run
resumes, a step's child run (``ctx.delegate``) runs on the agents and answers its parent, and
an idempotency key on submission answers the first run. One agent runs in this process (its
own NATS connection, the agent user of its region); the control plane is ``MeshControl`` over
a front engine, as ``tenantflow mesh up`` serves it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.domain.records import TERMINAL_RUN
from tenantflow.engine import ends as ends_module
from tenantflow.engine.signals import Pause
from tenantflow.placement.centralized import open_front
from tenantflow.placement.mesh.agent import AgentOptions, close_agent, open_agent
from tenantflow.placement.mesh.control import MeshControl

pytestmark = pytest.mark.timeout(60)

TENANT = "acme"


class _Probe:
    """What the steps saw, and what holds the slow step (shared by agent and test: one loop)."""

    def __init__(self) -> None:
        self.compensated: list[str] = []
        self.paused = 0
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()


PROBE = _Probe()


def setup(engine: tf.Engine) -> None:
    """The workflows of these tests (registered on the agent and on the control plane)."""
    gated = tf.Workflow("gated", input=int)

    @gated.step
    async def prepare(ctx: tf.StepContext, input: int) -> int:
        return input * 2

    @gated.review(after=[prepare])
    async def approve(ctx: tf.StepContext, prepare: int) -> dict[str, int]:
        return {"amount": prepare}

    @gated.step
    async def book(ctx: tf.StepContext, prepare: int, approve: tf.ReviewDecision) -> str:
        return f"{prepare}:{'yes' if approve.approved else 'no'}"

    async def undo_reserve(ctx: tf.StepContext, output: int) -> None:
        PROBE.compensated.append(f"reserve:{output}")

    cancellable = tf.Workflow("cancellable", input=int)

    @cancellable.step(compensate=undo_reserve)
    async def reserve(ctx: tf.StepContext, input: int) -> int:
        return input + 1

    @cancellable.step
    async def slow(ctx: tf.StepContext, reserve: int) -> int:
        PROBE.slow_started.set()
        await PROBE.release.wait()
        return reserve

    pausing = tf.Workflow("pausing", input=int)

    @pausing.step
    async def spend(ctx: tf.StepContext, input: int) -> int:
        if PROBE.paused == 0:
            PROBE.paused += 1
            raise Pause("budget: the run's budget is spent")  # as the budget ladder does
        return input + 100

    child = tf.Workflow("child", input=str)

    @child.step
    async def answer(ctx: tf.StepContext, input: str) -> str:
        return input.upper()

    parent = tf.Workflow("parent", input=str)

    @parent.step
    async def ask(ctx: tf.StepContext, input: str) -> str:
        child_id, said = await ctx.delegate("child", input)
        return f"{child_id}:{said}"

    for wf in (gated, cancellable, pausing, child, parent):
        engine.register(wf)


@pytest.fixture
async def mesh(mesh_server: Any, admin: Any, postgres_url: str) -> AsyncIterator[MeshControl]:
    global PROBE
    PROBE = _Probe()
    front = open_front(postgres_url)
    setup(front)
    control = MeshControl(
        front,
        nats_url=mesh_server.url,
        creds=mesh_server.creds["admin"],
        regions=["eu"],
        default_region="eu",
    )
    await control.start()
    await control.tenants.create(TENANT)
    options = AgentOptions(
        postgres_url,
        mesh_server.url,
        mesh_server.creds["agent-eu"],
        ["eu"],
        kinds=("function", "agent", "review"),
        default_region="eu",
        lease_s=5.0,
        ack_wait_s=5.0,
        sweep=False,  # what run control makes ready must be published by it, not swept
        setups=(setup,),
    )
    agent = await open_agent(options)
    try:
        yield control
    finally:
        PROBE.release.set()
        await close_agent(*agent)
        await control.close()


async def _until(control: MeshControl, run_id: str, done: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        record = await control.get_run(TENANT, run_id)
        if done(record):
            return record
        assert time.monotonic() < deadline, f"{run_id} stayed {record.status.value}"
        await asyncio.sleep(0.05)


def _ended(record: tf.RunRecord) -> bool:
    return record.status in TERMINAL_RUN


async def test_a_review_decided_through_the_control_plane_resumes_the_run(
    mesh: MeshControl,
) -> None:
    approved = (await mesh.submit("gated", tenant=TENANT, input=4)).id
    rejected = (await mesh.submit("gated", tenant=TENANT, input=5)).id
    reviews: list[Any] = []
    deadline = time.monotonic() + 20
    while len(reviews) < 2:  # the review step opened its task in the tenant's pool
        reviews = await mesh.reviews.list(TENANT)
        assert time.monotonic() < deadline, "no review task opened"
        await asyncio.sleep(0.05)
    by_run = {r.run_id: r for r in reviews}
    assert by_run[approved].payload["request"] == {"amount": 8}
    claimed = await mesh.reviews.claim(TENANT, by_run[approved].id, reviewer="rita")
    assert claimed.status.value == "claimed"
    decided = await mesh.reviews.decide(TENANT, by_run[approved].id, reviewer="rita", approve=True)
    assert decided.status.value == "approved"
    await mesh.reviews.decide(TENANT, by_run[rejected].id, reviewer="rita", approve=False)
    done = await _until(mesh, approved, _ended)
    assert done.status == tf.RunStatus.COMPLETED, done.error
    steps = {s.key: s for s in await mesh.steps(TENANT, approved)}
    assert steps["book"].output_json == b'"8:yes"'
    other = await _until(mesh, rejected, _ended)
    assert other.status == tf.RunStatus.COMPLETED, other.error
    assert {s.key: s for s in await mesh.steps(TENANT, rejected)}["book"].output_json == b'"10:no"'
    with pytest.raises(tf.ConflictError):  # decided once
        await mesh.reviews.decide(TENANT, by_run[approved].id, reviewer="rita", approve=False)
    timeline = await mesh.timeline(TENANT, approved)
    decided_events = [e for e in timeline if e.step == "approve" and e.kind == "step.succeeded"]
    assert [e.data["approved"] for e in decided_events] == [True]
    assert timeline[-1].kind == "run.completed"


async def test_cancel_compensates_and_ends_the_run(mesh: MeshControl) -> None:
    run_id = (await mesh.submit("cancellable", tenant=TENANT, input=1)).id
    await asyncio.wait_for(PROBE.slow_started.wait(), 20)  # reserve done, slow running
    cancelled = await mesh.cancel(TENANT, run_id, "the customer withdrew")
    assert cancelled.status == tf.RunStatus.CANCELLED
    assert PROBE.compensated == ["reserve:2"]
    steps = {s.key: s.status.value for s in await mesh.steps(TENANT, run_id)}
    assert steps == {"reserve": "compensated", "slow": "cancelled"}
    with pytest.raises(tf.ConflictError):
        await mesh.cancel(TENANT, run_id)
    PROBE.release.set()  # the agent's attempt finishes: it finds its step settled
    await asyncio.sleep(0.3)
    record = await mesh.get_run(TENANT, run_id)
    assert record.status == tf.RunStatus.CANCELLED
    assert {s.key: s.status.value for s in await mesh.steps(TENANT, run_id)} == steps


async def test_a_paused_run_resumes(mesh: MeshControl) -> None:
    run_id = (await mesh.submit("pausing", tenant=TENANT, input=1)).id
    await _until(mesh, run_id, lambda r: r.status == tf.RunStatus.PAUSED)
    resumed = await mesh.resume(TENANT, run_id)
    assert resumed.status in (tf.RunStatus.RUNNING, tf.RunStatus.COMPLETED)
    done = await _until(mesh, run_id, _ended)
    assert done.status == tf.RunStatus.COMPLETED, done.error
    assert done.result_json == b"101"
    with pytest.raises(tf.ConflictError):  # not paused any more
        await mesh.resume(TENANT, run_id)


async def test_a_child_run_answers_its_parent(mesh: MeshControl) -> None:
    run_id = (await mesh.submit("parent", tenant=TENANT, input="hello")).id
    done = await _until(mesh, run_id, _ended)
    assert done.status == tf.RunStatus.COMPLETED, done.error
    steps = {s.key: s for s in await mesh.steps(TENANT, run_id)}
    child_id, said = str((steps["ask"].output_json or b"").decode()).strip('"').split(":")
    assert said == "HELLO"
    child = await mesh.get_run(TENANT, child_id)
    assert child.parent_run_id == run_id and child.status == tf.RunStatus.COMPLETED
    runs = await mesh.list_runs(TENANT, workflow="child")
    assert [r.id for r in runs] == [child_id]  # one child, though the step ran twice


async def test_an_idempotency_key_answers_the_first_run(mesh: MeshControl) -> None:
    first = await mesh.submit("child", tenant=TENANT, input="a", idempotency_key="order-7")
    again = await mesh.submit("child", tenant=TENANT, input="a", idempotency_key="order-7")
    assert first.created and not again.created and again.id == first.id
    other = await mesh.submit("child", tenant=TENANT, input="b", idempotency_key="order-8")
    assert other.created and other.id != first.id
    for run_id in (first.id, other.id):
        assert (await _until(mesh, run_id, _ended)).status == tf.RunStatus.COMPLETED
    assert len(await mesh.list_runs(TENANT, workflow="child")) == 2


async def _waiting_on(mesh: MeshControl, run_id: str) -> asyncio.Task[Any]:
    """A client's wait on ``run_id`` through the control plane, once it listens for ends and
    has read the run since (the listener's connecting woke it): from then on only an
    announcement of the run's end wakes it (the tests' timers are an hour)."""
    ends = mesh.runs.ends
    assert ends is not None
    waiting = asyncio.create_task(mesh.wait(TENANT, run_id))
    deadline = time.monotonic() + 20
    while not (
        ends.listening
        and ends.waiting(run_id)
        and not any(woken.is_set() for woken in ends._waiters[run_id])
    ):
        assert time.monotonic() < deadline, "the wait never listened"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert not waiting.done()
    return waiting


async def test_a_wait_through_the_control_plane_is_woken_by_the_agents_announcement(
    mesh: MeshControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read again on a timer, the run would be seen to end an hour later: only the agent's
    # announcement of its end (or the listener connecting) wakes the waiting control plane.
    monkeypatch.setattr(ends_module, "FALLBACK_S", 3600.0)
    run_id = (await mesh.submit("cancellable", tenant=TENANT, input=41)).id
    await asyncio.wait_for(PROBE.slow_started.wait(), 20)  # the run cannot end yet
    waiting = await _waiting_on(mesh, run_id)
    PROBE.release.set()
    record = await asyncio.wait_for(waiting, 15)
    assert record.status == tf.RunStatus.COMPLETED
    assert record.result_json == b"42"


async def test_a_wait_through_the_control_plane_is_woken_by_a_cancel(
    mesh: MeshControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancel ends the run by the saga (its completed steps compensated), not by a step's
    # decision: it is announced all the same.
    monkeypatch.setattr(ends_module, "FALLBACK_S", 3600.0)
    run_id = (await mesh.submit("cancellable", tenant=TENANT, input=1)).id
    await asyncio.wait_for(PROBE.slow_started.wait(), 20)
    waiting = await _waiting_on(mesh, run_id)
    await mesh.cancel(TENANT, run_id, "the customer withdrew")
    record = await asyncio.wait_for(waiting, 15)
    assert record.status == tf.RunStatus.CANCELLED
