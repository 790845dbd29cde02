"""Policies on the fabric: the control plane puts, an agent (its region's user) watches and
applies only newer versions; another region's agents cannot read them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tenantflow.adapters.nats.fabric import connect
from tenantflow.adapters.nats.policy import PolicyBoard

pytestmark = pytest.mark.timeout(30)


async def test_agents_apply_newer_policies_only(mesh_server: Any, admin: Any) -> None:
    board = PolicyBoard(admin, "eu")
    await board.put("acme.eu", 1, {"tier": "standard"})
    agent = await connect(mesh_server.url, mesh_server.creds["agent-eu"])
    seen: list[tuple[str, int, dict[str, Any]]] = []
    watching = PolicyBoard(agent, "eu")
    await watching.watch(lambda t, v, p: seen.append((t, v, p)))
    try:
        await board.put("acme.eu", 2, {"tier": "enterprise"})
        await board.put("acme.eu", 1, {"tier": "free"})  # late and stale: ignored
        await board.put("globex", 5, {"tier": "free"})
        deadline = time.monotonic() + 10
        while watching.applied != {"acme.eu": 2, "globex": 5}:
            assert time.monotonic() < deadline, (watching.applied, seen)
            await asyncio.sleep(0.02)
        assert [(t, v) for t, v, _ in seen] == [("acme.eu", 1), ("acme.eu", 2), ("globex", 5)]
        assert seen[1][2] == {"tier": "enterprise"}
    finally:
        await watching.close()
        await agent.close()
    us = await connect(mesh_server.url, mesh_server.creds["agent-us"], api_timeout_s=0.5)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await PolicyBoard(us, "eu").watch(lambda t, v, p: None)
    finally:
        await us.close()
