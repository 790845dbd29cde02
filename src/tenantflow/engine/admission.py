"""Which of the runs this process holds may run now.

:class:`AdmissionGate` holds the per-tenant admission queues: a run starts while its tenant is
under its active-run cap, else it waits ``queued``. It also knows which runs this process holds
(executing, parked on an unregistered version, or being reloaded after a failed write), takes
runs over from the store, and wakes those waiting for a run to end. New runs are recorded by
:class:`~tenantflow.engine.submission.Submitter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from tenantflow.domain.admission import AdmissionController
from tenantflow.domain.records import (
    RecoverOrphans,
    RunRecord,
    RunStatus,
    StepRecord,
    Transition,
)
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.engine.dispatch import Dispatcher
from tenantflow.engine.execution.active import ActiveRun as Active
from tenantflow.engine.execution.driver import RunDriver as Runtime
from tenantflow.engine.regions import RegionRouter
from tenantflow.engine.registry import WorkflowRegistry
from tenantflow.engine.tenants import TenantInfo
from tenantflow.errors import NotFoundError, StoreUnavailableError, TenantflowError
from tenantflow.ports import Clock

__all__ = ["AdmissionGate"]

log = logging.getLogger("tenantflow.engine")


class AdmissionGate:
    """Admission queues and the runs this process holds.

    Args:
        admission: the per-tenant admission queues (pure bookkeeping).
        dispatcher: where ready steps wait for a slot (configured per tenant here).
        runtimes: the runtime driving each store's runs, by store key.
        router: which store holds a tenant's data.
        registry: the registered workflows and the runs parked on unknown versions.
        clock: the engine's clock.
        controls: False: one shared admission queue for every tenant.
        clustered: this process is one of a cluster's (a full queue lets a loaded run go).
        policy_of: a tenant's cached info (None if unknown); no store access.
        drives: whether this process drives a tenant's runs.
    """

    def __init__(
        self,
        admission: AdmissionController,
        dispatcher: Dispatcher,
        runtimes: Mapping[str, Runtime],
        router: RegionRouter,
        registry: WorkflowRegistry,
        clock: Clock,
        *,
        controls: bool,
        clustered: bool,
        policy_of: Callable[[str], TenantInfo | None],
        drives: Callable[[str], bool],
    ) -> None:
        self.admission = admission
        self.dispatcher = dispatcher
        self.runtimes = runtimes
        self.router = router
        self.registry = registry
        self.clock = clock
        self.controls = controls
        self.clustered = clustered
        self.policy_of = policy_of
        self.drives = drives
        self.started = False
        # Queued runs admitted before their submission's write returned (see Submitter).
        self.early: set[str] = set()
        # Runs being reloaded after a failed write (see tenantflow.engine.resync).
        self.reloading: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[tuple[RunStatus, Any]]]] = {}
        self.burst_notices: list[Any] = []
        # Audit entries of burst notices not yet written, per tenant (see burst_notice).
        self._burst_audits: dict[str, list[AuditEntry]] = {}

    # -- where runs are ---------------------------------------------------------------------

    def runtime_for_tenant(self, tenant: str) -> Runtime:
        """The runtime driving the runs of the store that holds ``tenant``'s data."""
        return self.runtimes[self.router.store_key_of(tenant)]

    def active_run(self, tenant: str, run_id: str) -> Active | None:
        """The run if it is executing in this engine (and belongs to ``tenant``)."""
        run = self.runtime_for_tenant(tenant).active.get(run_id)
        return run if run is not None and run.tenant_id == tenant else None

    def holds_run(self, tenant: str, run_id: str) -> bool:
        """Whether the run is in this engine's memory (executing, or parked on its version)."""
        return (
            self.active_run(tenant, run_id) is not None
            or self.registry.is_parked(run_id)
            or run_id in self.reloading
        )

    # -- admission --------------------------------------------------------------------------

    def adm(self, tenant: str) -> str:
        """The admission queue a tenant's runs wait in (one shared queue without controls)."""
        return tenant if self.controls else "*"

    def submit(self, tenant: str, run_id: str, lane: Any, now: float) -> bool:
        """Queue a new run; whether it is admitted at once."""
        return self.admission.submit(self.adm(tenant), run_id, lane, now)

    def withdraw(self, tenant: str, run_id: str) -> bool:
        """Take a queued run out of its queue; False if it was not waiting."""
        return self.admission.withdraw(self.adm(tenant), run_id)

    def take_early(self, run_id: str) -> bool:
        """Whether ``run_id`` was admitted while its submission was being written (once)."""
        if run_id in self.early:
            self.early.discard(run_id)
            return True
        return False

    def forget(self, tenant: str, run_id: str, status: RunStatus) -> None:
        """Give back the admission place of a submission that was not recorded."""
        if status == RunStatus.RUNNING:
            self.admit_keys(
                tenant, self.admission.finished(self.adm(tenant), run_id, self.clock.now())
            )
        elif status == RunStatus.QUEUED:
            self.early.discard(run_id)
            if not self.admission.withdraw(self.adm(tenant), run_id):
                # Admitted while its submission was being written: give the slot back.
                self.forget(tenant, run_id, RunStatus.RUNNING)

    def admit_keys(self, tenant: str, keys: list[Any]) -> None:
        """Start the runs admission just let in (``tenant``'s queue, or the shared one)."""
        for key in keys:
            for runtime in self.runtimes.values():
                run = runtime.active.get(str(key))
                if run is not None:
                    runtime.spawn(runtime.set_running(run, "run.admitted"), f"admit:{run.id}")
                    break
            else:  # admitted while its submission is still being written: submit() starts it
                self.early.add(str(key))

    def watch(self, run_id: str) -> asyncio.Future[tuple[RunStatus, Any]]:
        """A future set when the run ends here (or this process stops driving it)."""
        fut: asyncio.Future[tuple[RunStatus, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(fut)
        return fut

    def finished(self, run: Active, status: RunStatus, result: Any) -> None:
        """A run ended: wake its waiters and admit the next runs of its queue."""
        for fut in self._waiters.pop(run.id, []):
            if not fut.done():
                fut.set_result((status, result))
        try:
            admitted = self.admission.finished(self.adm(run.tenant_id), run.id, self.clock.now())
        except NotFoundError:
            return  # it was never admitted (it ended while queued)
        self.admit_keys(run.tenant_id, admitted)

    def configure(self, info: TenantInfo) -> None:
        """Apply a tenant's policy to the scheduler and admission (caps, weight, burst)."""
        p = info.policy
        cap = p.max_running_steps
        self.dispatcher.configure(
            info.id,
            weight=p.weight,
            running_cap=cap,
            guaranteed_slots=min(p.guaranteed_slots, cap),
            burst_slots=p.burst_slots if cap else 0,
            burst_window_s=p.burst_window.total_seconds() if p.burst_slots and cap else 0.0,
        )
        if self.controls:
            admitted = self.admission.configure_tenant(
                info.id, active_cap=p.max_active_runs, now_s=self.clock.now()
            )
        else:
            admitted = self.admission.configure_tenant("*", now_s=self.clock.now())
        if self.started:
            self.admit_keys(info.id, admitted)
            self._resume_paused(info.id)

    def _resume_paused(self, tenant: str) -> None:
        runtime = self.runtimes.get(self.router.store_key_of(tenant))
        if runtime is None:
            return
        for run in list(runtime.active.values()):
            if run.tenant_id == tenant and run.status == RunStatus.PAUSED:
                runtime.spawn(
                    runtime.set_running(run, "run.resumed", {"reason": "policy changed"}),
                    f"resume:{run.id}",
                )

    def burst_notice(self, notice: Any) -> None:
        """Burst credit is never silent: every use, exhaustion and restoration is audited."""
        self.burst_notices.append(notice)
        del self.burst_notices[:-1000]
        if self.policy_of(notice.tenant_id) is None:
            return
        entry = AuditEntry(
            "scheduler",
            f"compute.{notice.kind}",
            f"tenant:{notice.tenant_id}",
            {
                "running": notice.running,
                "running_cap": notice.running_cap,
                "burst_debt_s": round(notice.burst_debt_s, 3),
                "burst_window_s": notice.burst_window_s,
            },
        )
        pending = self._burst_audits.get(notice.tenant_id)
        if pending is not None:
            pending.append(entry)  # rides the tenant's next audit write
            return
        self._burst_audits[notice.tenant_id] = [entry]
        runtime = self.runtime_for_tenant(notice.tenant_id)
        runtime.spawn(self._write_burst_audits(runtime, notice.tenant_id), f"audit:{notice.kind}")

    async def _write_burst_audits(self, runtime: Runtime, tenant: str) -> None:
        """Write a tenant's burst audit entries, those that came while one write was in flight
        in the next: a tenant borrowing slots has one use a step, and one write a step would
        put an op of its own beside each of its transitions in every commit."""
        while entries := self._burst_audits.get(tenant):
            self._burst_audits[tenant] = []
            try:
                await runtime.writer.write(Transition(tenant, "", self.clock.now(), audit=entries))
            except asyncio.CancelledError:  # closing: the writer's close commits what it holds
                if later := self._burst_audits.pop(tenant, None):
                    try:
                        runtime.writer.write_nowait(
                            Transition(tenant, "", self.clock.now(), audit=later)
                        )
                    except StoreUnavailableError:
                        log.warning("%d burst audit entries lost: the writer is closed", len(later))
                raise
            except Exception as exc:  # as before, when each entry had a write of its own
                log.warning("%d burst audit entries lost: %s", len(entries), exc)
        self._burst_audits.pop(tenant, None)

    # -- recovery with tenancy --------------------------------------------------------------

    def attach_policy(self, run: Active) -> None:
        """Give a loaded run its tenant's current policy."""
        info = self.policy_of(run.tenant_id)
        if info is not None:
            run.policy, run.policy_version = info.policy, info.policy_version

    async def readmit(self) -> None:
        """After recovery: queue every loaded run again, running ones first."""
        for runtime in self.runtimes.values():
            runs = sorted(
                runtime.active.values(), key=lambda r: (r.status != RunStatus.RUNNING, r.id)
            )
            for run in runs:
                self.attach_policy(run)
                self.admit_recovered(runtime, run)

    def admit_recovered(self, runtime: Runtime, run: Active) -> None:
        """Give a loaded run its place in admission (and start it if it is let in)."""
        if run.status not in (RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.PAUSED):
            return
        if run.parent_id is not None and run.status == RunStatus.RUNNING:
            return  # a child run holds its waiting parent's place, not one of its own
        if self.policy_of(run.tenant_id) is None:
            self.dispatcher.configure(run.tenant_id)
            self.admission.configure_tenant(self.adm(run.tenant_id), now_s=self.clock.now())
        lane: Any = run.lane
        try:
            admitted = self.admission.submit(
                self.adm(run.tenant_id), run.id, lane, self.clock.now()
            )
        except TenantflowError:
            admitted = False
            if self.clustered:  # full: let it go; a later sweep loads it again
                runtime.spawn(runtime.drop([run]), f"full:{run.id}")
                return
        if run.status == RunStatus.QUEUED and admitted:
            runtime.spawn(runtime.set_running(run, "run.admitted"), f"admit:{run.id}")

    async def resume_parked(self, spec: WorkflowSpec) -> None:
        """Resume the runs parked on ``spec``'s version (it was just registered)."""
        for record in self.registry.take_parked(spec):
            runtime = self.runtime_for_tenant(record.tenant_id)
            steps = await runtime.store.get_steps(record.tenant_id, record.id)
            if not self.drives(record.tenant_id) or self.active_run(record.tenant_id, record.id):
                continue  # handed to another worker meanwhile, or already resumed
            run = runtime.resume(record, steps, spec)
            self.attach_policy(run)
            self.admit_recovered(runtime, run)

    async def load_run(self, tenant: str, run_id: str) -> None:
        """Take over one unfinished run of an owned tenant (a submission another process made,
        or one a sweep found)."""
        await self.load_runs(tenant, [run_id])

    async def load_runs(self, tenant: str, run_ids: Collection[str]) -> None:
        """Take over those of ``run_ids`` that are unfinished runs of an owned tenant and not
        yet held here (one read for all of them)."""
        wanted = [r for r in run_ids if not self.holds_run(tenant, r)]
        if not wanted or not self.drives(tenant):
            return
        runtime = self.runtime_for_tenant(tenant)
        for record, steps in await runtime.store.unfinished_runs(tenant, wanted):
            # Re-checked after the read: the tenant may have moved, the run been loaded.
            if self.drives(tenant) and not self.holds_run(tenant, record.id):
                self.take_over(runtime, record, steps)

    def take_over(self, runtime: Runtime, record: RunRecord, steps: list[StepRecord]) -> None:
        """Drive a stored run here (parked if its workflow version is not registered)."""
        spec = self.registry.spec_or_none(record.workflow, record.workflow_version)
        if spec is None:
            self.registry.park(record)
            return
        run = runtime.resume(record, steps, spec)
        self.attach_policy(run)
        self.admit_recovered(runtime, run)

    async def release(self, tenant: str, owner: str) -> None:
        """Stop driving ``tenant``'s runs here: their attempts and timers stop (as at shutdown)
        and their step leases are handed back at once for the next owner."""
        runtime = self.runtime_for_tenant(tenant)
        runs = [r for r in runtime.active.values() if r.tenant_id == tenant]
        await runtime.drop(runs)
        adm = self.adm(tenant)
        # Queued ones first, so that finishing the others admits none of the leaving runs.
        waiting = [r for r in runs if self.admission.withdraw(adm, r.id)]
        admitted: list[Any] = []
        for run in runs:
            if run not in waiting:
                with contextlib.suppress(TenantflowError):  # not admitted here
                    admitted.extend(self.admission.finished(adm, run.id, self.clock.now()))
            for fut in self._waiters.pop(run.id, []):  # waiters poll the store from now on
                if not fut.done():
                    fut.set_result((run.status, None))
        self.admit_keys(tenant, admitted)  # other tenants' runs, in a shared queue
        self.registry.drop_parked(tenant)
        release = RecoverOrphans(self.clock.now(), owners=(owner,), tenant_id=tenant)
        await runtime.writer.write(release)
