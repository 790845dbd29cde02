"""A mesh agent: one process pulling its region's work from JetStream and running it.

``tenantflow agent --app MODULE:FUNCTION --db URL --nats URL --nats-creds FILE --region R
--kinds function,agent`` runs :func:`run_agent`: the app's function registers workflows, tools
and models on an engine that is never started (it lends its registry, tools, models and gateway),
the stores are opened to execute, and a :class:`~.driver.MeshDriver` consumes the region's work
queue through per-tenant consumers picked fairly (:class:`~tenantflow.adapters.nats.queue.
JetStreamQueue`). At start, and every ``sweep_every_s`` after, it sweeps: the ready steps of
every unfinished run that has not moved for a while (and steps whose lease lapsed) are
published again (duplicates are harmless: a step runs when its lease is free and completes
once).

Several agents share the work; a killed agent's unacked items are redelivered to the others
after ``ack_wait``, and the step leases in the store lapse after ``lease``.

Policy, budgets and limits need no central scheduler: the agent watches the region's policy
bucket (a tenant's ``max_running_steps`` is its consumers' ``max_ack_pending``, moved when the
policy changes: :mod:`tenantflow.adapters.nats.policy`), and its gateway is a
:class:`~.gateway.MeshGateway`: rate limits are spent from this process's token leases on the
tenant's KV buckets, and priced calls reserve and settle the tenant's period budget on its KV
ledger (compare-and-set).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tenantflow.adapters.nats.fabric import Credentials, Fabric, connect, load_credentials
from tenantflow.adapters.nats.leases import RateLeases
from tenantflow.adapters.nats.ledger import Ledger
from tenantflow.adapters.nats.policy import PolicyBoard, apply_cap, cap_of
from tenantflow.adapters.nats.queue import JetStreamQueue
from tenantflow.adapters.nats.subjects import KINDS, Region
from tenantflow.domain.ids import DEFAULT_STORE
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.engine import Engine
from tenantflow.placement.mesh.driver import LOG_LAG_S, MeshDriver
from tenantflow.placement.mesh.gateway import MeshGateway

__all__ = [
    "KINDS",
    "AgentOptions",
    "Region",
    "close_agent",
    "load_credentials",
    "open_agent",
    "run_agent",
]

log = logging.getLogger("tenantflow.mesh")


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """What one agent process takes and how (see :func:`run_agent`)."""

    store_url: str
    nats_url: str
    creds: Credentials | None
    regions: Sequence[str]
    kinds: Sequence[str] = ("function", "agent", "review")
    slots: int = 8
    lease_s: float = 30.0
    ack_wait_s: float = 30.0
    default_region: str = "global"
    sweep: bool = True
    sweep_every_s: float = 15.0
    setups: Sequence[Callable[[Engine], Any]] = field(default_factory=tuple)
    rate_lease_ttl_s: float = 10.0
    """A token lease lapses this long after it was taken (a dead agent's tokens come back)."""
    rate_lease_batch: int = 8
    """Tokens per lease (at most a quarter of the limit's burst)."""
    budget_hold_ttl_s: float | None = 3600.0
    """A KV budget hold this agent opens expires this long after its reserve (a dead agent's
    hold is then released by the next reserver); a call that outlives it still spends, past
    the limit if need be (``adapters/nats/ledger.py``). None: holds never expire."""
    fabric_limits: bool = True
    """Rate limits by token leases and the period budget on KV ledgers (False: the store's
    buckets and ledgers only, as under the other placements)."""
    express_slots: int | None = None
    """Slots beyond ``slots`` for tenants with no step running in this agent (None: half of
    ``slots``, at least 1; see ``adapters/nats/queue.py``)."""
    defer_log: bool = True
    """While the agent has a backlog, leave the log of a decision that hands its run on to the
    steps it published (``MeshDriver(defer_log=...)``; False: every decision ships its log)."""
    log_lag_s: float = LOG_LAG_S
    """The longest the agent leaves a run's log so (``MeshDriver(log_lag_s=...)``)."""


async def open_agent(options: AgentOptions) -> tuple[MeshDriver, Engine, Fabric]:
    """Compose and start an agent: its driver (started), the registration engine, the fabric."""
    engine = Engine.open(options.store_url, EngineConfig(execute=False))
    for setup in options.setups:
        result = setup(engine)
        if inspect.isawaitable(result):
            await result
    for store in engine.stores.values():
        await store.open(execute=True)
    fabric = await connect(options.nats_url, options.creds, name=f"tenantflow-agent-{os.getpid()}")
    caps: dict[str, int] = {}
    """tenant -> step cap, from the policies the agent has applied"""
    queue = JetStreamQueue(
        fabric,
        regions=options.regions,
        kinds=options.kinds,
        slots=options.slots,
        express=express_slots(options),
        ack_wait_s=options.ack_wait_s,
        cap=lambda tenant: caps.get(tenant, max(1, options.slots * 8)),
    )
    owner = f"mesh:{os.getpid()}"
    gateway = engine.gateway
    holder: list[MeshDriver] = []
    if options.fabric_limits:
        ledgers = {r: Ledger(fabric, r) for r in options.regions}

        def ledger_of(region: str) -> Ledger:
            if region not in ledgers:
                ledgers[region] = Ledger(fabric, region, hold_ttl_s=options.budget_hold_ttl_s)
            return ledgers[region]

        gateway = MeshGateway(
            engine.gateway,
            leases=RateLeases(
                fabric,
                f"{owner}:{secrets.token_hex(4)}",
                ttl_s=options.rate_lease_ttl_s,
                batch=options.rate_lease_batch,
            ),
            ledgers=ledger_of,
            region_of=lambda tenant: holder[0].region_of(tenant),
        )
    driver = MeshDriver(
        engine.stores,
        home=DEFAULT_STORE,
        bus=queue,
        clock=engine.clock,
        gateway=gateway,
        workflows=engine.registry.all(),
        default_region=options.default_region,
        owner=owner,
        lease_s=options.lease_s,
        concurrency=options.slots + express_slots(options),
        defer_log=options.defer_log,
        log_lag_s=options.log_lag_s,
    )
    holder.append(driver)
    await driver.start()
    for region in options.regions:
        board = PolicyBoard(fabric, region)
        await board.watch(_applier(driver, fabric, region, caps, options.kinds))
        driver.boards.append(board)
    await queue.start()
    if options.sweep:
        swept = await driver.sweep()
        if swept:
            log.info("swept: %d ready steps published again", swept)
        driver._spawn(_sweep_forever(driver, options.sweep_every_s))
    return driver, engine, fabric


def express_slots(options: AgentOptions) -> int:
    """The agent's express slots (see :attr:`AgentOptions.express_slots`)."""
    if options.express_slots is not None:
        return options.express_slots
    return max(1, options.slots // 2)


def _applier(
    driver: MeshDriver, fabric: Fabric, region: str, caps: dict[str, int], kinds: Sequence[str]
) -> Callable[[str, int, dict[str, Any]], Any]:
    """What the agent does with a newer policy: the driver uses it from the next delivery on,
    new consumers get its step cap, and the existing ones are moved to it."""

    async def apply(tenant: str, version: int, policy: dict[str, Any]) -> None:
        driver.apply_policy(tenant, version, policy)
        cap = cap_of(policy)
        if cap is None:
            return
        caps[tenant] = cap
        await apply_cap(fabric, region, tenant, cap, tuple(kinds))

    return apply


async def _sweep_forever(driver: MeshDriver, every_s: float) -> None:
    """Sweep again now and then: a run that has not moved for a while gets its ready steps
    (and steps whose lease lapsed) published again, whatever dropped them."""
    while True:
        await asyncio.sleep(every_s)
        try:
            swept = await driver.sweep(quiet_s=every_s)
        except Exception as exc:  # the store or the server is away: next time
            log.warning("sweep failed: %s", exc)
            continue
        if swept:
            log.info("swept: %d ready steps published again", swept)


def agent_stats(driver: MeshDriver) -> dict[str, Any]:
    """What an agent did: deliveries, consumers, hop latency (publish -> delivered)."""
    queue = driver.queue
    hops = sorted(queue.hop_s)

    def pct(p: float) -> float | None:
        return None if not hops else round(hops[min(len(hops) - 1, int(p * len(hops)))], 6)

    return {
        "pid": os.getpid(),
        **asdict(queue.stats),
        "hop_p50_s": pct(0.50),
        "hop_p99_s": pct(0.99),
        "completions_reused": driver.guard.reused,
        "claims_released": driver.released,
        "completions_lost_race": driver.guard.lost,
        "republished": driver.republished,
        "log_versions_shipped": driver.shipped,
        "log_deferred": driver.deferred,
        "log_caught_up": driver.caught_up,
        "policy_versions": driver.policy_versions,
        **_limit_stats(driver),
    }


def _limit_stats(driver: MeshDriver) -> dict[str, Any]:
    gateway = driver.gateway
    if not isinstance(gateway, MeshGateway):
        return {}
    leases = gateway.leases
    return {
        "rate_leases_taken": 0 if leases is None else leases.leases_taken,
        "rate_tokens_spent": 0 if leases is None else leases.spent,
        "rate_lease_conflicts": 0 if leases is None else leases.conflicts,
        "budget_kv_refusals": gateway.kv_refusals,
    }


async def close_agent(driver: MeshDriver, engine: Engine, fabric: Fabric) -> None:
    driver.ship_owed()  # the logs it left to later decisions (the queue's close waits for them)
    log.info("stats %s", json.dumps(agent_stats(driver)))
    for board in driver.boards:
        await board.close()
    gateway = driver.gateway
    if isinstance(gateway, MeshGateway) and gateway.leases is not None:
        try:
            await gateway.leases.release()
        except Exception as exc:  # they lapse after their TTL instead
            log.warning("returning rate leases failed: %s", exc)
    await driver.queue.close()
    await driver.close()
    await fabric.close()
    for store in engine.stores.values():
        await store.close()
    await engine.models.close()


async def run_agent(options: AgentOptions, stop: asyncio.Event) -> None:
    """Run an agent until ``stop`` is set."""
    driver, engine, fabric = await open_agent(options)
    log.info(
        "agent %s: regions %s, kinds %s, %d slots + %d express",
        driver.owner,
        ",".join(options.regions),
        ",".join(options.kinds),
        options.slots,
        driver.express,
    )
    try:
        await stop.wait()
    finally:
        await close_agent(driver, engine, fabric)
