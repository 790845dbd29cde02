"""Circuit breakers per named dependency: closed → open → half-open → closed.

A breaker opens after ``failure_threshold`` consecutive failures, fails calls fast while open,
lets one trial call through after ``cooldown_s`` (half-open), and closes again on its success or
re-opens on its failure. Time comes in as ``now_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tenantflow.errors import ConfigurationError, PolicyError

__all__ = ["BreakerState", "CircuitBreaker", "record_outcome"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """The state of one dependency's breaker."""

    name: str
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False
    transitions: list[tuple[float, BreakerState]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigurationError(
                "failure_threshold must be >= 1",
                field="failure_threshold",
                value=self.failure_threshold,
            )
        if self.cooldown_s < 0:
            raise ConfigurationError(
                "cooldown must not be negative", field="cooldown", value=self.cooldown_s
            )

    def allow(self, now_s: float) -> bool:
        """Whether a call may go through now (a half-open breaker admits one trial at a time)."""
        if self.state == BreakerState.OPEN:
            if now_s - self.opened_at < self.cooldown_s:
                return False
            self._move(BreakerState.HALF_OPEN, now_s)
        if self.state == BreakerState.HALF_OPEN:
            if self.trial_in_flight:
                return False
            self.trial_in_flight = True
        return True

    def retry_after_s(self, now_s: float) -> float:
        """Seconds until the breaker will admit a trial call."""
        if self.state != BreakerState.OPEN:
            return 0.0
        return max(0.0, self.cooldown_s - (now_s - self.opened_at))

    def record_success(self, now_s: float) -> None:
        self.failures = 0
        self.trial_in_flight = False
        if self.state != BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, now_s)

    def record_neutral(self) -> None:
        """The call ended without saying anything about the dependency's health (refused by
        the tenant's policy before it was sent, or cancelled): free the trial, count nothing."""
        self.trial_in_flight = False

    def record_failure(self, now_s: float) -> None:
        self.failures += 1
        was_trial = self.state == BreakerState.HALF_OPEN
        self.trial_in_flight = False
        if was_trial or self.failures >= self.failure_threshold:
            self.opened_at = now_s
            if self.state != BreakerState.OPEN:
                self._move(BreakerState.OPEN, now_s)

    def _move(self, state: BreakerState, now_s: float) -> None:
        self.state = state
        self.transitions.append((now_s, state))
        del self.transitions[:-20]  # a short history is enough for the timeline


def record_outcome(breaker: CircuitBreaker, exc: BaseException, now_s: float) -> None:
    """Count an exception from a guarded call against ``breaker`` — if it says the dependency
    failed.

    A tenant's policy refusing the call (:class:`~tenantflow.errors.PolicyError`: a rate limit,
    the budget, an allow-list, residency), the budget ladder's signals and cancellations are not
    outages: one tenant exhausting its own quota must not open a breaker every tenant shares.
    """
    if isinstance(exc, Exception) and not isinstance(exc, PolicyError):
        breaker.record_failure(now_s)
    else:
        breaker.record_neutral()
