"""The engine's read-only views for a dashboard and an operator: thin delegations.

:class:`PlaneViews` is the part of :class:`~tenantflow.engine.engine.Engine`'s API that reads
how the plane is doing (load, placement, health, breakers, latency, run costs, state versions:
:class:`~tenantflow.engine.plane.PlaneReads`), an operator's view across tenants
(:mod:`tenantflow.engine.operator`) and the workers sharing the database
(:mod:`tenantflow.engine.workers`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tenantflow.domain.ids import check_tenant
from tenantflow.domain.records import RunRecord, RunStatus
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.history import HistoryReads
from tenantflow.engine.operator import COUNT_CAP, Overview
from tenantflow.engine.operator import overview as operator_overview
from tenantflow.engine.plane import (
    BreakerView,
    MemberHealth,
    PlacementInfo,
    PlaneLoad,
    PlaneReads,
    RunCost,
    TenantLatency,
    TenantLoad,
    VersionInfo,
)
from tenantflow.engine.runs import RunControl
from tenantflow.engine.tenants import Tenants
from tenantflow.engine.workers import WorkerInfo, list_workers
from tenantflow.errors import ConfigurationError
from tenantflow.ports import Clock, Store

__all__ = ["PlaneViews"]


class PlaneViews(HistoryReads):
    """Read-only views of the engine's API, each delegated to its part (see the module doc)."""

    plane: PlaneReads
    runs: RunControl
    tenants: Tenants
    clock: Clock
    store: Store
    config: EngineConfig

    # -- what a dashboard reads (see tenantflow.engine.plane) ---------------------------------

    def now(self) -> float:
        """The engine's clock now (seconds since the epoch)."""
        return self.clock.now()

    def load(self) -> PlaneLoad:
        """Who holds the slots now: Jain's index and each busy tenant's load."""
        return self.plane.load()

    def tenant_load(self, tenant: str) -> TenantLoad:
        """One tenant's running and queued steps and runs in this process."""
        return self.plane.tenant_load(check_tenant(tenant))

    def placement(self) -> PlacementInfo:
        """How this engine is placed (embedded, front, worker) and the stores it reads."""
        return self.plane.placement()

    async def health(self) -> list[MemberHealth]:
        """This process and, in a cluster, the live workers."""
        return await self.plane.health()

    def breakers(self) -> list[BreakerView]:
        """Every dependency's circuit breaker."""
        return self.plane.breakers()

    def latency(self, tenants: list[str] | None = None) -> list[TenantLatency]:
        """Per tenant, run latency p99 now against its no-burst baseline."""
        return self.plane.latency(tenants)

    async def run_costs(self, tenant: str, run_ids: list[str]) -> dict[str, RunCost]:
        """What each of the tenant's runs spent (its run ledgers)."""
        return await self.plane.run_costs(check_tenant(tenant), run_ids)

    async def version_list(self, tenant: str, run_id: str) -> list[VersionInfo]:
        """The run's state versions without their states (NotFoundError: no such run)."""
        record = await self.get_run(tenant, run_id)
        return await self.plane.version_list(tenant, run_id, record.state_version)

    # -- an operator's views ------------------------------------------------------------------

    async def overview(
        self, *, stuck_after: timedelta = timedelta(hours=1), top: int = 10
    ) -> Overview:
        """An operator's view across tenants: runs by status, the top tenants by queue depth,
        today's spend and rate-limit waits, and runs idle for ``stuck_after`` with what holds
        them (see :mod:`tenantflow.engine.operator`)."""
        if stuck_after.total_seconds() <= 0 or not 1 <= top <= 100:
            raise ConfigurationError(
                "stuck_after must be positive and top within 1..100", field="stuck_after"
            )

        async def runs_in(tenant: str, status: RunStatus) -> list[RunRecord]:
            return await self.history.list_runs(
                tenant, status=status, limit=COUNT_CAP, payloads=False
            )

        async def usage_of(tenant: str, day: str) -> list[dict[str, Any]]:
            return await self.history.usage(tenant, since=day, until=day)

        return await operator_overview(
            [info.id for info in self.tenants.list()],
            list_runs=runs_in,
            usage=usage_of,
            why=self.runs.why,
            now=self.clock.now(),
            stuck_after_s=stuck_after.total_seconds(),
            top=top,
        )

    async def workers(self) -> list[WorkerInfo]:
        """The workers sharing this engine's database, their heartbeats and the tenants they
        hold (ConfigurationError on an embedded store; see :mod:`tenantflow.engine.workers`)."""
        return await list_workers(self.store, self.clock.now(), self.config.lease.total_seconds())
