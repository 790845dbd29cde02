"""What happened in one scenario: the raw record a report is computed from.

Both ``tenantflow demo`` (the real engine, time-compressed) and ``tenantflow simulate`` (the real
scheduler and policy code in virtual time) produce a :class:`Trace` per scenario; the report
(:mod:`tenantflow.report.build`) turns traces into the comparison table, JSON and plots. Keeping
the record raw — one row per run, one sample per tick — means every figure in a report is
computed the same way whichever way the traffic ran.

All times are scenario seconds since the scenario began (not wall-clock seconds): with time
compressed ``--speed`` times, a 45 s workflow is 45 here although it took 45/speed s of wall time.
Money is integer micro-dollars.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["RunOutcome", "Sample", "TenantProfile", "Trace"]

RunStatus = Literal["completed", "failed", "cancelled", "unfinished", "refused"]


@dataclass(slots=True)
class TenantProfile:
    """One tenant as the scenario configured it."""

    tenant: str
    tenant_class: str
    """The row of the report this tenant counts in (e.g. ``enterprise``, ``bursting``, ``gdpr``)."""
    tier: str
    weight: float
    residency: str | None = None
    """The region every model call and its data must stay in, or None for no constraint."""
    max_running_steps: int | None = None
    sla_s: float | None = None
    """A run slower than this (submission to end) violates the SLA; None: best effort."""


@dataclass(slots=True)
class RunOutcome:
    """One submitted run (or refused submission) and what it cost."""

    tenant: str
    submitted_s: float
    finished_s: float | None
    """When its last step ended; None when it had not finished when the scenario stopped."""
    status: RunStatus
    cost_micros: int = 0
    rate_limit_waits: int = 0
    """Times one of its calls waited for the tenant's rate limit (per call, not per second)."""
    degradations: tuple[str, ...] = ()
    """Budget ladder actions taken: ``cheaper_model``, ``skip_optional``, ``escalate_to_human``,
    ``pause``."""
    endpoint_regions: tuple[str, ...] = ()
    """The region of every model endpoint it called, in call order."""
    reviewed: bool = False
    review_wait_s: float | None = None
    """From the review opening to its decision."""

    @property
    def latency_s(self) -> float | None:
        return None if self.finished_s is None else self.finished_s - self.submitted_s


@dataclass(slots=True)
class Sample:
    """The platform at one instant, per tenant class."""

    t_s: float
    running: dict[str, int]
    """Steps holding a worker slot."""
    queued: dict[str, int]
    """Runs admitted or waiting for admission whose next step is not running."""
    reviews: dict[str, int] = field(default_factory=dict)
    """Open (undecided) human reviews."""


@dataclass(slots=True)
class Trace:
    """One scenario: who was there, every run, and samples over time."""

    scenario: str
    controls: bool
    """False: one shared FIFO, no caps, shared limits (the platform without tenant controls)."""
    slots: int
    duration_s: float
    """Scenario seconds covered (the window the report's rates and shares are over)."""
    wall_s: float
    """Wall-clock seconds it took to produce."""
    tenants: list[TenantProfile]
    runs: list[RunOutcome]
    samples: list[Sample] = field(default_factory=list)
    service_s: dict[str, float] = field(default_factory=dict)
    """Slot-seconds each tenant received over ``duration_s``."""
    demand_s: dict[str, float] = field(default_factory=dict)
    """Slot-seconds of work each tenant submitted over ``duration_s``."""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
