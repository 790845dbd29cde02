"""Budgets and rate limits through the mesh agents' gateway, on JetStream and PostgreSQL.

Two agents (in this process, each with its own NATS connection, driver and gateway) run 50
one-step runs at once; the step calls a priced tool. The tenant's period budget fits 12 calls:
the KV ledger (compare-and-set across both agents) grants exactly 12 holds, the tool is called
12 times (counted at the tool), nothing is overspent, and every refusal came from the ledger.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.nats.leases import RateLeases
from tenantflow.adapters.nats.ledger import Ledger
from tenantflow.placement.mesh.agent import AgentOptions, close_agent, open_agent
from tenantflow.placement.mesh.control import open_submitter
from tenantflow.placement.mesh.gateway import MeshGateway, period_budget

from .helpers import wait_all

pytestmark = pytest.mark.timeout(120)

COST = 40_000  # $0.04 a call
LIMIT = 12 * COST + COST // 2  # room for 12 calls and a half
CALLS: list[str] = []

bills = tf.Workflow("bill")


@bills.step(optional=True)
async def charge(ctx: tf.StepContext, input: dict[str, int]) -> int:
    result: int = await ctx.tool("bureau", i=input["i"])
    return result


def setup(engine: tf.Engine) -> None:
    engine.register(bills)

    @engine.tools.register(cost_usd=COST / 1_000_000)
    async def bureau(i: int) -> int:
        CALLS.append(f"{i}")
        await asyncio.sleep(0.01)
        return i


async def _agents(server: Any, url: str, n: int) -> list[tuple[Any, Any, Any]]:
    options = AgentOptions(
        store_url=url,
        nats_url=server.url,
        creds=server.creds["agent-eu"],
        regions=["eu"],
        default_region="eu",
        slots=25,
        sweep=False,
        setups=[setup],
    )
    return [await open_agent(options) for _ in range(n)]


async def test_fifty_concurrent_steps_on_two_agents_never_overspend_the_kv_budget(
    mesh_server: Any, admin: Any, postgres_url: str, tmp_path: Path
) -> None:
    CALLS.clear()
    async with tf.Engine.open(postgres_url) as control:
        await control.tenants.create("acme", tier="standard", budget={"period_micros": LIMIT})
    driver, store = await submitter_for(postgres_url, admin)
    agents = await _agents(mesh_server, postgres_url, 2)
    try:
        runs = [("acme", await driver.submit("acme", "bill", {"i": i})) for i in range(50)]
        records = await wait_all(store, runs, timeout_s=90)
        assert {r.status for r in records} == {tf.RunStatus.COMPLETED}
        steps = [(await store.get_steps("acme", r))[0] for _, r in runs]
        statuses = sorted(s.status.value for s in steps)
        assert statuses == ["skipped"] * 38 + ["succeeded"] * 12, {s.error for s in steps}
        ledger = await Ledger(admin, "eu").state(
            "acme", period_budget("monthly", records[0].created_at)
        )
        assert len(CALLS) == 12  # counted at the tool
        assert ledger.spent == 12 * COST <= LIMIT and ledger.holds == {}
        gateways = [d.gateway for d, _, _ in agents]
        assert all(isinstance(g, MeshGateway) for g in gateways)
        # Every one of the other 38 steps was refused by the KV ledger (and skipped: optional).
        assert sum(g.kv_refusals for g in gateways) >= 38
        usage = await control_usage(postgres_url)
        assert usage == 12 * COST  # the store's accounts agree with the ledger
    finally:
        for agent in agents:
            await close_agent(*agent)
        await driver.queue.close()
        await driver.close()
        await store.close()


async def submitter_for(url: str, fabric: Any) -> tuple[Any, Any]:
    return await open_submitter(url, fabric, "eu", [bills.spec])


async def control_usage(url: str) -> int:
    store = tf.Engine.open(url, tf.EngineConfig(execute=False)).store
    await store.open()
    try:
        rows = await store.ledgers("acme")
        period = [r for r in rows if r["scope"] == "period" and r["unit"] == "micros"]
        return sum(int(r["spent"]) for r in period)
    finally:
        await store.close()


async def test_an_agents_gateway_spends_its_tenants_rate_limit_from_token_leases(
    mesh_server: Any, admin: Any, postgres_url: str
) -> None:
    """A tool with a rate limit of 5 calls (burst 5, then 5 an hour): 12 runs over two
    agents make exactly 5 calls, the others are parked by the limit, not run."""
    CALLS.clear()
    async with tf.Engine.open(postgres_url) as control:
        await control.tenants.create(
            "acme", tier="standard", rate_limits={"tool:bureau": {"rate": "5/hour"}}
        )
    driver, store = await submitter_for(postgres_url, admin)
    agents = await _agents(mesh_server, postgres_url, 2)
    try:
        runs = [await driver.submit("acme", "bill", {"i": i}) for i in range(12)]
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            steps = [(await store.get_steps("acme", r))[0] for r in runs]
            done = [s for s in steps if s.status.value == "succeeded"]
            waiting = [s for s in steps if s.status.value == "ready" and s.attempt >= 1]
            if len(done) + len(waiting) == len(runs):
                break
            assert asyncio.get_running_loop().time() < deadline, [s.status for s in steps]
            await asyncio.sleep(0.2)
        assert len(CALLS) == len(done) == 5
        leases = [d.gateway.leases for d, _, _ in agents]
        assert all(isinstance(x, RateLeases) for x in leases)
        assert sum(x.spent for x in leases) == 5
    finally:
        for agent in agents:
            await close_agent(*agent)
        await driver.queue.close()
        await driver.close()
        await store.close()
