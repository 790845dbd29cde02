"""The observer events of the run driver (see :mod:`tenantflow.observability.events`).

Built only when an observer is attached: the callers check ``if observers`` first.
"""

from __future__ import annotations

from collections.abc import Iterable

from tenantflow.domain.records import RunStatus
from tenantflow.engine.execution.active import ActiveRun, latest_version
from tenantflow.engine.execution.outcomes import AttemptOutcome
from tenantflow.observability.events import (
    Observers,
    RunFinished,
    RunSubmitted,
    RunSuspended,
    StepFinished,
    StepStarted,
)

__all__ = ["run_finished", "run_submitted", "step_finished", "step_started", "suspended"]


def run_submitted(observers: Observers, run: ActiveRun, now: float) -> None:
    observers.emit(
        RunSubmitted(
            tenant_id=run.tenant_id,
            run_id=run.id,
            at_s=now,
            workflow=run.spec.name,
            lane=run.lane,
            queued=run.status == RunStatus.QUEUED,
        )
    )


def run_finished(observers: Observers, run: ActiveRun, status: RunStatus, now: float) -> None:
    sla = run.policy.run_sla if run.policy is not None else None
    observers.emit(
        RunFinished(
            tenant_id=run.tenant_id,
            run_id=run.id,
            at_s=now,
            workflow=run.spec.name,
            status=status.value,
            submitted_at_s=run.submitted_at_s,
            state_version=latest_version(run),
            run_sla_s=None if sla is None else sla.total_seconds(),
        )
    )


def suspended(observers: Observers, runs: Iterable[ActiveRun], now: float) -> None:
    """This process stops driving ``runs`` (shutdown, or handed to another worker)."""
    for run in list(runs):
        observers.emit(
            RunSuspended(tenant_id=run.tenant_id, run_id=run.id, at_s=now, workflow=run.spec.name)
        )


def step_started(
    observers: Observers, run: ActiveRun, key: str, attempt: int, started_s: float
) -> None:
    observers.emit(
        StepStarted(
            tenant_id=run.tenant_id,
            run_id=run.id,
            at_s=started_s,
            workflow=run.spec.name,
            step=key,
            attempt=attempt,
            state_version=latest_version(run),
        )
    )


def step_finished(
    observers: Observers,
    run: ActiveRun,
    key: str,
    attempt: int,
    started_s: float,
    outcome: AttemptOutcome,
    now: float,
) -> None:
    name = outcome.name
    produced = run.versions.get(key) if name == "succeeded" else None
    error = outcome.error
    observers.emit(
        StepFinished(
            tenant_id=run.tenant_id,
            run_id=run.id,
            at_s=now,
            workflow=run.spec.name,
            step=key,
            attempt=attempt,
            outcome=name,
            started_at_s=started_s,
            state_version=produced if produced is not None else latest_version(run),
            error_type=type(error).__name__ if name in ("failed", "cancelled") else None,
        )
    )
