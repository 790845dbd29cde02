"""Submitting runs.

:class:`Submitter` checks a submission (tenant, lane, workflow, input contract, credentials,
period budget), decides its first transition and records the run with its steps; the
:class:`~tenantflow.engine.admission.AdmissionGate` decides whether it may run now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from tenantflow.domain import budget as budget_math
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.ids import check_lane, check_tenant, new_run_id
from tenantflow.domain.policy import Policy
from tenantflow.domain.progress import plan_to_transition
from tenantflow.domain.records import (
    TERMINAL_RUN,
    CreateRun,
    NewEvent,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from tenantflow.domain.run import advance
from tenantflow.domain.spec import child_key
from tenantflow.engine.admission import AdmissionGate
from tenantflow.engine.execution.active import ActiveRun as Active
from tenantflow.engine.execution.driver import RunDriver as Runtime
from tenantflow.engine.inputs import refuse_credentials
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

__all__ = ["Submitter"]


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
        run_id = new_run_id(now)
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
        # In the writer's urgent lane, ahead of the borrower's inserts and keeping its batches
        # short, while another tenant borrows slots here (see Writer): only a submission that
        # passed the ingest gate (a child run does not) of a tenant this process drives.
        urgent = admitted_here and gate.dispatcher.urgent(tenant)
        try:
            outcome = await runtime.writer.write(CreateRun(record, rows, events), urgent=urgent)
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
