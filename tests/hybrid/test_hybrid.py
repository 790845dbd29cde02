"""The hybrid placement end to end: the engine orchestrates the critical path on its store,
the outbox is relayed to a real JetStream server (nats-server 2.15 from the venv), and
side-effect agents run the side effects; counted at a local HTTP receiver by idempotency key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.hybrid.conftest import Receiver
from tests.hybrid.fx_app import orders

import tenantflow as tf
from tenantflow.domain.outbox import FX_DEAD_LETTERED, FX_DELIVERED, FX_ENQUEUED, FX_FAILED
from tenantflow.engine.engine import Engine
from tenantflow.errors import SideEffectSpecError
from tenantflow.placement.hybrid import Hybrid, open_hybrid
from tenantflow.placement.hybrid.agent import FxAgent
from tenantflow.placement.hybrid.fabric import Fabric, connect

ROOT = Path(__file__).resolve().parents[2]


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after a generous bound."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def submit(engine: Engine, tenant: str, n: int, start: int = 0, **extra: Any) -> list[str]:
    ids = []
    for i in range(start, start + n):
        handle = await engine.submit("fx-order", tenant=tenant, input={"order": i, **extra})
        ids.append(handle.id)
    return ids


async def completed(engine: Engine, tenant: str, ids: list[str]) -> list[Any]:
    out = []
    for run_id in ids:
        record = await engine.wait(tenant, run_id, timeout=timedelta(seconds=60))
        assert record.status == "completed", (record.status, record.error)
        out.append(engine.decode_result(record))
    return out


async def kinds(engine: Engine, tenant: str, run_id: str) -> list[str]:
    return [e.kind for e in await engine.store.events(tenant, run_id)]


class AgentTask:
    def __init__(self, url: str, **options: Any) -> None:
        self.agent = FxAgent(url, lambda n, v: orders.spec, ack_wait_s=2.0, **options)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.agent.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await self.task
        await self.agent.close()


# -- the spec ------------------------------------------------------------------------------


def test_a_side_effect_whose_output_feeds_a_later_step_is_refused() -> None:
    wf = tf.Workflow("bad")

    @wf.step
    async def a(ctx: tf.StepContext, input: int) -> int:
        return input

    @wf.step(side_effect=True)
    async def notify(ctx: tf.StepContext, a: int) -> int:
        return a

    with pytest.raises(SideEffectSpecError, match="reads the output of side-effect step"):

        @wf.step
        async def b(ctx: tf.StepContext, notify: int) -> int:
            return notify

    with pytest.raises(SideEffectSpecError, match="comes after side-effect step"):

        @wf.step(after=[notify])
        async def c(ctx: tf.StepContext, a: int) -> int:
            return a

    with pytest.raises(SideEffectSpecError, match="fans out"):

        @wf.step(side_effect=True, fan_out="a")
        async def d(ctx: tf.StepContext, a: list[int]) -> None:
            return None

    assert wf.spec.sinks == ("a",)  # a side effect is never part of the result


async def test_without_the_hybrid_placement_a_side_effect_runs_in_the_engine(
    receiver: Receiver,
) -> None:
    async with Engine.open("memory://", auto_tenant="standard") as engine:
        engine.register(orders)
        ids = await submit(engine, "t1", 3)
        assert await completed(engine, "t1", ids) == ["shipped 0", "shipped 1", "shipped 2"]
        await until(lambda: _true(len(receiver.applied) == 3), "three side effects")
        assert sorted(receiver.applied) == sorted(f"{r}:notify" for r in ids)
        assert FX_ENQUEUED not in await kinds(engine, "t1", ids[0])
        assert await engine.store.outbox(None) == []  # type: ignore[attr-defined]


async def test_a_failing_side_effect_fails_no_run_without_the_hybrid_placement_either(
    receiver: Receiver,
) -> None:
    async with Engine.open("memory://", auto_tenant="standard") as engine:
        engine.register(orders)
        [run_id] = await submit(engine, "t1", 1, fail=True)
        assert await completed(engine, "t1", [run_id]) == ["shipped 0"]
        steps = {s.key: s.status for s in await engine.store.get_steps("t1", run_id)}
        assert steps["notify"] == "failed" and steps["ship"] == "succeeded"
    assert receiver.posts == {}


async def _true(value: bool) -> bool:
    return value


# -- on JetStream --------------------------------------------------------------------------


async def test_an_agent_that_is_down_fails_no_run_and_each_effect_lands_once_on_return(
    nats_server: Any, receiver: Receiver, tmp_path: Path
) -> None:
    hybrid = open_hybrid(f"sqlite:///{tmp_path / 'h.db'}", nats_server.url, auto_tenant="standard")
    hybrid.engine.register(orders)
    async with hybrid:
        engine = hybrid.engine
        t1 = await submit(engine, "t1", 10)
        t2 = await submit(engine, "t2.eu", 10)
        # No agent runs: every run completes anyway, its side effect waiting in JetStream.
        assert len(await completed(engine, "t1", t1) + await completed(engine, "t2.eu", t2)) == 20
        store: Any = engine.store
        await until(
            lambda: _empty(store.outbox(None, unpublished=True)), "the relay to publish all"
        )
        assert receiver.posts == {}
        # An agent for t1 only: t2's side effects stay queued (per-tenant consumers).
        only_t1 = AgentTask(nats_server.url, tenants=["t1"])
        await until(lambda: _true(len(receiver.applied) == 10), "t1's ten side effects")
        await only_t1.close()
        assert {b["tenant"] for b in receiver.applied.values()} == {"t1"}
        agent = AgentTask(nats_server.url)
        await until(lambda: _true(len(receiver.applied) == 20), "all twenty side effects")
        expected = {f"{r}:notify" for r in t1 + t2}
        assert set(receiver.applied) == expected
        for key, body in receiver.applied.items():  # each effect carries its run's tenant
            assert body["tenant"] == ("t1" if key.split(":")[0] in t1 else "t2.eu")
        await until(lambda: _empty(store.outbox(None)), "every outcome to be recorded")
        await agent.close()
        for tenant, ids in (("t1", t1), ("t2.eu", t2)):
            for run_id in ids:
                seen = await kinds(engine, tenant, run_id)
                assert seen.count(FX_ENQUEUED) == 1 and seen.count(FX_DELIVERED) == 1
                assert seen.index("run.completed") < seen.index(FX_DELIVERED)
    assert max(receiver.posts.values()) == 1  # no agent crashed: no request was repeated


async def _empty(rows: Awaitable[list[Any]]) -> bool:
    return not await rows


async def test_a_side_effect_that_always_fails_is_dead_lettered_and_the_run_completes(
    nats_server: Any, receiver: Receiver, tmp_path: Path
) -> None:
    hybrid = open_hybrid(f"sqlite:///{tmp_path / 'h.db'}", nats_server.url, auto_tenant="standard")
    hybrid.engine.register(orders)
    async with hybrid:
        engine = hybrid.engine
        [run_id] = await submit(engine, "t1", 1, fail=True)
        assert await completed(engine, "t1", [run_id]) == ["shipped 0"]
        agent = AgentTask(nats_server.url, max_deliveries=3, backoff_base_s=0.05)
        store: Any = engine.store
        await until(lambda: _empty(store.outbox(None)), "the dead letter to be recorded")
        await agent.close()
        seen = await kinds(engine, "t1", run_id)
        assert seen.count(FX_FAILED) == 3 and seen.count(FX_DEAD_LETTERED) == 1
        assert FX_DELIVERED not in seen
        assert (await engine.store.get_run("t1", run_id)).status == "completed"
        nc = await connect(nats_server.url)
        info = await nc.jetstream().stream_info(Fabric().dead_stream)
        await nc.close()
        assert info.state.messages == 1
    assert receiver.posts == {}


async def test_a_malformed_message_is_dead_lettered_and_blocks_nothing(
    nats_server: Any, receiver: Receiver, tmp_path: Path
) -> None:
    hybrid = open_hybrid(f"sqlite:///{tmp_path / 'h.db'}", nats_server.url, auto_tenant="standard")
    hybrid.engine.register(orders)
    async with hybrid:
        nc = await connect(nats_server.url)
        js = nc.jetstream()
        await Fabric().ensure(js)
        await js.publish(Fabric().work("t1", "notify"), b"not json")
        agent = AgentTask(nats_server.url)
        ids = await submit(hybrid.engine, "t1", 3)
        await until(lambda: _true(len(receiver.applied) == 3), "three side effects")
        store: Any = hybrid.engine.store
        await until(lambda: _empty(store.outbox(None)), "every outcome recorded")
        await agent.close()
        assert set(receiver.applied) == {f"{r}:notify" for r in ids}
        dead = await js.stream_info(Fabric().dead_stream)
        work = await js.stream_info(Fabric().work_stream)
        await nc.close()
        assert (dead.state.messages, work.state.messages) == (1, 0)


async def test_the_nats_server_killed_and_restarted_loses_no_side_effect(
    nats_server: Any, receiver: Receiver, tmp_path: Path
) -> None:
    hybrid = open_hybrid(f"sqlite:///{tmp_path / 'h.db'}", nats_server.url, auto_tenant="standard")
    hybrid.engine.register(orders)
    async with hybrid:
        engine = hybrid.engine
        agent = AgentTask(nats_server.url)
        first = await submit(engine, "t1", 10)
        await until(lambda: _true(len(receiver.applied) >= 3), "some side effects")
        nats_server.kill()  # SIGKILL, mid-way
        second = await submit(engine, "t1", 10, start=10)  # the critical path goes on
        assert len(await completed(engine, "t1", first + second)) == 20
        nats_server.restart()
        await until(lambda: _true(len(receiver.applied) == 20), "all twenty side effects", 90)
        store: Any = engine.store
        await until(lambda: _empty(store.outbox(None)), "every outcome to be recorded", 90)
        await agent.close()
        assert set(receiver.applied) == {f"{r}:notify" for r in first + second}
        for run_id in first + second:
            assert (await kinds(engine, "t1", run_id)).count(FX_DELIVERED) == 1


def _spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tenantflow.cli.main", "hybrid", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.postgres
async def test_relay_and_agent_processes_sigkilled_midway_lose_and_repeat_nothing(
    nats_server: Any, receiver: Receiver, postgres_url: str
) -> None:
    env = {**os.environ, "TF_FX_RECEIVER": receiver.url, "PYTHONPATH": str(ROOT)}
    relay_args = ("relay", "--nats", nats_server.url, "--db", postgres_url)
    agent_args = ("agent", "--nats", nats_server.url, "--app", "tests.hybrid.fx_app:setup")
    hybrid = Hybrid(Engine.open(postgres_url, auto_tenant="standard"), nats_server.url, relay=False)
    hybrid.engine.register(orders)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with hybrid:
            engine = hybrid.engine
            store: Any = engine.store
            ids = await submit(engine, "t1", 30)
            assert len(await completed(engine, "t1", ids)) == 30  # nothing relays yet
            assert len(await store.outbox(None, unpublished=True, limit=100)) == 30
            procs.append(relay := _spawn(*relay_args, env=env))
            await until(lambda: _fewer(store, 30), "the relay to publish some")
            _kill(relay)  # SIGKILL: maybe between a PubAck and its mark
            procs.append(agent := _spawn(*agent_args, "--ack-wait", "2", env=env))
            procs.append(_spawn(*relay_args, env=env))
            await until(lambda: _true(len(receiver.applied) >= 5), "some side effects", 90)
            _kill(agent)  # SIGKILL, mid-way through its batch
            procs.append(_spawn(*agent_args, "--ack-wait", "2", env=env))
            await until(lambda: _true(len(receiver.applied) == 30), "all thirty effects", 120)
            await until(lambda: _empty(store.outbox(None)), "every outcome recorded", 120)
            assert set(receiver.applied) == {f"{r}:notify" for r in ids}
            for run_id in ids:
                seen = await kinds(engine, "t1", run_id)
                assert seen.count(FX_DELIVERED) == 1 and seen.count(FX_ENQUEUED) == 1
    finally:
        for proc in procs:
            _kill(proc)


async def _fewer(store: Any, n: int) -> bool:
    return len(await store.outbox(None, unpublished=True, limit=100)) < n


def test_the_agent_command_refuses_an_unknown_app_in_one_line() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "tenantflow.cli.main", "hybrid", "agent"),
            *("--nats", "nats://127.0.0.1:9", "--app", "no_such_module_here:setup"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no_such_module_here" in lines[0], done.stderr


@pytest.mark.postgres
async def test_a_centralized_front_with_a_hybrid_worker_process_choreographs_side_effects(
    nats_server: Any, receiver: Receiver, postgres_url: str
) -> None:
    env = {**os.environ, "TF_FX_RECEIVER": receiver.url, "PYTHONPATH": str(ROOT)}
    args = ("worker", "--db", postgres_url, "--nats", nats_server.url)
    worker = _spawn(*args, "--app", "tests.hybrid.fx_app:setup", env=env)
    try:
        async with Engine.open(postgres_url, cluster="front", auto_tenant="standard") as front:
            front.register(orders)
            ids = await submit(front, "t1", 5)
            assert await completed(front, "t1", ids) == [f"shipped {i}" for i in range(5)]
            agent = AgentTask(nats_server.url)
            await until(lambda: _true(len(receiver.applied) == 5), "five side effects", 90)
            store: Any = front.store
            await until(lambda: _empty(store.outbox(None)), "every outcome recorded", 90)
            await agent.close()
            for run_id in ids:
                seen = await kinds(front, "t1", run_id)
                assert seen.count(FX_ENQUEUED) == 1 and seen.count(FX_DELIVERED) == 1
                assert "step.started" not in [
                    e.kind for e in await front.store.events("t1", run_id) if e.step == "notify"
                ]
    finally:
        _kill(worker)
