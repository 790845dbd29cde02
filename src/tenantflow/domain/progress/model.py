"""The decider's vocabulary: the run view, the attempt, the effects and the decision, and
the plan of :func:`~tenantflow.domain.run.advance` turned into a transition and effects."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from tenantflow.domain.contracts import contract_for
from tenantflow.domain.outbox import FX_ENQUEUED, fx_enqueued_data
from tenantflow.domain.records import (
    NewEvent,
    ParkAttempt,
    RunStatus,
    RunUpdate,
    StepStatus,
    StepUpdate,
    Transition,
)
from tenantflow.domain.run import Plan, run_result
from tenantflow.domain.spec import StepSpec, WorkflowSpec, child_key
from tenantflow.domain.tenancy import ReviewRecord, UsageDelta
from tenantflow.errors import NotAllowedError, NotFoundError, SpecError

if TYPE_CHECKING:
    from tenantflow.domain.policy import Policy

__all__ = [
    "NEVER_RETRY",
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
    "failed_for_good",
    "merge",
    "park_op",
    "plan_effects",
    "plan_to_transition",
    "result_json",
    "then_for",
]

# Errors no retry can fix: fail the step at once.
NEVER_RETRY = (NotAllowedError, NotFoundError, SpecError)


# -- inputs ------------------------------------------------------------------------------------


class RunView(NamedTuple):
    """What the decider reads of a run.

    The mappings are read-only views of the caller's mirror: they must not change while a
    decision is made (the embedded driver holds the run's lock), and are not copied. A caller
    that cannot hold such a lock (several processes deciding one run) sets ``state_version``.
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
    state_version: int | None = None
    """The run's state version as read, when the caller writes with a compare-and-set on it:
    a finish decided from this view then carries it as ``expected_version``, and the store
    refuses it (:class:`~tenantflow.domain.records.VersionConflict`) if the run moved on. None
    (the embedded driver, whose run lock already serialises its decisions): unconditional."""

    @property
    def revisions(self) -> int:
        """How many times the run's plan was revised (plan 1 is the submitted one)."""
        plan = self.meta.get("plan")
        return int(plan["version"]) - 1 if isinstance(plan, dict) else 0


class Attempt(NamedTuple):
    """The attempt whose outcome is decided: its step key, fencing token and number, and the
    notes (log events) and usage it produced, committed with its outcome."""

    key: str
    fence: int
    attempt: int
    notes: Sequence[NewEvent] = ()
    usage: Sequence[UsageDelta] = ()


_NOTHING: Mapping[str, Any] = MappingProxyType({})  # a shared empty default (no allocation)


# -- outputs -----------------------------------------------------------------------------------


class MirrorUpdate(NamedTuple):
    """What the run's mirror learns once the decision's ops committed."""

    statuses: Mapping[str, StepStatus] = _NOTHING
    outputs: Mapping[str, Any] = _NOTHING
    jsons: Mapping[str, bytes] = _NOTHING
    children: Mapping[str, int] = _NOTHING
    versions: Mapping[str, int | None] = _NOTHING
    version_of: str | None = None
    """Record the last op's result (the state version it wrote) as this key's version."""
    deferrals: Mapping[str, int] = _NOTHING
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


class Decision(NamedTuple):
    """Ops to write in order, and the effects to apply once the last one committed.

    ``if_stale`` replaces ``effects`` when the last op was refused as STALE (the attempt's
    lease was lost: another owner runs the step now).
    """

    ops: list[Any]
    effects: list[Effect]
    if_stale: Sequence[Effect] = ()


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


def then_for(run: RunView, att: Attempt, usage: list[UsageDelta] | None = None) -> Transition:
    return Transition(
        run.tenant_id,
        run.id,
        run.now,
        events=list(att.notes),
        usage=list(att.usage) if usage is None else usage,
    )


def merge(then: Transition, planned: Planned) -> None:
    then.steps.extend(planned.steps)
    then.events.extend(planned.events)
    if planned.run is not None:
        then.run = planned.run
    if planned.release_prefix is not None:
        then.release_prefix = planned.release_prefix


def park_op(
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
    for key, args in plan.choreographed:  # to the outbox, in this transaction (domain.outbox)
        steps.append(StepUpdate(key, StepStatus.SUCCEEDED, output_json=b"null"))
        events.append(NewEvent(FX_ENQUEUED, key, None, fx_enqueued_data(spec, run_id, key, args)))
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


def plan_effects(run: RunView, plan: Plan, outputs: Mapping[str, Any]) -> list[Effect]:
    """What applying ``plan`` does once committed; ``outputs``: the mirror's new outputs."""
    gathered: dict[str, Any] = {key: [] for key in plan.gathered}
    effects: list[Effect] = [
        MirrorUpdate(
            statuses=plan.statuses(),
            children=dict(plan.mapped) if plan.mapped else _NOTHING,
            outputs=gathered or _NOTHING,
            jsons={key: b"[]" for key in plan.gathered} if gathered else _NOTHING,
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


def failed_for_good(run: RunView, step: StepSpec, plan: Plan) -> list[Effect]:
    """An optional step's run goes on with ``plan``; any other run compensates."""
    if step.optional:
        return plan_effects(run, plan, {})
    return [StartUnwind()]
