"""The run driver: claim → execute → decide → write → apply, for the runs of one store.

Every transition is written through an :class:`~tenantflow.ports.OpSink` (the store's
:class:`~tenantflow.engine.writer.Writer`) and acted on only after it commits. The store stays
the source of truth: the in-memory mirror (:class:`~tenantflow.engine.execution.active.ActiveRun`)
mirrors it for speed and is rebuilt from it after a restart. Transitions of one run are
serialised by the run's lock, so two parallel branches finishing together both see each other's
completion.

An attempt is claimed (a fenced lease), executed by the
:class:`~tenantflow.engine.execution.executor.StepExecutor` into an outcome, decided by
:mod:`tenantflow.domain.progress` into ops and effects, the ops written, the effects applied.
Leases, the saga, waits and reviews are rooms of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tenantflow.domain.breaker import CircuitBreaker
from tenantflow.domain.progress import (
    Attempt,
    Decision,
    Effect,
    Enqueue,
    EnqueueAfter,
    Finish,
    MirrorUpdate,
    Requeue,
    ReviewOpened,
    StartUnwind,
    on_failed,
    on_paused,
    on_skipped,
    on_succeeded,
)
from tenantflow.domain.records import (
    STALE,
    TERMINAL_RUN,
    FinishAttempt,
    RunRecord,
    RunStatus,
    StartAttempt,
    StepRecord,
    StepStatus,
)
from tenantflow.domain.spec import WorkflowSpec, parse_key
from tenantflow.domain.tenancy import ReviewRecord, UsageDelta
from tenantflow.engine.context import StepContext
from tenantflow.engine.execution import observe
from tenantflow.engine.execution.active import ActiveRun, RunEvents
from tenantflow.engine.execution.chain import Chaining
from tenantflow.engine.execution.executor import AttemptInput, StepExecutor
from tenantflow.engine.execution.leases import LeaseKeeper
from tenantflow.engine.execution.outcomes import (
    AttemptOutcome,
    AwaitingChild,
    AwaitingSignal,
    Cancelled,
    Escalated,
    Failed,
    LeaseLost,
    Paused,
    RateLimited,
    ReviewRequested,
    Skipped,
    Succeeded,
)
from tenantflow.engine.execution.reviews import ReviewSteps
from tenantflow.engine.execution.saga import Saga
from tenantflow.engine.execution.scope import AttemptScope, Ledgers, Services
from tenantflow.engine.execution.waits import Parking
from tenantflow.engine.gateway import Gateway
from tenantflow.engine.writer import Writer
from tenantflow.ports import Clock, Grant, Store, WorkQueue

__all__ = ["RunDriver"]

log = logging.getLogger("tenantflow.engine")


class RunDriver(Chaining):
    """Drives active runs on one store. Owned by :class:`~tenantflow.engine.engine.Engine`."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        owner: str,
        dispatcher: WorkQueue,
        gateway: Gateway,
        hooks: RunEvents,
        breakers: dict[str, CircuitBreaker],
        lease_s: float,
        breaker_threshold: int,
        breaker_cooldown_s: float,
        rng: random.Random,
    ) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.dispatcher = dispatcher
        self.gateway = gateway
        self.hooks = hooks
        self.lease_s = lease_s
        self.writer = Writer(store)
        self.ledgers = Ledgers(self.writer)
        """Where ledgers go: the platform's may be another store's (see Engine)."""
        self.active: dict[str, ActiveRun] = {}
        self._breakers = breakers  # shared by every region: a dependency is one dependency
        self._breaker_threshold = breaker_threshold
        self._breaker_cooldown_s = breaker_cooldown_s
        self._rng = rng
        self._background: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self.closing = False
        self.services = Services(
            clock=clock,
            store=store,
            ledgers=self.ledgers,
            gateway=gateway,
            breaker=self.breaker,
            observers=hooks.observers,
            start_child=hooks.start_child,
            expect_child=self.expect_child,
        )
        self.executor = StepExecutor(clock, self.breaker)
        self.leases = LeaseKeeper(
            sink=self.writer,
            clock=clock,
            store=store,
            owner=owner,
            lease_s=lease_s,
            active=self.active,
        )
        self.saga = Saga(
            sink=self.writer,
            clock=clock,
            store=store,
            tools=gateway.tools,
            rng=rng,
            active=self.active,
            spawn=self.spawn,
            finish=self._finish,
            context_for=self._compensation_context,
        )
        self.parking = Parking(
            sink=self.writer,
            clock=clock,
            hooks=hooks,
            commit=self.commit,
            enqueue=self.enqueue,
            enqueue_later=self.enqueue_later,
            requeue=self._requeue,
            store=store,
        )
        self.reviews = ReviewSteps(clock=clock, commit=self.commit)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.writer.start()
        self._heartbeat = asyncio.create_task(self.leases.heartbeat(), name="tenantflow-heartbeat")

    async def close(self) -> None:
        self.closing = True
        if self.hooks.observers:
            observe.suspended(self.hooks.observers, self.active.values(), self.clock.now())
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        tasks = [t for run in self.active.values() for t in run.tasks.values()]
        tasks.extend(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._heartbeat is not None:
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        await self.writer.close()

    async def drop(self, runs: list[ActiveRun]) -> None:
        """Stop driving ``runs`` in this process, as a shutdown would: their attempts and
        timers are cancelled (the store keeps everything; their next owner resumes them)."""
        if self.hooks.observers:
            observe.suspended(self.hooks.observers, runs, self.clock.now())
        tasks: list[asyncio.Task[Any]] = []
        for run in runs:
            run.released = True
            tasks.extend(run.tasks.values())
            self.active.pop(run.id, None)
            self.parking.forget(run.id)
            for key in [*run.statuses, *run.chained]:
                self.dispatcher.remove((run.id, key))
        ids = {run.id for run in runs}
        # Their timers and unwinds are named "<what>:<run id>[:<step>]" (see spawn's callers).
        tasks.extend(
            t for t in self._background if t.get_name().split(":")[1:2] in ([i] for i in ids)
        )
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(
            *(t for t in tasks if t is not asyncio.current_task()), return_exceptions=True
        )

    def breaker(self, name: str) -> CircuitBreaker:
        b = self._breakers.get(name)
        if b is None:
            b = CircuitBreaker(name, self._breaker_threshold, self._breaker_cooldown_s)
            self._breakers[name] = b
        return b

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- dispatch -----------------------------------------------------------------------------

    def enqueue(self, run: ActiveRun, keys: Iterable[str]) -> None:
        """Hand ready steps to the fair dispatcher (only while the run is running)."""
        if run.status != RunStatus.RUNNING or self.closing or run.released:
            return
        lane: Any = run.lane
        for key in keys:
            self.dispatcher.push(
                run.tenant_id,
                (run.id, key),
                lane,
                functools.partial(self._attempt, run, key),
                in_flight=run.progressed,
                hint_name=f"{run.spec.name}/{parse_key(key)[0]}",
            )

    def enqueue_later(self, run: ActiveRun, key: str, delay_s: float) -> None:
        async def later() -> None:
            await self.clock.sleep(delay_s)
            self.enqueue(run, [key])

        self.spawn(later(), f"retry:{run.id}:{key}")

    def _requeue(self, run: ActiveRun, key: str) -> None:
        """Queue ``key`` for a new attempt from inside its current attempt's task."""
        if run.tasks.get(key) is asyncio.current_task():
            del run.tasks[key]
        self.enqueue(run, [key])

    # -- one attempt: claim → execute → decide → write → apply --------------------------------

    async def _attempt(
        self,
        run: ActiveRun,
        key: str,
        slot: Grant,
        after: asyncio.Future[bool] | None = None,
        urgent: bool | None = None,
    ) -> None:
        """One attempt of step ``key``. ``after`` (a step queued before the completion that
        readied it had committed, see :meth:`_queue_next`) resolves once that completion is
        decided: True when it committed and its effects are applied, False when it did not;
        ``urgent`` is then the completion's writer lane, which the claim shares."""
        current = asyncio.current_task()
        if (
            run.status != RunStatus.RUNNING
            or key in run.tasks
            or self.closing
            or run.released
            or current is None
        ):
            slot.release()
            return
        run.tasks[key] = current
        try:
            self.hooks.refresh_policy(run)
            now = self.clock.now()
            if urgent is None:
                urgent = self.dispatcher.urgent(run.tenant_id)
            lease = await self.writer.write(
                StartAttempt(run.tenant_id, run.id, key, self.owner, now, now + self.lease_s),
                urgent=urgent,
            )
            if after is not None and not await after:
                # The completion that readied this step was refused: the claim (made in the
                # same transaction, after it) can only have found the step ready by other
                # means; it is given back for whoever holds the run's true state.
                if lease is not None:
                    await self._give_back(run, key, lease.fence)
                return
            if lease is None:
                if after is not None:  # the completion committed, yet the claim found the
                    slot.release()  # step not ready (cannot happen while a run's ops keep
                    self._requeue(run, key)  # their order): it is queued as any ready step
                return
            name, index = parse_key(key)
            step = run.spec.step(name)
            scope = self._scope(run, key, lease.attempt, f"{run.id}:{key}", step.optional)
            ctx = StepContext(scope)
            started = self.clock.now()
            run.lost.discard(key)
            run.executing[key] = lease.fence
            observers = self.hooks.observers
            if observers:
                observe.step_started(observers, run, key, lease.attempt, started)
            inp = AttemptInput(
                run=run.view(started), step=step, key=key, index=index, ctx=ctx, scope=scope
            )
            outcome: AttemptOutcome
            try:
                outcome = await self.executor.execute(inp)
            except asyncio.CancelledError as exc:
                if self.closing or run.released:
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                outcome = Cancelled(exc)
            finally:
                run.executing.pop(key, None)
            service_s = max(0.0, self.clock.now() - started)
            self.dispatcher.learn(f"{run.spec.name}/{name}", service_s)
            scope.notes_usage = [UsageDelta("slot_seconds", service_s, name)]
            if key in run.lost:  # our lease was lost mid-flight: the step is claimed again
                slot.release()
                run.lost.discard(key)
                self._requeue(run, key)
                outcome = LeaseLost()
            else:
                att = Attempt(key, lease.fence, lease.attempt, scope.notes, scope.notes_usage)
                if run.lock.locked():  # no slot is held while waiting for a sibling's decision
                    slot.release()
                async with run.lock:
                    await self._decide(run, att, outcome, slot)
            if observers:
                now = self.clock.now()
                observe.step_finished(observers, run, key, lease.attempt, started, outcome, now)
        finally:
            slot.release()
            if run.tasks.get(key) is current:
                del run.tasks[key]

    async def _decide(
        self, run: ActiveRun, att: Attempt, outcome: AttemptOutcome, slot: Grant
    ) -> None:
        """Decide what ``outcome`` means for the run, write it and apply it (run lock held);
        ``slot`` (the attempt's) is given back once the steps it readies are queued."""
        view = run.view(self.clock.now())
        if not isinstance(outcome, Succeeded):
            slot.release()
        match outcome:
            case Succeeded(value, output_json):
                decision = on_succeeded(view, att, value, output_json)
                urgent = self.dispatcher.urgent(run.tenant_id)
                gates: dict[str, asyncio.Future[bool]] = {}
                committed = False
                try:
                    self._queue_next(run, decision, urgent, gates)
                    slot.release()
                    committed = await self.commit(run, decision, urgent=urgent) is not STALE
                finally:
                    self._settle_chained(run, gates, committed)
            case ReviewRequested(payload):
                await self.reviews.open(run, view, att, payload)
            case RateLimited():
                await self.parking.rate_limited(run, view, att, outcome)
            case Skipped(signal):
                await self.commit(run, on_skipped(view, att, signal.reason))
            case Escalated():
                await self.reviews.escalate(run, view, att, outcome)
            case Paused(signal):
                await self.commit(run, on_paused(view, att, signal.reason))
            case AwaitingChild():
                await self.parking.await_child(run, view, att, outcome)
            case AwaitingSignal():
                await self.parking.await_signal(run, view, att, outcome)
            case Failed(error):
                await self.commit(run, on_failed(view, att, error, jitter=self._rng.random))
            case Cancelled():
                await self.commit(run, on_failed(view, att, None, jitter=self._rng.random))

    def _scope(
        self, run: ActiveRun, key: str, attempt: int, idempotency_key: str, optional: bool
    ) -> AttemptScope:
        return AttemptScope(
            run.id,
            run.tenant_id,
            run.spec.name,
            key,
            attempt,
            idempotency_key,
            self.services,
            run,
            optional=optional,
        )

    def _compensation_context(
        self, run: ActiveRun, step: str, attempt: int, idempotency_key: str
    ) -> StepContext:
        return StepContext(self._scope(run, step, attempt, idempotency_key, False))

    # -- write, then apply --------------------------------------------------------------------

    async def commit(
        self, run: ActiveRun, decision: Decision, *, urgent: bool | None = None
    ) -> Any:
        """Write ``decision``'s ops in order, then apply its effects (its ``if_stale`` ones if
        the last op was refused as STALE). Returns the last op's result; raises it if it is an
        error (a review decided meanwhile). ``urgent``: the writer lane (by default the run's
        tenant's, see :meth:`~tenantflow.engine.dispatch.Dispatcher.urgent`)."""
        if urgent is None:
            urgent = self.dispatcher.urgent(run.tenant_id)
        result: Any = None
        for op in decision.ops:
            result = await self.writer.write(op, urgent=urgent)
        if isinstance(result, BaseException):
            raise result
        effects: Sequence[Effect] = decision.effects
        if result is STALE:
            last = decision.ops[-1]
            if isinstance(last, FinishAttempt):
                log.warning("late result of %s/%s refused (lease lost)", run.id, last.key)
            effects = decision.if_stale
        for effect in effects:
            self._apply(run, effect, result)
        return result

    def _apply(self, run: ActiveRun, effect: Effect, result: Any) -> None:
        # One dictionary lookup per effect instead of an isinstance ladder: this runs for every
        # effect of every attempt.
        _APPLY[type(effect)](self, run, effect, result)

    def _apply_mirror(self, run: ActiveRun, effect: MirrorUpdate, result: Any) -> None:
        if effect.statuses:
            run.statuses.update(effect.statuses)
        if effect.outputs:
            run.outputs.update(effect.outputs)
        if effect.jsons:
            run.jsons.update(effect.jsons)
        if effect.children:
            run.children.update(effect.children)
        if effect.versions:
            run.versions.update(effect.versions)
        if effect.version_of is not None:
            run.versions[effect.version_of] = result
        if effect.deferrals:
            run.deferrals.update(effect.deferrals)
        if effect.progressed:
            run.progressed = True
        if effect.error is not None:
            run.error = effect.error
        if effect.status is not None:
            run.status = effect.status
        if effect.meta is not None:
            run.meta = dict(effect.meta)
        if effect.replaced is not None:
            run.replaced = dict(effect.replaced)

    def _apply_enqueue(self, run: ActiveRun, effect: Enqueue, result: Any) -> None:
        self.enqueue(run, effect.keys)

    def _apply_enqueue_after(self, run: ActiveRun, effect: EnqueueAfter, result: Any) -> None:
        self.enqueue_later(run, effect.key, effect.delay_s)

    def _apply_requeue(self, run: ActiveRun, effect: Requeue, result: Any) -> None:
        self._requeue(run, effect.key)

    def _apply_unwind(self, run: ActiveRun, effect: StartUnwind, result: Any) -> None:
        self.saga.start_unwind(run)

    def _apply_finish(self, run: ActiveRun, effect: Finish, result: Any) -> None:
        run.status = effect.status
        self._finish(run, effect.status, effect.result)

    def _apply_review(self, run: ActiveRun, effect: ReviewOpened, result: Any) -> None:
        self.hooks.review_opened(effect.review)

    def _finish(self, run: ActiveRun, status: RunStatus, result: Any) -> None:
        self.active.pop(run.id, None)
        self.parking.forget(run.id)
        if run.parent_id is not None:
            self.parking.child_ended(run.id)
        for key in list(run.statuses):
            self.dispatcher.remove((run.id, key))
        self.hooks.on_finish(run, status, result)
        if self.hooks.observers:
            observe.run_finished(self.hooks.observers, run, status, self.clock.now())

    # -- the rooms, as the engine calls them --------------------------------------------------

    def submitted(self, run: ActiveRun, now: float) -> None:
        """A new run was recorded: stamp its submission time and tell the observers."""
        run.submitted_at_s = now
        if self.hooks.observers:
            observe.run_submitted(self.hooks.observers, run, now)

    async def cancel(self, run: ActiveRun, reason: str) -> None:
        await self.saga.cancel(run, reason)

    async def set_running(
        self, run: ActiveRun, event: str, data: dict[str, Any] | None = None
    ) -> None:
        """Admit a queued run or resume a paused one: it runs its ready steps again."""
        await self.parking.set_running(run, event, data)

    def expect_child(self, child_id: str, run: ActiveRun, key: str) -> None:
        self.parking.expect_child(child_id, run, key)

    def signal_sent(self, run: ActiveRun, name: str) -> list[str]:
        """A signal ``name`` was recorded for ``run`` (its lock held): wake its waiting steps."""
        return self.parking.signal_sent(run, name)

    async def review_decided(
        self,
        run: ActiveRun,
        review: ReviewRecord,
        *,
        approved: bool,
        comment: str | None,
        reviewer: str,
        fail_step: bool = False,
    ) -> Any:
        """Record a human decision and move the waiting step on, in one transaction."""
        return await self.reviews.decided(
            run, review, approved=approved, comment=comment, reviewer=reviewer, fail_step=fail_step
        )

    async def renew_leases(self) -> list[tuple[str, str, int]]:
        """Extend our live leases; cancel the attempts whose lease had lapsed (re-queued)."""
        return await self.leases.renew_leases()

    async def recover(self, specs: Callable[[str, str], WorkflowSpec | None]) -> list[RunRecord]:
        """Load every unfinished run and resume it; returns runs whose spec is not registered."""
        return await self.leases.recover(specs, self.resume)

    def resume(self, record: RunRecord, steps: list[StepRecord], spec: WorkflowSpec) -> ActiveRun:
        """Mirror a stored run and go on with it: queue its ready steps, wait out other
        owners' leases, or finish its unwinding."""
        run = ActiveRun.from_records(record, steps, spec)
        self.active[run.id] = run
        if run.status == RunStatus.RUNNING:
            now = self.clock.now()
            for s in steps:
                if s.status == StepStatus.READY:
                    if s.available_at > now:
                        self.enqueue_later(run, s.key, s.available_at - now)
                    else:
                        self.enqueue(run, [s.key])
                elif s.status == StepStatus.RUNNING:  # another owner's lease: claim when it lapses
                    self.enqueue_later(run, s.key, max(0.0, (s.lease_expires_at or now) - now))
        elif run.status in (RunStatus.COMPENSATING, RunStatus.CANCELLING):
            cancel = run.status == RunStatus.CANCELLING
            self.spawn(self.saga.unwind(run, cancel=cancel), f"unwind:{run.id}")
        elif run.status in TERMINAL_RUN:
            self.active.pop(run.id, None)
        return run


_APPLY: dict[type, Callable[[RunDriver, ActiveRun, Any, Any], None]] = {
    MirrorUpdate: RunDriver._apply_mirror,
    Enqueue: RunDriver._apply_enqueue,
    EnqueueAfter: RunDriver._apply_enqueue_after,
    Requeue: RunDriver._apply_requeue,
    StartUnwind: RunDriver._apply_unwind,
    Finish: RunDriver._apply_finish,
    ReviewOpened: RunDriver._apply_review,
}
"""How each kind of effect (:data:`~tenantflow.domain.progress.Effect`) is applied."""
