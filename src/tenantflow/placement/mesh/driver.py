"""The mesh's run driver: the core's broker-shaped driver on JetStream, plus the log.

:class:`MeshDriver` is :class:`~tenantflow.engine.execution.broker.BrokerDriver` (the same
executor, decider, gateway, saga and fenced store ops as every other placement) whose queue is a
:class:`~tenantflow.adapters.nats.queue.JetStreamQueue`. What the mesh adds:

* **Subjects.** A ready step is published on ``tf.<region>.<tenant>.run.<run>.cmd.<kind>``,
  ``region`` being the tenant's residency region (or the deployment's default), ``kind`` the
  step's kind; only agents of that region (whose NATS user may touch only that region's
  subjects) can take it.
* **Exactly one completion per step.** Before a successful attempt is decided, its completion
  record is created in KV ``DONE_<r>`` only if absent; an attempt that loses (a second attempt
  after a lapsed lease) is decided with the winner's output, and a redelivered attempt that
  finds a record already there (its holder died after completing) does not run the step again.
  The store's fenced finish and the run's compare-and-set (``expected_version``) then admit one
  decision.
* **The execution log.** After each committed decision (off the successors' path, before the
  work item's ack), the run's new store events are published
  as facts on ``tf.<r>.<t>.run.<run>.evt.<kind>`` (``Nats-Msg-Id`` = run and event id) and a state
  version is appended to the run's chain with an expected-last-subject-sequence check (the entry
  names the events it covers, so a second shipper publishes only newer ones, and carries a
  snapshot of the run, its steps, and the events and state versions it covers, from which
  :mod:`.projector` builds the API's read model). While work waits for the agent (an item
  fetched and not handed out, or more left on the server for one of its consumers), a
  decision that published other steps of its run to run at once and did not end the run
  ships nothing: a later decision of the run that ships (any agent's: a run's end, a park, a
  decision that publishes nothing, one made with no backlog) ships every event since the last
  entry. An agent ships a run's log it left once ``log_lag_s`` (10 s) has passed, at its next
  decision of the run or by a catch-up, and when it closes; so under a backlog the read model
  may show a running run up to about ``log_lag_s`` late (``defer_log``).
* **Run control.** A submission may carry an idempotency key (a second submission with it
  answers the first run); a step may start child runs (``ctx.delegate``: the child is recorded
  with its parent and an idempotency key naming the parent's call, the parent's step waits
  holding no slot, and the child's end publishes the parent's step again); a review decision,
  a cancel and a resume are decided here from the run as stored, through the core's decider and
  saga, and what they make ready is published (:meth:`MeshDriver.decide_review`,
  :meth:`MeshDriver.cancel`, :meth:`MeshDriver.resume`).
* **Heartbeats.** A driver that consumes (an agent) publishes a beat every
  :data:`BEAT_S` seconds on ``tf.<region>._agents.<owner>`` (core NATS, kept nowhere): its
  regions, kinds, slots, deliveries in flight, queue counters and circuit breakers. The API
  lists the agents and their breakers from them (:mod:`.plane`).
* **Recovery.** A redelivered work item (its agent died) first republishes the run's ready steps
  and the steps whose lease lapsed, so a crash between the commit and the publish of the
  successors cannot stall a run; :meth:`MeshDriver.sweep` does the same for every unfinished run
  (at an agent's start: a submitter that died after recording a run).

Correlation ids (tenant, run, step, attempt) travel in the messages' headers and on the
``tenantflow.mesh.step`` span when OpenTelemetry is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tenantflow.adapters.nats.log import ExecutionLog
from tenantflow.adapters.nats.queue import JetStreamQueue
from tenantflow.adapters.nats.subjects import Region, token
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.policy import DEFAULT_REGIONS, Policy
from tenantflow.domain.progress import on_review_decided
from tenantflow.domain.records import (
    TERMINAL_RUN,
    NewEvent,
    RunRecord,
    RunStatus,
    RunUpdate,
    StepStatus,
    Transition,
)
from tenantflow.domain.spec import WorkflowSpec, parse_key
from tenantflow.domain.tenancy import ReviewRecord, ReviewStatus
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.execution.broker import MAX_DECISIONS, BrokerDriver
from tenantflow.engine.execution.executor import AttemptInput, StepExecutor
from tenantflow.engine.execution.outcomes import AttemptOutcome, AwaitingChild, Succeeded
from tenantflow.engine.execution.scope import Services
from tenantflow.engine.gateway import human_response
from tenantflow.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    ResidencyError,
    StoreUnavailableError,
)
from tenantflow.placement.mesh.projector import snapshot
from tenantflow.ports import Delivery, Store

__all__ = ["CompletionGuard", "MeshDriver"]

log = logging.getLogger("tenantflow.mesh")

BEAT_S = 2.0
"""How often an agent publishes its heartbeat."""

LOG_LAG_S = 10.0
"""The longest an agent leaves a run's log to a later decision (``MeshDriver(log_lag_s=...)``)."""


@dataclass
class _Decided:
    """What the decision being committed in this task did, as the log's shipper needs it."""

    handed_on: set[tuple[str, str]] = field(default_factory=set)
    """The steps (run, key) it published to run at once."""
    ended: bool = False
    """Whether it ended the run."""
    committed: bool = False
    """Whether a decision was committed (a lost fan-out's gather, see ``_gather_if_lost``)."""


_DECIDING: contextvars.ContextVar[_Decided | None] = contextvars.ContextVar(
    "tenantflow_mesh_deciding", default=None
)


@contextlib.contextmanager
def _deciding() -> Iterator[_Decided]:
    """Record what the decision made in this block does (see :class:`_Decided`)."""
    decided = _Decided()
    token = _DECIDING.set(decided)
    try:
        yield decided
    finally:
        _DECIDING.reset(token)


def beat_subject(region: str, owner: str) -> str:
    """Where an agent of ``region`` publishes its heartbeat (``*`` for any)."""
    return f"tf.{region}._agents.{owner if owner == '*' else token(owner)}"


STORE_RETRIES = 6
"""How often a decision is tried when the store reports a transient failure."""

_REDELIVERED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tenantflow_mesh_redelivered", default=False
)


class CompletionGuard:
    """Wraps the step executor with the completion record (see the module doc)."""

    def __init__(self, inner: StepExecutor, driver: MeshDriver) -> None:
        self.inner = inner
        self.driver = driver
        self.reused = 0
        self.lost = 0

    async def execute(self, inp: AttemptInput) -> AttemptOutcome:
        try:
            return await self._execute(inp)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the attempt is being cancelled
            # A NATS request cancelled by a dropped connection (nats-py cancels the requests in
            # flight) is a failure of this delivery, to be redelivered; passed on as a
            # cancellation it would be decided as the step cancelled, in a run still running.
            raise ConnectionError("the NATS connection dropped during the attempt") from None

    async def _execute(self, inp: AttemptInput) -> AttemptOutcome:
        if inp.step.kind == "agent":  # each iteration moves the run's version: the store decides
            return await self.inner.execute(inp)
        tenant, run = inp.scope.tenant_id, inp.scope.run_id
        region = self.driver.region_of(tenant)
        if _REDELIVERED.get():  # its first holder may have completed it: finish, do not rerun
            record = await self.driver.log.completion(region, tenant, run, inp.key)
            if record is not None:
                self.reused += 1
                return self._succeeded(inp, record.output_json)
        outcome = await self.inner.execute(inp)
        if isinstance(outcome, Succeeded):
            first, record = await self.driver.log.complete(
                region,
                tenant,
                run,
                inp.key,
                inp.scope.attempt,
                self.driver.owner,
                outcome.output_json,
            )
            if not first:
                self.lost += 1
                return self._succeeded(inp, record.output_json)
        return outcome

    @staticmethod
    def _succeeded(inp: AttemptInput, output_json: bytes) -> Succeeded:
        annotation = inp.step.result_type if inp.index is None else inp.step.item_type
        value = contract_for(annotation).load(output_json, step=inp.key)
        return Succeeded(value, output_json)


class MeshDriver(BrokerDriver):
    """A :class:`BrokerDriver` on a :class:`JetStreamQueue` (see the module doc).

    Args:
        default_region: the mesh region of tenants whose policy names none.
        defer_log: while this agent has a backlog, leave the log of a decision that hands the
            run on to the steps it published (see the module doc); False: every decision ships.
        log_lag_s: the longest a run's log is left so by this agent: a decision of a run whose
            log it has left for this long ships, and so does a catch-up every quarter of it.
        (the rest as :class:`BrokerDriver`)
    """

    def __init__(
        self,
        stores: Mapping[str, Store],
        *,
        bus: JetStreamQueue,
        default_region: str,
        workflows: Iterable[WorkflowSpec],
        defer_log: bool = True,
        log_lag_s: float = LOG_LAG_S,
        **options: Any,
    ) -> None:
        if not log_lag_s > 0:  # also refuses NaN; before anything is built
            raise ConfigurationError(
                f"log_lag_s must be > 0, not {log_lag_s!r}", field="log_lag_s", value=log_lag_s
            )
        super().__init__(stores, bus=bus, workflows=workflows, **options)
        self.queue = bus
        self.express = bus.express
        self.slots = int(options.get("concurrency", 8)) - self.express
        """The regular slots (the concurrency less the queue's express slots)."""
        self.log = ExecutionLog(bus.fabric)
        self.default_region = default_region
        self.guard = CompletionGuard(self.executor, self)
        self.executor = self.guard  # type: ignore[assignment]
        self._spec_of_run: dict[str, WorkflowSpec] = {}
        self._served_regions: set[str] = set()
        self._shipping: dict[str, bool] = {}
        self._tips: dict[str, tuple[int, dict[str, Any]]] = {}
        """run -> the last chain entry this process appended (its sequence, and what it
        covers): the next append expects it without asking the server; another writer's
        entry since makes the append fail, and the shipper asks."""
        self.boards: list[Any] = []
        self.policy_versions: dict[str, int] = {}
        """The policy version applied per tenant (from the policy bucket)."""
        self.defer_log = defer_log
        self.log_lag_s = log_lag_s
        self._owed: dict[str, tuple[str, float]] = {}
        """run -> (tenant, since when): runs whose log this process left to a later decision
        and has not shipped since (monotonic seconds)."""
        self.shipped = 0
        self.deferred = 0
        """Decisions whose log was left to a later decision of the run (see the module doc)."""
        self.caught_up = 0
        """Runs whose log was shipped because it had been left for ``log_lag_s``."""
        self.republished = 0

    async def start(self) -> None:
        await super().start()
        if self.queue.regions:  # it consumes: an agent
            self._spawn(self._beat())
            if self.defer_log:
                self._spawn(self._catch_up_forever())

    def beat(self) -> dict[str, Any]:
        """What this driver's heartbeat says (see the module doc)."""
        now = self.clock.now()
        return {
            "owner": self.owner,
            "pid": os.getpid(),
            "at": now,
            "every_s": BEAT_S,
            "regions": sorted(self.queue.regions),
            "kinds": list(self.queue.kinds),
            "slots": self.slots,
            "express_slots": self.express,
            "in_flight": self.claims.in_flight,
            "queue": asdict(self.queue.stats),
            "breakers": [
                {
                    "name": name,
                    "state": b.state.value,
                    "failures": b.failures,
                    "threshold": b.failure_threshold,
                    "cooldown_s": b.cooldown_s,
                    "retry_after_s": b.retry_after_s(now),
                    "last_change_s": b.transitions[-1][0] if b.transitions else None,
                    "changes": len(b.transitions),
                }
                for name, b in sorted(self._breakers.items())
            ],
        }

    async def _beat(self) -> None:
        nc = self.queue.fabric.nc
        while True:
            payload = json.dumps(self.beat(), default=str).encode()
            for region in self.queue.regions:
                try:
                    await nc.publish(beat_subject(region, self.owner), payload)
                except Exception as exc:  # the server is away: the next beat
                    log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(BEAT_S)

    # -- regions and subjects -----------------------------------------------------------------

    def apply_policy(self, tenant: str, version: int, policy: dict[str, Any]) -> None:
        """A newer policy from the policy bucket: the next delivery of the tenant uses it."""
        known = set(DEFAULT_REGIONS) | set(self.stores)
        found = self._tenants.get(tenant)
        parsed = Policy.model_validate(policy, context={"known_regions": known})
        if found is not None:
            self._tenants[tenant] = (found[0], parsed)
        self.policy_versions[tenant] = version

    def region_of(self, tenant: str) -> str:
        """The mesh region of a tenant already looked up (see :meth:`_tenant`)."""
        found = self._tenants.get(tenant)
        if found is None or found[1].region is None:
            return self.default_region
        return found[1].region

    async def _tenant(self, tenant: str) -> tuple[str, Policy]:
        found = self._tenants.get(tenant)
        if found is not None:
            return found
        known = set(DEFAULT_REGIONS) | set(self.stores)
        for key, store in self.stores.items():
            try:
                record = await store.get_tenant(tenant)
            except NotFoundError:
                continue
            policy = Policy.model_validate(
                json.loads(record.policy_json), context={"known_regions": known}
            )
            self._tenants[tenant] = (key, policy)
            return key, policy
        raise NotFoundError(f"no tenant {tenant!r}", kind="tenant", id=tenant)

    async def submit(
        self, tenant: str, workflow: str, input: Any, *, idempotency_key: str | None = None
    ) -> str:
        """Record a run and publish its first steps (on the stream when this returns); with an
        ``idempotency_key`` this tenant used before, the first run's id (nothing recorded).

        Raises:
            ResidencyError: no stream serves the tenant's region on this fabric (nothing is
                recorded).
            NotFoundError: no such tenant or workflow.
            ContractError: ``input`` breaks the workflow's input contract.
        """
        run_id, _ = await self.record(tenant, workflow, input, idempotency_key=idempotency_key)
        return run_id

    async def record(
        self,
        tenant: str,
        workflow: str,
        input: Any,
        *,
        idempotency_key: str | None = None,
        parent: ActiveRun | None = None,
    ) -> tuple[str, bool]:
        """Record a run (a child of ``parent`` when given) and publish its first steps; its id
        and whether this call created it (False: the key named a stored run, whose ready steps
        are published again, in case the submission that recorded it died before)."""
        store_key, policy = await self._tenant(tenant)
        region = self.region_of(tenant)
        await self._served(region)
        create, ready, spec = await self.creation(
            store_key,
            tenant,
            policy,
            workflow,
            input,
            idempotency_key=idempotency_key,
            parent=parent,
        )
        outcome = await self.writers[store_key].write(create)
        if not outcome.created:
            await self.republish(tenant, outcome.run_id)
            await self.queue.flush()
            return outcome.run_id, False
        run_id = create.run.id
        self._done.setdefault(run_id, asyncio.get_running_loop().create_future())
        self._spec_of_run[run_id] = spec
        self._publish(tenant, run_id, ready)
        await self.queue.flush()
        try:
            await self._ship(tenant, run_id)
        except Exception as exc:  # recorded and published: the log follows, not the caller
            log.warning("shipping the log of %s failed: %s; again", run_id, exc)
            self._spawn(self._ship_soon(tenant, run_id))
        return run_id, True

    # -- run control --------------------------------------------------------------------------

    def _services(self, region: str) -> Services:
        services = super()._services(region)
        services.start_child = self._start_child
        return services

    async def _start_child(
        self, parent: ActiveRun, key: str, index: int, workflow: str, task: str
    ) -> str:
        """A child run of ``parent`` for step ``key``'s call ``index``; idempotent, so a
        re-executed attempt gets the same child."""
        run_id, _ = await self.record(
            parent.tenant_id,
            workflow,
            task,
            idempotency_key=f"child:{parent.id}:{key}:{index}",
            parent=parent,
        )
        return run_id

    async def _wake_parent(self, record: RunRecord) -> None:
        """An ended child run: publish its parent's ready steps again (the waiting one among
        them), so the parent reads the child's answer. Called while shipping the child's log,
        which the queue's acks wait for: the publishes are not waited for here (a flush would
        wait for the shipping itself)."""
        if record.parent_run_id is not None and record.status in TERMINAL_RUN:
            await self.republish(record.tenant_id, record.parent_run_id)

    async def decide_review(
        self,
        tenant: str,
        review_id: str,
        *,
        reviewer: str,
        approve: bool,
        comment: str | None = None,
        fail_step: bool = False,
    ) -> ReviewRecord:
        """Record a human decision on a review task and move its waiting step on (one
        transaction, checked against the run's state version); what it makes ready is
        published.

        Raises:
            NotFoundError: the tenant has no such review.
            ConflictError: the review was already decided, or its run is not running.
        """
        store_key, policy = await self._tenant(tenant)
        store = self.stores[store_key]
        for _ in range(MAX_DECISIONS):
            review = await store.get_review(tenant, review_id)
            if review.status not in (ReviewStatus.PENDING, ReviewStatus.CLAIMED):
                raise ConflictError(
                    f"review {review_id} is already {review.status.value}", review_id=review_id
                )
            loaded = await self._load(store, tenant, review.run_id, policy)
            if loaded is None or loaded[0].status != RunStatus.RUNNING:
                raise ConflictError(
                    f"the run of review {review_id} is not running", review_id=review_id
                )
            run, version = loaded
            view = run.view(self.clock.now())._replace(state_version=version)
            decision = on_review_decided(
                view,
                review,
                approved=approve,
                comment=comment,
                reviewer=reviewer,
                fail_step=fail_step,
                human_response=human_response,
            )
            async with self._locks.setdefault(run.id, asyncio.Lock()):
                committed = await self._commit(run, decision, store_key)
            if committed:
                await self.queue.flush()
                await self._ship_now(tenant, run.id)
                return await store.get_review(tenant, review_id)
        raise self._conflict(review.run_id, review.step)

    async def cancel(self, tenant: str, run_id: str, reason: str) -> RunRecord:
        """Cancel a run through the core's saga: its unsettled steps are cancelled (an attempt
        still running in an agent finds its step settled and writes nothing), its completed
        steps compensated in reverse order, and it ends ``cancelled``; its child runs that are
        still going are cancelled with it.

        Raises:
            NotFoundError: the tenant has no such run.
            ConflictError: the run already ended or is not running.
        """
        store_key, policy = await self._tenant(tenant)
        store = self.stores[store_key]
        record = await store.get_run(tenant, run_id)
        loaded = await self._load(store, tenant, run_id, policy)
        if loaded is None or record.status != RunStatus.RUNNING:
            raise ConflictError(
                f"run {run_id} is {record.status.value}, not running",
                run_id=run_id,
                status=record.status.value,
            )
        run = loaded[0]
        saga = self._saga(store_key)
        unwinds: list[Any] = []
        saga.spawn = lambda coro, name: unwinds.append(coro)
        await saga.cancel(run, reason)
        for unwind in unwinds:
            await unwind
        children = {
            str(ev.data["child_run"])
            for ev in await store.events(tenant, run_id)
            if ev.kind == "step.waiting" and isinstance(ev.data, dict) and "child_run" in ev.data
        }
        for child in sorted(children):  # a step waiting for a child names it in its event
            with contextlib.suppress(ConflictError):  # it ended meanwhile
                await self.cancel(tenant, child, f"its parent run {run_id} is cancelled")
        await self._ship_now(tenant, run_id)
        return await store.get_run(tenant, run_id)

    async def resume(self, tenant: str, run_id: str) -> RunRecord:
        """Resume a run the budget ladder paused: it is running again and its ready steps are
        published.

        Raises:
            NotFoundError: the tenant has no such run.
            ConflictError: the run is not paused.
        """
        store_key, _ = await self._tenant(tenant)
        store = self.stores[store_key]
        record = await store.get_run(tenant, run_id)
        if record.status != RunStatus.PAUSED:
            raise ConflictError(f"run {run_id} is {record.status.value}, not paused", run_id=run_id)
        async with self._locks.setdefault(run_id, asyncio.Lock()):
            await self.writers[store_key].write(
                Transition(
                    tenant,
                    run_id,
                    self.clock.now(),
                    run=RunUpdate(RunStatus.RUNNING),
                    events=[NewEvent("run.resumed", None, None, {"reason": "resumed by request"})],
                )
            )
        await self.republish(tenant, run_id)
        await self.queue.flush()
        await self._ship_now(tenant, run_id)
        return await store.get_run(tenant, run_id)

    async def _ship_now(self, tenant: str, run_id: str) -> None:
        try:
            await self._ship(tenant, run_id)
        except Exception as exc:  # committed: the log follows, not the caller
            log.warning("shipping the log of %s failed: %s; again", run_id, exc)
            self._spawn(self._ship_soon(tenant, run_id))

    async def _served(self, region: str) -> None:
        if region in self._served_regions:
            return
        from nats.js.errors import NotFoundError as StreamNotFound

        try:
            await self.queue.fabric.js.stream_info(Region(region).work_stream)
        except (TimeoutError, StreamNotFound):
            raise ResidencyError(
                f"no mesh region {region!r} on this fabric: no agents take its work",
                region=region,
            ) from None
        self._served_regions.add(region)

    def _publish(
        self, tenant: str, run_id: str, keys: Iterable[str], *, delay_s: float = 0.0
    ) -> None:
        spec = self._spec_of_run.get(run_id)
        region = self.region_of(tenant)
        deciding = _DECIDING.get()
        if deciding is not None and delay_s <= 0:
            deciding.handed_on.update((run_id, key) for key in keys)
        for key in keys:
            kind = "function"
            if spec is not None:
                try:
                    kind = spec.step(parse_key(key)[0]).kind
                except Exception:
                    kind = "function"
            self.bus.publish(
                {"tenant": tenant, "run": run_id, "key": key, "region": region, "kind": kind},
                delay_s=delay_s,
            )

    async def _load(
        self, store: Store, tenant: str, run_id: str, policy: Policy
    ) -> tuple[ActiveRun, int] | None:
        loaded = await super()._load(store, tenant, run_id, policy)
        if loaded is not None:
            self._spec_of_run[run_id] = loaded[0].spec
        return loaded

    # -- deliveries ---------------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        tenant, run_id = str(delivery.data["tenant"]), str(delivery.data["run"])
        key = str(delivery.data["key"])
        first = delivery.deliveries == 1
        if not first:  # its agent died: the successors and the log may not have been sent
            await self.republish(tenant, run_id, skip=key)
            try:
                await self._ship(tenant, run_id)
            except Exception as exc:
                log.warning("shipping the log of %s failed: %s", run_id, exc)
            held = await self._leased_for(tenant, run_id, key)
            if held > 0:  # a dead holder's lease: claim the step once it lapses, not drop it
                delivery.nak(held + 0.05)
                return
        span = _span(tenant, run_id, key, delivery.deliveries)
        redelivered = _REDELIVERED.set(not first)
        try:
            await super()._handle(delivery)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this delivery is being cancelled (the agent stops)
            # nats-py cancels the requests in flight when its connection drops: that is a
            # failure of this delivery (its claim released and nak'ed by the caller), not a
            # cancellation of it; left unsettled, the item would hold its slot and swallow its
            # own redeliveries.
            raise ConnectionError("the NATS connection dropped during the delivery") from None
        finally:
            _REDELIVERED.reset(redelivered)
            if span is not None:
                span.end()

    async def _leased_for(self, tenant: str, run_id: str, key: str) -> float:
        """Seconds the step's current lease still runs (0 when it is not running)."""
        store_key, _ = await self._tenant(tenant)
        now = self.clock.now()
        for step in await self.stores[store_key].get_steps(tenant, run_id):
            if step.key == key and step.status == StepStatus.RUNNING:
                return max(0.0, (step.lease_expires_at or 0.0) - now)
        return 0.0

    async def _settle(
        self,
        store: Store,
        tenant: str,
        run_id: str,
        policy: Policy,
        att: Any,
        outcome: AttemptOutcome,
        region: str,
    ) -> None:
        """Decide and commit, again after a transient store error (a deadlock between two
        agents writing one tenant's rows aborts a transaction: nothing of it was written)."""
        delay = 0.05
        for attempt in range(STORE_RETRIES):
            try:
                await super()._settle(store, tenant, run_id, policy, att, outcome, region)
                return
            except StoreUnavailableError as exc:
                if attempt == STORE_RETRIES - 1:
                    raise
                log.info("store busy deciding %s/%s (%s); again", run_id, att.key, exc.message[:80])
                await asyncio.sleep(delay * (1.0 + self._rng.random()))
                delay = min(1.0, delay * 2)

    async def _decide(
        self, run: ActiveRun, version: int, att: Any, outcome: AttemptOutcome, region: str
    ) -> bool:
        with _deciding() as deciding:
            committed = await super()._decide(run, version, att, outcome, region)
        if committed:
            if self._defers(run.id, att.key, deciding):
                self.deferred += 1
                self._owed.setdefault(run.id, (run.tenant_id, time.monotonic()))
            else:  # off the successors' path, but before this delivery's ack
                self.queue.hold_acks(self._spawn(self._ship_soon(run.tenant_id, run.id)))
            if isinstance(outcome, AwaitingChild):  # the child may have ended meanwhile
                await self._child_ended(run, att.key, outcome.error.run_id)
        return committed

    def _defers(self, run_id: str, key: str, deciding: _Decided) -> bool:
        """Whether the log of the decision just committed (on the run's step ``key``) is left
        to a later decision of the run: only while work waits for this agent, and only for a
        decision that published other steps of the run to run at once and did not end it (see
        the module doc)."""
        owed = self._owed.get(run_id)
        return (
            self.defer_log
            and not deciding.ended
            and any(r == run_id and k != key for r, k in deciding.handed_on)
            and self.queue.backlogged
            and (owed is None or time.monotonic() - owed[1] < self.log_lag_s)
        )

    def ship_owed(self, older_than_s: float = 0.0) -> int:
        """Ship the log of every run whose log this process left to a later decision at least
        ``older_than_s`` ago and has not shipped since (the acks settled from now on wait for
        them, and :meth:`JetStreamQueue.flush` does); how many."""
        now = time.monotonic()
        due = [(r, t) for r, (t, since) in self._owed.items() if now - since >= older_than_s]
        for run_id, tenant in due:
            del self._owed[run_id]
            self.queue.hold_acks(self._spawn(self._ship_soon(tenant, run_id)))
        self.caught_up += len(due)
        return len(due)

    async def _catch_up_forever(self) -> None:
        while True:
            await asyncio.sleep(self.log_lag_s / 4)
            self.ship_owed(self.log_lag_s)

    async def _commit(self, run: ActiveRun, decision: Any, region: str) -> bool:
        committed = await super()._commit(run, decision, region)
        deciding = _DECIDING.get()
        if committed and deciding is not None:
            deciding.committed = True
        return committed

    async def _gather_if_lost(
        self, store: Store, tenant: str, run_id: str, policy: Policy, key: str, region: str
    ) -> None:
        # A gather committed here is a decision like any other: its log is shipped (before
        # this delivery's ack), or nothing would ship the run's end it may have written.
        with _deciding() as deciding:
            await super()._gather_if_lost(store, tenant, run_id, policy, key, region)
        if deciding.committed:
            self.queue.hold_acks(self._spawn(self._ship_soon(tenant, run_id)))

    def _ended(self, run: Any) -> None:
        deciding = _DECIDING.get()
        if deciding is not None:
            deciding.ended = True
        super()._ended(run)

    async def _child_ended(self, run: ActiveRun, key: str, child_id: str) -> None:
        """After a step parked waiting for a child: if the child ended before the park was
        committed, its end found the step still running and woke nothing, so publish it now
        (each side reads after its own commit: one of the two sees the other)."""
        store_key, _ = await self._tenant(run.tenant_id)
        try:
            child = await self.stores[store_key].get_run(run.tenant_id, child_id)
        except NotFoundError:
            return
        if child.status in TERMINAL_RUN:
            self._publish(run.tenant_id, run.id, [key])

    async def _ship_soon(self, tenant: str, run_id: str) -> None:
        """Ship the run's log; one shipper per run at a time in this process (a request while
        one runs makes it go round again), retried while the server is away."""
        self._owed.pop(run_id, None)  # what this process left is read by the ship below
        if run_id in self._shipping:
            self._shipping[run_id] = True
            return
        self._shipping[run_id] = False
        delay = 0.1
        try:
            for _ in range(200):
                try:
                    await self._ship(tenant, run_id)
                except Exception as exc:  # the server is away: again once it is back
                    log.warning("shipping the log of %s failed: %s; again", run_id, exc)
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 2)
                    continue
                if not self._shipping[run_id]:
                    return
                self._shipping[run_id] = False
            log.error("the log of %s could not be shipped", run_id)
        finally:
            self._shipping.pop(run_id, None)

    def _finished(self, run_id: str) -> None:
        super()._finished(run_id)
        self._owed.pop(run_id, None)  # its end ships everything
        spec = self._spec_of_run.pop(run_id, None)
        del spec

    # -- the log ------------------------------------------------------------------------------

    async def _ship(self, tenant: str, run_id: str) -> None:
        """Publish the run's store events not yet on the log, then append a state version
        covering them (see the module doc)."""
        store_key, _ = await self._tenant(tenant)
        store = self.stores[store_key]
        region = self.region_of(tenant)
        for _ in range(16):
            tip = self._tips.pop(run_id, None)
            seq, last = tip or await self.log.last_state(region, tenant, run_id)
            upto = int(last.get("events_upto", 0))
            shipped_version = int(last.get("version", -1))
            # One read: the events after the shipped ones, the run, the state versions after
            # the shipped one (the chain is not reread from its start) and the steps.
            read = await store.read_run(
                tenant, run_id, events_after=upto, versions_after=shipped_version
            )
            events, record = read.events, read.run
            if not events and shipped_version >= record.state_version:
                return
            if record.status in TERMINAL_RUN and record.parent_run_id is not None:
                await self._wake_parent(record)
            acks = [  # sent in order, acknowledged together; a resend is deduplicated by id
                await self.log.fact(
                    region,
                    tenant,
                    run_id,
                    ev.kind,
                    {"ts": ev.ts, "data": ev.data, "event_id": ev.id},
                    msg_id=f"{run_id}.ev.{ev.id}",
                    step=ev.step,
                    attempt=ev.attempt,
                    wait=False,
                )
                for ev in events
            ]
            await asyncio.wait_for(asyncio.gather(*acks), 10.0)
            body = {
                "version": record.state_version,
                "status": record.status.value,
                "events_upto": events[-1].id if events else upto,
                "snapshot": snapshot(record, read.steps, read.versions, events),
            }
            appended = await self.log.append_state(region, tenant, run_id, seq, body)
            if appended is not None:
                self.shipped += 1
                if record.status not in TERMINAL_RUN:
                    if len(self._tips) >= 10_000:  # runs this process stopped hearing of
                        self._tips.clear()
                    covered = {k: body[k] for k in ("version", "events_upto")}
                    self._tips[run_id] = (appended, covered)
                return

    # -- recovery -----------------------------------------------------------------------------

    async def republish(self, tenant: str, run_id: str, *, skip: str | None = None) -> int:
        """Publish again the run's ready steps and those whose lease lapsed; how many."""
        store_key, _ = await self._tenant(tenant)
        store = self.stores[store_key]
        record = await store.get_run(tenant, run_id)
        if record.status in TERMINAL_RUN or record.status != RunStatus.RUNNING:
            return 0
        if record.workflow in self.specs:
            self._spec_of_run[run_id] = self.specs[record.workflow]
        now = self.clock.now()
        keys: list[tuple[str, float]] = []
        for step in await store.get_steps(tenant, run_id):
            if step.key == skip:
                continue
            if step.status == StepStatus.READY:
                keys.append((step.key, max(0.0, step.available_at - now)))
            elif step.status == StepStatus.RUNNING and (step.lease_expires_at or 0.0) < now:
                keys.append((step.key, 0.0))
        for key, delay in keys:
            self._publish(tenant, run_id, [key], delay_s=delay)
        self.republished += len(keys)
        return len(keys)

    async def sweep(self, *, quiet_s: float = 10.0) -> int:
        """Republish the ready steps of every unfinished run of the stores that has not moved
        for ``quiet_s`` and has no work item on the stream (see the module doc); how many
        steps. A run whose item waits in a tenant's backlog has not moved either, but nothing
        of it was lost: publishing its steps again would only lengthen the backlog (every
        agent's sweep republished a burster's whole backlog every few seconds)."""
        count = 0
        now = self.clock.now()
        queued: dict[tuple[str, str], set[str]] = {}
        for store in self.stores.values():
            for record, _steps in await store.active_runs():
                if record.workflow not in self.specs or record.updated_at > now - quiet_s:
                    continue
                place = (self.region_of(record.tenant_id), record.tenant_id)
                if place not in queued:
                    queued[place] = await self.queue.queued_runs(*place)
                if record.id in queued[place]:
                    continue
                try:
                    count += await self.republish(record.tenant_id, record.id)
                except NotFoundError:
                    continue
        await self.queue.flush()
        return count


def _span(tenant: str, run: str, step: str, delivery: int) -> Any:
    """A span carrying the correlation ids, when OpenTelemetry is installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("tenantflow.mesh").start_span(
        "tenantflow.mesh.step",
        attributes={
            "tenantflow.tenant": tenant,
            "tenantflow.run": run,
            "tenantflow.step": step,
            "tenantflow.delivery": delivery,
        },
    )
