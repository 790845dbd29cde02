"""Rate limits as token leases per agent process, on a real JetStream server.

Time is a hand-moved clock (the leases' expiries and the bucket's refill read it), so what is
asserted holds for every interleaving: two agents sharing one tenant's limit never spend more
than ``burst + rate * elapsed`` together; a dead agent's lease holds back its tokens only until
its TTL, after which the other agent gets the whole capacity.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tenantflow.adapters.nats.fabric import connect
from tenantflow.adapters.nats.leases import RateLeases

pytestmark = pytest.mark.timeout(60)

RATE, BURST, TTL = 1.0, 8, 10.0
RESOURCE = "tool:credit_bureau"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _drain(leases: RateLeases, tenant: str = "acme") -> int:
    """Spend tokens until the bucket refuses; how many were spent."""
    spent = 0
    while await leases.acquire("eu", tenant, RESOURCE, RATE, BURST) == 0.0:
        spent += 1
        assert spent <= 10 * BURST, "the bucket never refused"
    return spent


async def test_two_agents_share_a_limit_and_a_dead_agents_lease_lapses(
    mesh_server: Any, admin: Any
) -> None:
    clock = Clock(1_000.0)
    fabrics = [await connect(mesh_server.url, mesh_server.creds["agent-eu"]) for _ in range(2)]
    a, b = (RateLeases(f, f"agent-{i}", ttl_s=TTL, clock=clock) for i, f in enumerate(fabrics))
    try:
        # 40 calls at once over both agents, at one instant: exactly the burst gets through.
        waits = await asyncio.gather(
            *((a if i % 2 else b).acquire("eu", "acme", RESOURCE, RATE, BURST) for i in range(40))
        )
        granted = sum(1 for w in waits if w == 0.0)
        assert granted == BURST
        assert all(w > 0 for w in waits if w != 0.0)  # a refusal says when to come back
        assert a.spent + b.spent == BURST
        # Another tenant's bucket is its own.
        assert await b.acquire("eu", "globex", RESOURCE, RATE, BURST) == 0.0

        # Four seconds later four tokens have come back; agent a takes a lease of two, spends
        # one and dies holding the other.
        clock.now += 4
        assert await a.acquire("eu", "acme", RESOURCE, RATE, BURST) == 0.0
        await fabrics[0].close()
        assert await _drain(b) == 2  # what the pool has: a's lease is out
        # Long enough to refill, but a's lease is live: its two tokens stay out of reach.
        clock.now += TTL - 1
        assert await _drain(b) == BURST - 2
        # a's lease lapsed: b gets the whole burst.
        clock.now += TTL
        assert await _drain(b) == BURST
        state = await b.state("eu", "acme", RESOURCE)
        assert state is not None and "agent-0" not in state.leases
        # Never over the limit: everything spent since the start fits burst + rate * elapsed.
        elapsed = clock.now - 1_000.0
        total = BURST + 1 + 2 + (BURST - 2) + BURST
        assert total <= BURST + RATE * elapsed
    finally:
        for f in fabrics:
            await f.close()


async def test_a_closing_agent_returns_its_unspent_tokens(mesh_server: Any, admin: Any) -> None:
    clock = Clock(5_000.0)
    fabrics = [await connect(mesh_server.url, mesh_server.creds["agent-eu"]) for _ in range(2)]
    a, b = (RateLeases(f, f"agent-{i}", ttl_s=TTL, clock=clock) for i, f in enumerate(fabrics))
    try:
        assert await a.acquire("eu", "acme", RESOURCE, RATE, BURST) == 0.0  # leases 2, spends 1
        assert await a.release() == 1
        assert await _drain(b) == BURST - 1  # nothing held back by a
    finally:
        for f in fabrics:
            await f.close()


async def test_another_regions_buckets_are_refused(mesh_server: Any, admin: Any) -> None:
    eu = await connect(mesh_server.url, mesh_server.creds["agent-eu"], api_timeout_s=0.5)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await RateLeases(eu, "agent-x").acquire("us", "acme", RESOURCE, RATE, BURST)
    finally:
        await eu.close()
