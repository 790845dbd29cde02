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


async def test_a_provider_429_pauses_and_lowers_the_bucket_for_every_agent(
    mesh_server: Any, admin: Any
) -> None:
    """Agent b's call is answered 429 with a Retry-After of 30 s: no agent is granted a lease
    before then (agent a spends only the token it had leased before), then exactly one token
    is there, and the pool refills at the lowered factor."""
    clock = Clock(2_000.0)
    fabrics = [await connect(mesh_server.url, mesh_server.creds["agent-eu"]) for _ in range(2)]
    a, b = (RateLeases(f, f"agent-{i}", ttl_s=TTL, clock=clock) for i, f in enumerate(fabrics))
    try:
        assert await a.acquire("eu", "acme", RESOURCE, RATE, BURST) == 0.0  # leases 2, spends 1
        assert await b.acquire("eu", "acme", RESOURCE, RATE, BURST) == 0.0  # leases 2, spends 1
        assert await b.throttle("eu", "acme", RESOURCE, RATE, BURST, 30.0) == 0.5
        state = await b.state("eu", "acme", RESOURCE)
        assert state is not None
        assert state.factor == 0.5 and state.paused_until == 2_030.0 and state.leases == {}
        # b dropped its unspent token at once; a spends the one it leased before, no more.
        assert await b.acquire("eu", "acme", RESOURCE, RATE, BURST) == pytest.approx(30.0)
        assert await a.acquire("eu", "acme", RESOURCE, RATE, BURST) == 0.0
        assert await a.acquire("eu", "acme", RESOURCE, RATE, BURST) == pytest.approx(30.0)
        # Whatever the pool held (4 tokens before the 429), nothing is leased during the pause.
        clock.now += 29.5
        assert await a.acquire("eu", "acme", RESOURCE, RATE, BURST) == pytest.approx(0.5)
        assert await b.acquire("eu", "acme", RESOURCE, RATE, BURST) == pytest.approx(0.5)
        # At the Retry-After: exactly one call, not a burst.
        clock.now = 2_030.0
        assert await _drain(a) == 1
        # Then the refill runs at rate * factor (the factor recovers a step per token granted).
        state = await a.state("eu", "acme", RESOURCE)
        assert state is not None and state.factor == pytest.approx(0.55)
        wait = await b.acquire("eu", "acme", RESOURCE, RATE, BURST)
        assert wait == pytest.approx(1 / (RATE * 0.55))
        clock.now += 10.0  # 5.5 tokens at the lowered rate, not 10
        assert await _drain(b) == 5
        assert a.throttles == 0 and b.throttles == 1
    finally:
        for f in fabrics:
            await f.close()


async def test_a_429_on_a_bucket_never_leased_pauses_it_too(mesh_server: Any, admin: Any) -> None:
    clock = Clock(3_000.0)
    fabric = await connect(mesh_server.url, mesh_server.creds["agent-eu"])
    try:
        leases = RateLeases(fabric, "agent-0", ttl_s=TTL, clock=clock)
        assert await leases.throttle("eu", "acme", RESOURCE, RATE, BURST, 120.0) == 0.25
        assert await leases.acquire("eu", "acme", RESOURCE, RATE, BURST) == pytest.approx(120.0)
        clock.now += 120.0
        assert await _drain(leases) == 1
    finally:
        await fabric.close()
