"""The work queue's fairness: a tenant with a backlog of 150 items does not hold back a quiet
tenant's 5 (one FIFO consumer would hand them out last; the test waits until both tenants'
consumers are there, however long creating them takes on a loaded machine); the per-tenant cap
holds at the server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tenantflow.adapters.nats.queue import JetStreamQueue
from tenantflow.errors import ConfigurationError

pytestmark = pytest.mark.timeout(60)


def _item(tenant: str, i: int) -> dict[str, Any]:
    return {"tenant": tenant, "run": f"r{i}", "key": "a", "region": "eu", "kind": "function"}


async def test_a_backlog_does_not_hold_back_a_quiet_tenant(admin: Any) -> None:
    publisher = JetStreamQueue(admin)
    for i in range(150):
        publisher.publish(_item("burster", i))
    await publisher.flush()
    for i in range(5):
        publisher.publish(_item("quiet", i))
    await publisher.flush()
    queue = JetStreamQueue(admin, regions=["eu"], kinds=["function"], slots=1)
    await queue.start()
    order: list[str] = []
    try:
        # Both tenants' consumers are created and each has handed an item over before any is
        # taken: how long creating a consumer takes (over a second on a loaded machine) is not
        # what this tests, the order the items are then handed out in is.
        async with asyncio.timeout(30.0):
            while queue.scheduler.tenants_with_work < 2:  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.01)
        while "quiet" not in order or order.count("quiet") < 5:
            delivery = await asyncio.wait_for(queue.next(), 10.0)
            assert delivery is not None
            order.append(delivery.data["tenant"])
            await asyncio.sleep(0.01)  # the step's work
            delivery.ack()
            assert len(order) <= 100, order
        # FIFO would give the quiet tenant positions 151-155.
        last_quiet = max(i for i, t in enumerate(order) if t == "quiet")
        assert last_quiet < 60, order
        assert queue.stats.consumers_created == 2
    finally:
        await queue.close()
        await publisher.close()


async def test_the_per_tenant_cap_is_held_by_the_server(admin: Any) -> None:
    publisher = JetStreamQueue(admin)
    for i in range(10):
        publisher.publish(_item("capped", i))
    await publisher.flush()
    # Two processes' queues (two agents), each with 8 slots; the tenant's cap is 3.
    queues = [
        JetStreamQueue(admin, regions=["eu"], kinds=["function"], slots=8, cap=lambda t: 3,
                       prefetch=8, poll_s=0.5)
        for _ in range(2)
    ]  # fmt: skip
    held: list[Any] = []
    try:
        for q in queues:
            await q.start()

        async def take(q: JetStreamQueue) -> None:
            while True:
                delivery = await q.next()
                if delivery is None:
                    return
                held.append(delivery)

        tasks = [asyncio.create_task(take(q)) for q in queues]
        await asyncio.sleep(3.0)  # long enough for many pulls: none may pass the cap
        assert len(held) == 3
        info = await admin.js.consumer_info("WORK_eu", "w_capped_function")
        assert info.num_ack_pending == 3 and info.config.max_ack_pending == 3
        for t in tasks:
            t.cancel()
    finally:
        for d in held:
            d.ack()
        for q in queues:
            await q.close()


async def _until(check: Any) -> None:
    async with asyncio.timeout(30.0):
        while not check():  # noqa: ASYNC110 - the queue's state has no event to await
            await asyncio.sleep(0.01)


async def test_an_express_slot_takes_a_quiet_tenants_step_while_a_burster_holds_the_rest(
    admin: Any,
) -> None:
    publisher = JetStreamQueue(admin)
    for i in range(6):
        publisher.publish(_item("burster", i))
    await publisher.flush()
    queue = JetStreamQueue(admin, regions=["eu"], kinds=["function"], slots=2, express=2)
    await queue.start()
    try:
        held = [await asyncio.wait_for(queue.next(), 30.0) for _ in range(2)]
        assert [d.data["tenant"] for d in held if d is not None] == ["burster", "burster"]
        await _until(lambda: queue.scheduler.queued("burster") >= 1)
        # The burster holds every regular slot: the express slot is not for it.
        assert queue._express_pick() is None
        for i in range(2):
            publisher.publish(_item("quiet", 100 + i))
        await publisher.flush()
        await _until(lambda: queue.scheduler.queued("quiet") >= 1)
        first = await asyncio.wait_for(queue.next(), 10.0)
        assert first is not None and first.data["tenant"] == "quiet" and first.express
        # One express step a tenant: the other express slot stays free.
        await _until(lambda: queue.scheduler.queued("quiet") >= 1)
        assert queue._express_pick() is None
        first.ack()  # its slot is free again: the tenant's next step takes it
        second = await asyncio.wait_for(queue.next(), 10.0)
        assert second is not None and second.data["tenant"] == "quiet" and second.express
        assert queue.stats.express == 2
        assert queue.scheduler.running("burster") == 2  # the burster kept its slots
        second.ack()
        held[0].ack()  # a regular slot: the burster's next step takes it
        third = await asyncio.wait_for(queue.next(), 10.0)
        assert third is not None and third.data["tenant"] == "burster" and not third.express
        for d in (held[1], third):
            d.ack()
    finally:
        await queue.close()
        await publisher.close()


def test_an_agent_has_half_its_slots_as_express_slots_unless_told() -> None:
    from tenantflow.placement.mesh.agent import AgentOptions, express_slots

    def options(slots: int, e: int | None = None) -> AgentOptions:
        return AgentOptions("sqlite://", "nats://x", None, ["eu"], slots=slots, express_slots=e)

    assert [express_slots(options(n)) for n in (1, 4, 8, 16)] == [1, 2, 4, 8]
    assert express_slots(options(8, 0)) == 0
    assert express_slots(options(8, 5)) == 5


def test_negative_express_slots_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="express must be >= 0"):
        JetStreamQueue(None, express=-1)  # type: ignore[arg-type]  # (refused before use)
