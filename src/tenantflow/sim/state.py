"""What the simulator keeps per run, per tenant and per step, and what it returns.

The records are slotted classes with plain attributes: the simulator touches them a few times
per event, and a month of traffic is millions of events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from tenantflow.domain.policy import Lane, Policy
from tenantflow.report.trace import Trace
from tenantflow.sim.arrivals import Arrival
from tenantflow.sim.resources import BudgetBook, RateBucket, ReviewDesk
from tenantflow.sim.scenario import SimEndpoint
from tenantflow.sim.spec import FailureSpec, ModelCallSpec, StepSpec
from tenantflow.sim.values import Sampler

__all__ = [
    "SHARED",
    "RunState",
    "SimResult",
    "SimStats",
    "StepPlan",
    "TenantState",
    "remaining_micros",
    "run_books",
]

SHARED: Final = "*"
"""The one tenant of the shared queues when tenant controls are off."""

_DEFAULT_FAILURE: Final = FailureSpec(probability=0.0)


@dataclass(slots=True)
class SimStats:
    """Exact counters kept beside the trace (for tests, benchmarks and the report's notes).

    Attributes:
        events: Events processed.
        steps: Step attempts that ran (held a slot for their duration).
        max_running: Most steps each tenant held slots for at once.
        max_active: Most runs each tenant had admitted at once.
        budget_overruns: Runs that spent more than their policy's per-run budget.
        budget_refusals: Attempts that failed because a tool's price did not fit the budget.
        residency_violations: Model calls of region-bound tenants made outside their region.
        residency_blocked: Attempts that found no healthy endpoint in their region.
        burst_notices: Burst-credit notices from the dispatcher, by kind.
        paused_at_end: Runs paused for budget when the simulation stopped.
        refused: Submissions refused (backpressure, or the period budget spent).
    """

    events: int = 0
    steps: int = 0
    max_running: dict[str, int] = field(default_factory=dict)
    max_active: dict[str, int] = field(default_factory=dict)
    budget_overruns: int = 0
    budget_refusals: int = 0
    residency_violations: int = 0
    residency_blocked: int = 0
    burst_notices: dict[str, int] = field(default_factory=dict)
    paused_at_end: int = 0
    refused: int = 0


@dataclass(frozen=True, slots=True)
class SimResult:
    """A simulated scenario variant: the trace for the report, and the exact counters."""

    trace: Trace
    stats: SimStats


class StepPlan:
    """A workflow step with everything the hot path needs precomputed.

    Attributes:
        index: Position in the workflow.
        spec: The step as written.
        sampler: Draws an attempt's slot time.
        hint_s: Mean slot time: the fair scheduler's cost hint.
        tool_resource: ``tool:<name>`` when the step calls a tool.
        tool_cost: The tool's price (micro-dollars).
        model: The model call, if any.
        optional: Whether the step may be skipped.
        review_p: Probability of a review after the step.
        failure: Failure and retry settings (no failures when the file sets none).
        comp_sampler: Draws the compensation's slot time, if the step has one.
    """

    __slots__ = (
        "comp_sampler",
        "failure",
        "hint_s",
        "index",
        "model",
        "optional",
        "review_p",
        "sampler",
        "spec",
        "tool_cost",
        "tool_resource",
    )

    def __init__(self, index: int, spec: StepSpec) -> None:
        self.index = index
        self.spec = spec
        self.sampler = spec.duration.sampler()
        self.hint_s = max(spec.duration.expected_s, 1e-3)
        self.tool_resource = f"tool:{spec.tool}" if spec.tool else None
        self.tool_cost = spec.tool_cost
        self.model: ModelCallSpec | None = spec.model
        self.optional = spec.optional
        self.review_p = spec.review.probability if spec.review else 0.0
        self.failure = spec.failure or _DEFAULT_FAILURE
        self.comp_sampler = spec.compensate.sampler() if spec.compensate else None


class TenantState:
    """Per-tenant simulation state.

    Attributes:
        id: The tenant.
        cls: Index of its report class.
        policy: Its policy.
        queue_id: The tenant the scheduler and admission know: itself, or :data:`SHARED`.
        weight: The policy's weight.
        period: Its period ledgers (None without a period limit or without controls).
        buckets: Its rate-limit bucket per resource (None: unlimited), looked up once.
        review_sampler: Draws a review's decision time.
        running: Steps holding a slot now; ``active``: runs admitted now.
        service_s: Slot-seconds received inside the report's window.
        demand_s: Slot-seconds of first attempts of the runs it submitted in the window.
    """

    __slots__ = (
        "active",
        "buckets",
        "cls",
        "demand_s",
        "desk",
        "id",
        "period",
        "policy",
        "queue_id",
        "review_sampler",
        "running",
        "service_s",
        "weight",
    )

    def __init__(self, tenant_id: str, cls: int, policy: Policy, queue_id: str) -> None:
        self.id = tenant_id
        self.cls = cls
        self.policy = policy
        self.queue_id = queue_id  # the scheduler/admission tenant: itself, or SHARED
        self.weight = policy.weight
        self.period: BudgetBook | None = None
        self.buckets: dict[str, RateBucket | None] = {}
        self.desk: ReviewDesk | None = None
        self.review_sampler: Sampler | None = None
        self.running = 0
        self.active = 0
        self.service_s = 0.0
        self.demand_s = 0.0


class RunState:
    """One run in flight; the object itself is its key in the scheduler and admission.

    Attributes:
        rid: Sequence number.
        tenant: Its tenant.
        submitted_s: When it was submitted.
        lane: Its lane.
        rng: Its own random generator (seeded by its arrival), for every draw it makes.
        durations: Slot time of each step's first attempt, drawn at submission.
        step: Index of the current step; ``attempt``: its attempt number (0 first).
        started: Whether a step of it has run (later steps are "in flight").
        status: ``queued``, ``active``, ``paused`` or ``done``.
        cost: Micro-dollars charged so far.
        waits: Calls that waited for a rate limit.
        degradations: Budget ladder actions taken.
        regions: Region of every model endpoint it called.
        reviewed, review_wait_s, review_opened_s: Its reviews.
        escalated: The open review replaces the current step (budget escalation).
        completed: Steps completed, in order (their compensations run in reverse).
        compensations: Slot times of the compensations still to run, once failing.
        book: Its run ledgers (None without a per-run limit or without controls).
        tool_hold, model_hold: Keys of the current attempt's budget holds.
        grant_s: When the current attempt got its slot.
        endpoint: The endpoint of the current attempt's model call.
        tool_done: The current attempt's tool cell was taken (not again while it waits).
        woken: The bucket that woke it to retry its call, if any.
    """

    __slots__ = (
        "attempt",
        "book",
        "compensations",
        "completed",
        "cost",
        "degradations",
        "durations",
        "endpoint",
        "escalated",
        "grant_s",
        "lane",
        "model_hold",
        "regions",
        "review_opened_s",
        "review_wait_s",
        "reviewed",
        "rid",
        "rng",
        "started",
        "status",
        "step",
        "submitted_s",
        "tenant",
        "tool_done",
        "tool_hold",
        "waits",
        "woken",
    )

    def __init__(
        self,
        rid: int,
        tenant: TenantState,
        arrival: Arrival,
        rng: random.Random,
        durations: list[float],
    ) -> None:
        self.rid = rid
        self.tenant = tenant
        self.submitted_s = arrival.at_s
        self.lane: Lane = arrival.lane
        self.rng = rng
        self.durations = durations
        self.step = 0
        self.attempt = 0
        self.started = False
        self.status = "queued"
        self.cost = 0
        self.waits = 0
        self.degradations: list[str] = []
        self.regions: list[str] = []
        self.reviewed = False
        self.review_wait_s: float | None = None
        self.review_opened_s = 0.0
        self.escalated = False
        self.completed: list[int] = []
        self.compensations: list[float] | None = None
        self.book: BudgetBook | None = None
        self.tool_hold: str | None = None
        self.model_hold: str | None = None
        self.grant_s = 0.0
        self.endpoint: SimEndpoint | None = None
        self.tool_done = False
        self.woken: RateBucket | None = None


def run_books(run: RunState) -> tuple[BudgetBook, ...]:
    """The ledgers a step of ``run`` reserves against: the run's and its tenant's period's."""
    book, period = run.book, run.tenant.period
    if period is None:
        return () if book is None else (book,)
    return (period,) if book is None else (book, period)


def remaining_micros(run: RunState, now_s: float) -> int | None:
    """Money ``run`` may still reserve: the tighter of its run and period ledgers (None: any)."""
    left: int | None = None
    for book in (run.book, run.tenant.period):
        if book is not None:
            available = book.available_micros(now_s)
            if available is not None and (left is None or available < left):
                left = available
    return left
