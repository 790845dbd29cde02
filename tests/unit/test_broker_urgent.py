"""A delivery handed out on an express slot (a quiet tenant's step while a burster holds the
regular slots) writes its claim and its decision in the writer's urgent lane; the others in
the regular lane. Fake clock, in-memory store and bus."""

from __future__ import annotations

from typing import Any

import pytest

import tenantflow as tf
from tenantflow.engine.execution.broker import BrokerDriver
from tenantflow.testing import FakeClock, LoopbackBus, MemoryStore

pytestmark = pytest.mark.timeout(60)

wf = tf.Workflow("two-steps-urgent")


@wf.step()
async def a(ctx: tf.StepContext, input: int) -> int:
    return input + 1


@wf.step()
async def b(ctx: tf.StepContext, a: int) -> int:
    return a * 10


class Express:
    """A delivery as the JetStream queue hands one out on an express slot: step ``b``'s."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.express = inner.data["key"] == "b"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ExpressBus(LoopbackBus):
    async def next(self) -> Any:
        delivery = await super().next()
        return None if delivery is None else Express(delivery)


async def test_an_express_deliverys_claim_and_decision_go_in_the_urgent_lane() -> None:
    clock, store = FakeClock(), MemoryStore()
    async with tf.Engine(store, clock=clock) as control:  # records the tenant, drives nothing
        await control.tenants.create("t1", tier="standard")
        bus = ExpressBus(clock, ack_wait_s=30.0)
        driver = BrokerDriver(
            {"home": store},
            home="home",
            bus=bus,
            clock=clock,
            gateway=control.gateway,
            workflows=[wf.spec],
        )
        writer = driver.writers["home"]
        written: list[tuple[str, str, bool]] = []
        write = writer.write

        async def spy(op: Any, *, urgent: bool = False) -> Any:
            written.append((type(op).__name__, str(getattr(op, "key", "")), urgent))
            return await write(op, urgent=urgent)

        writer.write = spy  # type: ignore[method-assign]
        async with driver:
            run_id = await driver.submit("t1", "two-steps-urgent", 4)
            record = await clock.drive(driver.wait("t1", run_id), step_s=0.5, limit_s=600.0)
        await bus.close()
    assert record.status == tf.RunStatus.COMPLETED, record.error
    by_step = {
        (kind, key): urgent
        for kind, key, urgent in written
        if kind in ("StartAttempt", "FinishAttempt")
    }
    assert by_step == {
        ("StartAttempt", "a"): False,
        ("FinishAttempt", "a"): False,
        ("StartAttempt", "b"): True,
        ("FinishAttempt", "b"): True,
    }, written
