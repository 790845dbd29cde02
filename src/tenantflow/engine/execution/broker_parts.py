"""The parts a broker driver's attempts run with: their services and the saga, per region.

:class:`BrokerParts` is the part of :class:`~tenantflow.engine.execution.broker.BrokerDriver`
that builds, for a tenant's region, what an attempt's scope reaches (the region's store and
writer, the tenant's and the platform's ledgers, the gateway, the circuit breakers, the
observers) and the :class:`~tenantflow.engine.execution.saga.Saga` that compensates a failed
run. Child runs are not driven by the broker driver.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from tenantflow.domain.breaker import CircuitBreaker
from tenantflow.engine.context import StepContext
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.execution.saga import Saga
from tenantflow.engine.execution.scope import AttemptScope, Ledgers, Services
from tenantflow.engine.gateway import Gateway
from tenantflow.engine.writer import Writer
from tenantflow.errors import ConfigurationError
from tenantflow.observability.events import Observers
from tenantflow.ports import Clock, Store

__all__ = ["BrokerParts"]


class BrokerParts:
    """Services and the saga of a broker driver's regions (see the module doc)."""

    clock: Clock
    stores: Mapping[str, Store]
    writers: Mapping[str, Writer]
    gateway: Gateway
    observers: Observers
    _home: Writer
    _rng: random.Random
    _breakers: dict[str, CircuitBreaker]
    _breaker_args: tuple[int, float]
    _spawn_named: Callable[[Any, str], None]
    _finished: Callable[[str], None]
    _announce_end: Callable[[str, str], None]

    def breaker(self, name: str) -> CircuitBreaker:
        b = self._breakers.get(name)
        if b is None:
            b = CircuitBreaker(name, *self._breaker_args)
            self._breakers[name] = b
        return b

    def _services(self, region: str) -> Services:
        return Services(
            clock=self.clock,
            store=self.stores[region],
            ledgers=Ledgers(self.writers[region], self._home),
            gateway=self.gateway,
            breaker=self.breaker,
            observers=self.observers,
            start_child=self._no_children,
            expect_child=lambda child, run, key: None,
        )

    def _saga(self, region: str) -> Saga:
        def context_for(run: ActiveRun, step: str, attempt: int, key: str) -> StepContext:
            scope = AttemptScope(
                run.id,
                run.tenant_id,
                run.spec.name,
                step,
                attempt,
                key,
                self._services(region),
                run,
            )
            return StepContext(scope)

        return Saga(
            sink=self.writers[region],
            clock=self.clock,
            store=self.stores[region],
            tools=self.gateway.tools,
            rng=self._rng,
            active={},
            spawn=self._spawn_named,
            finish=lambda run, status, result: self._ended(run),
            context_for=context_for,
        )

    def _ended(self, run: Any) -> None:
        """``run`` ended, its end committed (its last decision's, or the saga's cancel,
        compensation or failure): announce it, and wake its waiters in this process."""
        self._announce_end(run.tenant_id, run.id)
        self._finished(run.id)

    async def _no_children(
        self, parent: ActiveRun, key: str, index: int, workflow: str, task: str
    ) -> str:
        raise ConfigurationError(
            "child runs (ctx.delegate) are not driven by the broker driver",
            workflow=workflow,
        )
