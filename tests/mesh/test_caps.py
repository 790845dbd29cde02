"""A lowered step cap on the mesh binds at once: admissions over it are bounded by what was
already delivered when it was lowered, whatever the timing.

A tenant's ``max_running_steps`` is its consumers' ``max_ack_pending``; a policy put moves the
cap of the existing consumers before it returns. Here an agent's queue runs a tenant's 40 work
items, 8 at once (the old cap); with 8 running and none buffered the cap is lowered to 2, then
the running items finish one by one. Every step that starts after the put must find fewer
than 2 others running: the server hands out an item only while fewer than 2 are out, and an
item is out from its delivery until its ack (which the runner sends after its step counted
itself out). Before the cap followed the policy, each ack let another item in with 7 others
running.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tenantflow.adapters.nats.fabric import connect
from tenantflow.adapters.nats.policy import PolicyBoard, cap_of
from tenantflow.adapters.nats.queue import JetStreamQueue

pytestmark = pytest.mark.timeout(60)

ITEMS, OLD, NEW = 40, 8, 2


async def lowered_cap_run(server_url: str, admin: Any, agent_creds: Any) -> dict[str, Any]:
    """The scenario (see the module doc); its counts."""
    board = PolicyBoard(admin, "eu")
    await board.put("acme", 1, {"max_running_steps": OLD})
    publisher = JetStreamQueue(admin)
    for i in range(ITEMS):
        publisher.publish({"tenant": "acme", "run": f"r{i}", "key": "a", "region": "eu"})
    await publisher.flush()

    fabric = await connect(server_url, agent_creds)
    caps: dict[str, int] = {}
    watcher = PolicyBoard(fabric, "eu")
    await watcher.watch(lambda t, v, p: caps.__setitem__(t, cap_of(p) or 64))
    queue = JetStreamQueue(
        fabric, regions=["eu"], kinds=["function"], slots=64, cap=lambda t: caps.get(t, 64)
    )
    running: list[Any] = []
    starts: list[tuple[float, int]] = []  # (when, running including itself)
    changed = {"at": float("inf"), "delivered": 0, "acked": 0}
    full = asyncio.Event()
    await queue.start()

    async def run_items() -> None:
        for _ in range(ITEMS):
            delivery = await queue.next()
            assert delivery is not None
            running.append(delivery)
            starts.append((time.monotonic(), len(running)))
            if len(running) >= OLD:
                full.set()

    runner = asyncio.create_task(run_items())
    try:
        await asyncio.wait_for(full.wait(), 30)  # 8 out, all running: no ninth is handed out
        await board.put("acme", 2, {"max_running_steps": NEW})
        changed.update(
            at=time.monotonic(), delivered=queue.stats.delivered, acked=queue.stats.acked
        )
        finished = 0
        while finished < ITEMS:
            if not running:
                await asyncio.sleep(0.005)
                continue
            running.pop(0).ack()  # counted out first, then acked
            finished += 1
            await asyncio.sleep(0.01)
        await runner
    finally:
        runner.cancel()
        await queue.close()
        await watcher.close()
        await fabric.close()
    after = [(at, n) for at, n in starts if at > changed["at"]]
    over = [(at, n) for at, n in after if n > NEW]
    info = await admin.js.consumer_info("WORK_eu", "w_acme_function")
    return {
        "in_flight_at_change": changed["delivered"] - changed["acked"] - OLD,
        "starts_after_change": len(after),
        "admissions_over_cap": len(over),
        "lag_s": (over[-1][0] - changed["at"]) if over else 0.0,
        "max_ack_pending": info.config.max_ack_pending,
    }


async def test_admissions_over_a_lowered_cap_are_bounded_by_what_was_in_flight(
    mesh_server: Any, admin: Any
) -> None:
    figures = await lowered_cap_run(mesh_server.url, admin, mesh_server.creds["agent-eu"])
    assert figures["max_ack_pending"] == NEW
    assert figures["starts_after_change"] == ITEMS - OLD
    # Delivered but not yet started when the cap was lowered: the only possible violators.
    assert figures["in_flight_at_change"] == 0
    assert figures["admissions_over_cap"] <= figures["in_flight_at_change"]


async def test_a_new_consumer_takes_the_cap_of_the_policy_the_agent_applied(
    mesh_server: Any, admin: Any
) -> None:
    await PolicyBoard(admin, "eu").put("globex", 1, {"max_running_steps": 3})
    publisher = JetStreamQueue(admin)
    publisher.publish({"tenant": "globex", "run": "r1", "key": "a", "region": "eu"})
    await publisher.flush()
    fabric = await connect(mesh_server.url, mesh_server.creds["agent-eu"])
    caps: dict[str, int] = {}
    seen = asyncio.Event()

    def applied(tenant: str, version: int, policy: dict[str, Any]) -> None:
        caps[tenant] = cap_of(policy) or 64
        seen.set()

    watcher = PolicyBoard(fabric, "eu")
    await watcher.watch(applied)
    queue = JetStreamQueue(fabric, regions=["eu"], kinds=["function"], cap=lambda t: caps[t])
    try:
        await asyncio.wait_for(seen.wait(), 20)  # the watch delivers the bucket's entries first
        await queue.start()
        delivery = await asyncio.wait_for(queue.next(), 20)
        assert delivery is not None and delivery.tenant == "globex"
        delivery.ack()
        info = await admin.js.consumer_info("WORK_eu", "w_globex_function")
        assert info.config.max_ack_pending == 3
    finally:
        await queue.close()
        await watcher.close()
        await fabric.close()
