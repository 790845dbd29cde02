"""A burst of first submissions for a new tenant (auto_tenant) creates the tenant once."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

import tenantflow as tf
from tenantflow.domain.tenancy import PutTenant
from tenantflow.testing import FakeClock, MemoryStore


class Item(BaseModel):
    n: int


class CountingStore(MemoryStore):
    """Counts the tenant creations tried (PutTenant ops with create=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.creations = 0

    async def apply(self, ops: Any) -> list[Any]:
        self.creations += sum(isinstance(op, PutTenant) and op.create for op in ops)
        return await super().apply(ops)


async def test_a_burst_of_first_submissions_creates_the_tenant_once() -> None:
    clock = FakeClock()
    store = CountingStore()
    wf = tf.Workflow("one", input=Item)

    @wf.step
    async def only(ctx: tf.StepContext, input: Item) -> Item:
        return input

    async with tf.Engine(
        clock.watch(store), tf.EngineConfig(slots=4, auto_tenant="standard"), clock=clock
    ) as engine:
        engine.register(wf)
        handles = await clock.drive(
            asyncio.gather(
                *(engine.submit("one", tenant="newco", input={"n": i}) for i in range(40))
            ),
            step_s=0.01,
            limit_s=30,
        )
        results = await clock.drive(
            asyncio.gather(*(h.result() for h in handles)), step_s=0.01, limit_s=30
        )
        assert sorted(r.n for r in results) == list(range(40))
        assert store.creations == 1
        audit = await engine.audit_log("newco")
        assert [e.action for e in audit].count("tenant.created") == 1
