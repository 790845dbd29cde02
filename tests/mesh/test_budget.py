"""Budgets as KV compare-and-set: 50 concurrent steps, over five connections (as five agents),
against a budget that fits 12 of them: exactly 12 are granted and nothing is overspent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tenantflow.adapters.nats.fabric import connect
from tenantflow.adapters.nats.ledger import Ledger
from tenantflow.errors import ConfigurationError

pytestmark = pytest.mark.timeout(60)

COST = 40_000  # $0.04 held by each step
LIMIT = 12 * COST + COST // 2  # room for 12 steps and a half


async def test_fifty_concurrent_steps_never_overspend(mesh_server: Any, admin: Any) -> None:
    await Ledger(admin, "eu").open("acme", "monthly", LIMIT)
    fabrics = [await connect(mesh_server.url, mesh_server.creds["agent-eu"]) for _ in range(5)]
    ledgers = [Ledger(f, "eu") for f in fabrics]
    try:

        async def step(i: int) -> int:
            ledger = ledgers[i % len(ledgers)]
            hold = f"run-{i}:charge:1"
            if not await ledger.reserve("acme", "monthly", hold, COST):
                return 0
            await asyncio.sleep(0.001 * (i % 7))
            # A retried reserve is the same hold; the step spends all it held.
            assert await ledger.reserve("acme", "monthly", hold, COST)
            return await ledger.settle("acme", "monthly", hold, COST)

        spent = await asyncio.gather(*(step(i) for i in range(50)))
        state = await ledgers[0].state("acme", "monthly")
        granted = [s for s in spent if s]
        assert state.spent == sum(spent) == 12 * COST <= LIMIT
        assert len(granted) == 12 and state.holds == {}
        assert sum(ledger.conflicts for ledger in ledgers) > 0  # the CAS really contended
        # Settling again changes nothing.
        first = next(i for i, s in enumerate(spent) if s)
        assert await ledgers[1].settle("acme", "monthly", f"run-{first}:charge:1", 1) == COST
        assert (await ledgers[0].state("acme", "monthly")).spent == state.spent
    finally:
        for f in fabrics:
            await f.close()


async def test_another_region_ledger_is_refused(mesh_server: Any, admin: Any) -> None:
    await Ledger(admin, "us").open("acme", "monthly", LIMIT)
    eu = await connect(mesh_server.url, mesh_server.creds["agent-eu"], api_timeout_s=0.5)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await Ledger(eu, "us").state("acme", "monthly")
    finally:
        await eu.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_dead_agents_hold_expires_and_is_released_not_spent(
    mesh_server: Any, admin: Any
) -> None:
    """An agent reserves and dies before settling: its hold withholds the budget until its TTL,
    then the next reserve (on another agent) releases it — counted as released, not spent."""
    clock = Clock(10_000.0)
    await Ledger(admin, "eu").open("acme", "monthly", 3 * COST)
    fabrics = [await connect(mesh_server.url, mesh_server.creds["agent-eu"]) for _ in range(2)]
    dead, live = (Ledger(f, "eu", hold_ttl_s=60.0, clock=clock) for f in fabrics)
    try:
        assert await dead.reserve("acme", "monthly", "run-1:charge:1", 2 * COST)
        await fabrics[0].close()  # killed mid-call: no settle will come
        assert not await live.reserve("acme", "monthly", "run-2:charge:1", 2 * COST)
        clock.now += 59.0  # not yet
        assert not await live.reserve("acme", "monthly", "run-2:charge:1", 2 * COST)
        clock.now += 1.0  # the hold's TTL is up: the next reserver releases it
        assert await live.reserve("acme", "monthly", "run-2:charge:1", 2 * COST)
        state = await live.state("acme", "monthly")
        assert state.spent == 0 and state.released == 2 * COST and state.late == 0
        assert state.holds == {"run-2:charge:1": 2 * COST}
        assert await live.settle("acme", "monthly", "run-2:charge:1", COST) == COST
        state = await live.state("acme", "monthly")
        assert state.spent == COST and state.holds == {} and state.available == 2 * COST
    finally:
        await fabrics[1].close()


async def test_a_sweep_releases_expired_holds_and_a_late_settle_still_spends(
    mesh_server: Any, admin: Any
) -> None:
    clock = Clock(20_000.0)
    await Ledger(admin, "eu").open("acme", "monthly", 3 * COST)
    ledger = Ledger(admin, "eu", hold_ttl_s=60.0, clock=clock)
    assert await ledger.reserve("acme", "monthly", "slow", COST)
    assert await ledger.reserve("acme", "monthly", "dead", COST)
    assert await ledger.sweep("acme", "monthly") == 0
    clock.now += 60.0
    assert await ledger.sweep("acme", "monthly") == 2 * COST
    assert await ledger.sweep("acme", "monthly") == 0  # once
    state = await ledger.state("acme", "monthly")
    assert state.holds == {} and state.released == 2 * COST and state.spent == 0
    # A call that outlived its hold's TTL settles: what it spent is recorded, never lost.
    assert await ledger.settle("acme", "monthly", "slow", COST) == COST
    assert await ledger.settle("acme", "monthly", "slow", COST) == COST  # idempotent
    state = await ledger.state("acme", "monthly")
    assert state.spent == COST and state.late == COST
    # A hold reserved without a TTL never expires.
    forever = Ledger(admin, "eu", clock=clock)
    assert await forever.reserve("acme", "monthly", "kept", COST)
    clock.now += 10**6
    assert await ledger.sweep("acme", "monthly") == 0
    assert (await ledger.state("acme", "monthly")).holds == {"kept": COST}


def test_a_hold_ttl_must_be_positive(admin: Any) -> None:
    with pytest.raises(ConfigurationError):
        Ledger(admin, "eu", hold_ttl_s=0.0)
