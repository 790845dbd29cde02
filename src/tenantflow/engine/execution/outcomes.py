"""How an attempt ended: a small union of outcomes, and :func:`classify` for raised ones.

The executor returns an outcome instead of raising, so the driver decides from one value (see
:mod:`tenantflow.domain.progress`). A new kind of ending is a new class here, a branch in
:func:`classify` and a case in the driver's ``_decide``; ``name`` is what observers see
(:data:`~tenantflow.observability.events.StepOutcome`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from tenantflow.engine.signals import AwaitChild, AwaitSignal, Escalate, Pause, SkipStep
from tenantflow.errors import RateLimitedError
from tenantflow.observability.events import StepOutcome

__all__ = [
    "AttemptOutcome",
    "AwaitingChild",
    "AwaitingSignal",
    "Cancelled",
    "Escalated",
    "Failed",
    "LeaseLost",
    "Paused",
    "RateLimited",
    "ReviewRequested",
    "Skipped",
    "Succeeded",
    "classify",
]


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The step returned ``value`` (``output_json``: as stored)."""

    value: Any
    output_json: bytes
    name: ClassVar[StepOutcome] = "succeeded"
    error: ClassVar[BaseException | None] = None


@dataclass(frozen=True, slots=True)
class ReviewRequested:
    """A review step described its request: a human decides."""

    payload: Any
    name: ClassVar[StepOutcome] = "review"
    error: ClassVar[BaseException | None] = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The step raised ``error``: retried, revised or failed for good by the decider."""

    error: BaseException
    name: ClassVar[StepOutcome] = "failed"


@dataclass(frozen=True, slots=True)
class RateLimited:
    """A rate limit refused a call: the step waits ``wait_s``, holding no slot."""

    error: RateLimitedError
    resource: str
    wait_s: float
    name: ClassVar[StepOutcome] = "rate_limited"


@dataclass(frozen=True, slots=True)
class Skipped:
    """The budget ladder skipped the (optional, non-element) step."""

    error: SkipStep
    name: ClassVar[StepOutcome] = "skipped"


@dataclass(frozen=True, slots=True)
class Escalated:
    """The budget ladder or the agent loop handed call ``error.index`` to a human."""

    error: Escalate
    name: ClassVar[StepOutcome] = "escalated"


@dataclass(frozen=True, slots=True)
class Paused:
    """The budget ladder paused the run."""

    error: Pause
    name: ClassVar[StepOutcome] = "paused"


@dataclass(frozen=True, slots=True)
class AwaitingChild:
    """The step waits for a child run, holding no slot."""

    error: AwaitChild
    name: ClassVar[StepOutcome] = "waiting"


@dataclass(frozen=True, slots=True)
class AwaitingSignal:
    """The step waits for a named signal sent to its run, holding no slot."""

    error: AwaitSignal
    name: ClassVar[StepOutcome] = "waiting"


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The attempt was cancelled (the run is cancelled or compensating)."""

    error: BaseException
    name: ClassVar[StepOutcome] = "cancelled"


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """The attempt's lease lapsed mid-flight: another attempt claims the step."""

    name: ClassVar[StepOutcome] = "lease_lost"
    error: ClassVar[BaseException | None] = None


AttemptOutcome = (
    Succeeded
    | ReviewRequested
    | Failed
    | RateLimited
    | Skipped
    | Escalated
    | Paused
    | AwaitingChild
    | AwaitingSignal
    | Cancelled
    | LeaseLost
)


def classify(error: BaseException, *, element: bool) -> AttemptOutcome:
    """The outcome of an attempt that raised ``error`` (``element``: a fan-out element or an
    agent iteration, which the budget ladder cannot skip on its own)."""
    if isinstance(error, RateLimitedError):
        resource = str(error.fields.get("resource", ""))
        return RateLimited(error, resource, max(0.001, error.retry_after_s))
    if isinstance(error, SkipStep) and not element:
        return Skipped(error)
    if isinstance(error, Escalate):
        return Escalated(error)
    if isinstance(error, Pause):
        return Paused(error)
    if isinstance(error, AwaitChild):
        return AwaitingChild(error)
    if isinstance(error, AwaitSignal):
        return AwaitingSignal(error)
    return Failed(error)
