"""Budgets and rate limits through the mesh agents' gateway, on JetStream and PostgreSQL.

Two agents (in this process, each with its own NATS connection, driver and gateway) run 50
one-step runs at once; the step calls a priced tool. The tenant's period budget fits 12 calls:
the KV ledger (compare-and-set across both agents) grants exactly 12 holds, the tool is called
12 times (counted at the tool), nothing is overspent, and every refusal came from the ledger.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.nats.fabric import connect
from tenantflow.adapters.nats.leases import RateLeases
from tenantflow.adapters.nats.ledger import Ledger
from tenantflow.adapters.providers import SimulatedProvider
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


asks = tf.Workflow("ask")
THROTTLING: list[SimulatedProvider] = []
RETRY_AFTER_S = 30.0


@asks.step(optional=True)
async def ask(ctx: tf.StepContext, input: dict[str, int]) -> str:
    reply = await ctx.model(f"question {input['i']}", max_tokens=20)
    return reply.text


def setup_throttled(engine: tf.Engine) -> None:
    """A model endpoint whose provider answers every call 429 with a Retry-After of 30 s."""
    engine.register(asks)
    provider = SimulatedProvider(
        "small-eu", clock=engine.clock, throttle_rate=1.0, retry_after_s=RETRY_AFTER_S
    )
    THROTTLING.append(provider)
    engine.models.add(
        tf.Endpoint(
            name="small-eu",
            provider="sim",
            model="small-model",
            region="eu",
            tier="small",
            price_in_per_1k_micros=1_000,
            price_out_per_1k_micros=2_000,
            max_context=8_000,
        ),
        provider,
    )


async def test_a_provider_429_pauses_the_tenants_lease_bucket_for_every_agent(
    mesh_server: Any, admin: Any, postgres_url: str
) -> None:
    """The tenant may call the model 100 times at once (burst 100), but the provider answers
    429 with a Retry-After of 30 s: the agent's gateway records it in the tenant's bucket in
    KV, so another agent process is granted no token of it before the Retry-After has passed
    (the pool held 92: the agent had leased 8), and the bucket's factor is halved, as the
    store's bucket is for an engine."""
    THROTTLING.clear()
    async with tf.Engine.open(postgres_url) as control:
        await control.tenants.create(
            "acme",
            tier="standard",
            rate_limits={"model:small-eu": {"rate": "100/minute", "burst": 100}},
        )
    driver, store = await open_submitter(postgres_url, admin, "eu", [asks.spec])
    options = AgentOptions(
        store_url=postgres_url,
        nats_url=mesh_server.url,
        creds=mesh_server.creds["agent-eu"],
        regions=["eu"],
        default_region="eu",
        slots=4,
        sweep=False,
        setups=[setup_throttled],
    )
    agent = await open_agent(options)
    other = await connect(mesh_server.url, mesh_server.creds["agent-eu"])
    try:
        run = await driver.submit("acme", "ask", {"i": 1})
        leases = agent[0].gateway.leases
        assert isinstance(leases, RateLeases)
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # the agent's first attempt meets the 429 and parks the step
            step = (await store.get_steps("acme", run))[0]
            if step.status.value == "ready" and step.attempt >= 1:
                break
            assert asyncio.get_running_loop().time() < deadline, step.status
            await asyncio.sleep(0.1)
        seen_at = time.time()
        assert sum(p.throttled for p in THROTTLING) == 1
        assert leases.throttles == 1
        state = await leases.state("eu", "acme", "model:small-eu")
        assert state is not None
        assert state.factor == 0.5 and state.leases == {}
        assert seen_at < state.paused_until <= seen_at + RETRY_AFTER_S
        # Another agent process: nothing for it before the provider's Retry-After.
        wait = await RateLeases(other, "agent-other").acquire(
            "eu", "acme", "model:small-eu", 100 / 60, 100
        )
        assert wait >= state.paused_until - time.time() > 0
        step = (await store.get_steps("acme", run))[0]
        assert step.status.value == "ready"  # parked by the limit, not run again
        assert sum(p.calls for p in THROTTLING) == 1
    finally:
        await other.close()
        await close_agent(*agent)
        await driver.queue.close()
        await driver.close()
        await store.close()
