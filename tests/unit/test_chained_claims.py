"""A step readied by a completion claims its slot in the completion's transaction
(``engine/execution/chain.py``): one commit a step, and a claim made alongside a refused
completion is given back, its code never run."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import tenantflow as tf
from tenantflow.domain.records import STALE, FinishAttempt, Op, StartAttempt, StepStatus
from tenantflow.errors import StoreUnavailableError
from tenantflow.testing import MemoryStore


class Recording(MemoryStore):
    """Records each transaction's ops; may answer one step's completion as refused (after it
    landed, as a completion whose lease lapsed meanwhile would look to its writer)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Op]] = []
        self.refuse_finish_of: str | None = None

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        self.batches.append(list(ops))
        results = await super().apply(ops)
        for i, op in enumerate(ops):
            if isinstance(op, FinishAttempt) and op.key == self.refuse_finish_of:
                results[i] = STALE
        return results


def _chain(ran: list[str]) -> tf.Workflow:
    wf = tf.Workflow("chain", input=int)

    @wf.step
    async def a(ctx: tf.StepContext, input: int) -> int:
        ran.append("a")
        return input + 1

    @wf.step
    async def b(ctx: tf.StepContext, a: int) -> int:
        ran.append("b")
        return a + 1

    @wf.step
    async def c(ctx: tf.StepContext, b: int) -> int:
        ran.append("c")
        return b + 1

    return wf


def _batch_with(store: Recording, kind: type, key: str) -> int:
    return next(
        i
        for i, ops in enumerate(store.batches)
        if any(isinstance(op, kind) and op.key == key for op in ops)
    )


async def test_each_next_step_is_claimed_in_its_predecessors_commit() -> None:
    store = Recording()
    ran: list[str] = []
    async with tf.Engine(store, tf.EngineConfig(auto_tenant="enterprise")) as engine:
        engine.register(_chain(ran))
        run = await engine.submit("chain", tenant="t1", input=1)
        assert await run.result() == 4
        for done, claimed in (("a", "b"), ("b", "c")):
            assert _batch_with(store, FinishAttempt, done) == _batch_with(
                store, StartAttempt, claimed
            ), f"{claimed} was not claimed in the transaction that completed {done}"
        ops = [op for ops in store.batches for op in ops if getattr(op, "run_id", "") == run.id]
        starts = [op.key for op in ops if isinstance(op, StartAttempt)]
    assert starts == ["a", "b", "c"]  # each claimed once, in order
    assert ran == ["a", "b", "c"]


async def test_a_claim_made_beside_a_refused_completion_is_given_back_unrun() -> None:
    store = Recording()
    store.refuse_finish_of = "a"  # a's completion lands, but its writer hears "refused"
    ran: list[str] = []
    async with tf.Engine(store, tf.EngineConfig(auto_tenant="enterprise")) as engine:
        engine.register(_chain(ran))
        run = await engine.submit("chain", tenant="t1", input=1)
        given_back: list[str] = []
        for _ in range(300):
            events = await store.events("t1", run.id)
            given_back = [e.step or "" for e in events if e.kind == "step.deferred"]
            if given_back:
                break
            await asyncio.sleep(0.01)
        steps = {s.key: s for s in await store.get_steps("t1", run.id)}
    # b was ready in the store and claimed in the same transaction, but a's writer was told
    # "refused": b's code must not run (the mirror lacks a's output), and its claim is given
    # back, so that b is ready for whoever holds the run's true state, not held by nobody.
    assert given_back == ["b"]
    assert steps["b"].status == StepStatus.READY
    assert steps["b"].owner is None
    assert ran == ["a"]


class LandsThenRaises(MemoryStore):
    """The batch holding ``key``'s completion commits, then its caller hears an error (the
    connection dropped after the commit): the engine reloads the run from the store."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.raised = False

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        results = await super().apply(ops)
        if not self.raised and any(isinstance(o, FinishAttempt) and o.key == self.key for o in ops):
            self.raised = True
            raise StoreUnavailableError("the connection dropped after the commit (injected)")
        return results


async def _until(check: Any) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


async def test_steps_queued_beside_a_completion_whose_commit_raised_do_not_block_the_reload() -> (
    None
):
    # The fan-out's elements are queued before `items` commits, and wait: the tenant's one
    # slot is taken. The commit lands but raises; the run is reloaded from the store. The
    # elements queued for the old mirror must be withdrawn, or they would swallow the reloaded
    # run's own queueing of the same steps and the run would never end.
    store = LandsThenRaises("items")
    hold, go = asyncio.Event(), asyncio.Event()
    async with tf.Engine(store, tf.EngineConfig(slots=8)) as engine:
        fan = tf.Workflow("fan", input=list[int])

        @fan.step
        async def items(ctx: tf.StepContext, input: list[int]) -> list[int]:
            await go.wait()
            return input

        @fan.step(fan_out="items")
        async def work(ctx: tf.StepContext, items: int) -> int:
            return items

        slow = tf.Workflow("slow", input=int)

        @slow.step
        async def wait(ctx: tf.StepContext, input: int) -> int:
            await hold.wait()
            return input

        engine.register(fan)
        engine.register(slow)
        caps = {"max_running_steps": 2, "guaranteed_slots": 0, "burst_slots": 0}
        await engine.tenants.create("t", tier="standard", **caps)
        scheduler = engine.dispatcher.scheduler
        blocker = await engine.submit("slow", tenant="t", input=1)
        await _until(lambda: scheduler.running("t") == 1)
        run = await engine.submit("fan", tenant="t", input=[0, 1, 2, 3])
        await _until(lambda: scheduler.running("t") == 2)
        await engine.tenants.update("t", max_running_steps=1, guaranteed_slots=0)
        go.set()  # items completes; its elements wait for the slot `blocker` holds
        await _until(lambda: store.raised)
        await asyncio.sleep(0.2)  # the reload happens meanwhile
        hold.set()
        assert await blocker.result() == 1
        assert await asyncio.wait_for(run.result(), 10) == [0, 1, 2, 3]
