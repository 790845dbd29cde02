"""How an engine is set up: :class:`EngineConfig`, one frozen value instead of many arguments.

The engine's dependencies (its stores and its clock) are passed to it beside the config; the
config holds only settings, so that one value can be built once, checked once, logged and
shared by every process of a placement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any, Literal

from tenantflow.domain.policy import Policy, RateLimit
from tenantflow.errors import ConfigurationError

__all__ = ["EngineConfig"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's settings; every field has a working default.

    Raises:
        ConfigurationError: a setting is out of range (checked at construction).
    """

    slots: int = 64
    """How many step attempts may execute at once, shared fairly by all tenants."""

    lease: timedelta = timedelta(seconds=30)
    """How long an attempt's lease lasts without renewal; an attempt whose lease lapses (the
    process stalled) can no longer commit, and the step is claimed again."""

    breaker_failures: int = 5
    """Consecutive failures of one tool or model that open its circuit breaker."""

    breaker_cooldown: timedelta = timedelta(seconds=30)
    """How long an open circuit breaker refuses calls before it lets one through again."""

    execute: bool = True
    """False opens the store to read (timelines, state) without running anything."""

    seed: int | None = None
    """Seeds retry jitter, for reproducible tests."""

    region: str | None = None
    """The residency region of the default store (None: a single store that serves every
    tenant whose region has no store of its own, only when there are no region stores)."""

    max_queued_runs: int = 100_000
    """Past this many runs waiting for admission, submissions are refused with
    :class:`~tenantflow.errors.BackpressureError` (and its retry-after)."""

    auto_tenant: str | Policy | None = None
    """A tier name or Policy: unknown tenants are registered with it on first submit
    (audited). None refuses unknown tenants."""

    aging: timedelta = timedelta(seconds=30)
    """How long a waiting step takes to climb one lane."""

    controls: bool = True
    """False switches tenant controls off: one shared FIFO queue, no caps, no per-tenant rate
    limits (only ``platform_limits``), the baseline the demo compares against. Budgets,
    residency and allow-lists hold either way."""

    platform_limits: Mapping[str, RateLimit | str | Mapping[str, Any]] = field(default_factory=dict)
    """Rate limits per resource (``{"tool:credit_bureau": "3000/hour"}``, or
    ``{"rate": "3000/hour", "burst": 100}``) shared by all tenants together, e.g. a vendor's
    quota for the whole platform; with controls on they apply on top of each tenant's own."""

    cluster: Literal["worker", "front"] | None = None
    """None drives every tenant's runs in this process. ``"worker"`` makes this engine one of
    several worker processes sharing one PostgreSQL database: it drives only the tenants it
    owns (see :mod:`tenantflow.engine.cluster`). ``"front"`` executes nothing: submissions are
    queued for the workers, and cancel and review decisions are passed to the worker that
    drives the run. :mod:`tenantflow.placement` composes these set-ups."""

    command_timeout: timedelta = timedelta(seconds=10)
    """How long a front waits for a worker to run a cancel or a decision before it returns
    (the command stays queued and is run when a worker takes it)."""

    ingest_per_tenant: int = 4
    """How many submissions of one tenant are recorded at once while other tenants have steps
    running (64 while none do); the rest wait their turn, so that a tenant's burst cannot crowd
    out other tenants' runs in flight (see :mod:`tenantflow.engine.ingest`)."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ConfigurationError("slots must be at least 1", field="slots", value=self.slots)
        if self.lease <= timedelta(0):
            raise ConfigurationError("lease must be positive", field="lease", value=str(self.lease))
        if self.ingest_per_tenant < 1:
            raise ConfigurationError(
                "ingest_per_tenant must be at least 1",
                field="ingest_per_tenant",
                value=self.ingest_per_tenant,
            )
        if self.cluster not in (None, "worker", "front"):
            raise ConfigurationError(
                f"unknown cluster role {self.cluster!r}: 'worker' or 'front'", field="cluster"
            )

    def with_options(self, **options: Any) -> EngineConfig:
        """A copy with the named fields changed.

        Raises:
            ConfigurationError: an option that is not a field of this class.
        """
        known = {f.name for f in fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown engine option {unknown[0]!r}: one of {', '.join(sorted(known))}",
                field=unknown[0],
            )
        return replace(self, **options) if options else self
