"""The public engine: register workflows, submit runs, read their history.

``Engine.open(url)`` picks the store from the URL (``sqlite:///path.db``, ``memory://``) and is
used as an async context manager::

    async with Engine.open("sqlite:///tenantflow.db") as engine:
        engine.register(loan)
        run = await engine.submit("loan-approval", tenant="bank-a", input={...})
        decision = await run.result()

:class:`Engine` is a façade: it wires the parts and delegates to them.

* :mod:`.registry`: the registered workflow versions, and runs parked on unknown ones;
* :mod:`.submission`: recording runs (:class:`Submitter`) and admitting them
  (:class:`AdmissionGate`);
* :mod:`.history`: read-only views of runs (state versions, diff, bisect, audit, usage);
* :mod:`.regions`: which store holds a tenant's data;
* :mod:`.cluster`: what a process of a cluster does (:class:`ClusterDriver`, ``Membership``);
* :mod:`.tenants`, :mod:`.keys`, :mod:`.memory`, :mod:`.reviews`: the tenant-facing services;
* :mod:`.runtime`: driving runs on one store.
"""

from __future__ import annotations

import functools
import os
import random
import secrets
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, overload

from tenantflow.domain.admission import AdmissionController
from tenantflow.domain.breaker import CircuitBreaker
from tenantflow.domain.ids import DEFAULT_STORE, check_tenant
from tenantflow.domain.policy import RateLimit
from tenantflow.domain.records import (
    RunRecord,
    RunStatus,
)
from tenantflow.domain.signals import check_key, check_name, check_payload
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.domain.tenancy import ReviewRecord
from tenantflow.engine.cluster import ClusterDriver, Membership, Ownership
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.dispatch import Dispatcher
from tenantflow.engine.execution.active import ActiveRun as Active
from tenantflow.engine.execution.driver import RunDriver as Runtime
from tenantflow.engine.execution.reviews import Reviews, ReviewWiring
from tenantflow.engine.gateway import Gateway, Models, Tools
from tenantflow.engine.handle import RunHandle, RunSnapshot
from tenantflow.engine.history import HistoryReads, RunHistory, StateVersion
from tenantflow.engine.ingest import IngestGate
from tenantflow.engine.keys import ApiKeys
from tenantflow.engine.memory import Memory
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
from tenantflow.engine.regions import RegionRouter
from tenantflow.engine.registry import WorkflowRegistry
from tenantflow.engine.resync import Resync
from tenantflow.engine.run_signals import EventReceipt, SignalReceipt, StartedRun, send_signal
from tenantflow.engine.runs import Reason, RetryResult, RunControl
from tenantflow.engine.schedules import Schedule, Schedules, ScheduleStore, Write
from tenantflow.engine.submission import AdmissionGate, Submitter
from tenantflow.engine.tenants import TenantInfo, Tenants
from tenantflow.engine.workers import WorkerInfo, list_workers
from tenantflow.errors import ConfigurationError, SpecError
from tenantflow.observability.events import Observers
from tenantflow.ports import Clock, Coordinator, Store
from tenantflow.workflow import Workflow

__all__ = ["Engine", "RunHandle", "StateVersion"]


class Engine(HistoryReads):
    """Runs registered workflows durably for many tenants, each inside its boundary.

    Args:
        store: where runs live (see :func:`tenantflow.adapters.open_store`): the default store.
        config: the engine's settings (see :class:`~tenantflow.engine.config.EngineConfig`);
            the defaults when None.
        clock: time source; :class:`~tenantflow.testing.FakeClock` in tests, the wall clock
            when None.
        regions: more stores, one per residency region: a tenant's runs, state, audit log and
            ledgers live only in its region's store.
    """

    def __init__(
        self,
        store: Store,
        config: EngineConfig | None = None,
        *,
        clock: Clock | None = None,
        regions: Mapping[str, Store] | None = None,
    ) -> None:
        config = config or EngineConfig()
        self.config = config
        self.router = RegionRouter(store, config.region, regions or {})
        self.store, self.region = store, config.region
        self.regions, self.stores = self.router.regions, self.router.stores
        self.clock: Clock = clock or _system_clock()
        self.execute = config.execute
        self.controls = config.controls
        self.auto_tenant = config.auto_tenant
        self.cluster = config.cluster
        self.command_timeout_s = config.command_timeout.total_seconds()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.coordinator: Coordinator | None = self._coordinator(config)
        self._started = False
        self.observers = Observers()  # see tenantflow.observability.events
        self.tools = Tools()
        self.models = Models()
        self.gateway = Gateway(
            self.tools,
            self.models,
            platform_limits={
                resource: RateLimit.model_validate(limit)
                for resource, limit in config.platform_limits.items()
            },
            tenant_limits=config.controls,
        )
        self.dispatcher = Dispatcher(
            self.clock,
            slots=config.slots,
            aging_s=config.aging.total_seconds(),
            shared=not config.controls,
        )
        self.admission = AdmissionController(max_queued=config.max_queued_runs)
        rng = random.Random(config.seed)
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
                lease_s=config.lease.total_seconds(),
                breaker_threshold=config.breaker_failures,
                breaker_cooldown_s=config.breaker_cooldown.total_seconds(),
                rng=rng,
            )
            for key, st in self.stores.items()
        }
        self.runtime = self.runtimes[DEFAULT_STORE]
        for runtime in self.runtimes.values():  # one platform-wide bucket, not one per region
            runtime.ledgers.platform = self.runtime.writer
        writes = {key: runtime.writer.write for key, runtime in self.runtimes.items()}
        self.registry = WorkflowRegistry()
        self._triggers: dict[str, set[str]] = {}
        """Event name → the workflows a ``publish`` of it starts."""
        self.ownership = Ownership(config.cluster)
        self.keys = ApiKeys(self.router, self.clock)
        self.tenants = Tenants(
            self.router,
            self.clock,
            writes,
            on_policy=self.configure_tenant,
            in_flight=self._in_flight,
            revoke_keys=self.keys.revoke_all,
            coordinator=self.coordinator,
        )
        self.gate = AdmissionGate(
            self.admission,
            self.dispatcher,
            self.runtimes,
            self.router,
            self.registry,
            self.clock,
            controls=config.controls,
            clustered=config.cluster is not None,
            policy_of=self.tenants.cached,
            drives=self.ownership.drives,
        )
        self.dispatcher.on_notice = self.gate.burst_notice
        self.ingest = IngestGate(
            config.ingest_per_tenant, alone=64, others_busy=self._others_running
        )
        self.submitter = Submitter(
            self.registry,
            self.tenants,
            self.gate,
            self.clock,
            controls=config.controls,
            ingest=self.ingest.enter,
            auto_tenant=config.auto_tenant,
            coordinator=self.coordinator,
            executing=lambda: self.execute and self._started,
        )
        self.history = RunHistory(self.router, self.tenants.get)
        self.memory = Memory(
            self.tenants,
            self.stores,
            self.clock,
            writes if config.execute else None,
            lambda: self._started,
        )
        # A write that raised may have committed: reload its runs.
        self.resync = Resync(
            self.gate,
            self.clock,
            self.owner,
            drives_runs=config.cluster != "front",
            on_finish=self.on_finish,
        )
        for runtime in self.runtimes.values():
            runtime.writer.on_failed = functools.partial(self.resync.failed, runtime)
        self.reviews = Reviews(
            ReviewWiring(
                self.clock,
                self.observers,
                self.tenants,
                self.router.store_for_tenant,
                self.gate.runtime_for_tenant,
                self.gate.active_run,
                self.ownership.drives,
                self.review_opened,
                self.command,
            )
        )
        self.clustering = ClusterDriver(
            self.ownership,
            self.gate,
            self.tenants,
            self.runtime,
            self.clock,
            self.owner,
            self.coordinator,
            slots=config.slots,
            command_timeout_s=self.command_timeout_s,
            reviews=self.reviews,
            cancel=self.cancel,
            review_opened=self.review_opened,
        )
        self.runs = RunControl(
            self.history,
            self.gate,
            self.clock,
            execute=config.execute,
            command=self.clustering.command,
            decode=self.registry.decode_result,
            registry=self.registry,
            submitter=self.submitter,
            coordinator=self.coordinator,
        )
        execute_writes = writes if config.execute else None

        async def locate_schedules(tenant: str) -> tuple[Store, Write | None]:
            info = await self.tenants.get(tenant)
            write = None if execute_writes is None else execute_writes[info.store]
            return self.stores[info.store], write

        self.schedules = Schedules(
            self.clock,
            submit=self.submit,
            list_runs=self.list_runs,
            cancel=self.cancel,
            drives=self.ownership.drives,
            store=ScheduleStore(locate_schedules, lambda: [t.id for t in self.tenants.list()]),
            check_workflow=self.registry.workflow,
            poll=config.cluster is not None,
        )
        self.membership: Membership | None = None
        if config.cluster == "worker":
            assert self.coordinator is not None
            self.membership = Membership(
                self.clustering, self.coordinator, lease_s=config.lease.total_seconds()
            )
        self.plane = PlaneReads(
            clock=self.clock,
            dispatcher=self.dispatcher,
            admission=self.admission,
            breakers=breakers,
            router=self.router,
            policy_of=self.tenants.cached,
            controls=config.controls,
            mode=config.cluster or "embedded",
            process=self.owner,
            executes=config.execute,
            membership=lambda: self.membership,
            coordinator=self.coordinator,
            lease_s=config.lease.total_seconds(),
        )
        self.observers.append(self.plane.latencies)

    def _coordinator(self, config: EngineConfig) -> Coordinator | None:
        """A cluster's coordination, from the store (a shared PostgreSQL database)."""
        if config.cluster is None:
            return None
        make = getattr(self.store, "coordinator", None)
        if make is None or not config.execute:
            raise ConfigurationError(
                "workers and fronts share a PostgreSQL database (postgresql://...) and execute;"
                f" {self.store.url!r} is not one (run the embedded engine instead)",
                field="cluster",
            )
        coordinator: Coordinator = make()
        return coordinator

    @classmethod
    def open(
        cls,
        url: str,
        config: EngineConfig | None = None,
        *,
        regions: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        **options: Any,
    ) -> Engine:
        """An engine on the store named by ``url`` (plus one store URL per residency region);
        use it as ``async with Engine.open(...)``.

        Args:
            url: the default store's URL (see :func:`tenantflow.adapters.open_store`).
            config: the settings; ``options`` (fields of
                :class:`~tenantflow.engine.config.EngineConfig`, e.g. ``slots=8``) change it.
            regions: one store URL per residency region.
            clock: the time source (the wall clock when None).

        Raises:
            ConfigurationError: a bad URL, an unknown option or a setting out of range.
        """
        from tenantflow.adapters import open_store  # composition: the one arrow to adapters

        settings = (config or EngineConfig()).with_options(**options)
        stores = {region: open_store(u) for region, u in (regions or {}).items()}
        return cls(open_store(url), settings, clock=clock, regions=stores)

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
        self._started = self.gate.started = True
        await self.tenants.load()
        if self.execute:
            for runtime in self.runtimes.values():
                runtime.start()
            if self.membership is not None:
                await self.membership.start()
            if self.cluster != "front":
                self.schedules.start()  # fires the schedules of the tenants driven here
            if self.cluster is not None:
                return  # a worker takes its tenants' runs over one tenant at a time
            for runtime in self.runtimes.values():
                self.registry.parked.extend(await runtime.recover(self.registry.spec_or_none))
            await self.gate.readmit()
            for st in self.stores.values():
                for review in await st.pending_reviews():
                    self.review_opened(review)

    async def close(self) -> None:
        """Stop executing (attempts in flight are resumed by the next start) and close the store."""
        if not self._started:
            return
        await self.schedules.close()
        if self.membership is not None:
            await self.membership.close()
        if self.execute:
            self.dispatcher.closing = True
            for runtime in self.runtimes.values():
                runtime.closing = True
            for runtime in self.runtimes.values():
                await runtime.close()
        if self.membership is not None:
            await self.clustering.hand_back(self.stores.values())
            await self.membership.leave()
        if self.coordinator is not None:
            await self.coordinator.close()
        for st in self.stores.values():
            await st.close()
        await self.models.close()
        await self.tools.close()
        self._started = self.gate.started = False

    # -- workflows ----------------------------------------------------------------------------

    def register(self, workflow: Workflow | WorkflowSpec) -> WorkflowSpec:
        """Make a workflow version available; runs parked on this version resume."""
        spec = self.registry.register(workflow)
        for event in getattr(workflow, "on_event", ()):
            self._triggers.setdefault(event, set()).add(spec.name)
        if self._started and self.execute and self.registry.parked:
            self.runtime.spawn(self.gate.resume_parked(spec), f"resume:{spec.name}")
        return spec

    def workflow(self, name: str, version: str | None = None) -> WorkflowSpec:
        """A registered workflow (latest version unless ``version`` is given)."""
        return self.registry.workflow(name, version)

    def decode_result(self, record: RunRecord) -> Any:
        """A completed run's result as the sink step's output type."""
        return self.registry.decode_result(record)

    def workflows(self) -> list[WorkflowSpec]:
        """Every registered workflow version, by name then version."""
        return self.registry.all()

    # -- runs ---------------------------------------------------------------------------------

    @overload
    async def submit(
        self,
        workflow: str | Workflow,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None = None,
        lane: str | None = None,
        version: str | None = None,
        start_at: None = None,
    ) -> RunHandle: ...

    @overload
    async def submit(
        self,
        workflow: str | Workflow,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None = None,
        lane: str | None = None,
        version: str | None = None,
        start_at: datetime,
    ) -> RunHandle | Schedule: ...

    async def submit(
        self,
        workflow: str | Workflow,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None = None,
        lane: str | None = None,
        version: str | None = None,
        start_at: datetime | None = None,
    ) -> RunHandle | Schedule:
        """Start a run of ``workflow`` for ``tenant``; returns once the run is durably recorded.

        With ``start_at`` (an aware datetime) in the future, nothing is submitted now: a
        durable one-shot schedule is made (:meth:`Schedules.start_at`) and returned; it
        submits the run at that time — through admission, once, across restarts.

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
        if start_at is not None:
            if start_at.tzinfo is None:
                raise ConfigurationError(
                    "start_at needs a time zone (e.g. 2026-12-06T12:00:00+00:00)",
                    field="start_at",
                )
            at = start_at.timestamp()
            if at > self.clock.now():
                name = workflow if isinstance(workflow, str) else workflow.name
                schedule, _ = await self.schedules.start_at(
                    name,
                    tenant=check_tenant(tenant),
                    input=input,
                    at=at,
                    idempotency_key=idempotency_key,
                    lane=lane,
                    version=version,
                )
                return schedule
        run_id, created = await self.submitter.submit(
            workflow,
            tenant=tenant,
            input=input,
            idempotency_key=idempotency_key,
            lane=lane,
            version=version,
        )
        return RunHandle(self, tenant, run_id, created=created)

    async def start_child(
        self, parent: Active, key: str, index: int, workflow: str, task: str
    ) -> str:
        """Start a child run (a subagent) of ``parent`` for step ``key``'s call ``index``;
        idempotent, so a re-executed attempt gets the same child."""
        return await self.submitter.start_child(parent, key, index, workflow, task)

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

    async def publish(
        self, tenant: str, name: str, event_id: str, data: Any = None
    ) -> EventReceipt:
        """Start a run of every workflow registered to event ``name`` (``Workflow(...,
        on_event=name)``) for ``tenant``, with ``data`` as its input. Idempotent by
        ``event_id``: the same event again returns the runs it started (``created`` False).
        SpecError for a bad name, id or data (nothing started). An input a workflow refuses
        raises its ContractError: the runs of the workflows before it (by name) are started,
        and sending the event again with the same id starts the rest."""
        tenant = check_tenant(tenant)
        name = check_name(name)
        key = check_key(event_id)
        if key is None:
            raise SpecError("an event needs an id (its idempotency key)", field="id")
        data = check_payload(data)
        runs: list[StartedRun] = []
        for workflow in sorted(self._triggers.get(name, ())):
            handle = await self.submit(
                workflow,
                tenant=tenant,
                input=data,
                idempotency_key=f"event:{name}:{key}:{workflow}",
            )
            runs.append(StartedRun(workflow, handle.id, handle.created))
        return EventReceipt(name, key, tuple(runs))

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

    # -- hooks the runtimes call ----------------------------------------------------------

    def on_finish(self, run: Active, status: RunStatus, result: Any) -> None:
        """A run ended: wake its waiters and admit the next runs."""
        self.gate.finished(run, status, result)

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

    def _others_running(self, tenant: str) -> bool:
        """Whether tenants other than ``tenant`` have steps running in this engine."""
        scheduler = self.dispatcher.scheduler
        return scheduler.total_running > scheduler.running(tenant)

    def _in_flight(self, tenant: str) -> bool:
        """Whether this engine holds runs of ``tenant``."""
        return any(
            r.tenant_id == tenant for rt in self.runtimes.values() for r in rt.active.values()
        )

    async def purge_expired(self) -> dict[str, dict[str, int]]:
        """The retention job: delete every tenant's finished runs older than its policy's
        ``data_retention`` (with their state, events and reviews). Returns rows by tenant."""
        return await self.tenants.purge_runs()

    def configure_tenant(self, info: TenantInfo) -> None:
        """Apply a tenant's policy to the scheduler and admission (caps, weight, burst)."""
        self.gate.configure(info)

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


def _system_clock() -> Clock:
    from tenantflow.adapters import system_clock  # composition: the one arrow to adapters

    return system_clock()
