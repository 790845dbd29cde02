"""Budgets as KV compare-and-set: 50 concurrent steps, over five connections (as five agents),
against a budget that fits 12 of them: exactly 12 are granted and nothing is overspent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tenantflow.adapters.nats.fabric import connect
from tenantflow.adapters.nats.ledger import Ledger

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
