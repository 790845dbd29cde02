"""A delivery that fails after claiming its step gives the claim back (the broker driver).

The lease keeper renews every lease of the driver's owner, whether an attempt still runs behind
it or not. Here the store refuses the first commit of step ``b``'s finish (after ``b`` was
claimed and ran): the delivery fails and is nak'ed. Without the release, ``b`` stayed RUNNING
under a lease renewed for ever, its redelivery found it held and was acked, and the run never
ended. With it, ``b`` is parked back to ready and the redelivery runs it to the end.

Fake clock, in-memory store and bus: every wait is on fake time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.domain.records import FinishAttempt, Op
from tenantflow.engine.execution.broker import BrokerDriver
from tenantflow.testing import FakeClock, LoopbackBus, MemoryStore

pytestmark = pytest.mark.timeout(60)

wf = tf.Workflow("two-steps")
calls: list[str] = []


@wf.step()
async def a(ctx: tf.StepContext, input: int) -> int:
    calls.append("a")
    return input + 1


@wf.step()
async def b(ctx: tf.StepContext, a: int) -> int:
    calls.append("b")
    return a * 10


class FlakyStore(MemoryStore):
    """Refuses the first batch that finishes step ``b`` (nothing of it is written)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        if not self.refused and any(isinstance(op, FinishAttempt) and op.key == "b" for op in ops):
            self.refused += 1
            raise tf.StoreUnavailableError("the store is busy")
        return await super().apply(ops)


async def test_a_delivery_failing_after_its_claim_releases_it_and_the_run_ends() -> None:
    calls.clear()
    clock, store = FakeClock(), FlakyStore()
    async with tf.Engine(store, clock=clock) as control:  # records the tenant, drives nothing
        await control.tenants.create("t1", tier="standard")
        bus = LoopbackBus(clock, ack_wait_s=30.0)
        driver = BrokerDriver(
            {"home": store},
            home="home",
            bus=bus,
            clock=clock,
            gateway=control.gateway,
            workflows=[wf.spec],
            lease_s=60.0,  # renewed while the driver lives
        )
        async with driver:
            run_id = await driver.submit("t1", "two-steps", 4)
            record = await clock.drive(driver.wait("t1", run_id), step_s=0.5, limit_s=600.0)

            async def settled() -> None:
                # The run's end is committed before its last delivery is acked: leaving the
                # driver now could cancel that ack. Wait until every delivery is answered.
                while bus.acked + bus.naked < bus.delivered:
                    await clock.sleep(0.5)

            await clock.drive(settled(), step_s=0.5, limit_s=60.0)
        await bus.close()
        steps = {s.key: s for s in await store.get_steps("t1", run_id)}
    assert store.refused == 1
    assert record.status == tf.RunStatus.COMPLETED, record.error
    assert record.result_json == b"50"
    assert driver.released == 1  # the failed delivery's claim, parked back to ready
    assert calls == ["a", "b", "b"]  # b ran again after its release
    assert bus.naked == 1 and bus.acked == bus.delivered - 1
    assert steps["b"].status == tf.StepStatus.SUCCEEDED
