"""What a step sees of the engine: ``StepContext``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tenantflow.errors import CircuitOpenError

if TYPE_CHECKING:
    from tenantflow.engine.runtime import Runtime

__all__ = ["StepContext"]


@dataclass(slots=True)
class StepContext:
    """Passed as the first argument of every step.

    Attributes:
        run_id: the run this attempt belongs to.
        tenant_id: the run's tenant (from the caller that submitted it, never from data).
        workflow: the workflow's name.
        step: the step key (``name`` or ``name[i]`` for a fan-out element).
        attempt: 1 for the first try, 2 for the first retry, …
        idempotency_key: stable across every attempt of this step: pass it to tools so that a
            re-executed attempt (after a crash) is deduplicated downstream.
    """

    run_id: str
    tenant_id: str
    workflow: str
    step: str
    attempt: int
    idempotency_key: str
    _runtime: Runtime = field(repr=False)
    notes: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def now(self) -> datetime:
        """The engine clock's current time (a fake clock in tests)."""
        return datetime.fromtimestamp(self._runtime.clock.now(), tz=UTC)

    def log(self, message: str, **data: Any) -> None:
        """Add a note to the run's execution log (committed with the attempt's outcome)."""
        self.notes.append({"message": message, **data})

    @asynccontextmanager
    async def circuit(self, name: str) -> AsyncIterator[None]:
        """Guard a call to dependency ``name`` with its circuit breaker.

        Raises :class:`CircuitOpenError` at once, without running the block, while the breaker
        is open; an exception from the block counts as a failure of the dependency.
        """
        breaker = self._runtime.breaker(name)
        now = self._runtime.clock.now()
        if not breaker.allow(now):
            raise CircuitOpenError(
                f"circuit {name!r} is open",
                dependency=name,
                retry_after_s=breaker.retry_after_s(now),
            )
        try:
            yield
        except BaseException:
            breaker.record_failure(self._runtime.clock.now())
            raise
        breaker.record_success(self._runtime.clock.now())
