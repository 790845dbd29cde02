"""Signals on a real SQLite file: a step waits for a named signal, durably, and resumes with
its payload exactly once; sent early, a signal is kept; a timeout fails the step or returns
its default; another tenant's run is out of reach."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf

pytestmark = pytest.mark.timeout(60)


async def until(predicate: Any, what: str) -> None:
    """Poll (bounded, generous) until ``predicate()`` holds."""
    for _ in range(1000):
        if await predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def approval(executed: list[str], after: asyncio.Event | None = None) -> tf.Workflow:
    wf = tf.Workflow("approval")

    @wf.step
    async def ask(ctx: tf.StepContext) -> Any:
        executed.append(f"ask:{ctx.attempt}")
        answer = await ctx.wait_for_signal("approved", timeout=timedelta(hours=1))
        executed.append(f"answered:{answer}")
        if after is not None:
            await after.wait()
        return answer

    return wf


async def kinds(engine: tf.Engine, run_id: str) -> list[str]:
    return [e.kind for e in await engine.timeline("t", run_id)]


async def test_a_waiting_step_resumes_with_the_payload_once(tmp_path: Path) -> None:
    executed: list[str] = []
    async with tf.Engine.open(f"sqlite:///{tmp_path / 's.db'}", auto_tenant="enterprise") as engine:
        engine.register(approval(executed))
        run = await engine.submit("approval", tenant="t", input=None)

        async def waiting() -> bool:
            return "step.waiting" in await kinds(engine, run.id)

        await until(waiting, "the step waits")
        receipt = await engine.signal("t", run.id, "approved", {"by": "ops"})
        assert receipt.signal_id.startswith("sig_") and not receipt.duplicate
        assert await run.result() == {"by": "ops"}
        log = await kinds(engine, run.id)
        assert log.count("signal.received") == log.count("signal.consumed") == 1
        waits = [e for e in await engine.timeline("t", run.id) if e.kind == "step.waiting"]
        assert waits[0].data["signal"] == "approved"
        # The ended run takes no more signals.
        with pytest.raises(tf.ConflictError, match="ended"):
            await engine.signal("t", run.id, "approved", 1)
    assert executed.count("answered:{'by': 'ops'}") == 1


async def test_a_signal_sent_before_the_wait_is_kept_and_taken_in_order(tmp_path: Path) -> None:
    gate = asyncio.Event()
    wf = tf.Workflow("twice")

    @wf.step
    async def first(ctx: tf.StepContext) -> int:
        await gate.wait()
        return 1

    @wf.step
    async def second(ctx: tf.StepContext, first: int) -> list[Any]:
        one = await ctx.wait_for_signal("item")
        two = await ctx.wait_for_signal("item")
        return [one, two]

    async with tf.Engine.open(f"sqlite:///{tmp_path / 'b.db'}", auto_tenant="enterprise") as engine:
        engine.register(wf)
        run = await engine.submit("twice", tenant="t", input=None)
        a = await engine.signal("t", run.id, "item", "a", idempotency_key="k1")
        again = await engine.signal("t", run.id, "item", "other", idempotency_key="k1")
        assert again.duplicate and again.signal_id == a.signal_id
        await engine.signal("t", run.id, "item", "b")
        gate.set()
        assert await run.result() == ["a", "b"]
        log = await kinds(engine, run.id)
        assert log.count("signal.received") == 2 and log.count("signal.consumed") == 2


async def test_a_wait_survives_a_restart_and_a_taken_signal_is_replayed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    executed: list[str] = []
    hold = asyncio.Event()
    engine = tf.Engine.open(url, auto_tenant="enterprise")
    await engine.start()
    engine.register(approval(executed, hold))
    run = await engine.submit("approval", tenant="t", input=None)

    async def waiting() -> bool:
        return "step.waiting" in await kinds(engine, run.id)

    await until(waiting, "the step waits")
    await engine.close()  # the step is parked: only the store remembers it

    executed.clear()
    again = tf.Engine.open(url, auto_tenant="enterprise")
    await again.start()
    again.register(approval(executed, hold))

    async def resumed_waiting() -> bool:
        return (
            executed.count("ask:2") >= 1 or (await kinds(again, run.id)).count("step.waiting") >= 2
        )

    await until(resumed_waiting, "the restarted engine waits again")
    await again.signal("t", run.id, "yes")  # a signal nobody waits for: kept, not taken
    await again.signal("t", run.id, "approved", "go")

    async def answered() -> bool:
        return "answered:go" in executed

    await until(answered, "the step resumes with the payload")
    await again.close()  # stopped after taking the signal, before the step succeeded

    executed.clear()
    hold.set()
    async with tf.Engine.open(url, auto_tenant="enterprise") as third:
        third.register(approval(executed, hold))
        assert await third.run("t", run.id).result() == "go"  # replayed, not awaited again
        log = await kinds(third, run.id)
        assert log.count("signal.consumed") == 1 and log.count("signal.received") == 2
    assert executed == [executed[0], "answered:go"] and executed[0].startswith("ask:")


async def test_a_timeout_returns_the_default_or_fails_the_step(tmp_path: Path) -> None:
    wf = tf.Workflow("patient")

    @wf.step
    async def wait(ctx: tf.StepContext, input: bool) -> Any:
        if input:
            return await ctx.wait_for_signal("never", timeout=0.05, default="fallback")
        return await ctx.wait_for_signal("never", timeout=timedelta(milliseconds=50))

    async with tf.Engine.open(f"sqlite:///{tmp_path / 't.db'}", auto_tenant="enterprise") as engine:
        engine.register(wf)
        with_default = await engine.submit("patient", tenant="t", input=True)
        assert await with_default.result() == "fallback"
        without = await engine.submit("patient", tenant="t", input=False)
        with pytest.raises(tf.RunFailedError):
            await without.result()
        record = await engine.get_run("t", without.id)
        assert record.status == tf.RunStatus.FAILED or record.status.value == "compensated"
        assert "SignalTimeoutError" in (record.error or "")


async def test_signals_are_tenant_scoped_and_checked(tmp_path: Path) -> None:
    async with tf.Engine.open(f"sqlite:///{tmp_path / 'i.db'}", auto_tenant="enterprise") as engine:
        engine.register(approval([]))
        run = await engine.submit("approval", tenant="t", input=None)
        with pytest.raises(tf.NotFoundError):
            await engine.signal("other", run.id, "approved", "stolen")
        with pytest.raises(tf.SpecError, match="plain JSON"):
            await engine.signal("t", run.id, "approved", math.nan)
        with pytest.raises(tf.SpecError, match="at most"):
            await engine.signal("t", run.id, "approved", "x" * (64 * 1024))
        with pytest.raises(tf.SpecError, match="name is 1-128"):
            await engine.signal("t", run.id, "no spaces", 1)
        assert "signal.received" not in await kinds(engine, run.id)
        await engine.cancel("t", run.id)


async def test_an_event_starts_its_workflows_once_per_event_id(tmp_path: Path) -> None:
    billing = tf.Workflow("billing", input=dict, on_event=["invoice.created"])
    audit = tf.Workflow("audit", input=dict, on_event="invoice.created")

    @billing.step
    async def charge(ctx: tf.StepContext, input: dict[str, Any]) -> int:
        return int(input["amount"])

    @audit.step
    async def note(ctx: tf.StepContext, input: dict[str, Any]) -> str:
        return f"{ctx.tenant_id}:{input['amount']}"

    async with tf.Engine.open(f"sqlite:///{tmp_path / 'e.db'}", auto_tenant="enterprise") as engine:
        engine.register(billing)
        engine.register(audit)
        first = await engine.publish("t", "invoice.created", "inv-1", {"amount": 5})
        assert [(r.workflow, r.created) for r in first.runs] == [
            ("audit", True),
            ("billing", True),
        ]
        again = await engine.publish("t", "invoice.created", "inv-1", {"amount": 999})
        assert [r.run_id for r in again.runs] == [r.run_id for r in first.runs]
        assert not any(r.created for r in again.runs)
        results = [await engine.run("t", r.run_id).result() for r in first.runs]
        assert results == ["t:5", 5]
        # Another tenant's event with the same id: its own runs.
        theirs = await engine.publish("u", "invoice.created", "inv-1", {"amount": 7})
        assert {r.run_id for r in theirs.runs}.isdisjoint(r.run_id for r in first.runs)
        assert all(r.created for r in theirs.runs)
        assert (await engine.publish("t", "nobody.listens", "x", None)).runs == ()
        with pytest.raises(tf.SpecError, match="id"):
            await engine.publish("t", "invoice.created", "", {"amount": 1})
        with pytest.raises(tf.SpecError, match="plain JSON"):
            await engine.publish("t", "invoice.created", "inv-2", {"amount": math.inf})
    with pytest.raises(tf.SpecError, match="name is 1-128"):
        tf.Workflow("bad", on_event="has space")
