"""A commit that fails — before it lands or after — never strands or duplicates work: the
engine reloads the runs the failed batch touched from the store (``engine/resync.py``)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.domain.records import Op
from tenantflow.errors import StoreError, StoreUnavailableError
from tenantflow.ports import Store
from tenantflow.selftest.faults import LostAcks
from tenantflow.testing import MemoryStore


class FailsBeforeCommit(LostAcks):
    """A share of commits fail without landing (the server was down)."""

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        if self._rng.random() < self.share:
            self.injected += 1
            raise StoreUnavailableError("the server is restarting (injected)")
        return await self.inner.apply(ops)


def _workflow(executed: Counter[tuple[int, str]]) -> tf.Workflow:
    wf = tf.Workflow("dag", input=int)

    @wf.step
    async def a(ctx: tf.StepContext, input: int) -> int:
        executed[(input, "a")] += 1
        await asyncio.sleep(random.uniform(0, 0.003))
        return input + 1

    @wf.step
    async def b(ctx: tf.StepContext, a: int) -> int:
        executed[(a - 1, "b")] += 1
        return a * 2

    @wf.step
    async def c(ctx: tf.StepContext, a: int) -> int:
        executed[(a - 1, "c")] += 1
        return a + 10

    @wf.step
    async def d(ctx: tf.StepContext, b: int, c: int) -> int:
        return b + c

    return wf


async def _submit(engine: tf.Engine, i: int) -> tf.RunHandle:
    while True:  # a client retrying with the same key
        try:
            return await engine.submit("dag", tenant=f"t{i % 3}", input=i, idempotency_key=f"k{i}")
        except StoreError:
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("fault", [LostAcks, FailsBeforeCommit])
async def test_failed_commits_strand_nothing_and_complete_each_step_once(fault: type) -> None:
    inner = MemoryStore()
    faults = fault(inner, 0.0, seed=3)
    executed: Counter[tuple[int, str]] = Counter()
    store: Store = faults
    async with tf.Engine(
        store, tf.EngineConfig(auto_tenant="enterprise", lease=timedelta(seconds=5), seed=1)
    ) as engine:
        engine.register(_workflow(executed))
        faults.share = 0.15  # after start: tenants are created, and runs, under faults
        handles = [await _submit(engine, i) for i in range(60)]
        records = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 30)
        faults.share = 0.0
        assert faults.injected > 10
        assert [r.status for r in records] == [tf.RunStatus.COMPLETED] * 60
        assert sorted(engine.decode_result(r) for r in records) == sorted(
            (i + 1) * 2 + (i + 11) for i in range(60)
        )
        assert len({h.id for h in handles}) == 60  # a retried submission is the same run
        for h in handles:
            events = await engine.timeline(h.tenant_id, h.id)
            done = Counter(e.step for e in events if e.kind == "step.succeeded")
            assert done == {"a": 1, "b": 1, "c": 1, "d": 1}, events
            assert [e.kind for e in events].count("run.completed") == 1
            assert [v.version for v in await engine.versions(h.tenant_id, h.id)] == [0, 1, 2, 3, 4]
        for tenant in ("t0", "t1", "t2"):
            ledgers = await engine.budget(tenant)
            assert all(int(x["reserved"]) == 0 for x in ledgers)
    assert all(n >= 1 for n in executed.values())
    assert len(executed) == 3 * 60


async def test_a_tenant_created_by_a_commit_that_raised_is_usable() -> None:
    faults = LostAcks(MemoryStore(), 0.0, seed=1)
    wf = tf.Workflow("one", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        return input + 1

    engine = tf.Engine(faults, tf.EngineConfig(auto_tenant="standard"))  # type: ignore[arg-type]
    async with engine:
        engine.register(wf)
        faults.share = 0.999
        with pytest.raises(StoreUnavailableError):
            await engine.submit("one", tenant="fresh", input=1)  # its creation landed
        faults.share = 0.0
        handle = await engine.submit("one", tenant="fresh", input=1)
        assert await handle.result(timedelta(seconds=5)) == 2
