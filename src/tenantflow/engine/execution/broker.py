"""A broker-shaped run driver: ready steps come from a message queue, not a dispatcher.

:class:`BrokerDriver` runs workflows through the same parts as the embedded
:class:`~tenantflow.engine.execution.driver.RunDriver` (the
:class:`~tenantflow.engine.execution.executor.StepExecutor`, the decider in
:mod:`tenantflow.domain.progress`, the :class:`~tenantflow.engine.gateway.Gateway`, the
:class:`~tenantflow.engine.execution.saga.Saga`, the stores' fenced ops), but keeps no run in
memory between deliveries and no scheduler: each ready step is a message on a
:class:`~tenantflow.ports.DeliveryQueue` (e.g. :class:`tenantflow.testing.LoopbackBus`, later
NATS JetStream). A delivery is handled as a mesh agent would: load the run from its tenant's
store, claim the step (lease and fence stay in the store), execute, decide from the run as
stored, write, publish the effects (a ready step is a publish, a backoff a delayed one), ack.

A delivery is marked in progress while its attempt runs, so the broker redelivers only one whose
consumer went away; a redelivered step that is still leased, or already done, is acked without
running. A delivery that fails after claiming its step gives the claim back before it is nak'ed
(:class:`~tenantflow.engine.execution.claims.Claims`), so that its redelivery runs the step.
Several drivers (processes) may decide one run's parallel branches at once: each
decides from the run as stored, with the state version it read, and writes the finish with that
version as its ``expected_version`` (the store's run-level compare-and-set). If another branch
committed meanwhile, the store answers :class:`~tenantflow.domain.records.VersionConflict` and
writes nothing; the driver reads the run again and decides again, at most
:data:`MAX_DECISIONS` times. Within one process a per-run lock also serialises the decisions
(it spares the conflicts). The store checks the version on a finish only: a failure or a
parked step is still decided without it, and a fan-out element's finish does not move the
version (see :meth:`BrokerDriver._gather_if_lost`).

A run's end, once committed (its last step's decision, or the saga's cancel, compensation or
failure), is announced on the home store's channel of ends when the store has one
(PostgreSQL's, as a cluster's workers announce theirs: see :mod:`tenantflow.engine.ends`), so
that a control plane waiting on the run reads it at once rather than on its timer.

Not driven here (yet): child runs (``ctx.delegate``), deciding reviews, pausing and resuming, and
admission (every submitted run starts at once).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

from tenantflow.domain.breaker import CircuitBreaker
from tenantflow.domain.cluster import ENDED
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.ids import new_review_id, new_run_id
from tenantflow.domain.policy import Policy
from tenantflow.domain.progress import (
    Attempt,
    Decision,
    Enqueue,
    EnqueueAfter,
    Finish,
    Requeue,
    ReviewOpened,
    StartUnwind,
    on_awaiting_child,
    on_awaiting_signal,
    on_failed,
    on_paused,
    on_rate_limited,
    on_review_requested,
    on_skipped,
    on_succeeded,
    plan_to_transition,
)
from tenantflow.domain.records import (
    STALE,
    TERMINAL_RUN,
    CreateRun,
    NewEvent,
    RunRecord,
    RunStatus,
    StartAttempt,
    StepRecord,
    StepStatus,
    VersionConflict,
)
from tenantflow.domain.run import advance
from tenantflow.domain.spec import WorkflowSpec, child_key, parse_key
from tenantflow.domain.tenancy import ReviewRecord, UsageDelta
from tenantflow.engine.context import StepContext
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.execution.broker_parts import BrokerParts
from tenantflow.engine.execution.claims import Claim, Claims
from tenantflow.engine.execution.executor import AttemptInput, StepExecutor
from tenantflow.engine.execution.leases import LeaseKeeper
from tenantflow.engine.execution.outcomes import (
    AttemptOutcome,
    AwaitingChild,
    AwaitingSignal,
    Cancelled,
    Escalated,
    Failed,
    Paused,
    RateLimited,
    ReviewRequested,
    Skipped,
    Succeeded,
)
from tenantflow.engine.execution.scope import AttemptScope
from tenantflow.engine.execution.waits import SIGNAL_RECHECK_S
from tenantflow.engine.gateway import Gateway
from tenantflow.engine.writer import Writer
from tenantflow.errors import ConflictError, NotFoundError
from tenantflow.observability.events import Observers
from tenantflow.ports import Clock, Coordinator, Delivery, DeliveryQueue, Store

__all__ = ["MAX_DECISIONS", "BrokerDriver"]

log = logging.getLogger("tenantflow.engine")

_URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("tf_urgent", default=False)
# The delivery being handled came on an express slot: its claim and decision go urgent.

MAX_DECISIONS = 16
"""How often one outcome is decided again after a version conflict before the driver gives up
(each conflict means another decision of the run committed, so the run itself moved on)."""


class BrokerDriver(BrokerParts):
    """Drives runs from a :class:`~tenantflow.ports.DeliveryQueue` (see the module doc).

    Args:
        stores: the region stores by region name; a tenant's data lives in the one holding its
            tenant record.
        home: the region whose store owns the platform's ledgers (its rate buckets).
        bus: where ready steps are published and delivered from.
        workflows: the workflows it runs, by name.
        concurrency: deliveries handled at once.
    """

    def __init__(
        self,
        stores: Mapping[str, Store],
        *,
        home: str,
        bus: DeliveryQueue,
        clock: Clock,
        gateway: Gateway,
        workflows: Iterable[WorkflowSpec],
        owner: str = "broker",
        lease_s: float = 600.0,
        concurrency: int = 8,
        seed: int | None = None,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 30.0,
    ) -> None:
        self.stores = dict(stores)
        self.bus = bus
        self.clock = clock
        self.gateway = gateway
        self.specs = {spec.name: spec for spec in workflows}
        self.owner = owner
        self.lease_s = lease_s
        self.writers = {region: Writer(store) for region, store in self.stores.items()}
        self._home = self.writers[home]
        self._rng = random.Random(seed)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._breaker_args = (breaker_failures, breaker_cooldown_s)
        self._slots = asyncio.Semaphore(concurrency)
        self._locks: dict[str, asyncio.Lock] = {}
        self._tenants: dict[str, tuple[str, Policy]] = {}
        self._done: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._leases = [
            LeaseKeeper(
                sink=self.writers[region],
                clock=clock,
                store=store,
                owner=owner,
                lease_s=lease_s,
                active={},
            )
            for region, store in self.stores.items()
        ]
        self.observers = Observers()
        self.executor = StepExecutor(clock, self.breaker)
        self.reviews_opened: list[ReviewRecord] = []
        """Reviews opened by review steps (deciding them is not driven here)."""
        self.claims = Claims(owner, clock, self._where, self._spawn)
        make = getattr(self.stores[home], "coordinator", None)
        self._announcer: Coordinator | None = None if make is None else make()
        """The home store's coordination, to announce the ends of runs (None: it has none)."""
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming (the stores are opened and closed by their owner)."""
        for writer in self.writers.values():
            writer.start()
        for keeper in self._leases:
            self._spawn(keeper.heartbeat())
        self._spawn(self._consume())

    async def close(self) -> None:
        self._closing = True  # nothing is announced from now on
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in self.writers.values():
            await writer.close()
        if self._announcer is not None:  # the announcements still pending are sent first
            await self._announcer.close()

    async def __aenter__(self) -> BrokerDriver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- submission ---------------------------------------------------------------------------

    async def submit(self, tenant: str, workflow: str, input: Any) -> str:
        """Record a new run of ``workflow`` for ``tenant`` and publish its first steps."""
        region, policy = await self._tenant(tenant)
        create, ready, _ = await self.creation(region, tenant, policy, workflow, input)
        await self.writers[region].write(create)
        run_id = create.run.id
        self._done.setdefault(run_id, asyncio.get_running_loop().create_future())
        self._publish(tenant, run_id, ready)
        return run_id

    async def creation(
        self,
        store: str,
        tenant: str,
        policy: Policy,
        workflow: str,
        input: Any,
        *,
        idempotency_key: str | None = None,
        parent: ActiveRun | None = None,
    ) -> tuple[CreateRun, list[str], WorkflowSpec]:
        """The op that records a new run of ``workflow`` (a child of ``parent`` when given)
        for ``tenant`` in ``store``, the keys of the steps it makes ready, and the workflow's
        spec it was made from (``specs`` may change meanwhile: another version submitted).

        Raises:
            NotFoundError: no such workflow.
            ContractError: ``input`` breaks the workflow's input contract.
        """
        spec = self.specs.get(workflow)
        if spec is None:
            raise NotFoundError(f"no workflow named {workflow!r}", kind="workflow", id=workflow)
        value, input_json = contract_for(spec.input_type).check(
            input, step="<input>", direction="input"
        )
        now = self.clock.now()
        run_id = new_run_id(now)
        pending = {s.name: StepStatus.PENDING for s in spec.steps}
        plan = advance(spec, pending, {}, value, changed=None)
        statuses = {**pending, **plan.statuses()}
        tenant_record = await self.stores[store].get_tenant(tenant)
        lane = parent.lane if parent is not None else policy.default_lane
        submitted = {
            "workflow": spec.name,
            "version": spec.version,
            "lane": lane,
            "policy_version": tenant_record.policy_version,
            "region": policy.region,
        }
        planned = plan_to_transition(spec, plan, {}, run_id=run_id, submission=True)
        events = [NewEvent("run.submitted", None, None, submitted), *planned.events]
        status = RunStatus.RUNNING if planned.run is None else planned.run.status
        if planned.run is None:
            started = None if parent is None else {"parent_run": parent.id}
            events.append(NewEvent("run.started", None, None, started))  # as the engine's
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
            result_json=None if planned.run is None else planned.run.result_json,
            error=planned.error,
            finished_at=now if status in TERMINAL_RUN else None,
            meta={"policy_version": tenant_record.policy_version, "region": policy.region},
        )
        if parent is not None:  # a child draws on its parent's (root's) budget
            record.parent_run_id = parent.id
            record.meta["budget_run"] = parent.budget_run or parent.id
        rows = [StepRecord(run_id, tenant, k, s) for k, s in statuses.items()]
        ready = list(plan.ready)
        for key, n in plan.mapped:
            ready.extend(child_key(key, i) for i in range(n))
        return CreateRun(record, rows, events), ready, spec

    async def wait(self, tenant: str, run_id: str) -> RunRecord:
        """Wait until the run ends; its record as stored."""
        region, _ = await self._tenant(tenant)
        record = await self.stores[region].get_run(tenant, run_id)
        if record.status not in TERMINAL_RUN:
            done = self._done.setdefault(run_id, asyncio.get_running_loop().create_future())
            await asyncio.shield(done)
            record = await self.stores[region].get_run(tenant, run_id)
        return record

    # -- deliveries ---------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            await self._slots.acquire()
            delivery = await self.bus.next()
            if delivery is None:
                self._slots.release()
                return
            self._spawn(self._deliver(delivery))

    async def _deliver(self, delivery: Delivery) -> None:
        data = delivery.data
        claim: Claim = (str(data.get("tenant")), str(data.get("run")), str(data.get("key")))
        self.claims.enter(claim)
        left = 0
        urgent = _URGENT.set(bool(getattr(delivery, "express", False)))
        try:
            try:
                await self._handle(delivery)
            finally:
                left = self.claims.leave(claim)
                _URGENT.reset(urgent)
        except Exception:  # the store failed: let the broker deliver it again
            log.exception("delivery of %s failed", delivery.data)
            if not left:  # a claim it left behind would be renewed for ever: give it back
                await self.claims.release(*claim)
            delivery.nak(1.0)
        finally:
            self._slots.release()

    @property
    def released(self) -> int:
        """Claims given back after their delivery failed (see :class:`Claims`)."""
        return self.claims.released

    async def _where(self, tenant: str) -> tuple[Store, Writer]:
        region, _ = await self._tenant(tenant)
        return self.stores[region], self.writers[region]

    async def _handle(self, delivery: Delivery) -> None:
        tenant, run_id, key = (str(delivery.data[k]) for k in ("tenant", "run", "key"))
        region, policy = await self._tenant(tenant)
        store, writer = self.stores[region], self.writers[region]
        loaded = await self._load(store, tenant, run_id, policy)
        run = None if loaded is None else loaded[0]
        if run is None or run.status != RunStatus.RUNNING:
            delivery.ack()
            return
        now = self.clock.now()
        lease = await writer.write(
            StartAttempt(tenant, run_id, key, self.owner, now, now + self.lease_s),
            urgent=_URGENT.get(),
        )
        if lease is None:  # not due, leased by another attempt, or settled: nothing to run
            delivery.ack()
            return
        name, index = parse_key(key)
        step = run.spec.step(name)
        scope = AttemptScope(
            run_id,
            tenant,
            run.spec.name,
            key,
            lease.attempt,
            f"{run_id}:{key}",
            self._services(region),
            run,
            optional=step.optional,
        )
        started = self.clock.now()
        inp = AttemptInput(
            run=run.view(started),
            step=step,
            key=key,
            index=index,
            ctx=StepContext(scope),
            scope=scope,
        )
        keepalive = self._spawn(self._keep_alive(delivery))
        try:
            outcome: AttemptOutcome = await self.executor.execute(inp)
        except asyncio.CancelledError as exc:
            outcome = Cancelled(exc)
        finally:
            keepalive.cancel()
        service_s = max(0.0, self.clock.now() - started)
        scope.notes_usage = [UsageDelta("slot_seconds", service_s, name)]
        att = Attempt(key, lease.fence, lease.attempt, scope.notes, scope.notes_usage)
        async with self._locks.setdefault(run_id, asyncio.Lock()):
            await self._settle(store, tenant, run_id, policy, att, outcome, region)
        delivery.ack()

    async def _settle(
        self,
        store: Store,
        tenant: str,
        run_id: str,
        policy: Policy,
        att: Attempt,
        outcome: AttemptOutcome,
        region: str,
    ) -> None:
        """Decide the outcome from the run as stored now (another branch, maybe decided by
        another process, may have settled meanwhile) and commit it, checked against the state
        version read; on a version conflict nothing was written: read and decide again."""
        for _ in range(MAX_DECISIONS):
            fresh = await self._load(store, tenant, run_id, policy)
            if fresh is None:
                return
            if await self._decide(*fresh, att, outcome, region):
                if isinstance(outcome, Succeeded):
                    await self._gather_if_lost(store, tenant, run_id, policy, att.key, region)
                return
        raise self._conflict(run_id, att.key)

    async def _gather_if_lost(
        self, store: Store, tenant: str, run_id: str, policy: Policy, key: str, region: str
    ) -> None:
        """Gather a fan-out whose last elements finished in parallel elsewhere.

        An element's finish moves no state version, so two of them decided from one view
        (each seeing the other running) both commit and neither gathers. After an element's
        finish, the run is read again; if every element succeeded and the step is still not
        gathered, the gather (and what it readies) is written as a transition checked against
        the version read. The gather moves the version, so of several processes doing this at
        once one commits and the others, refused, find the step gathered.
        """
        name, index = parse_key(key)
        if index is None:
            return  # not a fan-out's element: nothing to gather
        for _ in range(MAX_DECISIONS):
            fresh = await self._load(store, tenant, run_id, policy)
            if fresh is None or fresh[0].spec.step(name).kind == "agent":
                return  # an agent's iterations each move the version: nothing can be lost
            run, version = fresh
            n = run.children.get(name, 0)
            elements = [child_key(name, i) for i in range(n)]
            if (
                run.status != RunStatus.RUNNING
                or run.statuses.get(name) != StepStatus.MAPPED
                or any(run.statuses.get(k) != StepStatus.SUCCEEDED for k in elements)
            ):
                return
            view = run.view(self.clock.now())._replace(state_version=version)
            decision = on_succeeded(view, Attempt(key, 0, 0), run.outputs[key], run.jsons[key])
            then = decision.ops[-1].then
            then.usage, then.expected_version = [], version  # the element's usage is counted
            if await self._commit(run, Decision([then], decision.effects), region):
                return
        raise self._conflict(run_id, name)

    @staticmethod
    def _conflict(run_id: str, key: str) -> ConflictError:
        return ConflictError(
            f"run {run_id!r} kept moving on while step {key!r} was decided"
            f" ({MAX_DECISIONS} version conflicts in a row)",
            run_id=run_id,
            step=key,
        )

    async def _keep_alive(self, delivery: Delivery) -> None:
        """Hold off redelivery while the attempt runs (its lease guards it in the store)."""
        ack_wait_s = float(getattr(self.bus, "ack_wait_s", 30.0))
        while True:
            await self.clock.sleep(ack_wait_s / 3.0)
            delivery.in_progress()

    async def _decide(
        self, run: ActiveRun, version: int, att: Attempt, outcome: AttemptOutcome, region: str
    ) -> bool:
        """Decide and commit; False when the store refused it as decided from a stale view."""
        view = run.view(self.clock.now())._replace(state_version=version)
        decision: Decision
        match outcome:
            case Succeeded(value, output_json):
                decision = on_succeeded(view, att, value, output_json)
            case ReviewRequested(payload):
                review_id = new_review_id()
                decision = on_review_requested(view, att, payload, review_id)
            case RateLimited(_, resource, wait_s):
                decision = on_rate_limited(view, att, resource, wait_s)
            case Skipped(signal):
                decision = on_skipped(view, att, signal.reason)
            case Escalated(signal):
                payload = {"reason": signal.reason, "prompt": signal.prompt[:4000]}
                review_id = new_review_id()
                decision = on_review_requested(
                    view,
                    att,
                    payload,
                    review_id,
                    kind="escalation",
                    extra={"call_index": signal.index},
                )
            case Paused(signal):
                decision = on_paused(view, att, signal.reason)
            case AwaitingChild(signal):
                decision = on_awaiting_child(view, att, signal.run_id, signal.reason)
            case AwaitingSignal(wait):
                decision = on_awaiting_signal(view, att, wait.name, wait.deadline, SIGNAL_RECHECK_S)
            case Failed(error):
                decision = on_failed(view, att, error, jitter=self._rng.random)
            case _:  # Cancelled: the run is being cancelled or compensated
                decision = on_failed(view, att, None, jitter=self._rng.random)
        return await self._commit(run, decision, region)

    async def _commit(self, run: ActiveRun, decision: Decision, region: str) -> bool:
        """Write the decision's ops, then publish its effects: the mirror updates are not
        needed (the next delivery reads the run from the store). False, with nothing written,
        when the store answered a version conflict (the decider writes one op per outcome)."""
        result: Any = None
        for op in decision.ops:
            result = await self.writers[region].write(op, urgent=_URGENT.get())
            if isinstance(result, VersionConflict):
                return False
        effects = decision.if_stale if result is STALE else decision.effects
        for effect in effects:
            if isinstance(effect, Enqueue):
                self._publish(run.tenant_id, run.id, effect.keys)
            elif isinstance(effect, EnqueueAfter):
                self._publish(run.tenant_id, run.id, [effect.key], delay_s=effect.delay_s)
            elif isinstance(effect, Requeue):
                self._publish(run.tenant_id, run.id, [effect.key])
            elif isinstance(effect, StartUnwind):
                run.status = RunStatus.COMPENSATING
                await self._saga(region).unwind(run, cancel=False)
            elif isinstance(effect, Finish):
                self._ended(run)
            elif isinstance(effect, ReviewOpened):
                self.reviews_opened.append(effect.review)
        return True

    # -- parts --------------------------------------------------------------------------------

    async def _tenant(self, tenant: str) -> tuple[str, Policy]:
        found = self._tenants.get(tenant)
        if found is not None:
            return found
        for region, store in self.stores.items():
            try:
                record = await store.get_tenant(tenant)
            except NotFoundError:
                continue
            policy = Policy.model_validate(
                json.loads(record.policy_json), context={"known_regions": set(self.stores)}
            )
            self._tenants[tenant] = (region, policy)
            return region, policy
        raise NotFoundError(f"no tenant {tenant!r}", kind="tenant", id=tenant)

    async def _load(
        self, store: Store, tenant: str, run_id: str, policy: Policy
    ) -> tuple[ActiveRun, int] | None:
        """The run as stored, and the state version it was read at."""
        read = await store.read_run(tenant, run_id)  # the run and its steps: one round trip
        record = read.run
        spec = self.specs.get(record.workflow)
        if spec is None:
            return None
        run = ActiveRun.from_records(record, read.steps, spec)
        run.policy = policy
        run.budget_run = record.meta.get("budget_run")
        return run, record.state_version

    def _publish(
        self, tenant: str, run_id: str, keys: Iterable[str], *, delay_s: float = 0.0
    ) -> None:
        for key in keys:
            self.bus.publish({"tenant": tenant, "run": run_id, "key": key}, delay_s=delay_s)

    def _announce_end(self, tenant: str, run_id: str) -> None:
        """The run's end has committed: announce it (see the module doc)."""
        if self._announcer is not None and not self._closing:
            self._announcer.announce(ENDED, tenant, run_id)

    def _finished(self, run_id: str) -> None:
        done = self._done.get(run_id)
        if done is not None and not done.done():
            done.set_result(None)
        self._locks.pop(run_id, None)

    def _spawn_named(self, coro: Any, name: str) -> None:
        self._spawn(coro)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
