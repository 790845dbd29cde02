"""The run's decider: what an attempt's outcome means for its run, as ops and effects.

Each ``on_*`` function takes a frozen :class:`RunView` of a run (its spec, input, step statuses
and outputs, plus the time ``now``) and what happened to one attempt, and returns a
:class:`Decision`: the ops to write (the last one carries the follow-on transition, so it
commits in the same transaction as the outcome) and the effects to apply once they have
committed (update the in-memory mirror, queue steps, start the saga, finish the run).

Nothing here does I/O, awaits, reads a clock or draws a random number: time and jitter come in
as arguments. The embedded driver (:mod:`tenantflow.engine.execution.driver`) applies the effects
to its mirror and dispatcher; another placement can publish them instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenantflow.domain.agent import Agent, Turn, next_move
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.records import (
    FailAttempt,
    FinishAttempt,
    NewEvent,
    ParkAttempt,
    RecordCall,
    RunStatus,
    RunUpdate,
    StepStatus,
    StepUpdate,
    Transition,
)
from tenantflow.domain.replan import Failure, check_revision, plan_entry
from tenantflow.domain.reviews import ReviewDecision
from tenantflow.domain.run import Plan, advance, run_result
from tenantflow.domain.spec import StepSpec, WorkflowSpec, child_key, parse_key
from tenantflow.domain.tenancy import (
    AuditEntry,
    DecideReview,
    ReviewRecord,
    ReviewStatus,
    UsageDelta,
)
from tenantflow.errors import CircuitOpenError, NotAllowedError, NotFoundError, SpecError

if TYPE_CHECKING:
    from tenantflow.domain.policy import Policy

__all__ = [
    "Attempt",
    "Decision",
    "Effect",
    "Enqueue",
    "EnqueueAfter",
    "Finish",
    "MirrorUpdate",
    "Planned",
    "Requeue",
    "ReviewOpened",
    "RunView",
    "StartUnwind",
    "delta_bytes",
    "describe",
    "on_awaiting_child",
    "on_failed",
    "on_iteration",
    "on_paused",
    "on_rate_limited",
    "on_review_decided",
    "on_review_requested",
    "on_revised",
    "on_skipped",
    "on_succeeded",
    "plan_to_transition",
    "result_json",
]

# Errors no retry can fix: fail the step at once.
NEVER_RETRY = (NotAllowedError, NotFoundError, SpecError)


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunView:
    """What the decider reads of a run.

    The mappings are read-only views of the caller's mirror: they must not change while a
    decision is made (the embedded driver holds the run's lock), and are not copied.
    """

    id: str
    tenant_id: str
    lane: str
    spec: WorkflowSpec
    input: Any
    status: RunStatus
    statuses: Mapping[str, StepStatus]
    outputs: Mapping[str, Any]
    jsons: Mapping[str, bytes]
    versions: Mapping[str, int | None]
    children: Mapping[str, int]
    replaced: Mapping[str, str]
    meta: Mapping[str, Any]
    deferrals: Mapping[str, int]
    policy: Policy | None
    now: float

    @property
    def revisions(self) -> int:
        """How many times the run's plan was revised (plan 1 is the submitted one)."""
        plan = self.meta.get("plan")
        return int(plan["version"]) - 1 if isinstance(plan, dict) else 0


@dataclass(frozen=True, slots=True)
class Attempt:
    """The attempt whose outcome is decided: its step key, fencing token and number, and the
    notes (log events) and usage it produced, committed with its outcome."""

    key: str
    fence: int
    attempt: int
    notes: Sequence[NewEvent] = ()
    usage: Sequence[UsageDelta] = ()


# -- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorUpdate:
    """What the run's mirror learns once the decision's ops committed."""

    statuses: Mapping[str, StepStatus] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    jsons: Mapping[str, bytes] = field(default_factory=dict)
    children: Mapping[str, int] = field(default_factory=dict)
    versions: Mapping[str, int | None] = field(default_factory=dict)
    version_of: str | None = None
    """Record the last op's result (the state version it wrote) as this key's version."""
    deferrals: Mapping[str, int] = field(default_factory=dict)
    progressed: bool = False
    error: str | None = None
    status: RunStatus | None = None
    meta: Mapping[str, Any] | None = None
    replaced: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Hand these ready steps to the work queue (only while the run is running)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EnqueueAfter:
    """Hand ``key`` to the work queue after ``delay_s`` seconds."""

    key: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class Requeue:
    """Queue ``key`` for a new attempt from inside its current attempt."""

    key: str


@dataclass(frozen=True, slots=True)
class StartUnwind:
    """A required step failed for good: cancel the rest and compensate (the saga)."""


@dataclass(frozen=True, slots=True)
class Finish:
    """The run ended with ``status`` (and ``result`` when completed)."""

    status: RunStatus
    result: Any = None


@dataclass(frozen=True, slots=True)
class ReviewOpened:
    """A review task was opened: tell the review queue's subscribers."""

    review: ReviewRecord


Effect = MirrorUpdate | Enqueue | EnqueueAfter | Requeue | StartUnwind | Finish | ReviewOpened


@dataclass(frozen=True, slots=True)
class Decision:
    """Ops to write in order, and the effects to apply once the last one committed.

    ``if_stale`` replaces ``effects`` when the last op was refused as STALE (the attempt's
    lease was lost: another owner runs the step now).
    """

    ops: list[Any]
    effects: list[Effect]
    if_stale: list[Effect] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Planned:
    """A :class:`~tenantflow.domain.run.Plan` as a transition: step updates, events, and the
    run update when the plan ends the run (``error``: why it failed)."""

    steps: list[StepUpdate]
    events: list[NewEvent]
    run: RunUpdate | None = None
    error: str | None = None
    release_prefix: str | None = None


# -- helpers -----------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """An error as the execution log shows it (bounded)."""
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
    """The state-version delta of step ``name`` producing ``output_json``."""
    return b"{" + json.dumps(name).encode() + b":" + output_json + b"}"


def _then(run: RunView, att: Attempt, usage: list[UsageDelta] | None = None) -> Transition:
    return Transition(
        run.tenant_id,
        run.id,
        run.now,
        events=list(att.notes),
        usage=list(att.usage) if usage is None else usage,
    )


def _merge(then: Transition, planned: Planned) -> None:
    then.steps.extend(planned.steps)
    then.events.extend(planned.events)
    if planned.run is not None:
        then.run = planned.run
    if planned.release_prefix is not None:
        then.release_prefix = planned.release_prefix


def _park(
    run: RunView, att: Attempt, status: StepStatus, at: float, why: str, then: Transition
) -> ParkAttempt:
    return ParkAttempt(run.tenant_id, run.id, att.key, att.fence, run.now, status, at, why, then)


def plan_to_transition(
    spec: WorkflowSpec,
    plan: Plan,
    outputs: Mapping[str, Any],
    *,
    run_id: str,
    submission: bool = False,
) -> Planned:
    """Turn ``plan`` into step updates and events, and the run update when it ends the run.

    Args:
        spec: the run's workflow.
        plan: what :func:`~tenantflow.domain.run.advance` decided.
        outputs: the run's outputs including the step that settled (for a completed run's
            result).
        run_id: the run (its budget holds are released when it completes).
        submission: the plan of a run being submitted: a required step failing fails the run
            at once (``run.failed``; nothing ran, nothing to compensate), and no holds exist.
            Its ``steps`` are then not needed: the step rows are created with
            ``plan.statuses()``.
    """
    steps: list[StepUpdate] = []
    events: list[NewEvent] = []
    for key in plan.ready:
        steps.append(StepUpdate(key, StepStatus.READY))
    for key, reason in plan.skipped:
        steps.append(StepUpdate(key, StepStatus.SKIPPED))
        events.append(NewEvent("step.skipped", key, None, {"reason": reason}))
    for key, n in plan.mapped:
        steps.append(StepUpdate(key, StepStatus.MAPPED))
        steps.extend(StepUpdate(child_key(key, i), StepStatus.READY, create=True) for i in range(n))
        events.append(NewEvent("step.mapped", key, None, {"elements": n}))
    for key in plan.gathered:  # an empty fan-out: its output is []
        steps.append(
            StepUpdate(
                key, StepStatus.SUCCEEDED, output_json=b"[]", delta_json=delta_bytes(key, b"[]")
            )
        )
    for key, reason in plan.failed:
        steps.append(StepUpdate(key, StepStatus.FAILED, error=reason))
        events.append(NewEvent("step.failed", key, None, {"error": reason}))
    fatal = [k for k, _ in plan.failed if not spec.step(k).optional]
    if fatal:
        error = f"step {fatal[0]!r} failed: {dict(plan.failed)[fatal[0]]}"
        if submission:
            events.append(NewEvent("run.failed", None, None, {"error": error}))
            return Planned(steps, events, RunUpdate(RunStatus.FAILED, error=error), error)
        events.append(NewEvent("run.failing", None, None, {"error": error}))
        return Planned(steps, events, RunUpdate(RunStatus.COMPENSATING, error=error), error)
    if plan.completed:
        result = result_json(spec, run_result(spec, outputs))
        events.append(NewEvent("run.completed"))
        release = None if submission else f"{run_id}:"
        return Planned(
            steps, events, RunUpdate(RunStatus.COMPLETED, result_json=result), None, release
        )
    return Planned(steps, events)


def _plan_effects(run: RunView, plan: Plan, outputs: Mapping[str, Any]) -> list[Effect]:
    """What applying ``plan`` does once committed; ``outputs``: the mirror's new outputs."""
    gathered: dict[str, Any] = {key: [] for key in plan.gathered}
    effects: list[Effect] = [
        MirrorUpdate(
            statuses=plan.statuses(),
            children=dict(plan.mapped),
            outputs=gathered,
            jsons={key: b"[]" for key in plan.gathered},
        )
    ]
    if any(not run.spec.step(k).optional for k, _ in plan.failed):
        effects.append(StartUnwind())
    elif plan.completed:
        merged = {**run.outputs, **outputs, **gathered}
        effects.append(Finish(RunStatus.COMPLETED, run_result(run.spec, merged)))
    else:
        ready = list(plan.ready)
        for key, n in plan.mapped:
            ready.extend(child_key(key, i) for i in range(n))
        effects.append(Enqueue(tuple(ready)))
    return effects


def _failed_for_good(run: RunView, step: StepSpec, plan: Plan) -> list[Effect]:
    """An optional step's run goes on with ``plan``; any other run compensates."""
    if step.optional:
        return _plan_effects(run, plan, {})
    return [StartUnwind()]


# -- success -----------------------------------------------------------------------------------


def on_succeeded(run: RunView, att: Attempt, value: Any, output_json: bytes) -> Decision:
    """The attempt of a step (or a fan-out element) returned ``value``: record it, gather a
    fan-out whose elements all succeeded, and plan what follows."""
    name, index = parse_key(att.key)
    step = run.spec.step(name)
    if step.kind == "agent" and index is not None:
        return on_iteration(run, att, value, output_json)
    key = att.key
    then = _then(run, att, [UsageDelta("steps", 1, step.name), *att.usage])
    statuses = dict(run.statuses)
    statuses[key] = StepStatus.SUCCEEDED
    plan = Plan()
    planned: Planned | None = None
    mirror: dict[str, Any] = {
        "statuses": {key: StepStatus.SUCCEEDED},
        "outputs": {key: value},
        "jsons": {key: output_json},
        "progressed": True,
        "version_of": key if index is None else None,
    }
    settled: str | None = key
    if index is not None:
        n = run.children[step.name]
        done = all(statuses.get(child_key(step.name, i)) == StepStatus.SUCCEEDED for i in range(n))
        settled = None
        if done and run.status == RunStatus.RUNNING:
            jsons = [
                output_json if i == index else run.jsons[child_key(step.name, i)] for i in range(n)
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
            gathered = [
                value if i == index else run.outputs[child_key(step.name, i)] for i in range(n)
            ]
            mirror["statuses"][step.name] = StepStatus.SUCCEEDED
            mirror["outputs"][step.name] = gathered
            mirror["jsons"][step.name] = gathered_json
    if settled is not None and run.status == RunStatus.RUNNING:
        trial = {**run.outputs, **mirror["outputs"]}
        plan = advance(run.spec, statuses, trial, run.input, changed=[settled])
        planned = plan_to_transition(run.spec, plan, trial, run_id=run.id)
        _merge(then, planned)
    delta = delta_bytes(key, output_json) if index is None else None
    op = FinishAttempt(run.tenant_id, run.id, key, att.fence, run.now, output_json, delta, then)
    update = MirrorUpdate(error=planned.error if planned else None, **mirror)
    effects: list[Effect] = [update, *_plan_effects(run, plan, mirror["outputs"])]
    return Decision([op], effects, [Requeue(key)])


def on_iteration(run: RunView, att: Attempt, turn: Turn, output_json: bytes) -> Decision:
    """An agent iteration is recorded: in the same transaction, create the next iteration, or
    settle the agent step (its result, or its failure at a bound) and plan what follows."""
    key = att.key
    name, index = parse_key(key)
    assert index is not None
    step = run.spec.step(name)
    agent: Agent = step.options["agent"]
    turns = [*(run.outputs[child_key(step.name, j)] for j in range(index)), turn]
    move = next_move(agent, turns, run.now)
    summary = {
        "iteration": index,
        "tools": [r.name for r in turn.tool_results],
        "refused": [r.name for r in turn.tool_results if not r.ok],
        "children": [r.child_run for r in turn.tool_results if r.child_run],
        "tokens_in": turn.tokens_in,
        "tokens_out": turn.tokens_out,
        "next": move.kind,
    }
    then = _then(run, att, [UsageDelta("steps", 1, step.name), *att.usage])
    then.events.append(NewEvent("agent.iteration", key, att.attempt, summary))
    statuses = dict(run.statuses)
    statuses[key] = StepStatus.SUCCEEDED
    following = child_key(step.name, index + 1)
    recorded = MirrorUpdate(
        statuses={key: StepStatus.SUCCEEDED},
        outputs={key: turn},
        jsons={key: output_json},
        progressed=True,
        version_of=key,
    )
    effects: list[Effect] = [recorded]
    running = run.status == RunStatus.RUNNING
    if running and move.kind == "continue":
        then.steps.append(StepUpdate(following, StepStatus.READY, create=True))
        effects.append(
            MirrorUpdate(statuses={following: StepStatus.READY}, children={step.name: index + 2})
        )
        effects.append(Enqueue((following,)))
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
        planned = plan_to_transition(run.spec, plan, trial, run_id=run.id)
        _merge(then, planned)
        settled = {key: turn, step.name: move.result}
        effects.append(
            MirrorUpdate(
                statuses={step.name: StepStatus.SUCCEEDED},
                outputs={step.name: move.result},
                jsons={step.name: settled_json},
                error=planned.error,
            )
        )
        effects.extend(_plan_effects(run, plan, settled))
    elif running:  # move.kind == "fail": the loop reached a bound
        error = move.error or "the agent loop failed"
        statuses[step.name] = StepStatus.FAILED
        then.steps.append(StepUpdate(step.name, StepStatus.FAILED, error=error))
        then.events.append(NewEvent("step.failed", step.name, None, {"error": error}))
        plan = Plan()
        run_error: str | None
        if step.optional:
            plan = advance(run.spec, statuses, run.outputs, run.input, changed=[step.name])
            planned = plan_to_transition(run.spec, plan, run.outputs, run_id=run.id)
            _merge(then, planned)
            run_error = planned.error
        else:
            run_error = f"step {step.name!r} failed: {error}"
            then.run = RunUpdate(RunStatus.COMPENSATING, error=run_error)
            then.events.append(NewEvent("run.failing", None, None, {"error": run_error}))
        effects.append(MirrorUpdate(statuses={step.name: StepStatus.FAILED}, error=run_error))
        effects.extend(_failed_for_good(run, step, plan))
    delta = delta_bytes(key, output_json)
    op = FinishAttempt(run.tenant_id, run.id, key, att.fence, run.now, output_json, delta, then)
    return Decision([op], effects, [Requeue(key)])


# -- failure and revision ----------------------------------------------------------------------


def on_failed(
    run: RunView,
    att: Attempt,
    error: BaseException | None,
    *,
    jitter: Callable[[], float],
) -> Decision:
    """The attempt raised ``error`` (None: it was cancelled). Retry it after a backoff, let
    the workflow revise its plan, or fail the step for good: an optional step's run goes on,
    any other run compensates.

    Args:
        jitter: draws the backoff's jitter, uniform in [0, 1); called only for a retry.
    """
    key = att.key
    name, index = parse_key(key)
    step = run.spec.step(name)
    description = "cancelled" if error is None else describe(error)
    then = _then(run, att)
    failures = att.attempt - run.deferrals.get(key, 0)
    if error is None or run.status != RunStatus.RUNNING:
        then.steps.append(StepUpdate(key, StepStatus.CANCELLED))
        op = FailAttempt(run.tenant_id, run.id, key, att.fence, run.now, description, None, then)
        return Decision([op], [MirrorUpdate(statuses={key: StepStatus.CANCELLED})])
    if not isinstance(error, NEVER_RETRY) and step.retry.should_retry(failures, error):
        delay = step.retry.delay_s(failures, jitter())
        if isinstance(error, CircuitOpenError):
            delay = max(delay, float(error.fields.get("retry_after_s", 0.0)))
        retry_at = run.now + delay
        op = FailAttempt(
            run.tenant_id, run.id, key, att.fence, run.now, description, retry_at, then
        )
        effects: list[Effect] = [
            MirrorUpdate(statuses={key: StepStatus.READY}),
            EnqueueAfter(key, delay),
        ]
        return Decision([op], effects, [Requeue(key)])
    # Failed for good, unless the workflow revises its plan.
    if index is None and run.spec.replan is not None:
        revised = on_revised(run, att, error, description, then)
        if revised is not None:
            return revised
    failing = step.name if index is not None else key
    statuses = dict(run.statuses)
    statuses[key] = StepStatus.FAILED
    failed = {key: StepStatus.FAILED}
    if index is not None:
        statuses[step.name] = StepStatus.FAILED
        failed[step.name] = StepStatus.FAILED
        then.steps.append(StepUpdate(step.name, StepStatus.FAILED, error=description))
    plan = Plan()
    run_error: str | None
    if step.optional:
        plan = advance(run.spec, statuses, run.outputs, run.input, changed=[failing])
        planned = plan_to_transition(run.spec, plan, run.outputs, run_id=run.id)
        _merge(then, planned)
        run_error = planned.error
    else:
        run_error = f"step {key!r} failed: {description}"
        then.run = RunUpdate(RunStatus.COMPENSATING, error=run_error)
        then.events.append(NewEvent("run.failing", None, None, {"error": run_error}))
    op = FailAttempt(run.tenant_id, run.id, key, att.fence, run.now, description, None, then)
    effects = [MirrorUpdate(statuses=failed, error=run_error), *_failed_for_good(run, step, plan)]
    return Decision([op], effects, [Requeue(key)])


def on_revised(
    run: RunView, att: Attempt, error: BaseException, description: str, then: Transition
) -> Decision | None:
    """Ask the workflow's replanner for a revision of the plan after ``att.key`` failed for
    good, and commit it with the failure as the run's next plan version.

    ``then`` is the failure's transition so far. None: no revision, or a refused one (noted as
    ``plan.refused`` in ``then``); the step then fails as it would have.
    """
    key = att.key
    spec = run.spec
    assert spec.replan is not None
    failure = Failure(
        step=key,
        error_type=type(error).__name__,
        message=description,
        attempts=att.attempt,
        revision=run.revisions,
        statuses={k: s.value for k, s in run.statuses.items()},
    )
    refused: str | None = None
    try:
        revision = spec.replan(failure)
    except Exception as exc:  # a broken replanner must not wedge the run
        revision, refused = None, f"the replanner raised {describe(exc)}"
    if revision is None and refused is None:
        return None
    if revision is not None:
        refused = check_revision(
            spec, dict(run.statuses), key, revision, run.revisions, spec.max_revisions
        )
    if refused is not None or revision is None:
        then.events.append(NewEvent("plan.refused", key, att.attempt, {"reason": refused}))
        return None
    version = run.revisions + 2  # plan 1 is the one the run was submitted with
    replaced = {**run.replaced, **revision.replace}
    entry = plan_entry(version, key, revision, replaced)
    meta = {**run.meta, "plan": entry}
    plan_json = json.dumps({"plan": entry}).encode()
    then.run = RunUpdate(RunStatus.RUNNING, meta=meta)
    then.events.append(NewEvent("plan.revised", key, att.attempt, entry))
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
    planned = plan_to_transition(spec, plan, run.outputs, run_id=run.id)
    _merge(then, planned)
    if then.run.meta is None:  # the plan ended the run: keep the revision in its meta
        then.run.meta = meta
    retry_at = run.now if key in revision.replace else None
    op = FailAttempt(run.tenant_id, run.id, key, att.fence, run.now, description, retry_at, then)
    changed = {n: s for n, s in statuses.items() if run.statuses.get(n) != s}
    effects: list[Effect] = [
        MirrorUpdate(
            statuses=changed,
            meta=meta,
            replaced=replaced,
            deferrals={key: att.attempt},  # the standby starts with a fresh retry budget
            error=planned.error,
        ),
        *_plan_effects(run, plan, {}),
        Enqueue(tuple(revision.insert)),
    ]
    if key in revision.replace:
        effects.append(Requeue(key))
    return Decision([op], effects, [Requeue(key)])


# -- parked outcomes: skipped, paused, rate-limited, waiting -----------------------------------


def on_skipped(run: RunView, att: Attempt, reason: str) -> Decision:
    """The budget ladder skipped the (optional) step: the run goes on without it."""
    statuses = dict(run.statuses)
    statuses[att.key] = StepStatus.SKIPPED
    plan = advance(run.spec, statuses, run.outputs, run.input, changed=[att.key])
    then = _then(run, att)
    planned = plan_to_transition(run.spec, plan, run.outputs, run_id=run.id)
    _merge(then, planned)
    op = _park(run, att, StepStatus.SKIPPED, 0.0, reason, then)
    update = MirrorUpdate(statuses={att.key: StepStatus.SKIPPED}, error=planned.error)
    return Decision([op], [update, *_plan_effects(run, plan, {})], [Requeue(att.key)])


def on_paused(run: RunView, att: Attempt, reason: str) -> Decision:
    """The budget ladder paused the run: the step is claimable again once it resumes."""
    then = _then(run, att)
    then.run = RunUpdate(RunStatus.PAUSED, error=reason)
    then.events.append(NewEvent("run.paused", att.key, att.attempt, {"reason": reason}))
    then.audit.append(
        AuditEntry(f"run:{run.id}", "run.paused", f"run:{run.id}", {"reason": reason})
    )
    op = _park(run, att, StepStatus.READY, run.now, reason, then)
    update = MirrorUpdate(statuses={att.key: StepStatus.READY}, status=RunStatus.PAUSED)
    return Decision([op], [update], [Requeue(att.key)])


def on_rate_limited(run: RunView, att: Attempt, resource: str, wait_s: float) -> Decision:
    """A rate limit refused a call: the step waits ``wait_s`` holding no slot, not failing."""
    usage = [
        UsageDelta("rate_limit_waits", 1, resource),
        UsageDelta("rate_limit_wait_s", wait_s, resource),
        *att.usage,
    ]
    then = _then(run, att, usage)
    reason = f"rate limit {resource}: retry in {wait_s:.3g}s"
    op = _park(run, att, StepStatus.READY, run.now + wait_s, reason, then)
    effects: list[Effect] = [
        MirrorUpdate(statuses={att.key: StepStatus.READY}),
        EnqueueAfter(att.key, wait_s),
    ]
    return Decision([op], effects, [Requeue(att.key)])


def on_awaiting_child(run: RunView, att: Attempt, child_run: str, reason: str) -> Decision:
    """The step waits for a child run, holding no slot. It is claimable at once in the store:
    after a restart it runs again, finds its child (recorded) and waits again or goes on."""
    then = _then(run, att)
    then.events.append(NewEvent("step.waiting", att.key, att.attempt, {"child_run": child_run}))
    op = _park(run, att, StepStatus.READY, run.now, reason, then)
    return Decision([op], [MirrorUpdate(statuses={att.key: StepStatus.READY})], [Requeue(att.key)])


# -- reviews -----------------------------------------------------------------------------------


def on_review_requested(
    run: RunView,
    att: Attempt,
    payload: Any,
    review_id: str,
    *,
    kind: str = "step",
    extra: Mapping[str, Any] | None = None,
) -> Decision:
    """Open review ``review_id`` for the step (a review step, or an escalation): the step
    waits for a human, holding no slot. Pool, lane and SLA come from the step and the policy."""
    key = att.key
    policy = run.policy
    step = run.spec.step(parse_key(key)[0])
    pool = str(
        step.options.get("pool") or (policy.review_pool_for(run.tenant_id) if policy else "shared")
    )
    sla = step.options.get("sla_s") or (
        policy.review_sla.total_seconds() if policy and policy.review_sla else None
    )
    review = ReviewRecord(
        id=review_id,
        tenant_id=run.tenant_id,
        run_id=run.id,
        step=key,
        pool=pool,
        lane=policy.review_lane if policy else run.lane,
        status=ReviewStatus.PENDING,
        sla_due=None if sla is None else run.now + float(sla),
        created_at=run.now,
        payload={"kind": kind, "request": payload, **(extra or {})},
    )
    then = _then(run, att, [UsageDelta("reviews", 1, pool), *att.usage])
    then.events.append(
        NewEvent(
            "review.requested",
            key,
            att.attempt,
            {"review_id": review.id, "pool": pool, "kind": kind},
        )
    )
    then.audit.append(
        AuditEntry(
            f"run:{run.id}",
            "review.requested",
            f"review:{review.id}",
            {"step": key, "pool": pool, "kind": kind},
        )
    )
    then.review = review
    op = _park(run, att, StepStatus.WAITING, 0.0, f"review {review.id}", then)
    effects: list[Effect] = [MirrorUpdate(statuses={key: StepStatus.WAITING}), ReviewOpened(review)]
    return Decision([op], effects, [Requeue(key)])


def on_review_decided(
    run: RunView,
    review: ReviewRecord,
    *,
    approved: bool,
    comment: str | None,
    reviewer: str,
    fail_step: bool,
    human_response: Callable[[str], str],
) -> Decision:
    """A human decided ``review``: record the decision and move the waiting step on in the same
    transaction. A review step succeeds with the decision; an approved escalation replays the
    reviewer's answer as the model's (``human_response`` makes its recorded form); a rejected
    escalation, or ``fail_step``, fails the step. A run that moved on is recorded only."""
    key = review.step
    kind = review.payload.get("kind", "step")
    decide = DecideReview(run.tenant_id, review.id, reviewer, approved, comment, run.now)
    then = Transition(run.tenant_id, run.id, run.now)
    decide.then = then
    if run.statuses.get(key) != StepStatus.WAITING or run.status not in (
        RunStatus.RUNNING,
        RunStatus.PAUSED,
    ):
        return Decision([decide], [])  # the run moved on: record only
    if fail_step or (kind == "escalation" and not approved):
        reason = comment or "rejected by reviewer"
        error = f"step {key!r} failed: review {review.id} {reason}"
        then.steps.append(StepUpdate(key, StepStatus.FAILED, error=reason))
        then.events.append(NewEvent("step.failed", key, None, {"error": error}))
        then.run = RunUpdate(RunStatus.COMPENSATING, error=error)
        then.events.append(NewEvent("run.failing", None, None, {"error": error}))
        update = MirrorUpdate(statuses={key: StepStatus.FAILED}, error=error)
        return Decision([decide], [update, StartUnwind()])
    if kind == "escalation":
        index = int(review.payload.get("call_index", 1))
        answer = human_response(comment or "approved")
        call = RecordCall(run.tenant_id, run.id, key, index, "model", "human", answer, run.now)
        then.steps.append(StepUpdate(key, StepStatus.READY, available_at=run.now))
        then.events.append(NewEvent("step.resumed", key, None, {"review_id": review.id}))
        update = MirrorUpdate(statuses={key: StepStatus.READY})
        return Decision([call, decide], [update, Enqueue((key,))])
    decision = ReviewDecision(
        approved=approved, comment=comment, reviewer=reviewer, review_id=review.id
    )
    value, output_json = contract_for(ReviewDecision).check(decision, step=key, direction="output")
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
        NewEvent("step.succeeded", key, None, {"review_id": review.id, "approved": approved})
    )
    planned = plan_to_transition(run.spec, plan, outputs, run_id=run.id)
    _merge(then, planned)
    version = max((v or 0) for v in run.versions.values()) + 1 if run.versions else 1
    update = MirrorUpdate(
        statuses={key: StepStatus.SUCCEEDED},
        outputs={key: value},
        jsons={key: output_json},
        versions={key: version},
        progressed=True,
        error=planned.error,
    )
    return Decision([decide], [update, *_plan_effects(run, plan, {key: value})])
