"""Submitting runs, and which of the runs this process holds may run now.

* :class:`Submitter` checks a submission (tenant, lane, workflow, input contract, credentials,
  period budget), decides its first transition and records the run with its steps.
* :class:`AdmissionGate` holds the per-tenant admission queues: a run starts while its tenant
  is under its active-run cap, else it waits ``queued``. It also knows which runs this process
  holds (executing, parked on an unregistered version, or being reloaded after a failed write),
  takes runs over from the store, and wakes those waiting for a run to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from tenantflow.domain import budget as budget_math
from tenantflow.domain.admission import AdmissionController
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.ids import check_lane, check_tenant
from tenantflow.domain.policy import Policy
from tenantflow.domain.progress import plan_to_transition
from tenantflow.domain.records import (
    TERMINAL_RUN,
    CreateRun,
    NewEvent,
    RecoverOrphans,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    Transition,
)
from tenantflow.domain.run import advance
from tenantflow.domain.spec import WorkflowSpec, child_key
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.engine.dispatch import Dispatcher
from tenantflow.engine.execution.active import ActiveRun as Active
from tenantflow.engine.execution.driver import RunDriver as Runtime
from tenantflow.engine.inputs import refuse_credentials
from tenantflow.engine.regions import RegionRouter
from tenantflow.engine.registry import WorkflowRegistry
from tenantflow.engine.tenants import TenantInfo, Tenants
from tenantflow.errors import (
    BudgetExceededError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    TenantflowError,
)
from tenantflow.ports import Clock, Coordinator
from tenantflow.workflow import Workflow

__all__ = ["AdmissionGate", "Submitter"]


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
        runtime = self.runtime_for_tenant(notice.tenant_id)
        write = Transition(notice.tenant_id, "", self.clock.now(), audit=[entry])
        runtime.spawn(runtime.writer.write(write), f"audit:{notice.kind}")

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


class Submitter:
    """Records new runs (see the module docstring).

    Args:
        registry: the registered workflows.
        tenants: the tenant registry (unknown tenants may be created on first submit).
        gate: admission and the runs held here.
        clock: the engine's clock.
        controls: False: submissions skip the per-tenant ingest gate.
        ingest: bounds a tenant's submissions recorded at once (see :mod:`.ingest`).
        auto_tenant: a tier name or Policy to register unknown tenants with (None: refuse).
        coordinator: a cluster's coordination (announces runs for their worker), or None.
        executing: whether the engine is started and executes runs.
    """

    def __init__(
        self,
        registry: WorkflowRegistry,
        tenants: Tenants,
        gate: AdmissionGate,
        clock: Clock,
        *,
        controls: bool,
        ingest: Callable[[str], AbstractAsyncContextManager[Any]],
        auto_tenant: str | Policy | None,
        coordinator: Coordinator | None,
        executing: Callable[[], bool],
    ) -> None:
        self.registry = registry
        self.tenants = tenants
        self.gate = gate
        self.clock = clock
        self.controls = controls
        self.ingest = ingest
        self.auto_tenant = auto_tenant
        self._creating: dict[str, asyncio.Future[TenantInfo]] = {}
        self.coordinator = coordinator
        self.executing = executing
        # Tenants not taking submissions here: moving or moved away (see placement/move.py).
        self.fences: dict[str, TenantflowError] = {}

    async def submit(
        self,
        workflow: str | Workflow,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None = None,
        lane: str | None = None,
        version: str | None = None,
    ) -> tuple[str, bool]:
        """Record a run (see :meth:`tenantflow.engine.engine.Engine.submit`); its id, and
        whether this call created it."""
        tenant = check_tenant(tenant)
        if (fence := self.fences.get(tenant)) is not None:
            raise type(fence)(fence.message, **fence.fields)  # a fresh one: no traceback grows
        # Without tenant controls every submission goes straight to the one shared queue.
        gate = self.ingest(tenant) if self.controls else contextlib.nullcontext()
        async with gate:
            return await self.record(
                workflow,
                tenant=tenant,
                input=input,
                idempotency_key=idempotency_key,
                lane=lane,
                version=version,
            )

    async def start_child(
        self, parent: Active, key: str, index: int, workflow: str, task: str
    ) -> str:
        """Start a child run (a subagent) of ``parent`` for step ``key``'s call ``index``;
        idempotent, so a re-executed attempt gets the same child."""
        run_id, _ = await self.record(
            workflow,
            tenant=parent.tenant_id,
            input=task,
            idempotency_key=f"child:{parent.id}:{key}:{index}",
            lane=parent.lane,
            version=None,
            parent=parent,
        )
        return run_id

    async def record(
        self,
        workflow: str | Workflow,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None,
        lane: str | None,
        version: str | None,
        parent: Active | None = None,
    ) -> tuple[str, bool]:
        """Check and record one run (a child of ``parent`` when given); its id, and whether
        this call created it (False: the idempotency key named a stored run)."""
        if not self.executing():
            raise ConfigurationError(
                "this engine is not executing runs (open it with execute=True)"
            )
        gate = self.gate
        tenant = check_tenant(tenant)
        info = await self._tenant_for_submit(tenant)
        policy = info.policy
        lane = check_lane(lane or policy.default_lane)
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        spec = self.registry.workflow(name, version)
        value, input_json = contract_for(spec.input_type).check(
            input, step="<input>", direction="input"
        )
        runtime = gate.runtimes[info.store]
        await refuse_credentials(runtime, tenant, spec.name, input_json)
        await self._check_period_budget(runtime, tenant, policy)
        now = self.clock.now()
        run_id = "run_" + secrets.token_hex(12)
        pending = {s.name: StepStatus.PENDING for s in spec.steps}
        plan = advance(spec, pending, {}, value, changed=None)
        statuses = {**pending, **plan.statuses()}
        submitted = {
            "workflow": spec.name,
            "version": spec.version,
            "lane": lane,
            "policy_version": info.policy_version,
            "region": policy.region,
        }
        events = [NewEvent("run.submitted", None, None, submitted)]
        planned = plan_to_transition(spec, plan, {}, run_id=run_id, submission=True)
        events.extend(planned.events)
        result_json: bytes | None = None
        error: str | None = planned.error
        if planned.run is not None:  # a required step failed, or nothing was left to run
            status = planned.run.status
            result_json = planned.run.result_json
        elif parent is not None:  # runs in its waiting parent's place (see StepContext.delegate)
            status = RunStatus.RUNNING
            events.append(NewEvent("run.started", None, None, {"parent_run": parent.id}))
        elif not gate.drives(tenant):  # queued for the worker that owns the tenant
            status = RunStatus.QUEUED
            events.append(NewEvent("run.queued"))
        else:
            admitted = gate.submit(tenant, run_id, lane, now)
            status = RunStatus.RUNNING if admitted else RunStatus.QUEUED
            events.append(NewEvent("run.started" if admitted else "run.queued"))
        record = RunRecord(
            id=run_id,
            tenant_id=tenant,
            workflow=spec.name,
            workflow_version=spec.version,
            status=status,
            input_json=input_json,
            created_at=now,
            updated_at=now,
            lane=lane,
            idempotency_key=idempotency_key,
            result_json=result_json,
            error=error,
            finished_at=now if status in TERMINAL_RUN else None,
            meta={"policy_version": info.policy_version, "region": policy.region},
        )
        budget_run: str | None = None
        if parent is not None:
            budget_run = parent.budget_run or parent.id
            record.parent_run_id = parent.id
            record.meta["budget_run"] = budget_run
        rows = [StepRecord(run_id, tenant, k, s) for k, s in statuses.items()]
        local = gate.drives(tenant)
        admitted_here = local and parent is None  # a child took no admission place
        try:
            outcome = await runtime.writer.write(CreateRun(record, rows, events))
        except BaseException:
            if admitted_here:
                gate.forget(tenant, run_id, status)
            raise
        if not outcome.created:
            if admitted_here:
                gate.forget(tenant, run_id, status)
            # A retry of a submission whose commit raised: the run may be stored, not held.
            await gate.load_run(tenant, outcome.run_id)
            return outcome.run_id, False
        if local and not gate.drives(tenant):  # the tenant moved to another worker meanwhile
            if admitted_here:
                gate.forget(tenant, run_id, status)
            local = False
        if not local:
            if status in (RunStatus.QUEUED, RunStatus.RUNNING) and self.coordinator is not None:
                self.coordinator.announce("run", tenant, run_id)
            return run_id, True
        if status in (RunStatus.RUNNING, RunStatus.QUEUED):
            run = Active(run_id, tenant, lane, spec, value, status, statuses)
            run.policy, run.policy_version = policy, info.policy_version
            run.meta = dict(record.meta)
            if parent is not None:
                run.parent_id, run.budget_run = parent.id, budget_run
            for key, n in plan.mapped:
                run.children[key] = n
            for key in plan.gathered:
                run.outputs[key] = []
                run.jsons[key] = b"[]"
            runtime.active[run_id] = run
            runtime.submitted(run, now)
            ready = list(plan.ready)
            for key, n in plan.mapped:
                ready.extend(child_key(key, i) for i in range(n))
            runtime.enqueue(run, ready)
            if gate.take_early(run_id):  # a slot freed up while the run was being recorded
                runtime.spawn(runtime.set_running(run, "run.admitted"), f"admit:{run_id}")
        return run_id, True

    async def _tenant_for_submit(self, tenant: str) -> TenantInfo:
        info = self.tenants.cached(tenant)
        if info is not None:
            return info
        if self.auto_tenant is None:
            raise NotFoundError(
                f"tenant {tenant!r} is not registered; create it with engine.tenants.create()"
                " (or open the engine with auto_tenant=<tier>)",
                kind="tenant",
                id=tenant,
            )
        # One creation per tenant at a time: a burst of first submissions waits for it instead
        # of each building the tier's policy and losing the insert race.
        pending = self._creating.get(tenant)
        if pending is None:
            pending = asyncio.ensure_future(self._create_tenant(tenant))
            self._creating[tenant] = pending
            pending.add_done_callback(lambda f: self._created(tenant, f))
        return await asyncio.shield(pending)

    def _created(self, tenant: str, fut: asyncio.Future[TenantInfo]) -> None:
        self._creating.pop(tenant, None)
        if not fut.cancelled():
            fut.exception()  # its waiters got it; retrieved, so that no one warns it was not

    async def _create_tenant(self, tenant: str) -> TenantInfo:
        auto = self.auto_tenant
        assert auto is not None  # checked by the caller
        try:
            if isinstance(auto, Policy):
                return await self.tenants.create(tenant, policy=auto, actor="engine:auto")
            return await self.tenants.create(tenant, tier=auto, actor="engine:auto")
        except ConflictError:  # created concurrently, or by a commit that raised: re-read it
            return await self.tenants.refresh(tenant) or await self.tenants.get(tenant)

    async def _check_period_budget(self, runtime: Runtime, tenant: str, policy: Policy) -> None:
        b = policy.budget
        if b.period_micros is None:
            return
        for row in await runtime.store.ledgers(tenant, "period"):
            if row["unit"] != "micros":
                continue
            if budget_math.needs_reset(row["period_start"], self.clock.now(), b.period):
                return
            if int(row["spent"]) + int(row["reserved"]) >= b.period_micros:
                raise BudgetExceededError(
                    f"tenant {tenant!r} has spent its {b.period} budget",
                    scope="period",
                    tenant=tenant,
                )
