"""The deadlock probe: three agents that each wait on the next (a -> b -> c -> a) end in a
timeout naming the cycle, before the caller's deadline passes; a chain without a cycle answers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tenantflow.adapters.nats.fabric import connect
from tenantflow.adapters.nats.hops import HopAgent, HopContext, call, cycle_of
from tenantflow.errors import StepTimeoutError

pytestmark = pytest.mark.timeout(60)


def test_cycle_of() -> None:
    assert cycle_of(["x", "a", "b", "c", "a"]) == ["a", "b", "c", "a"]
    assert cycle_of(["a", "b", "c"]) is None


async def _agents(server: Any, nexts: dict[str, str | None]) -> tuple[list[HopAgent], list[Any]]:
    fabrics, agents = [], []
    for name, target in nexts.items():
        fabric = await connect(server.url, server.creds["agent-eu"])

        async def handle(ctx: HopContext, target: str | None = target) -> dict[str, Any]:
            if target is None:
                return {"answer": ctx.payload["q"] * 2, "by": ctx.agent.name}
            return await ctx.call(target, ctx.payload)

        agent = HopAgent(fabric, "eu", name, handle, slots=1)
        await agent.start()
        fabrics.append(fabric)
        agents.append(agent)
    return agents, fabrics


async def test_a_three_agent_cycle_ends_in_a_timeout_naming_it(
    mesh_server: Any, admin: Any
) -> None:
    agents, fabrics = await _agents(mesh_server, {"a": "b", "b": "c", "c": "a"})
    try:
        deadline = time.time() + 2.0
        with pytest.raises(StepTimeoutError) as caught:
            await call(admin, "eu", "acme", "a", {"q": 1}, deadline=deadline)
        assert "agent wait cycle a -> b -> c -> a" in caught.value.message
        assert caught.value.fields["cycle"] == ["a", "b", "c", "a"]
        # The answer came from inside the chain, not from the caller giving up at its deadline.
        assert time.time() < deadline
    finally:
        for agent in agents:
            await agent.close()
        for fabric in fabrics:
            await fabric.close()


async def test_a_chain_without_a_cycle_answers(mesh_server: Any, admin: Any) -> None:
    agents, fabrics = await _agents(mesh_server, {"x": "y", "y": "z", "z": None})
    try:
        reply = await call(admin, "eu", "acme", "x", {"q": 21}, deadline=time.time() + 10.0)
        assert reply == {"answer": 42, "by": "z"}
        # A hop to an agent nobody serves fails at once, named.
        with pytest.raises(StepTimeoutError, match="hop nobody"):
            await call(admin, "eu", "acme", "nobody", {}, deadline=time.time() + 1.0)
    finally:
        for agent in agents:
            await agent.close()
        for fabric in fabrics:
            await fabric.close()
        await asyncio.sleep(0)
