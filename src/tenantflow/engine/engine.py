"""The public engine: register workflows, submit runs, read their history.

``Engine.open(url)`` picks the store from the URL (``sqlite:///path.db``, ``memory://``) and is
used as an async context manager::

    async with Engine.open("sqlite:///tenantflow.db") as engine:
        engine.register(loan)
        run = await engine.submit("loan-approval", tenant="bank-a", input={...})
        decision = await run.result()

:class:`Engine` is a façade: it wires the parts and delegates to them. Its thin delegations
live beside it: :mod:`.run_ops` (one run's operations, where runs are), :mod:`.plane_views`
(dashboard and operator reads), :mod:`.hooks` (what the runtimes call back) and
:class:`~.history.HistoryReads`.

* :mod:`.registry`: the registered workflow versions, and runs parked on unknown ones;
* :mod:`.submission`: recording runs (:class:`Submitter`); :mod:`.admission`: admitting them
  (:class:`AdmissionGate`);
* :mod:`.history`: read-only views of runs (state versions, diff, bisect, audit, usage);
* :mod:`.regions`: which store holds a tenant's data;
* :mod:`.cluster`: what a process of a cluster does (:class:`ClusterDriver`, ``Membership``);
* :mod:`.tenants`, :mod:`.keys`, :mod:`.memory`, :mod:`.execution.reviews`: the tenant-facing
  services; :mod:`.schedules` (the loop) and :mod:`.schedule_store` (the records);
* :mod:`.execution`: driving runs on one store.
"""

from __future__ import annotations

import functools
import os
import random
import secrets
import socket
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, overload

from tenantflow.domain.admission import AdmissionController
from tenantflow.domain.breaker import CircuitBreaker
from tenantflow.domain.ids import DEFAULT_STORE, check_tenant
from tenantflow.domain.policy import RateLimit
from tenantflow.domain.records import (
    RunRecord,
)
from tenantflow.domain.signals import check_key, check_name, check_payload
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.engine.admission import AdmissionGate
from tenantflow.engine.cluster import ClusterDriver, Membership, Ownership
from tenantflow.engine.config import EngineConfig
from tenantflow.engine.direct import apply_one
from tenantflow.engine.dispatch import Dispatcher
from tenantflow.engine.execution.driver import RunDriver as Runtime
from tenantflow.engine.execution.reviews import Reviews, ReviewWiring
from tenantflow.engine.gateway import Gateway, Models, Tools
from tenantflow.engine.handle import RunHandle
from tenantflow.engine.history import RunHistory, StateVersion
from tenantflow.engine.hooks import RuntimeHooks
from tenantflow.engine.ingest import IngestGate
from tenantflow.engine.keys import ApiKeys
from tenantflow.engine.memory import Memory
from tenantflow.engine.plane import PlaneReads
from tenantflow.engine.plane_views import PlaneViews
from tenantflow.engine.regions import RegionRouter
from tenantflow.engine.registry import WorkflowRegistry
from tenantflow.engine.resync import Resync
from tenantflow.engine.run_ops import RunOps
from tenantflow.engine.run_signals import EventReceipt, StartedRun
from tenantflow.engine.runs import RunControl
from tenantflow.engine.schedules import Schedule, Schedules, ScheduleStore, Write
from tenantflow.engine.submission import Submitter
from tenantflow.engine.tenants import PURGE_BATCH, PURGE_SHARE, Tenants
from tenantflow.errors import ConfigurationError, SpecError
from tenantflow.observability.events import Observers
from tenantflow.ports import Clock, Coordinator, Store
from tenantflow.workflow import Workflow

__all__ = ["Engine", "RunHandle", "StateVersion"]


class Engine(RunOps, PlaneViews, RuntimeHooks):
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
        writes: dict[str, Write] = {
            key: runtime.writer.write for key, runtime in self.runtimes.items()
        }
        # Tenants write through the writers, which run only when executing; else each of
        # their writes is a transaction of its own.
        tenant_writes: dict[str, Write] = (
            writes
            if config.execute
            else {key: functools.partial(apply_one, st) for key, st in self.stores.items()}
        )
        self.registry = WorkflowRegistry()
        self._triggers: dict[str, set[str]] = {}
        """Event name → the workflows a ``publish`` of it starts."""
        self.ownership = Ownership(config.cluster)
        self.keys = ApiKeys(self.router, self.clock)
        self.tenants = Tenants(
            self.router,
            self.clock,
            tenant_writes,
            on_policy=self.configure_tenant,
            in_flight=self._in_flight,
            revoke_keys=self.keys.revoke_all,
            coordinator=self.coordinator,
            background=(
                {key: runtime.writer.maintain for key, runtime in self.runtimes.items()}
                if config.execute
                else None
            ),
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
        self.runs.open()
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
        await self.runs.close()
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

    # -- tenants ----------------------------------------------------------------------------

    async def purge_expired(
        self,
        *,
        batch: int = PURGE_BATCH,
        share: float = PURGE_SHARE,
        target_s: float | None = None,
    ) -> dict[str, dict[str, int]]:
        """The retention job: delete every tenant's finished runs older than its policy's
        ``data_retention`` (with their state, events and reviews). Returns rows by tenant.
        It goes at most ``batch`` runs per transaction (on SQLite, and with ``target_s``
        anywhere, as many as fit in about ``target_s`` of the store's time) and takes at most
        ``share`` of the store's time, so running tenants are not stalled
        (:meth:`Tenants.purge_runs`)."""
        return await self.tenants.purge_runs(batch=batch, share=share, target_s=target_s)


def _system_clock() -> Clock:
    from tenantflow.adapters import system_clock  # composition: the one arrow to adapters

    return system_clock()
