"""Deciding the outcomes that end an attempt without a result: the budget ladder's skip and
pause, a rate limit, a child-run wait, a signal wait, a review requested and a review
decided."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tenantflow.domain.contracts import contract_for
from tenantflow.domain.progress.model import (
    Attempt,
    Decision,
    Effect,
    Enqueue,
    EnqueueAfter,
    MirrorUpdate,
    Requeue,
    ReviewOpened,
    RunView,
    StartUnwind,
    delta_bytes,
    merge,
    park_op,
    plan_effects,
    plan_to_transition,
    then_for,
)
from tenantflow.domain.records import (
    NewEvent,
    RecordCall,
    RunStatus,
    RunUpdate,
    StepStatus,
    StepUpdate,
    Transition,
)
from tenantflow.domain.reviews import ReviewDecision
from tenantflow.domain.run import advance
from tenantflow.domain.spec import parse_key
from tenantflow.domain.tenancy import (
    AuditEntry,
    DecideReview,
    ReviewRecord,
    ReviewStatus,
    UsageDelta,
)

__all__ = [
    "on_awaiting_child",
    "on_awaiting_signal",
    "on_paused",
    "on_rate_limited",
    "on_review_decided",
    "on_review_requested",
    "on_skipped",
]


def on_skipped(run: RunView, att: Attempt, reason: str) -> Decision:
    """The budget ladder skipped the (optional) step: the run goes on without it."""
    statuses = dict(run.statuses)
    statuses[att.key] = StepStatus.SKIPPED
    plan = advance(run.spec, statuses, run.outputs, run.input, changed=[att.key])
    then = then_for(run, att)
    planned = plan_to_transition(run.spec, plan, run.outputs, run_id=run.id)
    merge(then, planned)
    op = park_op(run, att, StepStatus.SKIPPED, 0.0, reason, then)
    update = MirrorUpdate(statuses={att.key: StepStatus.SKIPPED}, error=planned.error)
    return Decision([op], [update, *plan_effects(run, plan, {})], [Requeue(att.key)])


def on_paused(run: RunView, att: Attempt, reason: str) -> Decision:
    """The budget ladder paused the run: the step is claimable again once it resumes."""
    then = then_for(run, att)
    then.run = RunUpdate(RunStatus.PAUSED, error=reason)
    then.events.append(NewEvent("run.paused", att.key, att.attempt, {"reason": reason}))
    then.audit.append(
        AuditEntry(f"run:{run.id}", "run.paused", f"run:{run.id}", {"reason": reason})
    )
    op = park_op(run, att, StepStatus.READY, run.now, reason, then)
    update = MirrorUpdate(statuses={att.key: StepStatus.READY}, status=RunStatus.PAUSED)
    return Decision([op], [update], [Requeue(att.key)])


def on_rate_limited(run: RunView, att: Attempt, resource: str, wait_s: float) -> Decision:
    """A rate limit refused a call: the step waits ``wait_s`` holding no slot, not failing."""
    usage = [
        UsageDelta("rate_limit_waits", 1, resource),
        UsageDelta("rate_limit_wait_s", wait_s, resource),
        *att.usage,
    ]
    then = then_for(run, att, usage)
    reason = f"rate limit {resource}: retry in {wait_s:.3g}s"
    op = park_op(run, att, StepStatus.READY, run.now + wait_s, reason, then)
    effects: list[Effect] = [
        MirrorUpdate(statuses={att.key: StepStatus.READY}),
        EnqueueAfter(att.key, wait_s),
    ]
    return Decision([op], effects, [Requeue(att.key)])


def on_awaiting_child(run: RunView, att: Attempt, child_run: str, reason: str) -> Decision:
    """The step waits for a child run, holding no slot. It is claimable at once in the store:
    after a restart it runs again, finds its child (recorded) and waits again or goes on."""
    then = then_for(run, att)
    then.events.append(NewEvent("step.waiting", att.key, att.attempt, {"child_run": child_run}))
    op = park_op(run, att, StepStatus.READY, run.now, reason, then)
    return Decision([op], [MirrorUpdate(statuses={att.key: StepStatus.READY})], [Requeue(att.key)])


def on_awaiting_signal(
    run: RunView, att: Attempt, name: str, deadline: float | None, recheck_s: float
) -> Decision:
    """The step waits for signal ``name``, holding no slot, until ``deadline`` (None: no
    timeout). Like a child wait it is claimable at once in the store (after a restart it runs
    again, finds its signal, times out or waits again); in this process it is woken when the
    signal arrives, at its deadline, or after ``recheck_s`` at the latest (the safety net for
    a signal sent through another process)."""
    then = then_for(run, att)
    data: dict[str, Any] = {"signal": name}
    wait = recheck_s
    if deadline is not None:
        data["deadline"] = deadline
        wait = max(0.0, min(recheck_s, deadline - run.now))
    then.events.append(NewEvent("step.waiting", att.key, att.attempt, data))
    op = park_op(run, att, StepStatus.READY, run.now, f"waiting for signal {name!r}", then)
    effects: list[Effect] = [
        MirrorUpdate(statuses={att.key: StepStatus.READY}),
        EnqueueAfter(att.key, wait),
    ]
    return Decision([op], effects, [Requeue(att.key)])


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
    then = then_for(run, att, [UsageDelta("reviews", 1, pool), *att.usage])
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
    op = park_op(run, att, StepStatus.WAITING, 0.0, f"review {review.id}", then)
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
    merge(then, planned)
    version = max((v or 0) for v in run.versions.values()) + 1 if run.versions else 1
    update = MirrorUpdate(
        statuses={key: StepStatus.SUCCEEDED},
        outputs={key: value},
        jsons={key: output_json},
        versions={key: version},
        progressed=True,
        error=planned.error,
    )
    return Decision([decide], [update, *plan_effects(run, plan, {key: value})])
