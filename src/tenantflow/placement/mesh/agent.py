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
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tenantflow.adapters.nats.fabric import Credentials, Fabric, connect, load_credentials
from tenantflow.adapters.nats.policy import PolicyBoard
from tenantflow.adapters.nats.queue import JetStreamQueue
from tenantflow.adapters.nats.subjects import KINDS, Region
from tenantflow.domain.ids import DEFAULT_STORE
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.engine import Engine
from tenantflow.placement.mesh.driver import MeshDriver

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
    queue = JetStreamQueue(
        fabric,
        regions=options.regions,
        kinds=options.kinds,
        slots=options.slots,
        ack_wait_s=options.ack_wait_s,
        cap=lambda tenant: max(1, options.slots * 8),
    )
    driver = MeshDriver(
        engine.stores,
        home=DEFAULT_STORE,
        bus=queue,
        clock=engine.clock,
        gateway=engine.gateway,
        workflows=engine.registry.all(),
        default_region=options.default_region,
        owner=f"mesh:{os.getpid()}",
        lease_s=options.lease_s,
        concurrency=options.slots,
    )
    await driver.start()
    for region in options.regions:
        board = PolicyBoard(fabric, region)
        await board.watch(driver.apply_policy)
        driver.boards.append(board)
    await queue.start()
    if options.sweep:
        swept = await driver.sweep()
        if swept:
            log.info("swept: %d ready steps published again", swept)
        driver._spawn(_sweep_forever(driver, options.sweep_every_s))
    return driver, engine, fabric


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
        "policy_versions": driver.policy_versions,
    }


async def close_agent(driver: MeshDriver, engine: Engine, fabric: Fabric) -> None:
    log.info("stats %s", json.dumps(agent_stats(driver)))
    for board in driver.boards:
        await board.close()
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
        "agent %s: regions %s, kinds %s, %d slots",
        driver.owner,
        ",".join(options.regions),
        ",".join(options.kinds),
        options.slots,
    )
    try:
        await stop.wait()
    finally:
        await close_agent(driver, engine, fabric)
