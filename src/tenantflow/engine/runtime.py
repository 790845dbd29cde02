"""The executing core: active runs in memory, slots, attempts, retries, sagas, recovery.

Every transition is written through the :class:`~tenantflow.engine.writer.Writer` and acted on
only after it commits. The store stays the source of truth: memory mirrors it for speed and is
rebuilt from it after a restart. Transitions of one run are serialised by the run's lock, so two
parallel branches finishing together both see each other's completion.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tenantflow.domain.agent import Agent, Turn
from tenantflow.domain.breaker import CircuitBreaker, record_outcome
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.progress import (
    Attempt,
    Decision,
    Effect,
    Enqueue,
    EnqueueAfter,
    Finish,
    MirrorUpdate,
    Requeue,
    RunView,
    StartUnwind,
    describe,
    on_awaiting_child,
    on_failed,
    on_paused,
    on_rate_limited,
    on_review_decided,
    on_review_requested,
    on_skipped,
    on_succeeded,
    result_json,
)
from tenantflow.domain.records import (
    STALE,
    TERMINAL_RUN,
    TERMINAL_STEP,
    FinishAttempt,
    NewEvent,
    RecoverOrphans,
    RenewLeases,
    RunRecord,
    RunStatus,
    RunUpdate,
    StartAttempt,
    StepRecord,
    StepStatus,
    StepUpdate,
    Transition,
)
from tenantflow.domain.run import MISSING, bind, compensation_order
from tenantflow.domain.spec import StepSpec, WorkflowSpec, child_key, parse_key
from tenantflow.domain.tenancy import ReviewRecord, UsageDelta
from tenantflow.engine.agent import run_iteration
from tenantflow.engine.context import StepContext
from tenantflow.engine.dispatch import Dispatcher, Slot
from tenantflow.engine.gateway import Gateway, human_response
from tenantflow.engine.signals import AwaitChild, Escalate, Pause, SkipStep
from tenantflow.engine.writer import Writer
from tenantflow.errors import (
    CircuitOpenError,
    NotFoundError,
    RateLimitedError,
    StepTimeoutError,
    TenantflowError,
)
from tenantflow.observability.events import (
    Observers,
    RateLimitWait,
    RunAdmitted,
    RunFinished,
    RunSubmitted,
    RunSuspended,
    StepFinished,
    StepOutcome,
    StepStarted,
)
from tenantflow.ports import Clock, Store

if TYPE_CHECKING:
    from tenantflow.domain.policy import Policy

__all__ = ["Active", "Runtime", "result_json"]

log = logging.getLogger("tenantflow.engine")


@dataclass(slots=True, eq=False)
class Active:
    """An unfinished run as the engine holds it in memory."""

    id: str
    tenant_id: str
    lane: str
    spec: WorkflowSpec
    input: Any
    status: RunStatus
    statuses: dict[str, StepStatus]
    outputs: dict[str, Any] = field(default_factory=dict)
    jsons: dict[str, bytes] = field(default_factory=dict)
    versions: dict[str, int | None] = field(default_factory=dict)
    children: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    executing: dict[str, int] = field(default_factory=dict)  # key -> fence of the live attempt
    lost: set[str] = field(default_factory=set)
    _lock: asyncio.Lock | None = field(default=None, init=False, repr=False)
    error: str | None = None
    policy: Policy | None = None
    policy_version: int = 0
    progressed: bool = False  # a step has completed: its steps go before new runs' first ones
    deferrals: dict[str, int] = field(default_factory=dict)
    submitted_at_s: float = 0.0
    released: bool = False  # handed to another worker: stop as at shutdown
    parent_id: str | None = None  # a child run (a subagent): the run that started it
    budget_run: str | None = None  # the root run whose budget a child run draws on
    meta: dict[str, Any] = field(default_factory=dict)  # as stored; its "plan" is the latest
    replaced: dict[str, str] = field(default_factory=dict)  # step -> standby running instead

    @property
    def lock(self) -> asyncio.Lock:
        """Serialises the run's transitions; made on first use (a queued run has none)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    @property
    def revisions(self) -> int:
        plan = self.meta.get("plan")
        return int(plan["version"]) - 1 if isinstance(plan, dict) else 0


@dataclass(slots=True, eq=False)
class _ChildWait:
    """A step waiting for a child run: parked yet or not, and whether the child ended."""

    run: Active
    key: str
    parked: bool = False
    done: bool = False


CHILD_FALLBACK_S = 30.0
"""A step waiting for a child run is woken when the child ends; this is the safety net."""


class Hooks(Protocol):
    """What the runtime asks of the engine around it."""

    controls: bool
    observers: Observers

    def refresh_policy(self, run: Active) -> None: ...

    def on_finish(self, run: Active, status: RunStatus, result: Any) -> None: ...

    def review_opened(self, review: ReviewRecord) -> None: ...

    async def start_child(
        self, parent: Active, key: str, index: int, workflow: str, task: str
    ) -> str: ...


class Runtime:
    """Drives active runs on one store. Owned by :class:`~tenantflow.engine.engine.Engine`."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        owner: str,
        dispatcher: Dispatcher,
        gateway: Gateway,
        hooks: Hooks,
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
        self.active: dict[str, Active] = {}
        self._breakers = breakers  # shared by every region: a dependency is one dependency
        self._breaker_threshold = breaker_threshold
        self._breaker_cooldown_s = breaker_cooldown_s
        self._rng = rng
        self._background: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._child_waits: dict[str, _ChildWait] = {}
        self.closing = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.writer.start()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="tenantflow-heartbeat")

    async def close(self) -> None:
        self.closing = True
        if self.hooks.observers:
            self._suspended(self.active.values())
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

    async def drop(self, runs: list[Active]) -> None:
        """Stop driving ``runs`` in this process, as a shutdown would: their attempts and
        timers are cancelled (the store keeps everything; their next owner resumes them)."""
        if self.hooks.observers:
            self._suspended(runs)
        tasks: list[asyncio.Task[Any]] = []
        for run in runs:
            run.released = True
            tasks.extend(run.tasks.values())
            self.active.pop(run.id, None)
            for key in list(run.statuses):
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

    def enqueue(self, run: Active, keys: Iterable[str]) -> None:
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

    def enqueue_later(self, run: Active, key: str, delay_s: float) -> None:
        async def later() -> None:
            await self.clock.sleep(delay_s)
            self.enqueue(run, [key])

        self.spawn(later(), f"retry:{run.id}:{key}")

    # -- one attempt --------------------------------------------------------------------------

    async def _attempt(self, run: Active, key: str, slot: Slot) -> None:
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
            lease = await self.writer.write(
                StartAttempt(run.tenant_id, run.id, key, self.owner, now, now + self.lease_s)
            )
            if lease is None:
                return
            name, index = parse_key(key)
            step = run.spec.step(name)
            ctx = StepContext(
                run.id,
                run.tenant_id,
                run.spec.name,
                key,
                lease.attempt,
                f"{run.id}:{key}",
                self,
                run,
                optional=step.optional,
            )
            started = self.clock.now()
            run.lost.discard(key)
            run.executing[key] = lease.fence
            if self.hooks.observers:
                self._step_started(run, key, lease.attempt, started)
            try:
                value, output_json = await self._execute(run, step, index, ctx)
                error: BaseException | None = None
            except asyncio.CancelledError:
                if self.closing or run.released:
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                error = asyncio.CancelledError()
            except (Exception, SkipStep, Escalate, Pause, AwaitChild) as exc:
                error = exc
            finally:
                run.executing.pop(key, None)
            service_s = max(0.0, self.clock.now() - started)
            slot.release()
            self.dispatcher.learn(f"{run.spec.name}/{name}", service_s)
            ctx.notes_usage = [UsageDelta("slot_seconds", service_s, name)]
            if key in run.lost:  # our lease was lost mid-flight: the step is claimed again
                run.lost.discard(key)
                self._requeue(run, key)
                if self.hooks.observers:
                    self._step_finished(run, key, lease.attempt, started, "lease_lost", None)
                return
            async with run.lock:
                att = Attempt(key, lease.fence, lease.attempt, ctx.notes, ctx.notes_usage)
                view = self.view(run)
                if error is None and step.kind == "review":
                    await self._open_review(run, view, att, value)
                elif error is None:
                    await self.commit(run, on_succeeded(view, att, value, output_json))
                elif isinstance(error, RateLimitedError):
                    await self._park_rate_limited(run, view, att, error)
                elif isinstance(error, SkipStep) and index is None:
                    await self.commit(run, on_skipped(view, att, error.reason))
                elif isinstance(error, Escalate):
                    await self._escalate(run, view, att, error)
                elif isinstance(error, Pause):
                    await self.commit(run, on_paused(view, att, error.reason))
                elif isinstance(error, AwaitChild):
                    await self._await_child(run, view, att, error)
                else:
                    cancelled = isinstance(error, asyncio.CancelledError)
                    failed = on_failed(
                        view, att, None if cancelled else error, jitter=self._rng.random
                    )
                    await self.commit(run, failed)
            if self.hooks.observers:
                outcome = _outcome(step.kind, index, error)
                self._step_finished(run, key, lease.attempt, started, outcome, error)
        finally:
            slot.release()
            if run.tasks.get(key) is current:
                del run.tasks[key]

    def _requeue(self, run: Active, key: str) -> None:
        """Queue ``key`` for a new attempt from inside its current attempt's task."""
        if run.tasks.get(key) is asyncio.current_task():
            del run.tasks[key]
        self.enqueue(run, [key])

    async def _execute(
        self, run: Active, step: StepSpec, index: int | None, ctx: StepContext
    ) -> tuple[Any, bytes]:
        item = MISSING
        if index is not None and step.fan_out is not None:
            item = self._fan_out_items(run, step)[index]
        impl = step  # what runs: the step, or the standby a revision put in its place
        if index is None and ctx.step in run.replaced:
            impl = run.spec.step(run.replaced[ctx.step])
        args = bind(impl.params, run.input, run.outputs, item, step.fan_out)
        if args is None:  # cannot happen for a step made ready by advance(); guard anyway
            raise TenantflowError(f"step {step.name!r} is missing an upstream output")
        for p in impl.params:
            if p.source == "step" and p.step is not None and p.name in args:
                upstream = run.spec.step(p.step).output_type
                annotation = p.annotation
                is_item = p.name == step.fan_out and index is not None
                narrower = annotation is not Any and annotation != upstream
                if is_item or (narrower and args[p.name] is not None):
                    args[p.name], _ = contract_for(annotation).check(
                        args[p.name], step=ctx.step, direction=f"input {p.name!r}"
                    )
        if step.kind == "agent" and index is not None:
            return await self._iteration(run, step, index, ctx, args)
        breaker = self.breaker(impl.circuit) if impl.circuit else None
        if breaker is not None and not breaker.allow(self.clock.now()):
            raise CircuitOpenError(
                f"circuit {impl.circuit!r} is open",
                dependency=impl.circuit,
                retry_after_s=breaker.retry_after_s(self.clock.now()),
            )
        try:
            if impl.timeout_s is not None:
                try:
                    async with self.clock.timeout(impl.timeout_s):
                        raw = await impl.fn(ctx, **args)
                except TimeoutError:
                    raise StepTimeoutError(
                        f"step {ctx.step!r} timed out after {impl.timeout_s:g}s",
                        step=ctx.step,
                        timeout_s=impl.timeout_s,
                    ) from None
            else:
                raw = await impl.fn(ctx, **args)
        except BaseException as exc:
            if breaker is not None:
                record_outcome(breaker, exc, self.clock.now())
            raise
        if breaker is not None:
            breaker.record_success(self.clock.now())
        if step.kind == "review":  # the function describes the request; a human decides
            payload = raw.model_dump(mode="json") if hasattr(raw, "model_dump") else raw
            return payload, json.dumps(payload, default=str).encode()
        return contract_for(step.output_type).check(raw, step=ctx.step, direction="output")

    async def _iteration(
        self, run: Active, step: StepSpec, index: int, ctx: StepContext, args: dict[str, Any]
    ) -> tuple[Any, bytes]:
        """Iteration ``index`` of an agent loop; its first one asks the step function for the
        task. A step timeout bounds each iteration."""
        agent: Agent = step.options["agent"]
        turns = [run.outputs[child_key(step.name, j)] for j in range(index)]

        async def body() -> Turn:
            task = await step.fn(ctx, **args) if index == 0 else None
            return await run_iteration(ctx, agent, turns, index, task)

        if step.timeout_s is None:
            turn = await body()
        else:
            try:
                async with self.clock.timeout(step.timeout_s):
                    turn = await body()
            except TimeoutError:
                raise StepTimeoutError(
                    f"iteration {ctx.step!r} timed out after {step.timeout_s:g}s",
                    step=ctx.step,
                    timeout_s=step.timeout_s,
                ) from None
        return turn, turn.model_dump_json().encode()

    def _fan_out_items(self, run: Active, step: StepSpec) -> list[Any]:
        args = bind(step.params, run.input, run.outputs) or {}
        return list(args[step.fan_out or ""])

    # -- outcomes -----------------------------------------------------------------------------

    def view(self, run: Active) -> RunView:
        """A read-only view of ``run`` for the decider, at the clock's current time."""
        return RunView(
            id=run.id,
            tenant_id=run.tenant_id,
            lane=run.lane,
            spec=run.spec,
            input=run.input,
            status=run.status,
            statuses=run.statuses,
            outputs=run.outputs,
            jsons=run.jsons,
            versions=run.versions,
            children=run.children,
            replaced=run.replaced,
            meta=run.meta,
            deferrals=run.deferrals,
            policy=run.policy,
            now=self.clock.now(),
        )

    async def commit(self, run: Active, decision: Decision) -> Any:
        """Write ``decision``'s ops in order, then apply its effects (its ``if_stale`` ones if
        the last op was refused as STALE). Returns the last op's result; raises it if it is an
        error (a review decided meanwhile)."""
        result: Any = None
        for op in decision.ops:
            result = await self.writer.write(op)
        if isinstance(result, BaseException):
            raise result
        effects = decision.effects
        if result is STALE:
            if isinstance(decision.ops[-1], FinishAttempt):
                log.warning(
                    "late result of %s/%s refused (lease lost)", run.id, decision.ops[-1].key
                )
            effects = decision.if_stale
        for effect in effects:
            self._apply(run, effect, result)
        return result

    def _apply(self, run: Active, effect: Effect, result: Any) -> None:
        if isinstance(effect, MirrorUpdate):
            run.statuses.update(effect.statuses)
            run.outputs.update(effect.outputs)
            run.jsons.update(effect.jsons)
            run.children.update(effect.children)
            run.versions.update(effect.versions)
            if effect.version_of is not None:
                run.versions[effect.version_of] = result
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
        elif isinstance(effect, Enqueue):
            self.enqueue(run, effect.keys)
        elif isinstance(effect, EnqueueAfter):
            self.enqueue_later(run, effect.key, effect.delay_s)
        elif isinstance(effect, Requeue):
            self._requeue(run, effect.key)
        elif isinstance(effect, StartUnwind):
            self._start_unwind(run)
        elif isinstance(effect, Finish):
            run.status = effect.status
            self._finish(run, effect.status, effect.result)
        else:
            self.hooks.review_opened(effect.review)

    def _start_unwind(self, run: Active) -> None:
        """A required step failed for good: compensate the run (see :meth:`_unwind`)."""
        run.status = RunStatus.COMPENSATING
        self.spawn(self._unwind(run, cancel=False), f"unwind:{run.id}")

    # -- failure, cancellation and compensation (the saga) -------------------------------------

    async def cancel(self, run: Active, reason: str) -> None:
        async with run.lock:
            if run.status != RunStatus.RUNNING:
                return
            run.status = RunStatus.CANCELLING
            run.error = reason
            await self.writer.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    run=RunUpdate(RunStatus.CANCELLING, error=reason),
                    events=[NewEvent("run.cancelling", None, None, {"reason": reason})],
                )
            )
        self.spawn(self._unwind(run, cancel=True), f"unwind:{run.id}")

    async def _unwind(self, run: Active, *, cancel: bool) -> None:
        """Stop the run's other steps, then compensate its completed steps in reverse order."""
        if run.released:
            return  # handed to another worker, which unwinds it
        for child in [r for r in self.active.values() if r.parent_id == run.id]:
            await self.cancel(child, f"its parent run {run.id} is {run.status.value}")
        for key in list(run.executing):
            task = run.tasks.get(key)
            if task is not None:
                task.cancel()
        pending = [t for t in run.tasks.values() if t is not asyncio.current_task()]
        await asyncio.gather(*pending, return_exceptions=True)
        async with run.lock:
            now = self.clock.now()
            leftover = [
                k
                for k, s in run.statuses.items()
                if s not in TERMINAL_STEP and s != StepStatus.MAPPED
            ]
            mapped = [k for k, s in run.statuses.items() if s == StepStatus.MAPPED]
            if leftover or mapped:
                await self.writer.write(
                    Transition(
                        run.tenant_id,
                        run.id,
                        now,
                        steps=[StepUpdate(k, StepStatus.CANCELLED) for k in leftover + mapped],
                        events=[NewEvent("step.cancelled", k) for k in leftover + mapped],
                    )
                )
                for k in leftover + mapped:
                    run.statuses[k] = StepStatus.CANCELLED
        order = compensation_order(run.spec, run.statuses, run.versions)
        all_ok, undone = await self._compensate_tools(run)
        for name in order:
            ok = await self._compensate(run, run.spec.step(name))
            all_ok = all_ok and ok
        if cancel:
            final = RunStatus.CANCELLED
        elif (order or undone) and all_ok:
            final = RunStatus.COMPENSATED
        else:
            final = RunStatus.FAILED
        error = run.error
        if not all_ok:
            error = f"{run.error}; a compensation failed"
        await self.writer.write(
            Transition(
                run.tenant_id,
                run.id,
                self.clock.now(),
                run=RunUpdate(final, error=error),
                events=[NewEvent(f"run.{final.value}", None, None, {"error": error})],
                release_prefix=f"{run.id}:",
            )
        )
        run.status = final
        run.error = error
        self._finish(run, final, None)

    async def _compensate_tools(self, run: Active) -> tuple[bool, int]:
        """Undo the run's recorded tool effects, most recent first, once each (a call made
        again after a crash is undone once). Returns (all undone, how many were undone)."""
        if not any(tool.compensate is not None for tool in self.gateway.tools):
            return True, 0
        events = await self.store.events(run.tenant_id, run.id)
        done = {
            (e.step, e.data.get("index"))
            for e in events
            if e.kind in ("tool.compensated", "tool.compensation_failed")
        }
        ok, undone = True, 0
        for event in reversed([e for e in events if e.kind == "tool.effect"]):
            mark = (event.step, event.data.get("index"))
            if mark in done:
                continue
            done.add(mark)
            name = str(event.data["tool"])
            try:
                tool = self.gateway.tools.get(name)
            except NotFoundError:
                tool = None
            if tool is None or tool.compensate is None:
                continue
            kind, data = "tool.compensated", {"tool": name, "index": mark[1]}
            try:
                await tool.compensate(event.data.get("result"), **dict(event.data["arguments"]))
            except Exception as exc:
                ok = False
                kind, data = "tool.compensation_failed", {**data, "error": describe(exc)}
            else:
                undone += 1
            await self.writer.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    events=[NewEvent(kind, event.step, event.attempt, data)],
                )
            )
        return ok, undone

    async def _compensate(self, run: Active, step: StepSpec) -> bool:
        assert step.compensate is not None
        for attempt in range(1, step.retry.max_attempts + 1):
            ctx = StepContext(
                run.id,
                run.tenant_id,
                run.spec.name,
                step.name,
                attempt,
                f"{run.id}:{step.name}:compensate",
                self,
                run,
            )
            try:
                await step.compensate(ctx, run.outputs.get(step.name))
            except Exception as exc:
                error = describe(exc)
                if attempt < step.retry.max_attempts:
                    await self.clock.sleep(step.retry.delay_s(attempt, self._rng.random()))
                    continue
                status, kind, data = (
                    StepStatus.COMPENSATION_FAILED,
                    "step.compensation_failed",
                    {"error": error},
                )
            else:
                status, kind, data = StepStatus.COMPENSATED, "step.compensated", {}
            await self.writer.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    steps=[StepUpdate(step.name, status)],
                    events=[NewEvent(kind, step.name, attempt, data)],
                )
            )
            run.statuses[step.name] = status
            return status == StepStatus.COMPENSATED
        return False

    def _finish(self, run: Active, status: RunStatus, result: Any) -> None:
        self.active.pop(run.id, None)
        if run.parent_id is not None:
            self._child_ended(run.id)
        for key in list(run.statuses):
            self.dispatcher.remove((run.id, key))
        self.hooks.on_finish(run, status, result)
        if self.hooks.observers:
            sla = run.policy.run_sla if run.policy is not None else None
            self.hooks.observers.emit(
                RunFinished(
                    tenant_id=run.tenant_id,
                    run_id=run.id,
                    at_s=self.clock.now(),
                    workflow=run.spec.name,
                    status=status.value,
                    submitted_at_s=run.submitted_at_s,
                    state_version=_latest_version(run),
                    run_sla_s=None if sla is None else sla.total_seconds(),
                )
            )

    # -- observers (tenantflow.observability.events) -------------------------------------------

    def submitted(self, run: Active, now: float) -> None:
        """A new run was recorded: stamp its submission time and tell the observers."""
        run.submitted_at_s = now
        if self.hooks.observers:
            self.hooks.observers.emit(
                RunSubmitted(
                    tenant_id=run.tenant_id,
                    run_id=run.id,
                    at_s=now,
                    workflow=run.spec.name,
                    lane=run.lane,
                    queued=run.status == RunStatus.QUEUED,
                )
            )

    def _suspended(self, runs: Iterable[Active]) -> None:
        """This process stops driving ``runs`` (shutdown, or handed to another worker)."""
        now = self.clock.now()
        for run in list(runs):
            self.hooks.observers.emit(
                RunSuspended(
                    tenant_id=run.tenant_id, run_id=run.id, at_s=now, workflow=run.spec.name
                )
            )

    def _step_started(self, run: Active, key: str, attempt: int, started_s: float) -> None:
        self.hooks.observers.emit(
            StepStarted(
                tenant_id=run.tenant_id,
                run_id=run.id,
                at_s=started_s,
                workflow=run.spec.name,
                step=key,
                attempt=attempt,
                state_version=_latest_version(run),
            )
        )

    def _step_finished(
        self,
        run: Active,
        key: str,
        attempt: int,
        started_s: float,
        outcome: StepOutcome,
        error: BaseException | None,
    ) -> None:
        produced = run.versions.get(key) if outcome == "succeeded" else None
        self.hooks.observers.emit(
            StepFinished(
                tenant_id=run.tenant_id,
                run_id=run.id,
                at_s=self.clock.now(),
                workflow=run.spec.name,
                step=key,
                attempt=attempt,
                outcome=outcome,
                started_at_s=started_s,
                state_version=produced if produced is not None else _latest_version(run),
                error_type=type(error).__name__ if outcome in ("failed", "cancelled") else None,
            )
        )

    # -- leases and recovery ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = max(0.05, self.lease_s / 3.0)
        while True:
            await self.clock.sleep(interval)
            try:
                await self.renew_leases()
            except TenantflowError as exc:  # the store is down: leases will lapse; keep trying
                log.warning("lease renewal failed: %s", exc)

    async def renew_leases(self) -> list[tuple[str, str, int]]:
        """Extend our live leases; cancel the attempts whose lease had lapsed (re-queued)."""
        now = self.clock.now()
        lost: list[tuple[str, str, int]] = await self.writer.write(
            RenewLeases(self.owner, now, now + self.lease_s)
        )
        for run_id, key, fence in lost:
            run = self.active.get(run_id)
            # Only the attempt that held this very fence is affected; an attempt between
            # execution and commit will have its late write refused (STALE) and re-queue.
            if run is None or run.executing.get(key) != fence:
                continue
            run.lost.add(key)
            task = run.tasks.get(key)
            if task is not None:
                task.cancel()
        return lost

    async def recover(self, specs: Callable[[str, str], WorkflowSpec | None]) -> list[RunRecord]:
        """Load every unfinished run and resume it; returns runs whose spec is not registered."""
        if self.store.exclusive:
            await self.writer.write(RecoverOrphans(self.clock.now()))
        parked: list[RunRecord] = []
        for record, steps in await self.store.active_runs():
            spec = specs(record.workflow, record.workflow_version)
            if spec is None:
                parked.append(record)
                continue
            self.resume(record, steps, spec)
        return parked

    def resume(self, record: RunRecord, steps: list[StepRecord], spec: WorkflowSpec) -> Active:
        value = contract_for(spec.input_type).load(
            record.input_json, step="<input>", direction="input"
        )
        run = Active(
            record.id,
            record.tenant_id,
            record.lane,
            spec,
            value,
            record.status,
            {s.key: s.status for s in steps},
            error=record.error,
            submitted_at_s=record.created_at,
            parent_id=record.parent_run_id,
            budget_run=record.meta.get("budget_run"),
            meta=dict(record.meta),
        )
        plan = record.meta.get("plan")
        if isinstance(plan, dict):
            run.replaced = {str(k): str(v) for k, v in dict(plan.get("replaced") or {}).items()}
        for s in steps:
            name, index = parse_key(s.key)
            run.versions[s.key] = s.version
            if index is not None:
                run.children[name] = max(run.children.get(name, 0), index + 1)
            if s.output_json is not None and s.status in (
                StepStatus.SUCCEEDED,
                StepStatus.COMPENSATED,
            ):
                step = spec.step(name)
                annotation = step.result_type if index is None else step.item_type
                run.outputs[s.key] = contract_for(annotation).load(s.output_json, step=s.key)
                run.jsons[s.key] = s.output_json
        self.active[run.id] = run
        run.progressed = any(s == StepStatus.SUCCEEDED for s in run.statuses.values())
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
            self.spawn(
                self._unwind(run, cancel=run.status == RunStatus.CANCELLING), f"unwind:{run.id}"
            )
        elif run.status in TERMINAL_RUN:
            self.active.pop(run.id, None)
        return run

    # -- waiting: rate limits, reviews, budget decisions ----------------------------------------

    async def _park_rate_limited(
        self, run: Active, view: RunView, att: Attempt, error: RateLimitedError
    ) -> None:
        wait = max(0.001, error.retry_after_s)
        resource = str(error.fields.get("resource", ""))
        run.deferrals[att.key] = run.deferrals.get(att.key, 0) + 1
        result = await self.commit(run, on_rate_limited(view, att, resource, wait))
        if result is not STALE and self.hooks.observers:
            self.hooks.observers.emit(
                RateLimitWait(
                    tenant_id=run.tenant_id,
                    run_id=run.id,
                    at_s=view.now,
                    step=att.key,
                    attempt=att.attempt,
                    resource=resource,
                    wait_s=wait,
                )
            )

    def expect_child(self, child_id: str, run: Active, key: str) -> None:
        """Step ``key`` of ``run`` is about to wait for child run ``child_id``: registered
        before the attempt ends, so a child ending meanwhile still wakes it."""
        self._child_waits[child_id] = _ChildWait(run, key)

    def _child_ended(self, child_id: str) -> None:
        wait = self._child_waits.get(child_id)
        if wait is None:
            return
        if wait.parked:
            del self._child_waits[child_id]
            self.enqueue(wait.run, [wait.key])
        else:
            wait.done = True

    async def _await_child(
        self, run: Active, view: RunView, att: Attempt, signal: AwaitChild
    ) -> None:
        run.deferrals[att.key] = run.deferrals.get(att.key, 0) + 1
        # In this process the child's end wakes the step (see expect_child).
        decision = on_awaiting_child(view, att, signal.run_id, signal.reason)
        parked = await self.commit(run, decision) is not STALE
        wait = self._child_waits.get(signal.run_id)
        if not parked:
            self._child_waits.pop(signal.run_id, None)
        elif wait is None or wait.done:  # the child ended meanwhile
            self._child_waits.pop(signal.run_id, None)
            self._requeue(run, att.key)
        else:
            wait.parked = True
            self.enqueue_later(run, att.key, CHILD_FALLBACK_S)

    async def _open_review(
        self,
        run: Active,
        view: RunView,
        att: Attempt,
        payload: Any,
        *,
        kind: str = "step",
        extra: dict[str, Any] | None = None,
    ) -> None:
        review_id = "rev_" + secrets.token_hex(10)
        decision = on_review_requested(view, att, payload, review_id, kind=kind, extra=extra)
        await self.commit(run, decision)

    async def _escalate(self, run: Active, view: RunView, att: Attempt, signal: Escalate) -> None:
        payload = {"reason": signal.reason, "prompt": signal.prompt[:4000]}
        extra = {"call_index": signal.index}
        await self._open_review(run, view, att, payload, kind="escalation", extra=extra)

    async def set_running(
        self, run: Active, event: str, data: dict[str, Any] | None = None
    ) -> None:
        """Admit a queued run or resume a paused one: it runs its ready steps again."""
        async with run.lock:
            if run.status not in (RunStatus.QUEUED, RunStatus.PAUSED) or run.released:
                return
            await self.writer.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    run=RunUpdate(RunStatus.RUNNING),
                    events=[NewEvent(event, None, None, data or {})],
                )
            )
            run.status = RunStatus.RUNNING
            self.enqueue(run, [k for k, s in run.statuses.items() if s == StepStatus.READY])
        if event == "run.admitted" and self.hooks.observers:
            self.hooks.observers.emit(
                RunAdmitted(
                    tenant_id=run.tenant_id,
                    run_id=run.id,
                    at_s=self.clock.now(),
                    workflow=run.spec.name,
                    submitted_at_s=run.submitted_at_s,
                )
            )

    async def review_decided(
        self,
        run: Active,
        review: ReviewRecord,
        *,
        approved: bool,
        comment: str | None,
        reviewer: str,
        fail_step: bool = False,
    ) -> Any:
        """Record a human decision and move the waiting step on, in one transaction."""
        async with run.lock:
            decision = on_review_decided(
                self.view(run),
                review,
                approved=approved,
                comment=comment,
                reviewer=reviewer,
                fail_step=fail_step,
                human_response=human_response,
            )
            return await self.commit(run, decision)


def _latest_version(run: Active) -> int:
    """The run's latest committed state version (0: only its input)."""
    return max((v or 0 for v in run.versions.values()), default=0)


def _outcome(kind: str, index: int | None, error: BaseException | None) -> StepOutcome:
    """How an attempt ended, as :meth:`Runtime._attempt` handled it."""
    if error is None:
        return "review" if kind == "review" else "succeeded"
    if isinstance(error, RateLimitedError):
        return "rate_limited"
    if isinstance(error, SkipStep) and index is None:
        return "skipped"
    if isinstance(error, Escalate):
        return "escalated"
    if isinstance(error, Pause):
        return "paused"
    if isinstance(error, AwaitChild):
        return "waiting"
    return "cancelled" if isinstance(error, asyncio.CancelledError) else "failed"
