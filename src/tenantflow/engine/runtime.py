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

from tenantflow.domain.agent import Agent, Turn, next_move
from tenantflow.domain.breaker import CircuitBreaker, record_outcome
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.records import (
    STALE,
    TERMINAL_RUN,
    TERMINAL_STEP,
    FailAttempt,
    FinishAttempt,
    NewEvent,
    ParkAttempt,
    RecordCall,
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
from tenantflow.domain.replan import Failure, check_revision, plan_entry
from tenantflow.domain.reviews import ReviewDecision
from tenantflow.domain.run import MISSING, Plan, advance, bind, compensation_order, run_result
from tenantflow.domain.spec import StepSpec, WorkflowSpec, child_key, parse_key
from tenantflow.domain.tenancy import AuditEntry, ReviewRecord, ReviewStatus, UsageDelta
from tenantflow.engine.agent import run_iteration
from tenantflow.engine.context import StepContext
from tenantflow.engine.dispatch import Dispatcher, Slot
from tenantflow.engine.gateway import (
    AwaitChild,
    Escalate,
    Gateway,
    Pause,
    SkipStep,
    human_response,
)
from tenantflow.engine.writer import Writer
from tenantflow.errors import (
    CircuitOpenError,
    NotAllowedError,
    NotFoundError,
    RateLimitedError,
    SpecError,
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

# Errors no retry can fix: fail the step at once.
_NEVER_RETRY = (NotAllowedError, NotFoundError, SpecError)

__all__ = ["Active", "Runtime"]

log = logging.getLogger("tenantflow.engine")


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:1999] + "…"


def result_json(spec: WorkflowSpec, result: Any) -> bytes:
    """A completed run's result as stored: the sink's output, or a JSON object by sink name."""

    def one(name: str, value: Any) -> bytes:
        return b"null" if value is None else contract_for(spec.step(name).result_type).dump(value)

    if len(spec.sinks) == 1:
        return one(spec.sinks[0], result)
    return json.dumps({n: json.loads(one(n, v)) for n, v in result.items()}).encode()


def delta_bytes(name: str, output_json: bytes) -> bytes:
    return b"{" + json.dumps(name).encode() + b":" + output_json + b"}"


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
                if error is None and step.kind == "review":
                    await self._open_review(run, key, lease.fence, value, ctx)
                elif error is None:
                    await self._succeeded(
                        run, step, key, index, lease.fence, value, output_json, ctx
                    )
                elif isinstance(error, RateLimitedError):
                    await self._park_rate_limited(run, key, lease.fence, error, ctx)
                elif isinstance(error, SkipStep) and index is None:
                    await self._skip_for_budget(run, key, lease.fence, error.reason, ctx)
                elif isinstance(error, Escalate):
                    await self._escalate(run, key, lease.fence, error, ctx)
                elif isinstance(error, Pause):
                    await self._pause(run, key, lease.fence, error.reason, ctx)
                elif isinstance(error, AwaitChild):
                    await self._await_child(run, key, lease.fence, error, ctx)
                else:
                    await self._failed(
                        run, step, key, index, lease.fence, lease.attempt, error, ctx
                    )
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

    async def _succeeded(
        self,
        run: Active,
        step: StepSpec,
        key: str,
        index: int | None,
        fence: int,
        value: Any,
        output_json: bytes,
        ctx: StepContext,
    ) -> None:
        if step.kind == "agent" and index is not None:
            await self._iteration_succeeded(run, step, key, index, fence, value, output_json, ctx)
            return
        now = self.clock.now()
        then = Transition(
            run.tenant_id,
            run.id,
            now,
            events=self._notes(key, ctx),
            usage=[UsageDelta("steps", 1, step.name), *ctx.notes_usage],
        )
        statuses = dict(run.statuses)
        statuses[key] = StepStatus.SUCCEEDED
        outputs = run.outputs
        plan = Plan()
        gathered_json: bytes | None = None
        settled: str | None = key
        if index is not None:
            n = run.children[step.name]
            done = all(
                statuses.get(child_key(step.name, i)) == StepStatus.SUCCEEDED for i in range(n)
            )
            settled = None
            if done and run.status == RunStatus.RUNNING:
                jsons = [
                    output_json if i == index else run.jsons[child_key(step.name, i)]
                    for i in range(n)
                ]
                gathered_json = b"[" + b",".join(jsons) + b"]"
                statuses[step.name] = StepStatus.SUCCEEDED
                then.steps.append(
                    StepUpdate(
                        step.name,
                        StepStatus.SUCCEEDED,
                        output_json=gathered_json,
                        delta_json=delta_bytes(step.name, gathered_json),
                    )
                )
                then.events.append(NewEvent("step.gathered", step.name, None, {"elements": n}))
                settled = step.name
        if settled is not None and run.status == RunStatus.RUNNING:
            trial = dict(outputs)
            trial[key] = value
            if settled != key:
                trial[settled] = [
                    value if i == index else outputs[child_key(step.name, i)]
                    for i in range(run.children[step.name])
                ]
            plan = advance(run.spec, statuses, trial, run.input, changed=[settled])
            self._plan_to_transition(run, plan, then, trial)
        delta = delta_bytes(key, output_json) if index is None else None
        result = await self._commit_success(run, key, fence, now, value, output_json, delta, then)
        if result is STALE:
            return
        if index is None:
            run.versions[key] = result
        elif gathered_json is not None:
            run.statuses[step.name] = StepStatus.SUCCEEDED
            run.outputs[step.name] = [
                run.outputs[child_key(step.name, i)] for i in range(run.children[step.name])
            ]
            run.jsons[step.name] = gathered_json
        self._apply_plan(run, plan)

    async def _iteration_succeeded(
        self,
        run: Active,
        step: StepSpec,
        key: str,
        index: int,
        fence: int,
        turn: Turn,
        output_json: bytes,
        ctx: StepContext,
    ) -> None:
        """An agent iteration is recorded: in the same transaction, create the next iteration,
        or settle the agent step (its result, or its failure at a bound) and plan what follows."""
        agent: Agent = step.options["agent"]
        now = self.clock.now()
        turns = [*(run.outputs[child_key(step.name, j)] for j in range(index)), turn]
        move = next_move(agent, turns, now)
        summary = {
            "iteration": index,
            "tools": [r.name for r in turn.tool_results],
            "refused": [r.name for r in turn.tool_results if not r.ok],
            "children": [r.child_run for r in turn.tool_results if r.child_run],
            "tokens_in": turn.tokens_in,
            "tokens_out": turn.tokens_out,
            "next": move.kind,
        }
        then = Transition(
            run.tenant_id,
            run.id,
            now,
            events=[*self._notes(key, ctx), NewEvent("agent.iteration", key, ctx.attempt, summary)],
            usage=[UsageDelta("steps", 1, step.name), *ctx.notes_usage],
        )
        statuses = dict(run.statuses)
        statuses[key] = StepStatus.SUCCEEDED
        plan = Plan()
        following = child_key(step.name, index + 1)
        settled_json: bytes | None = None
        running = run.status == RunStatus.RUNNING
        if running and move.kind == "continue":
            then.steps.append(StepUpdate(following, StepStatus.READY, create=True))
        elif running and move.kind == "finish" and move.result is not None:
            settled_json = move.result.model_dump_json().encode()
            statuses[step.name] = StepStatus.SUCCEEDED
            then.steps.append(
                StepUpdate(
                    step.name,
                    StepStatus.SUCCEEDED,
                    output_json=settled_json,
                    delta_json=delta_bytes(step.name, settled_json),
                )
            )
            then.events.append(
                NewEvent(
                    "agent.finished",
                    step.name,
                    None,
                    {"status": move.result.status, "iterations": move.result.iterations},
                )
            )
            trial = {**run.outputs, key: turn, step.name: move.result}
            plan = advance(run.spec, statuses, trial, run.input, changed=[step.name])
            self._plan_to_transition(run, plan, then, trial)
        elif running and move.kind == "fail":
            error = move.error or "the agent loop failed"
            statuses[step.name] = StepStatus.FAILED
            then.steps.append(StepUpdate(step.name, StepStatus.FAILED, error=error))
            then.events.append(NewEvent("step.failed", step.name, None, {"error": error}))
            if step.optional:
                plan = advance(run.spec, statuses, run.outputs, run.input, changed=[step.name])
                self._plan_to_transition(run, plan, then, run.outputs)
            else:
                run.error = f"step {step.name!r} failed: {error}"
                then.run = RunUpdate(RunStatus.COMPENSATING, error=run.error)
                then.events.append(NewEvent("run.failing", None, None, {"error": run.error}))
        delta = delta_bytes(key, output_json)
        result = await self._commit_success(run, key, fence, now, turn, output_json, delta, then)
        if result is STALE:
            return
        run.versions[key] = result
        if not running:
            return
        if move.kind == "continue":
            run.statuses[following] = StepStatus.READY
            run.children[step.name] = index + 2
            self.enqueue(run, [following])
        elif settled_json is not None:
            run.statuses[step.name] = StepStatus.SUCCEEDED
            run.outputs[step.name] = move.result
            run.jsons[step.name] = settled_json
            self._apply_plan(run, plan)
        else:
            run.statuses[step.name] = StepStatus.FAILED
            self._failed_for_good(run, step, plan)

    async def _commit_success(
        self,
        run: Active,
        key: str,
        fence: int,
        now: float,
        value: Any,
        output_json: bytes,
        delta: bytes | None,
        then: Transition,
    ) -> Any:
        """Commit a succeeded attempt and record it in memory. Returns what the store returned:
        the state version written, or STALE when the lease was lost (the step is queued
        again and nothing is recorded in memory)."""
        result = await self.writer.write(
            FinishAttempt(run.tenant_id, run.id, key, fence, now, output_json, delta, then)
        )
        if result is STALE:
            log.warning("late result of %s/%s refused (lease lost)", run.id, key)
            self._requeue(run, key)
            return STALE
        run.statuses[key] = StepStatus.SUCCEEDED
        run.progressed = True
        run.outputs[key] = value
        run.jsons[key] = output_json
        return result

    def _plan_to_transition(
        self, run: Active, plan: Plan, then: Transition, outputs: dict[str, Any]
    ) -> None:
        for key in plan.ready:
            then.steps.append(StepUpdate(key, StepStatus.READY))
        for key, reason in plan.skipped:
            then.steps.append(StepUpdate(key, StepStatus.SKIPPED))
            then.events.append(NewEvent("step.skipped", key, None, {"reason": reason}))
        for key, n in plan.mapped:
            then.steps.append(StepUpdate(key, StepStatus.MAPPED))
            then.steps.extend(
                StepUpdate(child_key(key, i), StepStatus.READY, create=True) for i in range(n)
            )
            then.events.append(NewEvent("step.mapped", key, None, {"elements": n}))
        for key in plan.gathered:  # an empty fan-out: its output is []
            then.steps.append(
                StepUpdate(
                    key, StepStatus.SUCCEEDED, output_json=b"[]", delta_json=delta_bytes(key, b"[]")
                )
            )
        for key, reason in plan.failed:
            then.steps.append(StepUpdate(key, StepStatus.FAILED, error=reason))
            then.events.append(NewEvent("step.failed", key, None, {"error": reason}))
        fatal = [k for k, _ in plan.failed if not run.spec.step(k).optional]
        if fatal:
            run.error = f"step {fatal[0]!r} failed: {dict(plan.failed)[fatal[0]]}"
            then.run = RunUpdate(RunStatus.COMPENSATING, error=run.error)
            then.events.append(NewEvent("run.failing", None, None, {"error": run.error}))
        elif plan.completed:
            result = run_result(run.spec, outputs)
            then.run = RunUpdate(RunStatus.COMPLETED, result_json=result_json(run.spec, result))
            then.events.append(NewEvent("run.completed"))
            then.release_prefix = f"{run.id}:"

    def _start_unwind(self, run: Active) -> None:
        """A required step failed for good: compensate the run (see :meth:`_unwind`)."""
        run.status = RunStatus.COMPENSATING
        self.spawn(self._unwind(run, cancel=False), f"unwind:{run.id}")

    def _failed_for_good(self, run: Active, step: StepSpec, plan: Plan) -> None:
        """After a step's failure for good is committed: an optional step's run goes on with
        ``plan``, any other run compensates."""
        if step.optional:
            self._apply_plan(run, plan)
        else:
            self._start_unwind(run)

    def _apply_plan(self, run: Active, plan: Plan) -> None:
        for key, status in plan.statuses().items():
            run.statuses[key] = status
        for key, n in plan.mapped:
            run.children[key] = n
        for key in plan.gathered:
            run.outputs[key] = []
            run.jsons[key] = b"[]"
        if any(not run.spec.step(k).optional for k, _ in plan.failed):
            self._start_unwind(run)
            return
        if plan.completed:
            run.status = RunStatus.COMPLETED
            self._finish(run, RunStatus.COMPLETED, run_result(run.spec, run.outputs))
            return
        ready = list(plan.ready)
        for key, n in plan.mapped:
            ready.extend(child_key(key, i) for i in range(n))
        self.enqueue(run, ready)

    async def _failed(
        self,
        run: Active,
        step: StepSpec,
        key: str,
        index: int | None,
        fence: int,
        attempt: int,
        error: BaseException,
        ctx: StepContext,
    ) -> None:
        now = self.clock.now()
        cancelled = isinstance(error, asyncio.CancelledError)
        description = "cancelled" if cancelled else _describe(error)
        then = Transition(
            run.tenant_id, run.id, now, events=self._notes(key, ctx), usage=list(ctx.notes_usage)
        )
        failures = attempt - run.deferrals.get(key, 0)
        if cancelled or run.status != RunStatus.RUNNING:
            then.steps.append(StepUpdate(key, StepStatus.CANCELLED))
            result = await self.writer.write(
                FailAttempt(run.tenant_id, run.id, key, fence, now, description, None, then)
            )
            if result is not STALE:
                run.statuses[key] = StepStatus.CANCELLED
            return
        if not isinstance(error, _NEVER_RETRY) and step.retry.should_retry(failures, error):
            delay = step.retry.delay_s(failures, self._rng.random())
            if isinstance(error, CircuitOpenError):
                delay = max(delay, float(error.fields.get("retry_after_s", 0.0)))
            result = await self.writer.write(
                FailAttempt(run.tenant_id, run.id, key, fence, now, description, now + delay, then)
            )
            if result is STALE:
                self._requeue(run, key)
                return
            run.statuses[key] = StepStatus.READY
            self.enqueue_later(run, key, delay)
            return
        # Failed for good, unless the workflow revises its plan.
        revisable = index is None and run.spec.replan is not None
        if revisable and await self._revise(run, key, fence, attempt, description, error, then):
            return
        failing = step.name if index is not None else key
        statuses = dict(run.statuses)
        statuses[key] = StepStatus.FAILED
        if index is not None:
            statuses[step.name] = StepStatus.FAILED
            then.steps.append(StepUpdate(step.name, StepStatus.FAILED, error=description))
        plan = Plan()
        if step.optional:
            plan = advance(run.spec, statuses, run.outputs, run.input, changed=[failing])
            self._plan_to_transition(run, plan, then, run.outputs)
        else:
            run.error = f"step {key!r} failed: {description}"
            then.run = RunUpdate(RunStatus.COMPENSATING, error=run.error)
            then.events.append(NewEvent("run.failing", None, None, {"error": run.error}))
        result = await self.writer.write(
            FailAttempt(run.tenant_id, run.id, key, fence, now, description, None, then)
        )
        if result is STALE:
            self._requeue(run, key)
            return
        run.statuses[key] = StepStatus.FAILED
        if index is not None:
            run.statuses[step.name] = StepStatus.FAILED
        self._failed_for_good(run, step, plan)

    async def _revise(
        self,
        run: Active,
        key: str,
        fence: int,
        attempt: int,
        description: str,
        error: BaseException,
        then: Transition,
    ) -> bool:
        """Ask the workflow's replanner for a revision of the plan after ``key`` failed for
        good, and commit it with the failure as the run's next plan version. False: no
        revision (or a refused one, recorded in ``then``); the step fails as it would have."""
        spec = run.spec
        assert spec.replan is not None
        failure = Failure(
            step=key,
            error_type=type(error).__name__,
            message=description,
            attempts=attempt,
            revision=run.revisions,
            statuses={k: s.value for k, s in run.statuses.items()},
        )
        refused: str | None = None
        try:
            revision = spec.replan(failure)
        except Exception as exc:  # a broken replanner must not wedge the run
            revision, refused = None, f"the replanner raised {_describe(exc)}"
        if revision is None and refused is None:
            return False
        if revision is not None:
            refused = check_revision(
                spec, run.statuses, key, revision, run.revisions, spec.max_revisions
            )
        if refused is not None or revision is None:
            then.events.append(NewEvent("plan.refused", key, attempt, {"reason": refused}))
            return False
        now = then.now
        version = run.revisions + 2  # plan 1 is the one the run was submitted with
        replaced = {**run.replaced, **revision.replace}
        entry = plan_entry(version, key, revision, replaced)
        meta = {**run.meta, "plan": entry}
        plan_json = json.dumps({"plan": entry}).encode()
        then.run = RunUpdate(RunStatus.RUNNING, meta=meta)
        then.events.append(NewEvent("plan.revised", key, attempt, entry))
        then.audit.append(
            AuditEntry(
                f"run:{run.id}",
                "plan.revised",
                f"step:{key}",
                {"version": version, "reason": revision.reason},
            )
        )
        statuses = dict(run.statuses)
        skipped = list(revision.skip)
        for name in skipped:
            statuses[name] = StepStatus.SKIPPED
            then.steps.append(StepUpdate(name, StepStatus.SKIPPED))
            then.events.append(
                NewEvent("step.skipped", name, None, {"reason": f"plan {version}: skipped"})
            )
        for name in revision.insert:
            statuses[name] = StepStatus.READY
            then.steps.append(StepUpdate(name, StepStatus.READY))
            then.events.append(NewEvent("step.inserted", name, None, {"plan": version}))
        if key in revision.replace:
            statuses[key] = StepStatus.READY
        # The plan version is a state version of its own, produced by the failed step's key.
        then.steps.append(StepUpdate(key, statuses[key], delta_json=plan_json))
        plan = advance(spec, statuses, run.outputs, run.input, changed=skipped)
        self._plan_to_transition(run, plan, then, run.outputs)
        if then.run.meta is None:  # the plan ended the run: keep the revision in its meta
            then.run.meta = meta
        retry_at = now if key in revision.replace else None
        result = await self.writer.write(
            FailAttempt(run.tenant_id, run.id, key, fence, now, description, retry_at, then)
        )
        if result is STALE:
            self._requeue(run, key)
            return True
        run.meta = meta
        run.replaced = replaced
        run.deferrals[key] = attempt  # the standby starts with a fresh retry budget
        for name, status in statuses.items():
            if run.statuses.get(name) != status:
                run.statuses[name] = status
        self._apply_plan(run, plan)
        if run.status == RunStatus.RUNNING:
            self.enqueue(run, revision.insert)
            if key in revision.replace:
                self._requeue(run, key)
        return True

    def _notes(self, key: str, ctx: StepContext) -> list[NewEvent]:
        return list(ctx.notes)

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
                kind, data = "tool.compensation_failed", {**data, "error": _describe(exc)}
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
        notes: list[NewEvent] = []  # ctx.log of every attempt, committed with the outcome
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
                notes.extend(ctx.notes)
                error = _describe(exc)
                if attempt < step.retry.max_attempts:
                    await self.clock.sleep(step.retry.delay_s(attempt, self._rng.random()))
                    continue
                status, kind, data = (
                    StepStatus.COMPENSATION_FAILED,
                    "step.compensation_failed",
                    {"error": error},
                )
            else:
                notes.extend(ctx.notes)
                status, kind, data = StepStatus.COMPENSATED, "step.compensated", {}
            await self.writer.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    steps=[StepUpdate(step.name, status)],
                    events=[*notes, NewEvent(kind, step.name, attempt, data)],
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

    async def _park(
        self,
        run: Active,
        key: str,
        fence: int,
        status: StepStatus,
        available_at: float,
        reason: str,
        then: Transition,
    ) -> bool:
        """End the attempt without an outcome; False if its lease was lost (re-queued)."""
        result = await self.writer.write(
            ParkAttempt(
                run.tenant_id, run.id, key, fence, then.now, status, available_at, reason, then
            )
        )
        if result is STALE:
            self._requeue(run, key)
            return False
        run.statuses[key] = status
        return True

    async def _park_rate_limited(
        self, run: Active, key: str, fence: int, error: RateLimitedError, ctx: StepContext
    ) -> None:
        now = self.clock.now()
        wait = max(0.001, error.retry_after_s)
        resource = str(error.fields.get("resource", ""))
        run.deferrals[key] = run.deferrals.get(key, 0) + 1
        then = Transition(
            run.tenant_id,
            run.id,
            now,
            events=self._notes(key, ctx),
            usage=[
                UsageDelta("rate_limit_waits", 1, resource),
                UsageDelta("rate_limit_wait_s", wait, resource),
                *ctx.notes_usage,
            ],
        )
        reason = f"rate limit {resource}: retry in {wait:.3g}s"
        if await self._park(run, key, fence, StepStatus.READY, now + wait, reason, then):
            self.enqueue_later(run, key, wait)
            if self.hooks.observers:
                self.hooks.observers.emit(
                    RateLimitWait(
                        tenant_id=run.tenant_id,
                        run_id=run.id,
                        at_s=now,
                        step=key,
                        attempt=ctx.attempt,
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
        self, run: Active, key: str, fence: int, signal: AwaitChild, ctx: StepContext
    ) -> None:
        now = self.clock.now()
        run.deferrals[key] = run.deferrals.get(key, 0) + 1
        then = Transition(
            run.tenant_id,
            run.id,
            now,
            events=[
                *self._notes(key, ctx),
                NewEvent("step.waiting", key, ctx.attempt, {"child_run": signal.run_id}),
            ],
            usage=list(ctx.notes_usage),
        )
        # Claimable at once in the store: after a restart the step runs again, finds its child
        # (recorded) and waits again or goes on; in this process the child's end wakes it.
        parked = await self._park(run, key, fence, StepStatus.READY, now, signal.reason, then)
        wait = self._child_waits.get(signal.run_id)
        if not parked:
            self._child_waits.pop(signal.run_id, None)
        elif wait is None or wait.done:  # the child ended meanwhile
            self._child_waits.pop(signal.run_id, None)
            self._requeue(run, key)
        else:
            wait.parked = True
            self.enqueue_later(run, key, CHILD_FALLBACK_S)

    async def _open_review(
        self,
        run: Active,
        key: str,
        fence: int,
        payload: Any,
        ctx: StepContext,
        *,
        kind: str = "step",
        extra: dict[str, Any] | None = None,
    ) -> None:
        now = self.clock.now()
        policy = run.policy
        step = run.spec.step(parse_key(key)[0])
        pool = str(
            step.options.get("pool")
            or (policy.review_pool_for(run.tenant_id) if policy else "shared")
        )
        sla = step.options.get("sla_s") or (
            policy.review_sla.total_seconds() if policy and policy.review_sla else None
        )
        lane = policy.review_lane if policy else run.lane
        review = ReviewRecord(
            id="rev_" + secrets.token_hex(10),
            tenant_id=run.tenant_id,
            run_id=run.id,
            step=key,
            pool=pool,
            lane=lane,
            status=ReviewStatus.PENDING,
            sla_due=None if sla is None else now + float(sla),
            created_at=now,
            payload={"kind": kind, "request": payload, **(extra or {})},
        )
        then = Transition(
            run.tenant_id,
            run.id,
            now,
            events=[
                *self._notes(key, ctx),
                NewEvent(
                    "review.requested",
                    key,
                    ctx.attempt,
                    {"review_id": review.id, "pool": pool, "kind": kind},
                ),
            ],
            audit=[
                AuditEntry(
                    f"run:{run.id}",
                    "review.requested",
                    f"review:{review.id}",
                    {"step": key, "pool": pool, "kind": kind},
                )
            ],
            usage=[UsageDelta("reviews", 1, pool), *ctx.notes_usage],
            review=review,
        )
        if await self._park(run, key, fence, StepStatus.WAITING, 0.0, f"review {review.id}", then):
            self.hooks.review_opened(review)

    async def _escalate(
        self, run: Active, key: str, fence: int, signal: Escalate, ctx: StepContext
    ) -> None:
        await self._open_review(
            run,
            key,
            fence,
            {"reason": signal.reason, "prompt": signal.prompt[:4000]},
            ctx,
            kind="escalation",
            extra={"call_index": signal.index},
        )

    async def _skip_for_budget(
        self, run: Active, key: str, fence: int, reason: str, ctx: StepContext
    ) -> None:
        now = self.clock.now()
        statuses = dict(run.statuses)
        statuses[key] = StepStatus.SKIPPED
        plan = advance(run.spec, statuses, run.outputs, run.input, changed=[key])
        then = Transition(
            run.tenant_id, run.id, now, events=self._notes(key, ctx), usage=list(ctx.notes_usage)
        )
        self._plan_to_transition(run, plan, then, run.outputs)
        if await self._park(run, key, fence, StepStatus.SKIPPED, 0.0, reason, then):
            self._apply_plan(run, plan)

    async def _pause(
        self, run: Active, key: str, fence: int, reason: str, ctx: StepContext
    ) -> None:
        now = self.clock.now()
        then = Transition(
            run.tenant_id,
            run.id,
            now,
            run=RunUpdate(RunStatus.PAUSED, error=reason),
            events=[
                *self._notes(key, ctx),
                NewEvent("run.paused", key, ctx.attempt, {"reason": reason}),
            ],
            audit=[AuditEntry(f"run:{run.id}", "run.paused", f"run:{run.id}", {"reason": reason})],
            usage=list(ctx.notes_usage),
        )
        if await self._park(run, key, fence, StepStatus.READY, now, reason, then):
            run.status = RunStatus.PAUSED

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
        from tenantflow.domain.tenancy import DecideReview

        async with run.lock:
            now = self.clock.now()
            key = review.step
            kind = review.payload.get("kind", "step")
            decide = DecideReview(run.tenant_id, review.id, reviewer, approved, comment, now)
            then = Transition(run.tenant_id, run.id, now)
            plan = Plan()
            value: Any = None
            output_json = b""
            fatal = fail_step or (kind == "escalation" and not approved)
            if run.statuses.get(key) != StepStatus.WAITING or run.status not in (
                RunStatus.RUNNING,
                RunStatus.PAUSED,
            ):
                fatal = False
                then = Transition(run.tenant_id, run.id, now)  # the run moved on: record only
            elif fatal:
                reason = comment or "rejected by reviewer"
                run.error = f"step {key!r} failed: review {review.id} {reason}"
                then.steps.append(StepUpdate(key, StepStatus.FAILED, error=reason))
                then.events.append(NewEvent("step.failed", key, None, {"error": run.error}))
                then.run = RunUpdate(RunStatus.COMPENSATING, error=run.error)
                then.events.append(NewEvent("run.failing", None, None, {"error": run.error}))
            elif kind == "escalation":
                index = int(review.payload.get("call_index", 1))
                await self.writer.write(
                    RecordCall(
                        run.tenant_id,
                        run.id,
                        key,
                        index,
                        "model",
                        "human",
                        human_response(comment or "approved"),
                        now,
                    )
                )
                then.steps.append(StepUpdate(key, StepStatus.READY, available_at=now))
                then.events.append(NewEvent("step.resumed", key, None, {"review_id": review.id}))
            else:
                decision = ReviewDecision(
                    approved=approved, comment=comment, reviewer=reviewer, review_id=review.id
                )
                value, output_json = contract_for(ReviewDecision).check(
                    decision, step=key, direction="output"
                )
                statuses = dict(run.statuses)
                statuses[key] = StepStatus.SUCCEEDED
                outputs = {**run.outputs, key: value}
                plan = advance(run.spec, statuses, outputs, run.input, changed=[key])
                then.steps.append(
                    StepUpdate(
                        key,
                        StepStatus.SUCCEEDED,
                        output_json=output_json,
                        delta_json=delta_bytes(key, output_json),
                    )
                )
                then.events.append(
                    NewEvent(
                        "step.succeeded", key, None, {"review_id": review.id, "approved": approved}
                    )
                )
                self._plan_to_transition(run, plan, then, outputs)
            decide.then = then
            result = await self.writer.write(decide)
            if isinstance(result, BaseException):
                raise result
            if run.statuses.get(key) != StepStatus.WAITING:
                return result
            if fatal:
                run.statuses[key] = StepStatus.FAILED
                self._start_unwind(run)
            elif kind == "escalation":
                run.statuses[key] = StepStatus.READY
                self.enqueue(run, [key])
            else:
                run.statuses[key] = StepStatus.SUCCEEDED
                run.progressed = True
                run.outputs[key] = value
                run.jsons[key] = output_json
                run.versions[key] = (
                    max((v or 0) for v in run.versions.values()) + 1 if run.versions else 1
                )
                self._apply_plan(run, plan)
            return result


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
