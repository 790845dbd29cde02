"""The engine's run operations: thin delegations to the parts that do them.

:class:`RunOps` is the part of :class:`~tenantflow.engine.engine.Engine`'s API that acts on one
run (a handle on it, cancel, wait, result, resume, its snapshot, a signal into it, why it is not
progressing, retry, a command for the worker driving it), each method delegated to
:class:`~tenantflow.engine.runs.RunControl` (a signal to
:func:`~tenantflow.engine.run_signals.send_signal`, a command to the
:class:`~tenantflow.engine.cluster.ClusterDriver`), and where a tenant's runs are (its store, its
runtime, a run held here, whether this process drives the tenant).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tenantflow.domain.ids import check_tenant
from tenantflow.domain.records import RunRecord, RunStatus
from tenantflow.engine.admission import AdmissionGate
from tenantflow.engine.cluster import ClusterDriver, Ownership
from tenantflow.engine.execution.active import ActiveRun as Active
from tenantflow.engine.execution.driver import RunDriver as Runtime
from tenantflow.engine.handle import RunHandle, RunSnapshot
from tenantflow.engine.history import HistoryReads
from tenantflow.engine.regions import RegionRouter
from tenantflow.engine.run_signals import SignalReceipt, send_signal
from tenantflow.engine.runs import Reason, RetryResult, RunControl
from tenantflow.ports import Clock, Store

__all__ = ["RunOps"]


class RunOps(HistoryReads):
    """Run operations of the engine's API, each delegated to its part (see the module doc)."""

    runs: RunControl
    gate: AdmissionGate
    ownership: Ownership
    router: RegionRouter
    clustering: ClusterDriver
    clock: Clock

    def run(self, tenant: str, run_id: str) -> RunHandle:
        """A handle on an existing run."""
        return RunHandle(self, check_tenant(tenant), run_id)

    async def cancel(
        self, tenant: str, run_id: str, reason: str = "cancelled by request"
    ) -> RunRecord:
        """Cancel a run: stop its steps, compensate completed ones, end it ``cancelled``."""
        return await self.runs.cancel(tenant, run_id, reason)

    async def wait(self, tenant: str, run_id: str, timeout: timedelta | None = None) -> RunRecord:
        """Wait until the run ends and return its record."""
        return await self.runs.wait(tenant, run_id, timeout)

    async def result(self, tenant: str, run_id: str, timeout: timedelta | None = None) -> Any:
        """Wait until the run ends and return its result (:class:`RunFailedError` otherwise)."""
        return await self.runs.result(tenant, run_id, timeout)

    async def resume(self, tenant: str, run_id: str) -> RunRecord:
        """Resume a run the budget ladder paused (after its budget was raised or reset)."""
        return await self.runs.resume(tenant, run_id)

    def run_snapshot(self, tenant: str, run_id: str) -> RunSnapshot | None:
        """A run this engine drives, as it is now (None: it is not executing here)."""
        return self.runs.view(tenant, run_id)

    async def signal(
        self,
        tenant: str,
        run_id: str,
        name: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> SignalReceipt:
        """Send signal ``name`` with ``payload`` (plain JSON, at most 64 KiB) into ``tenant``'s
        run: the step waiting for it (``ctx.wait_for_signal``) resumes with the payload; sent
        before any step waits, it is kept until one does. The same ``idempotency_key`` twice
        records it once. NotFoundError for another tenant's run, ConflictError for a run that
        ended, SpecError for a bad name or payload."""
        tenant = check_tenant(tenant)
        active = self.active_run(tenant, run_id) if self.drives(tenant) else None
        runtime = self.runtime_for_tenant(tenant) if active is not None else None
        return await send_signal(
            self.store_for_tenant(tenant),
            self.clock,
            tenant,
            run_id,
            name,
            payload,
            idempotency_key=idempotency_key,
            active=active,
            runtime=runtime,
        )

    async def why(self, tenant: str, run_id: str) -> list[Reason]:
        """Why the run (and each unfinished step) is not progressing now (see
        :meth:`RunControl.why`)."""
        return await self.runs.why(tenant, run_id)

    async def retry(
        self,
        tenant: str,
        run_id: str,
        *,
        from_start: bool = False,
        actor: str = "engine",
        reason: str | None = None,
    ) -> RetryResult:
        """Retry a failed, cancelled or compensated run from its failed step (completed steps'
        outputs kept), or ``from_start`` as a new run (see :meth:`RunControl.retry`)."""
        return await self.runs.retry(
            tenant, run_id, from_start=from_start, actor=actor, reason=reason
        )

    async def retry_many(
        self,
        tenant: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        from_start: bool = False,
        actor: str = "engine",
        reason: str | None = None,
    ) -> list[RetryResult]:
        """Retry the tenant's runs matching a filter; one result per run (see
        :meth:`RunControl.retry_many`)."""
        return await self.runs.retry_many(
            tenant,
            status=status,
            workflow=workflow,
            since=since,
            until=until,
            limit=limit,
            from_start=from_start,
            actor=actor,
            reason=reason,
        )

    # -- where runs and tenants are -------------------------------------------------------

    def store_for_tenant(self, tenant: str) -> Store:
        """The store that holds this tenant's data."""
        return self.router.store_for_tenant(tenant)

    def runtime_for_tenant(self, tenant: str) -> Runtime:
        """The runtime driving ``tenant``'s runs."""
        return self.gate.runtime_for_tenant(tenant)

    def active_run(self, tenant: str, run_id: str) -> Active | None:
        """The run if it is executing in this engine (and belongs to ``tenant``)."""
        return self.gate.active_run(tenant, run_id)

    async def ready(self, timeout_s: float) -> None:
        """Return once every store answers (StoreUnavailableError if one does not)."""
        await self.router.probe(timeout_s)

    def drives(self, tenant: str) -> bool:
        """Whether this process drives ``tenant``'s runs (always, unless in a cluster)."""
        return self.ownership.drives(tenant)

    # -- workers sharing a database (see tenantflow.engine.cluster) -------------------------

    async def command(
        self, tenant: str, kind: str, target: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Pass a run command to the worker that drives the tenant and wait for its result
        (None if none came within ``command_timeout``: it stays queued).

        Raises:
            TenantflowError: the error the command ended with on the worker.
        """
        return await self.clustering.command(tenant, kind, target, payload)
