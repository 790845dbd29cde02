"""The engine's observer seam: one frozen event per thing worth observing.

The engine calls ``engine.observers`` at a handful of points — a run submitted, admitted,
finished or suspended; a step attempt started and finished; a model or tool call finished; a
rate-limit wait; a budget degradation; a review SLA breach — each time with one frozen event,
so fields can be added without breaking observers. An observer subclasses :class:`Observer`
and overrides the ``on_*`` methods it cares about::

    class Printer(Observer):
        def on_run_finished(self, event: RunFinished) -> None:
            print(event.tenant_id, event.status, event.at_s - event.submitted_at_s)

    engine.observers.append(Printer())

Rules the engine keeps, so observers can rely on them:

* Events are emitted after the transition they describe has committed (``*Finished``) or just
  as the work begins (``StepStarted``), on the engine's event loop. Observers must not block.
* With no observer attached, an event is never built: the cost is one empty-list check.
* An observer that raises is logged and skipped; observability never fails a run.
* Events carry identifiers, names the platform registered (workflows, steps, tools, model
  endpoints) and numbers — never a run's input, state, prompt or output.

Times are engine-clock seconds (``clock.now()``), so a fake clock in tests gives fake times.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Literal

__all__ = [
    "DEGRADATIONS",
    "STEP_OUTCOMES",
    "AgentRunFinished",
    "Degraded",
    "Event",
    "ModelCallFinished",
    "Observer",
    "Observers",
    "RateLimitWait",
    "ReviewSlaBreached",
    "RunAdmitted",
    "RunFinished",
    "RunSubmitted",
    "RunSuspended",
    "StepFinished",
    "StepOutcome",
    "StepStarted",
    "ToolCallFinished",
]

log = logging.getLogger("tenantflow.observability")

StepOutcome = Literal[
    "succeeded",
    "failed",
    "cancelled",
    "rate_limited",
    "review",
    "skipped",
    "escalated",
    "paused",
    "lease_lost",
    "waiting",
]
"""How a step attempt ended: its outcome, or the wait it parked in (``review``,
``rate_limited``), or the budget decision that ended it (``skipped``, ``escalated``,
``paused``); ``lease_lost``: the process stalled past its lease and the step is claimed again."""

STEP_OUTCOMES: tuple[StepOutcome, ...] = (
    "succeeded",
    "failed",
    "cancelled",
    "rate_limited",
    "review",
    "skipped",
    "escalated",
    "paused",
    "lease_lost",
)

DEGRADATIONS = ("cheaper_model", "skip_optional", "escalate_to_human", "pause")
"""The budget ladder's actions (see :func:`tenantflow.domain.budget.decide_degradation`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What every event carries: the tenant, the run and when (engine-clock seconds)."""

    hook: ClassVar[str] = ""
    tenant_id: str
    run_id: str
    at_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSubmitted(Event):
    """A run was durably recorded; ``queued``: it waits for admission (its tenant is at its
    active-run cap), else it was admitted at once."""

    hook: ClassVar[str] = "on_run_submitted"
    workflow: str
    lane: str
    queued: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunAdmitted(Event):
    """A queued run was admitted (``at_s - submitted_at_s`` is its admission wait)."""

    hook: ClassVar[str] = "on_run_admitted"
    workflow: str
    submitted_at_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    """A run ended: ``status`` is ``completed``, ``failed``, ``compensated`` or ``cancelled``.

    ``run_sla_s`` is the tenant policy's run SLA at the time (None: best effort).
    """

    hook: ClassVar[str] = "on_run_finished"
    workflow: str
    status: str
    submitted_at_s: float
    state_version: int
    run_sla_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSuspended(Event):
    """This engine stops driving the unfinished run (it closes, or hands the run to another
    worker); whoever drives it next resumes it."""

    hook: ClassVar[str] = "on_run_suspended"
    workflow: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted(Event):
    """A step attempt holds a slot and a lease and is about to run.

    ``step`` is the step key (``name`` or ``name[i]`` for a fan-out element); ``state_version``
    is the run's latest committed state version, the one the attempt reads.
    """

    hook: ClassVar[str] = "on_step_started"
    workflow: str
    step: str
    attempt: int
    state_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFinished(Event):
    """A step attempt gave its slot back (see :data:`StepOutcome`).

    ``state_version`` is the version the attempt produced when it succeeded, else the run's
    latest; ``error_type`` is the exception's class name when it failed (never its message).
    """

    hook: ClassVar[str] = "on_step_finished"
    workflow: str
    step: str
    attempt: int
    outcome: StepOutcome
    started_at_s: float
    state_version: int
    error_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCallFinished(Event):
    """A model call returned or failed (replayed calls of a re-executed attempt are not calls).

    Tokens and ``cost_micros`` are what was priced: a failed streamed call still reports the
    tokens it produced.
    """

    hook: ClassVar[str] = "on_model_call_finished"
    step: str
    attempt: int
    endpoint: str
    provider: str
    model: str
    region: str
    started_at_s: float
    max_tokens: int
    temperature: float
    tokens_in: int = 0
    tokens_out: int = 0
    cost_micros: int = 0
    response_model: str | None = None
    finish_reason: str | None = None
    error_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRunFinished(Event):
    """An SDK agent (``tenantflow.integrations``) ran in a step attempt, to its answer, to a
    review it waits for, or to a failure; its model and tool calls have events of their own."""

    hook: ClassVar[str] = "on_agent_run_finished"
    step: str
    attempt: int
    agent: str
    framework: str
    started_at_s: float
    error_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallFinished(Event):
    """A tool call returned or failed (replayed calls are not calls)."""

    hook: ClassVar[str] = "on_tool_call_finished"
    step: str
    attempt: int
    tool: str
    started_at_s: float
    cost_micros: int = 0
    error_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitWait(Event):
    """A step parked (holding no slot) until a rate limit on ``resource`` allows it."""

    hook: ClassVar[str] = "on_rate_limit_wait"
    step: str
    attempt: int
    resource: str
    wait_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Degraded(Event):
    """The budget ladder degraded a step: ``action`` is one of :data:`DEGRADATIONS`."""

    hook: ClassVar[str] = "on_degraded"
    step: str
    attempt: int
    action: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewSlaBreached(Event):
    """A review task passed its SLA; ``action`` is what the policy did: ``escalate``,
    ``auto_reject`` or ``fail``."""

    hook: ClassVar[str] = "on_review_sla_breached"
    review_id: str
    step: str
    pool: str
    action: str
    due_s: float


class Observer:
    """Base class of engine observers: every hook does nothing until overridden."""

    def on_run_submitted(self, event: RunSubmitted) -> None:
        """A run was recorded (admitted at once, or queued)."""

    def on_run_admitted(self, event: RunAdmitted) -> None:
        """A queued run was admitted."""

    def on_run_finished(self, event: RunFinished) -> None:
        """A run ended."""

    def on_run_suspended(self, event: RunSuspended) -> None:
        """The engine stops with this run unfinished."""

    def on_step_started(self, event: StepStarted) -> None:
        """A step attempt starts."""

    def on_step_finished(self, event: StepFinished) -> None:
        """A step attempt gave its slot back."""

    def on_model_call_finished(self, event: ModelCallFinished) -> None:
        """A model call returned or failed."""

    def on_tool_call_finished(self, event: ToolCallFinished) -> None:
        """A tool call returned or failed."""

    def on_agent_run_finished(self, event: AgentRunFinished) -> None:
        """An SDK agent's run in a step attempt ended."""

    def on_rate_limit_wait(self, event: RateLimitWait) -> None:
        """A step waits for a rate limit."""

    def on_degraded(self, event: Degraded) -> None:
        """The budget ladder degraded a step."""

    def on_review_sla_breached(self, event: ReviewSlaBreached) -> None:
        """A review passed its SLA."""


class Observers(list[Observer]):
    """The observers of one engine (``engine.observers``): append to attach, remove to detach.

    :meth:`emit` calls each observer's hook for the event; one that raises is logged (with its
    traceback the first time, then at debug level) and counted in :attr:`failures`, and the
    others still run.
    """

    __slots__ = ("failures",)

    def __init__(self) -> None:
        super().__init__()
        self.failures: Counter[str] = Counter()

    def emit(self, event: Event) -> None:
        hook = event.hook
        for observer in self:
            try:
                getattr(observer, hook)(event)
            except Exception:
                name = f"{type(observer).__name__}.{hook}"
                self.failures[name] += 1
                first = self.failures[name] == 1
                log.log(
                    logging.WARNING if first else logging.DEBUG,
                    "observer %s failed; the engine carries on",
                    name,
                    exc_info=first,
                )
