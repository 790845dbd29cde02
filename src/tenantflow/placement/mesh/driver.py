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
  names the events it covers, so a second shipper publishes only newer ones).
* **Recovery.** A redelivered work item (its agent died) first republishes the run's ready steps
  and the steps whose lease lapsed, so a crash between the commit and the publish of the
  successors cannot stall a run; :meth:`MeshDriver.sweep` does the same for every unfinished run
  (at an agent's start: a submitter that died after recording a run).

Correlation ids (tenant, run, step, attempt) travel in the messages' headers and on the
``tenantflow.mesh.step`` span when OpenTelemetry is installed.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from tenantflow.adapters.nats.log import ExecutionLog
from tenantflow.adapters.nats.queue import JetStreamQueue
from tenantflow.adapters.nats.subjects import Region
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.policy import DEFAULT_REGIONS, Policy
from tenantflow.domain.records import (
    TERMINAL_RUN,
    RunStatus,
    StepStatus,
)
from tenantflow.domain.spec import WorkflowSpec, parse_key
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.execution.broker import BrokerDriver
from tenantflow.engine.execution.executor import AttemptInput, StepExecutor
from tenantflow.engine.execution.outcomes import AttemptOutcome, Succeeded
from tenantflow.errors import NotFoundError, ResidencyError, StoreUnavailableError
from tenantflow.ports import Delivery, Store

__all__ = ["CompletionGuard", "MeshDriver"]

log = logging.getLogger("tenantflow.mesh")

STORE_RETRIES = 6
"""How often a decision is tried when the store reports a transient failure."""

_REDELIVERED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tenantflow_mesh_redelivered", default=False
)
_SUBMITTING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tenantflow_mesh_submitting", default=None
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
        (the rest as :class:`BrokerDriver`)
    """

    def __init__(
        self,
        stores: Mapping[str, Store],
        *,
        bus: JetStreamQueue,
        default_region: str,
        workflows: Iterable[WorkflowSpec],
        **options: Any,
    ) -> None:
        super().__init__(stores, bus=bus, workflows=workflows, **options)
        self.queue = bus
        self.log = ExecutionLog(bus.fabric)
        self.default_region = default_region
        self.guard = CompletionGuard(self.executor, self)
        self.executor = self.guard  # type: ignore[assignment]
        self._spec_of_run: dict[str, WorkflowSpec] = {}
        self._served_regions: set[str] = set()
        self._shipping: dict[str, bool] = {}
        self.boards: list[Any] = []
        self.policy_versions: dict[str, int] = {}
        """The policy version applied per tenant (from the policy bucket)."""
        self.shipped = 0
        self.republished = 0

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

    async def submit(self, tenant: str, workflow: str, input: Any) -> str:
        """Record a run and publish its first steps (on the stream when this returns).

        Raises:
            ResidencyError: no stream serves the tenant's region on this fabric (nothing is
                recorded).
            (and what :meth:`BrokerDriver.submit` raises)
        """
        await self._tenant(tenant)
        await self._served(self.region_of(tenant))
        token = _SUBMITTING.set(workflow)
        try:
            run_id = await super().submit(tenant, workflow, input)
        finally:
            _SUBMITTING.reset(token)
        await self.queue.flush()
        try:
            await self._ship(tenant, run_id)
        except Exception as exc:  # recorded and published: the log follows, not the caller
            log.warning("shipping the log of %s failed: %s; again", run_id, exc)
            self._spawn(self._ship_soon(tenant, run_id))
        return run_id

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
        if spec is None:
            spec = self.specs.get(_SUBMITTING.get() or "")
        region = self.region_of(tenant)
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
        committed = await super()._decide(run, version, att, outcome, region)
        if committed:  # off the successors' path, but before this delivery's ack
            self.queue.hold_acks(self._spawn(self._ship_soon(run.tenant_id, run.id)))
        return committed

    async def _ship_soon(self, tenant: str, run_id: str) -> None:
        """Ship the run's log; one shipper per run at a time in this process (a request while
        one runs makes it go round again), retried while the server is away."""
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
            seq, last = await self.log.last_state(region, tenant, run_id)
            upto = int(last.get("events_upto", 0))
            events = await store.events(tenant, run_id, after_id=upto)
            record = await store.get_run(tenant, run_id)
            if not events and int(last.get("version", -1)) >= record.state_version:
                return
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
            }
            if await self.log.append_state(region, tenant, run_id, seq, body):
                self.shipped += 1
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
        for ``quiet_s`` (see the module doc); how many steps."""
        count = 0
        now = self.clock.now()
        for store in self.stores.values():
            for record, _steps in await store.active_runs():
                if record.workflow not in self.specs or record.updated_at > now - quiet_s:
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
