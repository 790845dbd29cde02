"""Why a run is not progressing: the precise reasons, from its stored state.

:func:`explain` turns what is stored about a run (its record, steps and log, its open reviews,
its tenant's caps and queue) into :class:`Reason` values, one per thing that holds it: the
admission queue and the cap that binds, a budget pause, a step's rate-limit bucket and its wake
time, a retry's backoff, a review (pool, who claimed it, SLA due), a child run, a worker's lease,
the upstream steps a step waits for, a free slot. It is pure: the engine gathers the facts
(:class:`WaitFacts`) and the time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenantflow.domain.records import (
    TERMINAL_RUN,
    TERMINAL_STEP,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from tenantflow.domain.spec import WorkflowSpec, parse_key
from tenantflow.domain.tenancy import ReviewRecord
from tenantflow.domain.timefmt import iso

__all__ = ["Reason", "WaitFacts", "explain"]


@dataclass(frozen=True, slots=True)
class Reason:
    """One thing that holds a run or one of its steps.

    Attributes:
        step: the step key it holds (None: the run as a whole).
        kind: what holds it: ``ended``, ``admission``, ``paused``, ``unwinding``, ``upstream``,
            ``slot``, ``rate_limit``, ``backoff``, ``deferred``, ``review``, ``child_run``,
            ``leased``, ``lease_lapsed``, ``fan_out``.
        message: the reason in a sentence.
        detail: the figures the sentence names (times as ISO-8601 UTC).
    """

    step: str | None
    kind: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WaitFacts:
    """What is stored (and, where the run is driven here, known live) about a run.

    Attributes:
        run: the run.
        steps: its steps.
        events: its execution log (oldest first).
        spec: its workflow version (None if not registered here: upstream steps are then not
            named).
        reviews: its reviews by id.
        children: the status of the child runs its steps wait for, by run id.
        active_cap: the tenant's cap on active runs (None: no cap).
        active_runs: the tenant's active runs (running or paused).
        queued_ahead: the tenant's queued runs submitted before this one.
        queued: the tenant's queued runs.
        running_cap: the tenant's cap on steps holding a slot (None: unknown).
        running_steps: the tenant's steps holding a slot in the process that drives it (None:
            not driven here).
    """

    run: RunRecord
    steps: Sequence[StepRecord]
    events: Sequence[EventRecord]
    spec: WorkflowSpec | None = None
    reviews: Mapping[str, ReviewRecord] = field(default_factory=dict)
    children: Mapping[str, RunStatus] = field(default_factory=dict)
    active_cap: int | None = None
    active_runs: int = 0
    queued_ahead: int = 0
    queued: int = 0
    running_cap: int | None = None
    running_steps: int | None = None


def _iso(ts: float | None) -> str | None:
    return iso(ts, timespec="milliseconds")


def explain(facts: WaitFacts, now: float) -> list[Reason]:
    """Every reason the run (and each of its unfinished steps) is not progressing at ``now``."""
    run = facts.run
    if run.status in TERMINAL_RUN:
        verb = "retry it (runs retry)" if run.status != RunStatus.COMPLETED else "nothing to do"
        message = f"the run ended {run.status.value}" + (f": {run.error}" if run.error else "")
        return [
            Reason(
                None,
                "ended",
                f"{message}; it is not waiting ({verb})",
                {"status": run.status.value, "finished_at": _iso(run.finished_at)},
            )
        ]
    out: list[Reason] = []
    if run.status == RunStatus.QUEUED:
        out.append(_admission(facts))
        return out
    if run.status == RunStatus.PAUSED:
        paused = next((e for e in reversed(facts.events) if e.kind == "run.paused"), None)
        why = str(paused.data.get("reason")) if paused is not None else (run.error or "paused")
        out.append(
            Reason(
                None,
                "paused",
                f"the run is paused: {why}; it resumes when its budget is raised or reset, or"
                " with runs resume",
                {"reason": why, "since": _iso(paused.ts if paused else None)},
            )
        )
        return out
    if run.status in (RunStatus.CANCELLING, RunStatus.COMPENSATING):
        out.append(
            Reason(
                None,
                "unwinding",
                f"the run is {run.status.value}: its completed steps are being compensated",
                {"status": run.status.value, "error": run.error},
            )
        )
        return out
    statuses = {s.key: s.status for s in facts.steps}
    for step in facts.steps:
        if step.status in TERMINAL_STEP:
            continue
        out.append(_step(facts, step, statuses, now))
    return out


def _admission(facts: WaitFacts) -> Reason:
    run = facts.run
    position = facts.queued_ahead + 1
    cap = facts.active_cap
    detail: dict[str, Any] = {
        "position": position,
        "queued": facts.queued,
        "lane": run.lane,
        "active_runs": facts.active_runs,
        "active_cap": cap,
    }
    if cap == 0:
        binds = "the tenant's admission is suspended (max_active_runs is 0)"
    elif cap is not None and facts.active_runs >= cap:
        binds = f"the tenant's cap of {cap} active runs binds ({facts.active_runs} active)"
    else:
        binds = (
            f"{facts.active_runs} active of a cap of {cap}: it is admitted as runs ahead start"
            if cap is not None
            else f"{facts.active_runs} active runs"
        )
    return Reason(
        None,
        "admission",
        f"queued for admission: position {position} of {max(facts.queued, position)} in the"
        f" tenant's queue (lane {run.lane}); {binds}",
        detail,
    )


def _last(
    events: Sequence[EventRecord], step: str | None, kinds: tuple[str, ...]
) -> EventRecord | None:
    for event in reversed(events):
        if event.step == step and event.kind in kinds:
            return event
    return None


_STEP_EVENTS = (
    "step.retrying",
    "step.deferred",
    "step.waiting",
    "step.started",
    "step.succeeded",
    "step.recovered",
    "review.requested",
    "run.retried",
)


def _step(
    facts: WaitFacts, step: StepRecord, statuses: Mapping[str, StepStatus], now: float
) -> Reason:
    key = step.key
    last = _last(facts.events, key, _STEP_EVENTS)
    if step.status == StepStatus.PENDING:
        waiting_for: list[str] = []
        if facts.spec is not None:
            name, _ = parse_key(key)
            waiting_for = [
                d
                for d in facts.spec.step(name).deps
                if statuses.get(d) not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)
            ]
        names = ", ".join(waiting_for) if waiting_for else "its upstream steps"
        return Reason(key, "upstream", f"waits for {names} to finish", {"steps": waiting_for})
    if step.status == StepStatus.MAPPED:
        elements = [s for s in facts.steps if parse_key(s.key)[0] == key and s.key != key]
        done = sum(1 for s in elements if s.status in TERMINAL_STEP)
        return Reason(
            key,
            "fan_out",
            f"fanned out: {done} of {len(elements)} elements finished",
            {"finished": done, "elements": len(elements)},
        )
    if step.status == StepStatus.RUNNING:
        owner = step.owner or "an unknown worker"
        lease = step.lease_expires_at
        if lease is not None and lease < now:
            return Reason(
                key,
                "lease_lapsed",
                f"attempt {step.attempt} was leased by {owner}, whose lease lapsed at"
                f" {_iso(lease)}: the next worker to look claims it",
                {"owner": step.owner, "attempt": step.attempt, "lease_expires_at": _iso(lease)},
            )
        return Reason(
            key,
            "leased",
            f"attempt {step.attempt} is running on {owner}, leased until {_iso(lease)}",
            {
                "owner": step.owner,
                "attempt": step.attempt,
                "started_at": _iso(step.started_at),
                "lease_expires_at": _iso(lease),
            },
        )
    if step.status == StepStatus.WAITING:
        return _review(facts, key, last)
    # READY: due, or parked until a time.
    if last is not None and last.kind == "step.waiting" and "child_run" in last.data:
        child = str(last.data["child_run"])
        status = facts.children.get(child)
        state = status.value if status is not None else "unknown"
        return Reason(
            key,
            "child_run",
            f"waits for its child run {child} ({state})",
            {"child_run": child, "child_status": state},
        )
    until = _iso(step.available_at)
    if step.available_at > now and last is not None:
        if last.kind == "step.deferred":
            reason = str(last.data.get("reason", ""))
            if reason.startswith("rate limit "):
                bucket = reason[len("rate limit ") :].rsplit(": retry in", 1)[0]
                return Reason(
                    key,
                    "rate_limit",
                    f"the rate-limit bucket {bucket} is empty: the step runs again at {until}",
                    {"bucket": bucket, "until": until},
                )
            return Reason(key, "deferred", f"{reason}: runs again at {until}", {"until": until})
        if last.kind == "step.retrying":
            return Reason(
                key,
                "backoff",
                f"attempt {step.attempt} failed ({last.data.get('error', step.error)});"
                f" attempt {step.attempt + 1} at {until}",
                {"attempt": step.attempt, "error": last.data.get("error"), "until": until},
            )
    if step.available_at > now:
        return Reason(key, "deferred", f"not due before {until}", {"until": until})
    detail: dict[str, Any] = {"running_steps": facts.running_steps, "cap": facts.running_cap}
    if facts.running_steps is None:
        message = "ready: waits for a worker to claim it (the process that drives it)"
    elif facts.running_cap is not None and facts.running_steps >= facts.running_cap:
        message = (
            f"ready: waits for a slot; the tenant's cap of {facts.running_cap} running steps"
            f" binds ({facts.running_steps} running)"
        )
    else:
        message = (
            f"ready: waits for a free slot ({facts.running_steps} of the tenant's steps running)"
        )
    return Reason(key, "slot", message, detail)


def _review(facts: WaitFacts, key: str, last: EventRecord | None) -> Reason:
    requested = _last(facts.events, key, ("review.requested",))
    review_id = str(requested.data.get("review_id")) if requested is not None else None
    review = facts.reviews.get(review_id or "")
    if review is None:
        return Reason(key, "review", "waits for a human review", {"review_id": review_id})
    who = f"claimed by {review.claimed_by}" if review.claimed_by else "not claimed yet"
    due = f", SLA due {_iso(review.sla_due)}" if review.sla_due is not None else ""
    return Reason(
        key,
        "review",
        f"waits for review {review.id} in pool {review.pool!r} ({who}{due})",
        {
            "review_id": review.id,
            "pool": review.pool,
            "status": review.status.value,
            "claimed_by": review.claimed_by,
            "sla_due": _iso(review.sla_due),
        },
    )
