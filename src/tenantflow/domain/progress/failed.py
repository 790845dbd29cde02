"""Deciding failure: retry after a backoff, revise the plan, or fail the step for good."""

from __future__ import annotations

import json
from collections.abc import Callable

from tenantflow.domain.progress.model import (
    NEVER_RETRY,
    Attempt,
    Decision,
    Effect,
    Enqueue,
    EnqueueAfter,
    MirrorUpdate,
    Requeue,
    RunView,
    describe,
    failed_for_good,
    merge,
    plan_effects,
    plan_to_transition,
    then_for,
)
from tenantflow.domain.records import (
    FailAttempt,
    NewEvent,
    RunStatus,
    RunUpdate,
    StepStatus,
    StepUpdate,
    Transition,
)
from tenantflow.domain.replan import Failure, check_revision, plan_entry
from tenantflow.domain.run import Plan, advance
from tenantflow.domain.spec import parse_key
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import CircuitOpenError

__all__ = ["on_failed", "on_revised"]


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
    then = then_for(run, att)
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
        merge(then, planned)
        run_error = planned.error
    else:
        run_error = f"step {key!r} failed: {description}"
        then.run = RunUpdate(RunStatus.COMPENSATING, error=run_error)
        then.events.append(NewEvent("run.failing", None, None, {"error": run_error}))
    op = FailAttempt(run.tenant_id, run.id, key, att.fence, run.now, description, None, then)
    effects = [MirrorUpdate(statuses=failed, error=run_error), *failed_for_good(run, step, plan)]
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
    merge(then, planned)
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
        *plan_effects(run, plan, {}),
        Enqueue(tuple(revision.insert)),
    ]
    if key in revision.replace:
        effects.append(Requeue(key))
    return Decision([op], effects, [Requeue(key)])
