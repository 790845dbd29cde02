"""The public engine: register workflows, submit runs, read their history.

``Engine.open(url)`` picks the store from the URL (``sqlite:///path.db``, ``memory://``) and is
used as an async context manager::

    async with Engine.open("sqlite:///tenantflow.db") as engine:
        engine.register(loan)
        run = await engine.submit("loan-approval", tenant="bank-a", input={...})
        decision = await run.result()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import re
import secrets
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

from tenantflow.adapters.clock import SystemClock
from tenantflow.domain import budget as budget_math
from tenantflow.domain.admission import AdmissionController
from tenantflow.domain.audit import VerifyResult, verify_chain
from tenantflow.domain.breaker import CircuitBreaker
from tenantflow.domain.cluster import Command
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.policy import Policy, RateLimit
from tenantflow.domain.records import (
    TERMINAL_RUN,
    CreateRun,
    EventRecord,
    NewEvent,
    RecoverOrphans,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    Transition,
)
from tenantflow.domain.run import advance, run_result
from tenantflow.domain.spec import WorkflowSpec, child_key
from tenantflow.domain.state import Change, bisect_versions, diff_states, fold
from tenantflow.domain.tenancy import AuditEntry, PurgeRuns, ReviewRecord
from tenantflow.engine.cluster import Membership, error_from_dict
from tenantflow.engine.dispatch import Dispatcher
from tenantflow.engine.gateway import Gateway, Models, Tools
from tenantflow.engine.ingest import IngestGate
from tenantflow.engine.inputs import refuse_credentials
from tenantflow.engine.keys import ApiKeys
from tenantflow.engine.memory import Memory
from tenantflow.engine.resync import Resync
from tenantflow.engine.reviews import Reviews
from tenantflow.engine.runtime import Active, Runtime
from tenantflow.engine.runtime import result_json as make_result_json
from tenantflow.engine.tenants import TenantInfo, Tenants
from tenantflow.errors import (
    BudgetExceededError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    ResidencyError,
    RunFailedError,
    SpecError,
    TenantflowError,
)
from tenantflow.observability.events import Observers
from tenantflow.ports import Clock, Coordinator, Store
from tenantflow.workflow import Workflow

__all__ = ["DEFAULT_STORE", "Engine", "RunHandle", "StateVersion", "check_tenant", "open_store"]

DEFAULT_STORE = "default"

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_LANES = ("urgent", "normal", "background")


def open_store(url: str) -> Store:
    """The store a URL names.

    * ``sqlite:///file.db``: the embedded store (one executing process);
    * ``postgresql://user@host:port/db`` (or ``postgres://``, with ``?schema=…``): the
      scale-out store; needs the ``postgres`` extra (``pip install 'tenantflow[postgres]'``);
    * ``memory://``: nothing durable, for tests and throwaway demos.

    Raises:
        ConfigurationError: an unsupported or malformed URL, or psycopg is not installed.
    """
    if url.startswith("sqlite:"):
        from tenantflow.adapters.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from tenantflow.adapters.postgres import PostgresStore
        except ImportError as exc:
            if not (exc.name or "").startswith("psycopg"):
                raise
            raise ConfigurationError(
                f"{url.split(':', 1)[0]}:// URLs need psycopg: pip install 'tenantflow[postgres]'"
                f" ({exc})",
                field="url",
            ) from None
        return PostgresStore.from_url(url)
    if url.startswith("memory:"):
        from tenantflow.adapters.memory import MemoryStore

        return MemoryStore()
    raise ConfigurationError(
        f"unsupported store URL {url!r}: use sqlite:///path/to/file.db,"
        " postgresql://user@host:port/dbname or memory://",
        field="url",
        value=url,
    )


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ConfigurationError(
            f"invalid tenant id {tenant!r}: 1-64 letters, digits, '.', '_' or '-'",
            field="tenant",
            value=repr(tenant),
        )
    return tenant


@dataclass(frozen=True, slots=True)
class StateVersion:
    """One state version, materialised."""

    run_id: str
    version: int
    parent: int | None
    step: str | None
    hash: str
    created_at: float
    state: dict[str, Any]


class RunHandle:
    """A submitted run: its id, and a way to wait for its result."""

    __slots__ = ("_engine", "created", "id", "tenant_id")

    def __init__(self, engine: Engine, tenant_id: str, run_id: str, created: bool = True) -> None:
        self._engine = engine
        self.tenant_id = tenant_id
        self.id = run_id
        self.created = created

    def __repr__(self) -> str:
        return f"RunHandle(tenant_id={self.tenant_id!r}, id={self.id!r})"

    async def status(self) -> RunStatus:
        return (await self._engine.get_run(self.tenant_id, self.id)).status

    async def wait(self, timeout: timedelta | None = None) -> RunRecord:
        """Wait until the run ends; returns its record whatever the outcome."""
        return await self._engine.wait(self.tenant_id, self.id, timeout)

    async def result(self, timeout: timedelta | None = None) -> Any:
        """The run's result; :class:`RunFailedError` if it failed, compensated or was cancelled."""
        record = await self.wait(timeout)
        if record.status != RunStatus.COMPLETED:
            raise RunFailedError(
                f"run {self.id} ended {record.status.value}: {record.error}",
                run_id=self.id,
                status=record.status.value,
                error=record.error,
            )
        return self._engine.decode_result(record)


class Engine:
    """Runs registered workflows durably for many tenants, each inside its boundary.

    Args:
        store: where runs live (see :func:`open_store`): the default store.
        clock: time source; :class:`~tenantflow.testing.FakeClock` in tests.
        slots: how many step attempts may execute at once, shared fairly by all tenants.
        lease: how long an attempt's lease lasts without renewal; an attempt whose lease lapses
            (the process stalled) can no longer commit, and the step is claimed again.
        execute: False opens the store to read (timelines, state) without running anything.
        seed: seeds retry jitter, for reproducible tests.
        region: the residency region of the default store (None: a single store that serves
            every tenant whose region has no store of its own, only when ``regions`` is empty).
        regions: more stores, one per residency region: a tenant's runs, state, audit log and
            ledgers live only in its region's store.
        max_queued_runs: past this many runs waiting for admission, submissions are refused
            with :class:`BackpressureError` (and its retry-after).
        auto_tenant: a tier name or Policy: unknown tenants are registered with it on first
            submit (audited). None (the default) refuses unknown tenants.
        aging: how long a waiting step takes to climb one lane.
        controls: False switches tenant controls off — one shared FIFO queue, no caps, no
            per-tenant rate limits (only ``platform_limits``) — the baseline the demo compares
            against. Budgets, residency and allow-lists hold either way.
        platform_limits: rate limits per resource (``{"tool:credit_bureau": "3000/hour"}``, or
            ``{"rate": "3000/hour", "burst": 100}``)
            shared by all tenants together, e.g. a vendor's quota for the whole platform; with
            controls on they apply on top of each tenant's own limit.
        cluster: None (the default) drives every tenant's runs in this process. ``"worker"``
            makes this engine one of several worker processes sharing one PostgreSQL database:
            it drives only the tenants it owns (see :mod:`tenantflow.engine.cluster`).
            ``"front"`` executes nothing: submissions are queued for the workers, and cancel
            and review decisions are passed to the worker that drives the run.
        command_timeout: how long a front waits for a worker to run a cancel or a decision
            before it returns (the command stays queued and is run when a worker takes it).
        ingest_per_tenant: how many submissions of one tenant are recorded at once while
            other tenants have steps running (64 while none do); the rest wait their turn, so
            that a tenant's burst cannot crowd out other tenants' runs in flight (see
            :mod:`tenantflow.engine.ingest`).
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        slots: int = 64,
        lease: timedelta = timedelta(seconds=30),
        breaker_failures: int = 5,
        breaker_cooldown: timedelta = timedelta(seconds=30),
        execute: bool = True,
        seed: int | None = None,
        region: str | None = None,
        regions: Mapping[str, Store] | None = None,
        max_queued_runs: int = 100_000,
        auto_tenant: str | Policy | None = None,
        aging: timedelta = timedelta(seconds=30),
        controls: bool = True,
        platform_limits: Mapping[str, RateLimit | str | Mapping[str, Any]] | None = None,
        cluster: Literal["worker", "front"] | None = None,
        command_timeout: timedelta = timedelta(seconds=10),
        ingest_per_tenant: int = 4,
    ) -> None:
        if slots < 1:
            raise ConfigurationError("slots must be at least 1", field="slots", value=slots)
        if lease <= timedelta(0):
            raise ConfigurationError("lease must be positive", field="lease", value=str(lease))
        if ingest_per_tenant < 1:
            raise ConfigurationError(
                "ingest_per_tenant must be at least 1",
                field="ingest_per_tenant",
                value=ingest_per_tenant,
            )
        self.ingest = IngestGate(ingest_per_tenant, alone=64, others_busy=self._others_running)
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.execute = execute
        self.region = region
        self.regions: dict[str, Store] = dict(regions or {})
        if region is not None and region in self.regions:
            raise ConfigurationError(
                f"region {region!r} is both the default store's and in regions", field="regions"
            )
        self.stores: dict[str, Store] = {DEFAULT_STORE: store, **self.regions}
        self.auto_tenant = auto_tenant
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._specs: dict[tuple[str, str], WorkflowSpec] = {}
        self._latest: dict[str, WorkflowSpec] = {}
        self._waiters: dict[str, list[asyncio.Future[tuple[RunStatus, Any]]]] = {}
        self._parked: list[RunRecord] = []
        # Queued runs admitted before their submission's write returned (see submit).
        self._early: set[str] = set()
        self._started = False
        self.observers = Observers()  # see tenantflow.observability.events
        self.tools = Tools()
        self.models = Models()
        self.gateway = Gateway(
            self.tools,
            self.models,
            platform_limits={
                resource: RateLimit.model_validate(limit)
                for resource, limit in (platform_limits or {}).items()
            },
            tenant_limits=controls,
        )
        self.controls = controls
        self.dispatcher = Dispatcher(
            self.clock, slots=slots, aging_s=aging.total_seconds(), shared=not controls
        )
        self.dispatcher.on_notice = self._burst_notice
        self.admission = AdmissionController(max_queued=max_queued_runs)
        self.tenants = Tenants(self)
        self.reviews = Reviews(self)
        self.keys = ApiKeys(self)
        self.memory = Memory(self)
        self.burst_notices: list[Any] = []
        rng = random.Random(seed)
        breakers: dict[str, CircuitBreaker] = {}
        self.runtimes: dict[str, Runtime] = {
            key: Runtime(
                st,
                self.clock,
                owner=self.owner,
                dispatcher=self.dispatcher,
                gateway=self.gateway,
                hooks=self,
                breakers=breakers,
                lease_s=lease.total_seconds(),
                breaker_threshold=breaker_failures,
                breaker_cooldown_s=breaker_cooldown.total_seconds(),
                rng=rng,
            )
            for key, st in self.stores.items()
        }
        self.runtime = self.runtimes[DEFAULT_STORE]
        for runtime in self.runtimes.values():  # one platform-wide bucket, not one per region
            runtime.ledgers.platform = self.runtime.writer
        self.resync = Resync(self)  # a write that raised may have committed: reload its runs
        for runtime in self.runtimes.values():
            runtime.writer.on_failed = functools.partial(self.resync.failed, runtime)
        self.cluster = cluster
        self.command_timeout_s = command_timeout.total_seconds()
        self.coordinator: Coordinator | None = None
        self.membership: Membership | None = None
        if cluster is not None:
            self._join(cluster, lease)

    def _join(self, cluster: str, lease: timedelta) -> None:
        if cluster not in ("worker", "front"):
            raise ConfigurationError(
                f"unknown cluster role {cluster!r}: 'worker' or 'front'", field="cluster"
            )
        make = getattr(self.store, "coordinator", None)
        if make is None or not self.execute:
            raise ConfigurationError(
                "workers and fronts share a PostgreSQL database (postgresql://...) and execute;"
                f" {self.store.url!r} is not one (run the embedded engine instead)",
                field="cluster",
            )
        self.coordinator = make()
        if cluster == "worker":
            assert self.coordinator is not None
            self.membership = Membership(self, self.coordinator, lease_s=lease.total_seconds())

    @classmethod
    def open(cls, url: str, *, regions: Mapping[str, str] | None = None, **options: Any) -> Engine:
        """An engine on the store named by ``url`` (plus one store URL per residency region);
        use it as ``async with Engine.open(...)``."""
        stores = {region: open_store(u) for region, u in (regions or {}).items()}
        return cls(open_store(url), regions=stores, **options)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store and, when executing, resume every unfinished run."""
        if self._started:
            return
        opened: list[Store] = []
        try:
            for st in self.stores.values():
                await st.open(execute=self.execute)
                opened.append(st)
        except BaseException:
            for st in opened:
                await st.close()
            raise
        self._started = True
        await self.tenants.load()
        if self.execute:
            for runtime in self.runtimes.values():
                runtime.start()
            if self.membership is not None:
                await self.membership.start()
            if self.cluster is not None:
                return  # a worker takes its tenants' runs over one tenant at a time
            for runtime in self.runtimes.values():
                self._parked.extend(await runtime.recover(self._spec_or_none))
            await self._readmit()
            for st in self.stores.values():
                for review in await st.pending_reviews():
                    self.review_opened(review)

    async def close(self) -> None:
        """Stop executing (attempts in flight are resumed by the next start) and close the store."""
        if not self._started:
            return
        if self.membership is not None:
            await self.membership.close()
        if self.execute:
            self.dispatcher.closing = True
            for runtime in self.runtimes.values():
                runtime.closing = True
            for runtime in self.runtimes.values():
                await runtime.close()
        if self.membership is not None:
            # Hand the attempts and tenants back now rather than when their leases lapse.
            for st in self.stores.values():
                with contextlib.suppress(TenantflowError):  # down: the leases lapse instead
                    await st.apply([RecoverOrphans(self.clock.now(), owners=(self.owner,))])
            await self.membership.leave()
        if self.coordinator is not None:
            await self.coordinator.close()
        for st in self.stores.values():
            await st.close()
        await self.models.close()
        self._started = False

    # -- workflows ----------------------------------------------------------------------------

    def register(self, workflow: Workflow | WorkflowSpec) -> WorkflowSpec:
        """Make a workflow version available; runs parked on this version resume."""
        spec = workflow.spec if isinstance(workflow, Workflow) else workflow
        key = (spec.name, spec.version)
        existing = self._specs.get(key)
        if existing is not None and existing.fingerprint != spec.fingerprint:
            raise SpecError(
                f"workflow {spec.name!r} version {spec.version!r} is already registered with"
                " different steps; give the new definition a new version",
                workflow=spec.name,
                version=spec.version,
            )
        self._specs[key] = spec
        latest = self._latest.get(spec.name)
        if latest is None or _version_key(spec.version) >= _version_key(latest.version):
            self._latest[spec.name] = spec
        if self._started and self.execute and self._parked:
            self.runtime.spawn(self._resume_parked(spec), f"resume:{spec.name}")
        return spec

    async def _resume_parked(self, spec: WorkflowSpec) -> None:
        mine = [
            r for r in self._parked if (r.workflow, r.workflow_version) == (spec.name, spec.version)
        ]
        self._parked = [r for r in self._parked if r not in mine]
        for record in mine:
            runtime = self.runtime_for_tenant(record.tenant_id)
            steps = await runtime.store.get_steps(record.tenant_id, record.id)
            if not self._drives(record.tenant_id) or self.active_run(record.tenant_id, record.id):
                continue  # handed to another worker meanwhile, or already resumed
            run = runtime.resume(record, steps, spec)
            self._attach_policy(run)
            self._admit_recovered(runtime, run)

    def _spec_or_none(self, name: str, version: str) -> WorkflowSpec | None:
        return self._specs.get((name, version))

    def workflow(self, name: str, version: str | None = None) -> WorkflowSpec:
        """A registered workflow (latest version unless ``version`` is given)."""
        spec = self._latest.get(name) if version is None else self._specs.get((name, str(version)))
        if spec is None:
            known = ", ".join(sorted(self._latest)) or "none"
            raise NotFoundError(
                f"workflow {name!r}{'' if version is None else f' version {version!r}'} is not"
                f" registered (registered: {known})",
                kind="workflow",
                id=name,
            )
        return spec

    # -- runs ---------------------------------------------------------------------------------

    async def submit(
        self,
        workflow: str | Workflow,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None = None,
        lane: str | None = None,
        version: str | None = None,
    ) -> RunHandle:
        """Start a run of ``workflow`` for ``tenant``; returns once the run is durably recorded.

        The run is admitted at once while the tenant is under its active-run cap, else it waits
        in the tenant's own queue (status ``queued``). Its policy snapshot and region are fixed
        here. The same ``idempotency_key`` for the same tenant returns the existing run.

        Raises:
            NotFoundError: the workflow (version) or the tenant is not registered.
            ContractError: ``input`` breaks the workflow's input contract, or holds a
                credential-shaped string (refused and audited by field path, never the value;
                see :mod:`tenantflow.domain.credentials`).
            BackpressureError: the platform's queue is full; retry after ``retry_after_s``.
            BudgetExceededError: the tenant's period budget is spent.
            ConfigurationError: a bad tenant id or lane, or an engine that does not execute.
        """
        tenant = check_tenant(tenant)
        # Without tenant controls every submission goes straight to the one shared queue.
        gate = self.ingest.enter(tenant) if self.controls else contextlib.nullcontext()
        async with gate:
            return await self._submit(
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
        handle = await self._submit(
            workflow,
            tenant=parent.tenant_id,
            input=task,
            idempotency_key=f"child:{parent.id}:{key}:{index}",
            lane=parent.lane,
            version=None,
            parent=parent,
        )
        return handle.id

    async def _submit(
        self,
        workflow: str | Workflow,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None,
        lane: str | None,
        version: str | None,
        parent: Active | None = None,
    ) -> RunHandle:
        if not self.execute or not self._started:
            raise ConfigurationError(
                "this engine is not executing runs (open it with execute=True)"
            )
        tenant = check_tenant(tenant)
        info = await self._tenant_for_submit(tenant)
        policy = info.policy
        lane = lane or policy.default_lane
        if lane not in _LANES:
            raise ConfigurationError(
                f"unknown lane {lane!r}: one of {', '.join(_LANES)}", field="lane", value=lane
            )
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        spec = self.workflow(name, version)
        value, input_json = contract_for(spec.input_type).check(
            input, step="<input>", direction="input"
        )
        runtime = self.runtimes[info.store]
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
        events.extend(NewEvent("step.skipped", k, None, {"reason": r}) for k, r in plan.skipped)
        events.extend(NewEvent("step.mapped", k, None, {"elements": n}) for k, n in plan.mapped)
        events.extend(NewEvent("step.failed", k, None, {"error": r}) for k, r in plan.failed)
        fatal = [k for k, _ in plan.failed if not spec.step(k).optional]
        result_json: bytes | None = None
        error: str | None = None
        if fatal:
            status = RunStatus.FAILED
            error = f"step {fatal[0]!r} failed: {dict(plan.failed)[fatal[0]]}"
            events.append(NewEvent("run.failed", None, None, {"error": error}))
        elif plan.completed:
            status = RunStatus.COMPLETED
            result_json = make_result_json(spec, run_result(spec, {}))
            events.append(NewEvent("run.completed"))
        elif parent is not None:  # runs in its waiting parent's place (see StepContext.delegate)
            status = RunStatus.RUNNING
            events.append(NewEvent("run.started", None, None, {"parent_run": parent.id}))
        elif not self._drives(tenant):  # queued for the worker that owns the tenant
            status = RunStatus.QUEUED
            events.append(NewEvent("run.queued"))
        else:
            admitted = self.admission.submit(self._adm(tenant), run_id, lane, now)  # type: ignore[arg-type]
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
        local = self._drives(tenant)
        admitted_here = local and parent is None  # a child took no admission place
        try:
            outcome = await runtime.writer.write(CreateRun(record, rows, events))
        except BaseException:
            if admitted_here:
                self._forget_admission(tenant, run_id, status)
            raise
        if not outcome.created:
            if admitted_here:
                self._forget_admission(tenant, run_id, status)
            # A retry of a submission whose commit raised: the run may be stored, not held.
            await self.load_run(tenant, outcome.run_id)
            return RunHandle(self, tenant, outcome.run_id, created=False)
        if local and not self._drives(tenant):  # the tenant moved to another worker meanwhile
            if admitted_here:
                self._forget_admission(tenant, run_id, status)
            local = False
        if not local:
            if status in (RunStatus.QUEUED, RunStatus.RUNNING) and self.coordinator is not None:
                self.coordinator.announce("run", tenant, run_id)
            return RunHandle(self, tenant, run_id)
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
            if run_id in self._early:  # a slot freed up while the run was being recorded
                self._early.discard(run_id)
                runtime.spawn(runtime.set_running(run, "run.admitted"), f"admit:{run_id}")
        return RunHandle(self, tenant, run_id)

    def _forget_admission(self, tenant: str, run_id: str, status: RunStatus) -> None:
        if status == RunStatus.RUNNING:
            self._admit_keys(
                tenant, self.admission.finished(self._adm(tenant), run_id, self.clock.now())
            )
        elif status == RunStatus.QUEUED:
            self._early.discard(run_id)
            if not self.admission.withdraw(self._adm(tenant), run_id):
                # Admitted while its submission was being written: give the slot back.
                self._forget_admission(tenant, run_id, RunStatus.RUNNING)

    def _others_running(self, tenant: str) -> bool:
        """Whether tenants other than ``tenant`` have steps running in this engine."""
        scheduler = self.dispatcher.scheduler
        return scheduler.total_running > scheduler.running(tenant)

    def _adm(self, tenant: str) -> str:
        """The admission queue a tenant's runs wait in (one shared queue without controls)."""
        return tenant if self.controls else "*"

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
        try:
            if isinstance(self.auto_tenant, Policy):
                return await self.tenants.create(
                    tenant, policy=self.auto_tenant, actor="engine:auto"
                )
            return await self.tenants.create(tenant, tier=self.auto_tenant, actor="engine:auto")
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

    def run(self, tenant: str, run_id: str) -> RunHandle:
        """A handle on an existing run."""
        return RunHandle(self, check_tenant(tenant), run_id)

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        """The run's record; NotFoundError if this tenant has no such run."""
        return await self.store_for_tenant(check_tenant(tenant)).get_run(tenant, run_id)

    async def list_runs(
        self,
        tenant: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
        payloads: bool = True,
    ) -> list[RunRecord]:
        """The tenant's runs, newest first (``payloads=False``: inputs and results not read)."""
        if not 1 <= limit <= 1000:
            raise ConfigurationError("limit must be within 1..1000", field="limit", value=limit)
        return await self.store_for_tenant(check_tenant(tenant)).list_runs(
            tenant, status=status, workflow=workflow, limit=limit, before=before, payloads=payloads
        )

    async def steps(self, tenant: str, run_id: str) -> list[StepRecord]:
        await self.get_run(tenant, run_id)
        return await self.store_for_tenant(tenant).get_steps(tenant, run_id)

    async def cancel(
        self, tenant: str, run_id: str, reason: str = "cancelled by request"
    ) -> RunRecord:
        """Cancel a run: stop its steps, compensate completed ones, end it ``cancelled``."""
        record = await self.get_run(tenant, run_id)
        if record.status in TERMINAL_RUN:
            raise ConflictError(
                f"run {run_id} already ended {record.status.value}",
                run_id=run_id,
                status=record.status.value,
            )
        if not self._drives(tenant):
            await self.command(tenant, "cancel", run_id, {"reason": reason})
            return await self.get_run(tenant, run_id)
        active = self.active_run(tenant, run_id)
        if active is None or not self.execute:
            raise ConflictError(f"run {run_id} is not executing in this engine", run_id=run_id)
        if active.status == RunStatus.QUEUED:
            self.admission.withdraw(self._adm(tenant), run_id)
            active.status = RunStatus.RUNNING  # so that cancel() unwinds it like any run
        await self.runtime_for_tenant(tenant).cancel(active, reason)
        return await self.get_run(tenant, run_id)

    async def wait(self, tenant: str, run_id: str, timeout: timedelta | None = None) -> RunRecord:
        """Wait until the run ends and return its record."""
        record = await self.get_run(tenant, run_id)
        if record.status in TERMINAL_RUN:
            return record

        async def until_done() -> RunRecord:
            while True:
                if self.active_run(tenant, run_id) is not None:
                    fut: asyncio.Future[tuple[RunStatus, Any]] = (
                        asyncio.get_running_loop().create_future()
                    )
                    self._waiters.setdefault(run_id, []).append(fut)
                    await fut
                else:  # executing elsewhere (or not yet resumed): poll the store
                    await asyncio.sleep(0.1)
                current = await self.get_run(tenant, run_id)
                if current.status in TERMINAL_RUN:
                    return current

        if timeout is None:
            return await until_done()
        return await asyncio.wait_for(until_done(), timeout.total_seconds())

    # -- hooks the runtimes call ----------------------------------------------------------

    def on_finish(self, run: Active, status: RunStatus, result: Any) -> None:
        for fut in self._waiters.pop(run.id, []):
            if not fut.done():
                fut.set_result((status, result))
        try:
            admitted = self.admission.finished(self._adm(run.tenant_id), run.id, self.clock.now())
        except NotFoundError:
            return  # it was never admitted (it ended while queued)
        self._admit_keys(run.tenant_id, admitted)

    def _admit_keys(self, tenant: str, keys: list[Any]) -> None:
        for key in keys:
            for runtime in self.runtimes.values():
                run = runtime.active.get(str(key))
                if run is not None:
                    runtime.spawn(runtime.set_running(run, "run.admitted"), f"admit:{run.id}")
                    break
            else:  # admitted while its submission is still being written: submit() starts it
                self._early.add(str(key))

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

        runtime = self.runtime_for_tenant(review.tenant_id)
        runtime.spawn(watch(), f"sla:{review.run_id}:{review.id}")

    def _burst_notice(self, notice: Any) -> None:
        """Burst credit is never silent: every use, exhaustion and restoration is audited."""
        self.burst_notices.append(notice)
        del self.burst_notices[:-1000]
        if notice.tenant_id not in self.tenants._cache:
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

    async def purge_expired(self) -> dict[str, dict[str, int]]:
        """The retention job: delete every tenant's finished runs older than its policy's
        ``data_retention`` (with their state, events and reviews). Returns rows by tenant."""
        out: dict[str, dict[str, int]] = {}
        now = self.clock.now()
        for info in self.tenants.list():
            retention = info.policy.data_retention
            if retention is None:
                continue
            runtime = self.runtimes[info.store]
            out[info.id] = await runtime.writer.write(
                PurgeRuns(info.id, now - retention.total_seconds(), now)
            )
        return out

    def configure_tenant(self, info: TenantInfo) -> None:
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
        if self._started:
            self._admit_keys(info.id, admitted)
            self._resume_paused(info.id)

    def _resume_paused(self, tenant: str) -> None:
        runtime = self.runtimes.get(self._store_key_of(tenant))
        if runtime is None:
            return
        for run in list(runtime.active.values()):
            if run.tenant_id == tenant and run.status == RunStatus.PAUSED:
                runtime.spawn(
                    runtime.set_running(run, "run.resumed", {"reason": "policy changed"}),
                    f"resume:{run.id}",
                )

    # -- recovery with tenancy ------------------------------------------------------------

    def _attach_policy(self, run: Active) -> None:
        info = self.tenants.cached(run.tenant_id)
        if info is not None:
            run.policy, run.policy_version = info.policy, info.policy_version

    async def _readmit(self) -> None:
        for runtime in self.runtimes.values():
            runs = sorted(
                runtime.active.values(), key=lambda r: (r.status != RunStatus.RUNNING, r.id)
            )
            for run in runs:
                self._attach_policy(run)
                self._admit_recovered(runtime, run)

    def _admit_recovered(self, runtime: Runtime, run: Active) -> None:
        if run.status not in (RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.PAUSED):
            return
        if run.parent_id is not None and run.status == RunStatus.RUNNING:
            return  # a child run holds its waiting parent's place, not one of its own
        if self.tenants.cached(run.tenant_id) is None:
            self.dispatcher.configure(run.tenant_id)
            self.admission.configure_tenant(self._adm(run.tenant_id), now_s=self.clock.now())
        lane: Any = run.lane
        try:
            admitted = self.admission.submit(
                self._adm(run.tenant_id), run.id, lane, self.clock.now()
            )
        except TenantflowError:
            admitted = False
            if self.cluster is not None:  # full: let it go; a later sweep loads it again
                runtime.spawn(runtime.drop([run]), f"full:{run.id}")
                return
        if run.status == RunStatus.QUEUED and admitted:
            runtime.spawn(runtime.set_running(run, "run.admitted"), f"admit:{run.id}")

    # -- routing tenants to region stores ------------------------------------------------

    def store_key_for(self, region: str | None) -> str:
        """Which store holds the data of a tenant whose residency region is ``region``."""
        if region is None or region == self.region:
            return DEFAULT_STORE
        if region in self.regions:
            return region
        if self.region is None and not self.regions:
            return DEFAULT_STORE  # a single unlabelled store serves every tenant
        configured = ", ".join(sorted(self._labels())) or "none"
        raise ResidencyError(
            f"no store serves region {region!r} (configured: {configured})", region=region
        )

    def _labels(self) -> set[str]:
        return set(self.regions) | ({self.region} if self.region else set())

    def _store_key_of(self, tenant: str) -> str:
        info = self.tenants.cached(tenant)
        return DEFAULT_STORE if info is None else info.store

    def store_for_tenant(self, tenant: str) -> Store:
        """The store that holds this tenant's data."""
        return self.stores[self._store_key_of(tenant)]

    def runtime_for_tenant(self, tenant: str) -> Runtime:
        return self.runtimes[self._store_key_of(tenant)]

    def active_run(self, tenant: str, run_id: str) -> Active | None:
        """The run if it is executing in this engine (and belongs to ``tenant``)."""
        run = self.runtime_for_tenant(tenant).active.get(run_id)
        return run if run is not None and run.tenant_id == tenant else None

    # -- workers sharing a database (see tenantflow.engine.cluster) -------------------------

    def _drives(self, tenant: str) -> bool:
        """Whether this process drives ``tenant``'s runs (always, unless in a cluster)."""
        if self.cluster is None:
            return True
        return self.membership is not None and tenant in self.membership.owned

    def holds_run(self, tenant: str, run_id: str) -> bool:
        """Whether the run is in this engine's memory (executing, or parked on its version)."""
        return (
            self.active_run(tenant, run_id) is not None
            or any(r.id == run_id for r in self._parked)
            or self.resync.holds(run_id)
        )

    async def load_run(self, tenant: str, run_id: str) -> None:
        """Take over one unfinished run of an owned tenant (a submission another process made,
        or one a sweep found)."""
        await self.load_runs(tenant, [run_id])

    async def load_runs(self, tenant: str, run_ids: Collection[str]) -> None:
        """Take over those of ``run_ids`` that are unfinished runs of an owned tenant and not
        yet held here (one read for all of them)."""
        wanted = [r for r in run_ids if not self.holds_run(tenant, r)]
        if not wanted or not self._drives(tenant):
            return
        runtime = self.runtime_for_tenant(tenant)
        for record, steps in await runtime.store.unfinished_runs(tenant, wanted):
            # Re-checked after the read: the tenant may have moved, the run been loaded.
            if self._drives(tenant) and not self.holds_run(tenant, record.id):
                self._take_over(runtime, record, steps)

    def _take_over(self, runtime: Runtime, record: RunRecord, steps: list[StepRecord]) -> None:
        spec = self._spec_or_none(record.workflow, record.workflow_version)
        if spec is None:
            self._parked.append(record)
            return
        run = runtime.resume(record, steps, spec)
        self._attach_policy(run)
        self._admit_recovered(runtime, run)

    async def adopt_tenant(self, tenant: str) -> None:
        """This worker now owns ``tenant``: load its unfinished runs, re-arm its review timers."""
        runtime = self.runtime_for_tenant(tenant)
        for record, steps in await runtime.store.active_runs(tenant):
            if not self.holds_run(tenant, record.id):
                self._take_over(runtime, record, steps)
        pending = await runtime.store.list_reviews(
            tenant, statuses=["pending", "claimed"], limit=100_000
        )
        for review in pending:
            self.review_opened(review)

    async def release_tenant(self, tenant: str) -> None:
        """Stop driving ``tenant``'s runs here: their attempts and timers stop (as at shutdown)
        and their step leases are handed back at once for the next owner."""
        runtime = self.runtime_for_tenant(tenant)
        runs = [r for r in runtime.active.values() if r.tenant_id == tenant]
        await runtime.drop(runs)
        adm = self._adm(tenant)
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
        self._admit_keys(tenant, admitted)  # other tenants' runs, in a shared queue
        self._parked = [r for r in self._parked if r.tenant_id != tenant]
        release = RecoverOrphans(self.clock.now(), owners=(self.owner,), tenant_id=tenant)
        await runtime.writer.write(release)

    async def command(
        self, tenant: str, kind: str, target: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Pass a run command to the worker that drives the tenant and wait for its result
        (None if none came within ``command_timeout``: it stays queued).

        Raises:
            TenantflowError: the error the command ended with on the worker.
        """
        if self.coordinator is None:
            raise ConfigurationError("run commands are for engines in a cluster")
        posted = await self.coordinator.post(tenant, kind, target, payload, self.clock.now())
        deadline = self.clock.now() + self.command_timeout_s
        delay = 0.005
        while self.clock.now() < deadline:
            result = await self.coordinator.result(tenant, posted)
            if result is not None:
                if "error" in result:
                    raise error_from_dict(result["error"])
                return result
            await asyncio.sleep(delay)
            delay = min(0.1, delay * 2)
        return None

    async def apply_command(self, command: Command) -> None:
        """Run a command another process posted for a tenant this worker drives."""
        tenant, payload = command.tenant_id, command.payload
        if not self._drives(tenant):
            raise ConflictError(f"tenant {tenant!r} is not driven here", tenant=tenant)
        if command.kind == "cancel":
            await self.load_run(tenant, command.target)
            await self.cancel(tenant, command.target, str(payload.get("reason") or "cancelled"))
        elif command.kind == "decide":
            review = await self.reviews.get(tenant, command.target)
            await self.load_run(tenant, review.run_id)
            await self.reviews.decide(
                tenant,
                command.target,
                reviewer=str(payload.get("reviewer", "")),
                approve=bool(payload.get("approve")),
                comment=payload.get("comment"),
                fail_step=bool(payload.get("fail_step", False)),
            )
        else:
            raise ConfigurationError(f"unknown command {command.kind!r}", kind=command.kind)

    async def resume(self, tenant: str, run_id: str) -> RunRecord:
        """Resume a run the budget ladder paused (after its budget was raised or reset)."""
        run = self.active_run(tenant, run_id)
        if run is None or run.status != RunStatus.PAUSED:
            record = await self.get_run(tenant, run_id)
            raise ConflictError(f"run {run_id} is {record.status.value}, not paused", run_id=run_id)
        await self.runtime_for_tenant(tenant).set_running(
            run, "run.resumed", {"reason": "resumed by request"}
        )
        return await self.get_run(tenant, run_id)

    # -- attribution and audit -------------------------------------------------------------

    async def usage(
        self, tenant: str, *, since: str | None = None, until: str | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's usage counters per day (``YYYY-MM-DD``): steps, slot_seconds,
        tokens_in/out, cost_micros, tool_calls, model_calls, rate_limit_waits, degradations,
        reviews; ``dim`` names the tool, model or step."""
        await self.tenants.get(check_tenant(tenant))
        return await self.store_for_tenant(tenant).usage(tenant, since, until)

    async def budget(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's ledgers: limit, spent, reserved and overrun per scope and unit."""
        await self.tenants.get(check_tenant(tenant))
        return await self.store_for_tenant(tenant).ledgers(tenant)

    async def audit_log(self, tenant: str) -> list[Any]:
        """The tenant's audit rows, oldest first."""
        return await self.store_for_tenant(check_tenant(tenant)).audit_log(tenant)

    async def audit_verify(self, tenant: str) -> VerifyResult:
        """Check the tenant's audit hash chain; names the first tampered, missing or moved row."""
        rows = await self.audit_log(tenant)
        return verify_chain(rows, tenant_id=tenant)

    def decode_result(self, record: RunRecord) -> Any:
        """A completed run's result as the sink step's output type."""
        if record.result_json is None:
            return None
        spec = self._specs.get((record.workflow, record.workflow_version))
        if spec is None:
            return json.loads(record.result_json)
        if len(spec.sinks) == 1:
            sink = spec.step(spec.sinks[0])
            return contract_for(sink.result_type).load(
                record.result_json, step=sink.name, direction="result"
            )
        return json.loads(record.result_json)

    # -- history ------------------------------------------------------------------------------

    async def timeline(self, tenant: str, run_id: str) -> list[EventRecord]:
        """The run's execution log, oldest first."""
        await self.get_run(tenant, run_id)
        return await self.store_for_tenant(tenant).events(tenant, run_id)

    async def state(self, tenant: str, run_id: str, version: int | None = None) -> StateVersion:
        """The run's state at ``version`` (latest when None): time travel over its history."""
        record = await self.get_run(tenant, run_id)
        target = record.state_version if version is None else version
        if target < 0 or target > record.state_version:
            raise NotFoundError(
                f"run {run_id} has state versions 0..{record.state_version}, not {target}",
                kind="state_version",
                id=str(target),
            )
        versions = await self.store_for_tenant(tenant).state_versions(tenant, run_id, upto=target)
        deltas = [{"input": json.loads(versions[0].delta_json)}] + [
            json.loads(v.delta_json) for v in versions[1:]
        ]
        last = versions[-1]
        return StateVersion(
            run_id, last.version, last.parent, last.step, last.hash, last.created_at, fold(deltas)
        )

    async def versions(self, tenant: str, run_id: str) -> list[StateVersion]:
        """Every state version of the run, materialised, in order."""
        record = await self.get_run(tenant, run_id)
        rows = await self.store_for_tenant(tenant).state_versions(
            tenant, run_id, upto=record.state_version
        )
        out: list[StateVersion] = []
        state: dict[str, Any] = {}
        for v in rows:
            delta = (
                {"input": json.loads(v.delta_json)} if v.version == 0 else json.loads(v.delta_json)
            )
            state = {**state, **delta}
            out.append(
                StateVersion(run_id, v.version, v.parent, v.step, v.hash, v.created_at, state)
            )
        return out

    async def diff(self, tenant: str, run_id: str, a: int, b: int) -> list[Change]:
        """What changed between state versions ``a`` and ``b``."""
        sa = await self.state(tenant, run_id, a)
        sb = await self.state(tenant, run_id, b)
        return diff_states(sa.state, sb.state)

    async def bisect(
        self, tenant: str, run_id: str, holds: Callable[[dict[str, Any]], bool]
    ) -> StateVersion | None:
        """The first state version where ``holds(state)`` is false (None if it always holds)."""
        history = await self.versions(tenant, run_id)
        found = bisect_versions(0, len(history) - 1, lambda i: bool(holds(history[i].state)))
        return None if found is None else history[found]


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
