"""Retrying an ended run in place: which steps run again, and the transition that reopens it.

A run that ended ``failed``, ``cancelled`` or ``compensated`` is retried *from its failed
step*: every step that did not succeed runs again, and so does every step downstream of one
(its output was computed without the failed step's, or never). Succeeded steps upstream keep
their recorded outputs, which the steps that run again read as they did the first time. Nothing
of the run's history is removed: the retry is a new state version of its own (``{"retry":
{...}}``, so two retries decided from the same view cannot both commit), an event
(``run.retried``) and an audit row, and the run goes back through admission (``queued``).
A step that runs again gets a fresh retry budget.

A run whose completed work was undone (a step compensated, or a tool effect reversed) cannot
be retried in place: its succeeded steps' recorded calls would be replayed, not made again, so
the undone effects would stay undone. Such a run — and one whose plan was revised, or whose
agent loop or re-planned fan-out would have to start over — is retried *from the start*: a new
run of the same workflow version with the same input (the engine does that, see
:meth:`tenantflow.engine.runs.RunControl.retry`). :func:`plan_retry` says so with a
:class:`~tenantflow.errors.ConflictError` whose ``reason`` names why.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantflow.domain.contracts import contract_for
from tenantflow.domain.progress import plan_to_transition
from tenantflow.domain.records import (
    NewEvent,
    RunRecord,
    RunStatus,
    RunUpdate,
    StepRecord,
    StepStatus,
    StepUpdate,
    Transition,
)
from tenantflow.domain.run import Plan, advance
from tenantflow.domain.spec import WorkflowSpec, parse_key
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import ConflictError

__all__ = ["RETRYABLE", "RetryPlan", "check_retryable", "plan_retry"]

RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.COMPENSATED})
"""The run statuses a retry accepts."""

_UNDONE = frozenset({StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED})
_KEPT = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What retrying a run in place does.

    Attributes:
        transition: the one transition that reopens the run (conditional on its state version).
        rerun: the step keys that run again, in workflow order.
        kept: the succeeded steps whose recorded outputs are reused.
        number: this retry's number (1 for the first).
        deferrals: step key -> attempts made so far: the attempts that no longer count against
            the step's retry policy.
    """

    transition: Transition
    rerun: tuple[str, ...]
    kept: tuple[str, ...]
    number: int
    deferrals: dict[str, int] = field(default_factory=dict)


def check_retryable(record: RunRecord) -> None:
    """Refuse a run that has not ended failed, cancelled or compensated.

    Raises:
        ConflictError: naming the run's status.
    """
    if record.status not in RETRYABLE:
        ended = "has not ended" if record.status not in _ENDED else "completed"
        raise ConflictError(
            f"run {record.id} is {record.status.value}: only a failed, cancelled or compensated"
            f" run can be retried (it {ended})",
            run_id=record.id,
            status=record.status.value,
        )


_ENDED = frozenset({*RETRYABLE, RunStatus.COMPLETED})


def _from_start(record: RunRecord, why: str) -> ConflictError:
    return ConflictError(
        f"run {record.id} cannot be retried from its failed step: {why}; retry it from the"
        " start (a new run with the same input: --from-start, or from_start=true)",
        run_id=record.id,
        field="from_start",
        reason=why,
    )


def plan_retry(
    spec: WorkflowSpec,
    record: RunRecord,
    steps: list[StepRecord],
    *,
    undone: Collection[str],
    now: float,
    actor: str,
    reason: str | None = None,
) -> RetryPlan:
    """Decide how ``record`` is retried in place (see the module docstring).

    Args:
        spec: the run's workflow version.
        record: the run, as stored.
        steps: its step rows.
        undone: the steps whose tool effects were reversed (their ``tool.compensated``
            events).
        now: the engine's time.
        actor: who asked (for the audit log).
        reason: why, if they said.

    Raises:
        ConflictError: the run is not retryable, or must be retried from the start.
    """
    check_retryable(record)
    statuses = {s.key: s.status for s in steps}
    rows = {s.key: s for s in steps}
    compensated = sorted(k for k, s in statuses.items() if s in _UNDONE)
    if compensated:
        return _raise(record, f"its completed step {compensated[0]!r} was compensated (undone)")
    if undone:
        return _raise(record, f"the tool effects of step {sorted(undone)[0]!r} were reversed")
    if isinstance(record.meta.get("plan"), dict):
        return _raise(record, "its plan was revised while it ran")
    elements: dict[str, list[str]] = {}
    for key in statuses:
        name, index = parse_key(key)
        if index is not None:
            elements.setdefault(name, []).append(key)
    failed = [s.name for s in spec.steps if statuses.get(s.name) not in _KEPT]
    reset = _downstream(spec, failed)
    new = dict(statuses)
    updates: list[StepUpdate] = []
    rerun: list[str] = []
    for step in spec.steps:
        name = step.name
        if name not in reset:
            continue
        own = elements.get(name, [])
        if not own:
            new[name] = StepStatus.PENDING
            updates.append(StepUpdate(name, StepStatus.PENDING, reopen=True))
            rerun.append(name)
            continue
        upstream_ok = all(d not in reset for d in step.deps)
        if step.kind == "agent" or step.fan_out is None or name not in failed or not upstream_ok:
            return _raise(record, f"step {name!r} would have to fan out again")
        # The fan-out resumes: its elements that did not succeed run again.
        new[name] = StepStatus.MAPPED
        updates.append(StepUpdate(name, StepStatus.MAPPED, reopen=True))
        for key in sorted(own, key=lambda k: parse_key(k)[1] or 0):
            if statuses[key] != StepStatus.SUCCEEDED:
                new[key] = StepStatus.READY
                updates.append(StepUpdate(key, StepStatus.READY, available_at=now, reopen=True))
                rerun.append(key)
    if not rerun:
        raise ConflictError(f"run {record.id} has no step to run again", run_id=record.id)
    value = contract_for(spec.input_type).load(record.input_json, step="<input>", direction="input")
    outputs = _outputs(spec, steps, new)
    # Roots first (a new run's plan), then every step whose upstream has settled.
    plan = advance(spec, new, outputs, value, changed=None)
    new.update(plan.statuses())
    more = advance(spec, new, outputs, value, changed=[s.name for s in spec.steps])
    new.update(more.statuses())
    merged = Plan(
        ready=[*plan.ready, *more.ready],
        skipped=[*plan.skipped, *more.skipped],
        mapped=[*plan.mapped, *more.mapped],
        gathered=[*plan.gathered, *more.gathered],
        failed=[*plan.failed, *more.failed],
        completed=more.completed,
    )
    planned = plan_to_transition(spec, merged, outputs, run_id=record.id)
    number = int(record.meta.get("retries", 0)) + 1
    kept = tuple(k for k, s in statuses.items() if s == StepStatus.SUCCEEDED and k not in reset)
    deferrals = {k: rows[k].attempt for k in rerun if k in rows and rows[k].attempt}
    entry = {"number": number, "rerun": rerun, "kept": list(kept)}
    # The retry is a state version of its own, made by the first step that runs again.
    updates[0].delta_json = json.dumps({"retry": entry}).encode()
    meta = {**record.meta, "retries": number, "deferrals": deferrals}
    detail: dict[str, Any] = {
        **entry,
        "previous_status": record.status.value,
        "previous_error": record.error,
        "by": actor,
    }
    if reason:
        detail["reason"] = reason
    events = [NewEvent("run.retried", None, None, detail), *planned.events]
    run_update = planned.run or RunUpdate(RunStatus.QUEUED)
    run_update.meta, run_update.reopen = meta, True
    if planned.run is None:
        events.append(NewEvent("run.queued"))
    transition = Transition(
        record.tenant_id,
        record.id,
        now,
        steps=[*updates, *planned.steps],
        run=run_update,
        events=events,
        audit=[AuditEntry(actor, "run.retried", f"run:{record.id}", detail)],
        release_prefix=planned.release_prefix,
        expected_version=record.state_version,
    )
    return RetryPlan(transition, tuple(rerun), kept, number, deferrals)


def _raise(record: RunRecord, why: str) -> RetryPlan:
    raise _from_start(record, why)


def _downstream(spec: WorkflowSpec, names: Collection[str]) -> set[str]:
    """``names`` and every step that depends on one of them, directly or not."""
    out: set[str] = set()
    frontier = list(names)
    while frontier:
        name = frontier.pop()
        if name in out:
            continue
        out.add(name)
        frontier.extend(spec.dependents.get(name, ()))
    return out


def _outputs(
    spec: WorkflowSpec, steps: list[StepRecord], statuses: Mapping[str, StepStatus]
) -> dict[str, Any]:
    """The recorded outputs of the steps that stay succeeded."""
    out: dict[str, Any] = {}
    for s in steps:
        if s.output_json is None or statuses.get(s.key) != StepStatus.SUCCEEDED:
            continue
        name, index = parse_key(s.key)
        step = spec.step(name)
        annotation = step.result_type if index is None else step.item_type
        out[s.key] = contract_for(annotation).load(s.output_json, step=s.key)
    return out
