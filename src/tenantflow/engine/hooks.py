"""What the engine's runtimes (and its tenant registry) call back.

:class:`RuntimeHooks` is the part of :class:`~tenantflow.engine.engine.Engine` its runtimes hold
as their hooks (:class:`~tenantflow.engine.execution.driver.RunEvents`): a child run to start, a
run that ended, a policy to refresh at a step boundary, a review opened; and the callbacks the
wiring passes on (a tenant's policy applied, whether a tenant has runs or steps here). Each
delegates to the part that does it.
"""

from __future__ import annotations

from typing import Any

from tenantflow.domain.cluster import ENDED
from tenantflow.domain.records import RunStatus
from tenantflow.domain.tenancy import ReviewRecord
from tenantflow.engine.admission import AdmissionGate
from tenantflow.engine.dispatch import Dispatcher
from tenantflow.engine.execution.active import ActiveRun as Active
from tenantflow.engine.execution.driver import RunDriver as Runtime
from tenantflow.engine.execution.reviews import Reviews
from tenantflow.engine.submission import Submitter
from tenantflow.engine.tenants import TenantInfo, Tenants
from tenantflow.ports import Clock, Coordinator

__all__ = ["RuntimeHooks"]


class RuntimeHooks:
    """The hooks of the engine's runtimes, each delegated to its part (see the module doc)."""

    gate: AdmissionGate
    submitter: Submitter
    tenants: Tenants
    reviews: Reviews
    dispatcher: Dispatcher
    runtimes: dict[str, Runtime]
    clock: Clock
    execute: bool
    coordinator: Coordinator | None

    async def start_child(
        self, parent: Active, key: str, index: int, workflow: str, task: str
    ) -> str:
        """Start a child run (a subagent) of ``parent`` for step ``key``'s call ``index``;
        idempotent, so a re-executed attempt gets the same child."""
        return await self.submitter.start_child(parent, key, index, workflow, task)

    def on_finish(self, run: Active, status: RunStatus, result: Any) -> None:
        """A run ended (its end committed): wake its waiters, here and in the cluster's other
        processes (see :mod:`tenantflow.engine.ends`), and admit the next runs."""
        self.gate.finished(run, status, result)
        if self.coordinator is not None:
            self.coordinator.announce(ENDED, run.tenant_id, run.id)

    def refresh_policy(self, run: Active) -> None:
        """At a step boundary: a running run picks up its tenant's changed policy (O(1))."""
        info = self.tenants.cached(run.tenant_id)
        if info is not None and info.policy_version != run.policy_version:
            run.policy, run.policy_version = info.policy, info.policy_version

    def review_opened(self, review: ReviewRecord) -> None:
        """Tell review subscribers, and arm the SLA timer of an open review."""
        self.reviews.notify(review)
        if review.sla_due is None or not self.execute:
            return
        delay = max(0.0, review.sla_due - self.clock.now())

        async def watch() -> None:
            await self.clock.sleep(delay)
            await self.reviews.check_sla(review.tenant_id, review.id)

        runtime = self.gate.runtime_for_tenant(review.tenant_id)
        runtime.spawn(watch(), f"sla:{review.run_id}:{review.id}")

    def _others_running(self, tenant: str) -> bool:
        """Whether tenants other than ``tenant`` have steps running in this engine."""
        scheduler = self.dispatcher.scheduler
        return scheduler.total_running > scheduler.running(tenant)

    def _in_flight(self, tenant: str) -> bool:
        """Whether this engine holds runs of ``tenant``."""
        return any(
            r.tenant_id == tenant for rt in self.runtimes.values() for r in rt.active.values()
        )

    def configure_tenant(self, info: TenantInfo) -> None:
        """Apply a tenant's policy to the scheduler and admission (caps, weight, burst)."""
        self.gate.configure(info)
