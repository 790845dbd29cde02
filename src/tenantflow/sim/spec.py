"""The scenario file's schema: pydantic models, one per section (``docs/scenarios.md``).

These models check shapes, types and ranges; :mod:`tenantflow.sim.scenario` then checks what
spans sections (a burst names an existing tenant group, every reviewer pool a tenant uses is
defined, a residency-bound tenant has an endpoint in its region) and builds the real
:class:`~tenantflow.domain.policy.Policy` and :class:`~tenantflow.domain.routing.Endpoint`
objects. Every model refuses unknown fields.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator

from tenantflow.domain.limits import INT64_MAX, within
from tenantflow.domain.policy import Lane, ModelTier, Tier
from tenantflow.sim.values import (
    Distribution,
    Money,
    Probability,
    RatePerSecond,
    Seconds,
    SpecModel,
)

__all__ = [
    "MAX_SIMULATED_S",
    "ArrivalSpec",
    "BurstSpec",
    "EndpointSpec",
    "FailureSpec",
    "ModelCallSpec",
    "OutageSpec",
    "ReviewSpec",
    "ReviewerPoolSpec",
    "ReviewerTeamSpec",
    "ScenarioSpec",
    "StepSpec",
    "TenantGroupSpec",
    "WorkflowSpec",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_DEFAULT_START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday, 08:00 UTC
_FIRST_YEAR, _LAST_YEAR = 1971, 2200  # calendar arithmetic stays far from datetime's limits
MAX_SIMULATED_S = 10 * 366 * 86400.0
"""The longest ``duration`` (and ``drain``) a scenario may ask for."""


class ArrivalSpec(SpecModel):
    """Steady traffic: each tenant of the group submits runs as a Poisson process.

    Written ``arrivals: 50/day`` or as a mapping.

    Attributes:
        rate: Runs per tenant, e.g. ``"50/day"``.
        diurnal: Optional 24 hourly weights (hour 0 is midnight of the scenario's ``start``
            day, UTC); the rate in hour ``h`` is ``rate * diurnal[h] / mean(diurnal)``, so the
            daily total stays ``rate``.
        lane: The runs' lane; defaults to the policy's ``default_lane``.
    """

    rate: RatePerSecond
    diurnal: tuple[float, ...] | None = None
    lane: Lane | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"rate": data} if isinstance(data, str) else data

    @field_validator("diurnal")
    @classmethod
    def _hours(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return None
        if len(value) != 24:
            raise ValueError(f"diurnal needs 24 hourly weights (got {len(value)})")
        if any(v < 0 for v in value) or not any(v > 0 for v in value):
            raise ValueError("diurnal weights must be >= 0 and not all 0")
        return value


class TenantGroupSpec(SpecModel):
    """``count`` tenants that share a tier, a policy and an arrival process.

    Attributes:
        name: The group's name; with ``count: 1`` also the tenant id, otherwise tenants are
            ``<name>-001``, ``<name>-002``, ...
        tenant_class: The report row the tenants count in (written ``class``; default: name).
        count: How many tenants.
        tier: The policy preset: ``enterprise``, ``standard`` or ``free``.
        policy: Overrides of the preset, with the real :class:`Policy` field names and
            spellings (``max_running_steps: 20``, ``rate_limits: {"tool:credit_bureau":
            "200/hour"}``, ``budget: {run_micros: "$0.10"}``, ``region: eu-west-1``,
            ``run_sla: 5m``). ``budget`` is merged into the preset's budget; every other field
            replaces the preset's value.
        arrivals: Steady traffic per tenant, or none (the group only bursts).
    """

    name: str = Field(pattern=_NAME, max_length=100)
    tenant_class: str | None = Field(default=None, alias="class", min_length=1, max_length=100)
    count: int = Field(default=1, ge=1, le=1_000_000)
    tier: Tier
    policy: dict[str, Any] = Field(default_factory=dict)
    arrivals: ArrivalSpec | None = None


class BurstSpec(SpecModel):
    """A one-off flood: ``count`` runs from a tenant group, evenly spread.

    Attributes:
        group: The tenant group's name; a group of several tenants shares the burst round-robin.
        at: When the first run is submitted.
        count: How many runs.
        spread: Over how long they are submitted (0: all at once).
        lane: The runs' lane; defaults to the policy's ``default_lane``.
    """

    group: str
    at: Seconds
    count: int = Field(ge=1, le=10_000_000)
    spread: Seconds = 0.0
    lane: Lane | None = None


class ModelCallSpec(SpecModel):
    """One model call made by a step.

    Attributes:
        prompt_tokens: Prompt size.
        max_tokens: The most completion tokens; reserved in full before the call.
        completion_tokens: Mean completion size; each call draws uniformly from half to one and
            a half times this, capped at ``max_tokens``, and is charged for what it drew.
        tier: Prefer this endpoint tier over the policy's ``model_tier``.
    """

    prompt_tokens: int = Field(ge=0, le=10_000_000)
    max_tokens: int = Field(ge=1, le=10_000_000)
    completion_tokens: int = Field(ge=0, le=10_000_000)
    tier: ModelTier | None = None

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.completion_tokens > self.max_tokens:
            raise ValueError(
                f"completion_tokens ({self.completion_tokens}) exceeds max_tokens "
                f"({self.max_tokens})"
            )
        return self


class ReviewSpec(SpecModel):
    """A human review after the step, in the tenant's reviewer pool (holds no slot).

    Attributes:
        probability: Share of runs whose step needs a review.
    """

    probability: Probability


class FailureSpec(SpecModel):
    """How often an attempt fails, and how it is retried.

    Attributes:
        probability: Chance that an attempt fails (after running its full duration, and paid).
        retries: Further attempts after the first.
        backoff: Wait before the first retry; multiplied by ``multiplier`` per retry, capped at
            ``max_backoff``, with +-``jitter`` (a fraction) applied.
    """

    probability: Probability
    retries: int = Field(default=2, ge=0, le=100)
    backoff: Seconds = 5.0
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    max_backoff: Seconds = 300.0
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)


class StepSpec(SpecModel):
    """One step of the workflow (steps run one after another, in the order listed).

    Attributes:
        name: The step's name.
        duration: How long an attempt holds a worker slot (a :class:`Distribution`); a model
            call adds its endpoint's ``latency``.
        tool: A tool the step calls once per attempt; its rate-limit resource is
            ``tool:<name>``.
        tool_cost: The tool call's price, reserved and settled against the budget.
        model: A model call the step makes once per attempt.
        optional: Failing for good, or not fitting the budget, skips the step instead of
            failing the run.
        review: A human review after the step.
        failure: Attempt failures and retries.
        compensate: The duration of the step's compensation, run (holding a slot) in reverse
            order of completion when the run fails for good.
    """

    name: str = Field(pattern=_NAME, max_length=100)
    duration: Distribution
    tool: str | None = Field(default=None, pattern=_NAME, max_length=100)
    tool_cost: Money = 0
    model: ModelCallSpec | None = None
    optional: bool = False
    review: ReviewSpec | None = None
    failure: FailureSpec | None = None
    compensate: Distribution | None = None


class WorkflowSpec(SpecModel):
    """The workflow every run executes.

    Attributes:
        name: The workflow's name.
        steps: Its steps, in order.
    """

    name: str = Field(default="workflow", min_length=1, max_length=100)
    steps: tuple[StepSpec, ...] = Field(min_length=1, max_length=100)


class OutageSpec(SpecModel):
    """A window in which an endpoint is unhealthy (its circuit breaker open).

    Attributes:
        at: When it starts.
        lasting: How long it lasts (written ``for``).
    """

    at: Seconds
    lasting: Seconds = Field(alias="for")


class EndpointSpec(SpecModel):
    """A model deployment (built into a real :class:`~tenantflow.domain.routing.Endpoint`).

    Attributes:
        name: Endpoint name; its rate-limit resource is ``model:<name>``.
        provider: Provider label.
        model: Model name (what ``allowed_models`` and ``denied_models`` refer to).
        region: Where it runs.
        tier: ``large`` or ``small``.
        price_in_per_1k: Price per 1,000 prompt tokens (``"$0.0025"`` or micro-dollars).
        price_out_per_1k: Price per 1,000 completion tokens.
        max_context: Prompt plus completion tokens it accepts.
        latency: Added to the duration of every step that calls it.
        outages: Windows in which it is down.
    """

    name: str = Field(pattern=_NAME, max_length=100)
    provider: str = Field(default="sim", min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=100)
    region: str = Field(min_length=1, max_length=100)
    tier: ModelTier
    price_in_per_1k: Money
    price_out_per_1k: Money
    max_context: Annotated[int, within(1)] = Field(default=128_000, ge=1)
    latency: Seconds = 0.0
    outages: tuple[OutageSpec, ...] = ()


class ReviewerPoolSpec(SpecModel):
    """A named team of reviewers that tenants' reviews queue for.

    Attributes:
        name: The pool (what ``Policy.reviewer_pool`` names; tenants without a pool of their
            own use ``shared``).
        reviewers: How many reviewers decide at once.
        decision_time: How long one decision takes.
    """

    name: str = Field(pattern=_NAME, max_length=100)
    reviewers: int = Field(ge=1, le=100_000)
    decision_time: Distribution


class ReviewerTeamSpec(SpecModel):
    """The team each tenant with ``dedicated_reviewers`` gets (pool ``<tenant>-reviewers``).

    Attributes:
        reviewers: Reviewers per tenant.
        decision_time: How long one decision takes.
    """

    reviewers: int = Field(ge=1, le=100_000)
    decision_time: Distribution


class ScenarioSpec(SpecModel):
    """A whole scenario (see ``docs/scenarios.md`` for every field with examples).

    Attributes:
        name: The scenario's name (default: the file name without extension).
        description: Free text for the report.
        seed: Seed of every random draw; the same seed gives the same result.
        slots: Worker slots shared by every tenant.
        duration: How long traffic arrives; the report's window.
        drain: How long the simulation continues after ``duration`` so that runs can finish
            (default: as long as ``duration``); what is still running then is ``unfinished``.
        start: Calendar time of the scenario's second 0 (budget periods and the diurnal
            shape follow it); default Monday 2026-11-23 08:00 UTC.
        sample_every: Interval of the platform samples (default: 1/400 of the simulated time).
        aging: Dispatcher aging: a step waiting this long is served one lane higher.
        max_queued_runs: Runs waiting for admission, over all tenants, before submissions are
            refused (backpressure).
        regions: Regions this deployment has (default: the policy module's known regions).
        endpoints: Model endpoints.
        shared_rate_limits: Platform-wide limits per resource (``"600/hour"`` or ``{rate:
            600/hour, burst: 50}``, as in a policy), applied instead of per-tenant limits when
            tenant controls are off (e.g. the credit bureau's quota).
        reviewer_pools: Named reviewer pools.
        dedicated_reviewers: The team of every tenant with ``dedicated_reviewers: true``.
        review_aging: Review-queue aging (a review waiting this long is served one lane higher).
        workflow: The workflow every run executes.
        tenants: Tenant groups.
        bursts: One-off floods.
        topology: What ``tenantflow topology compare`` needs to drive the same workload through
            real processes (time scale, phases, faults; :mod:`tenantflow.topology.workload`
            checks it). The simulator ignores it.
    """

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = None
    seed: int = Field(default=0, ge=0, le=INT64_MAX)
    slots: int = Field(ge=1, le=10_000_000)
    duration: Seconds
    drain: Seconds | None = None
    start: datetime = _DEFAULT_START
    sample_every: Seconds | None = None
    aging: Seconds = 30.0
    max_queued_runs: Annotated[int, within(1)] = Field(default=100_000, ge=1)
    regions: tuple[str, ...] | None = Field(default=None, min_length=1)
    endpoints: tuple[EndpointSpec, ...] = ()
    shared_rate_limits: dict[str, Any] = Field(default_factory=dict)
    reviewer_pools: tuple[ReviewerPoolSpec, ...] = ()
    dedicated_reviewers: ReviewerTeamSpec | None = None
    review_aging: Seconds = 3600.0
    workflow: WorkflowSpec
    tenants: tuple[TenantGroupSpec, ...] = Field(min_length=1)
    bursts: tuple[BurstSpec, ...] = ()
    topology: dict[str, Any] | None = None

    @field_validator("start", mode="before")
    @classmethod
    def _calendar(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        return value

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if not _FIRST_YEAR <= value.year <= _LAST_YEAR:
            raise ValueError(f"the year must be between {_FIRST_YEAR} and {_LAST_YEAR}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("duration", "sample_every", "aging", "review_aging")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0.0:
            raise ValueError("must be > 0")
        return value

    @field_validator("duration", "drain")
    @classmethod
    def _bounded(cls, value: float | None) -> float | None:
        if value is not None and value > MAX_SIMULATED_S:
            raise ValueError("must be at most 10 years")
        return value
