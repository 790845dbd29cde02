"""The hybrid placement: orchestrate the critical path, choreograph the side effects.

The engine (embedded, or the workers of a centralized cluster) runs every step on the critical
path as under any other placement. A step marked ``side_effect=True`` is not executed by it:
the transition that makes the step ready records it as succeeded with no output and writes it
to the outbox in the same transaction (:mod:`tenantflow.domain.outbox`). A relay publishes the
outbox to NATS JetStream, side-effect agents run the steps' code
(:mod:`~tenantflow.placement.hybrid.agent`), and their outcomes come back into the run's
timeline (:mod:`~tenantflow.placement.hybrid.relay`). The run never waits for a side effect and
never fails because of one.

The same app runs under every placement: without the hybrid placement a side-effect step is
executed in the engine like any other step.

    hybrid = open_hybrid("postgresql://…", nats_url="nats://127.0.0.1:4222")
    setup(hybrid.engine)                       # the app's workflows, tools, models
    async with hybrid:                         # engine + relay + outcome recorder
        handle = await hybrid.engine.submit(…)

``relay=False`` leaves relaying to separate processes (``tenantflow hybrid relay``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any, cast

from tenantflow.domain.ids import DEFAULT_STORE
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.engine import Engine
from tenantflow.placement.hybrid.relay import OutboxRelay, OutboxStore, OutcomeRecorder
from tenantflow.ports import Clock

__all__ = ["Hybrid", "choreograph", "open_hybrid"]


def choreograph(engine: Engine) -> Engine:
    """Make ``engine`` hand its side effects to the outbox: workflows registered from now on
    (and those already registered) are choreographed. Returns ``engine``."""
    registry = engine.registry
    registry.choreograph = True
    for spec in registry.all():
        if not spec.choreograph:
            registry.register(spec)
    return engine


class Hybrid:
    """An engine that choreographs its side effects, with the relay and outcome recorder of
    each of its stores (unless ``relay`` is False)."""

    def __init__(self, engine: Engine, nats_url: str, *, relay: bool = True) -> None:
        self.engine = choreograph(engine)
        self.nats_url = nats_url
        self.relays: list[OutboxRelay] = []
        self.recorders: list[OutcomeRecorder] = []
        if relay:
            for key, any_store in engine.stores.items():
                store = cast(OutboxStore, any_store)  # the SQL stores keep the outbox
                region = (engine.region or DEFAULT_STORE) if key == DEFAULT_STORE else key
                self.relays.append(OutboxRelay(store, nats_url, region=region))
                self.recorders.append(OutcomeRecorder(store, nats_url, region=region))
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.engine.start()
        self._stop.clear()
        workers: list[OutboxRelay | OutcomeRecorder] = [*self.relays, *self.recorders]
        for worker in workers:
            self._tasks.append(asyncio.create_task(worker.run(self._stop)))

    async def close(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        workers: list[OutboxRelay | OutcomeRecorder] = [*self.relays, *self.recorders]
        for worker in workers:
            await worker.close()
        await self.engine.close()

    async def __aenter__(self) -> Hybrid:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def open_hybrid(
    url: str,
    nats_url: str,
    config: EngineConfig | None = None,
    *,
    regions: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    relay: bool = True,
    **options: Any,
) -> Hybrid:
    """An embedded (or, with ``cluster=``, centralized) engine on ``url`` that choreographs
    side effects over the JetStream server ``nats_url``.

    Raises:
        ConfigurationError: a bad URL or setting.
    """
    engine = Engine.open(url, config, regions=regions, clock=clock, **options)
    return Hybrid(engine, nats_url, relay=relay)
