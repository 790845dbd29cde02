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

from tenantflow.domain.progress.failed import on_failed, on_revised
from tenantflow.domain.progress.model import (
    Attempt,
    Decision,
    Effect,
    Enqueue,
    EnqueueAfter,
    Finish,
    MirrorUpdate,
    Planned,
    Requeue,
    ReviewOpened,
    RunView,
    StartUnwind,
    delta_bytes,
    describe,
    plan_to_transition,
    result_json,
)
from tenantflow.domain.progress.succeeded import on_iteration, on_succeeded
from tenantflow.domain.progress.waiting import (
    on_awaiting_child,
    on_awaiting_signal,
    on_paused,
    on_rate_limited,
    on_review_decided,
    on_review_requested,
    on_skipped,
)

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
    "on_awaiting_signal",
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
