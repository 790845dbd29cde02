"""The discrete-event simulator: a scenario's traffic through the real control-plane decisions.

What is real and what is sampled
--------------------------------
Every *decision* is made by the same domain code the engine uses, called the way the engine
calls it: admission and per-tenant run queues (:class:`~tenantflow.domain.admission.
AdmissionController`), slot dispatch (:class:`~tenantflow.domain.scheduler.FairScheduler`:
weights, running-step caps, guaranteed slots, burst credit, lanes with aging), rate limits
(:func:`~tenantflow.domain.ratelimit.gcra`), endpoint choice
(:func:`~tenantflow.domain.routing.select_endpoint`: residency, allow lists, tier, health,
budget), budget holds (:mod:`tenantflow.domain.budget`: reserve the worst case, settle the
actual cost) and the degradation ladder (:func:`~tenantflow.domain.budget.decide_degradation`).
Policies are real :class:`~tenantflow.domain.policy.Policy` values built from tier presets.

What is *not* executed but sampled from the scenario: how long a step attempt holds its slot,
how many completion tokens a model call produces, whether an attempt fails, whether a step
needs a human review and how long the reviewer takes. Nothing sleeps: a heap of events and a
virtual clock (scenario seconds) drive everything, so a month runs in seconds. Durability
(commits, leases, crash recovery) is not simulated: it changes no scheduling decision.

The life of a run
-----------------
Submit → admission (start, wait in the tenant's queue, or be refused with backpressure) → for
each step: the step waits for a slot; when granted it takes its tool's rate-limit cell, picks
an endpoint and takes the endpoint's cell, reserves tool price plus the model call's worst
case, then holds the slot for its sampled duration (plus the endpoint's latency). A denied
rate limit gives the slot back at once and waits in the bucket (no slot held). A model call
whose worst case does not fit follows the policy's ladder (cheaper model → skip an optional
step → escalate to a human → pause); a tool whose price does not fit fails the attempt, as in
the engine's gateway. At the end of the attempt the actual cost is settled; a failed
attempt is retried after backoff, and a run that fails for good runs its compensations in
reverse order. A review after a step waits in the tenant's reviewer pool, holding no slot.

Tenant controls off
-------------------
The baseline platform: one shared FIFO for all steps and one for all admissions, no caps,
platform-wide rate limits per resource (``shared_rate_limits``), no budget enforcement (costs
are recorded, and overruns reported) and a router that takes the fastest healthy endpoint of
the preferred tier, then the cheapest, regardless of residency or allow lists. Reviews go to
one FIFO served by every reviewer.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from typing import Any, Final, cast

from tenantflow.domain.admission import AdmissionController
from tenantflow.domain.budget import decide_degradation
from tenantflow.domain.scheduler import FairScheduler, ReadyItem
from tenantflow.errors import (
    BackpressureError,
    BudgetExceededError,
    ContractError,
    NotAllowedError,
    ResidencyError,
)
from tenantflow.report.trace import RunOutcome, RunStatus, Sample, TenantProfile, Trace
from tenantflow.sim.arrivals import Arrival, ArrivalStream, streams_for
from tenantflow.sim.record import notes, outcome, profile
from tenantflow.sim.resources import BudgetBook, RateBucket, ReviewDesk, ReviewPools, reserve_all
from tenantflow.sim.routing import Router
from tenantflow.sim.scenario import Scenario, SimEndpoint, TenantGroup
from tenantflow.sim.spec import ModelCallSpec
from tenantflow.sim.state import (
    SHARED,
    RunState,
    SimResult,
    SimStats,
    StepPlan,
    TenantState,
    remaining_micros,
    run_books,
)

__all__ = ["SimResult", "SimStats", "simulate"]

# Event kinds: the index of the handler in _Simulator.run.
_ARRIVAL, _STEP_END, _READY, _BUCKET, _REVIEW_END, _SAMPLE, _PUMP = range(7)
_SAMPLES: Final = 400  # default number of platform samples over the simulated time
_PROGRESS_EVERY: Final = 0x3FFF  # report progress every 16,384 events (a mask)


def simulate(
    scenario: Scenario, *, controls: bool, progress: Callable[[float, float], None] | None = None
) -> SimResult:
    """Simulate one variant of a scenario (tenant controls on or off).

    The same scenario and seed always give the same result, and both variants see the same
    arrivals and the same per-run draws. The trace is labelled ``with controls`` or
    ``without controls`` (the report's row label); the scenario's own name is the caller's to
    put in the report's title. ``progress(now_s, end_s)``, if given, is called every few
    thousand events with the simulated time reached and the time the simulation stops at.
    """
    return _Simulator(scenario, controls=controls).run(progress)


class _Simulator:
    """One variant of one scenario, simulated once (see the module docstring)."""

    def __init__(self, scenario: Scenario, *, controls: bool) -> None:
        spec = scenario.spec
        self.scenario = scenario
        self.controls = controls
        self.duration_s = spec.duration
        self.end_s = spec.duration + (spec.drain if spec.drain is not None else spec.duration)
        self.epoch_s = spec.start.timestamp()
        self.steps = [StepPlan(i, s) for i, s in enumerate(spec.workflow.steps)]
        self.classes = sorted({g.tenant_class for g in scenario.groups})
        n = len(self.classes)
        self.live = [0] * n  # runs submitted and not finished, per class
        self.running = [0] * n  # steps holding a slot
        self.reviewing = [0] * n  # runs waiting for a review decision
        self.now = 0.0
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        self.stats = SimStats()
        self.outcomes: list[RunOutcome] = []
        self.samples: list[Sample] = []
        self.runs: dict[int, RunState] = {}
        self.next_rid = 0
        self.pump_at: float | None = None
        self.sched = FairScheduler(slots=spec.slots, aging_s=spec.aging)
        self.admission = AdmissionController(max_queued=spec.max_queued_runs)
        self.router = Router(scenario.endpoints)
        self.buckets: dict[tuple[str, str], RateBucket | None] = {}
        self.bursty = controls and any(g.policy.burst_slots for g in scenario.groups)
        dedicated = sum(
            len(g.tenant_ids)
            for g in scenario.groups
            if g.policy.reviewer_pool is None and g.policy.dedicated_reviewers
        )
        self.reviews = ReviewPools(spec, shared=not controls, dedicated_tenants=dedicated)
        self.tenants: dict[str, TenantState] = {}
        self.profiles: list[TenantProfile] = []
        self._setup_tenants()

    def _setup_tenants(self) -> None:
        """Configure every tenant in the scheduler and admission (or the one shared queue)."""
        cls_index = {c: i for i, c in enumerate(self.classes)}
        if not self.controls:
            self.sched.configure_tenant(SHARED, now_s=0.0)
            self.admission.configure_tenant(SHARED, now_s=0.0)
        for group in self.scenario.groups:
            for tenant_id in group.tenant_ids:
                tenant = self._tenant(tenant_id, group, cls_index[group.tenant_class])
                self.tenants[tenant_id] = tenant
                self.profiles.append(profile(tenant, group.tenant_class))

    def _tenant(self, tenant_id: str, group: TenantGroup, cls: int) -> TenantState:
        policy = group.policy
        tenant = TenantState(tenant_id, cls, policy, tenant_id if self.controls else SHARED)
        tenant.review_sampler = self.reviews.sampler_for(tenant_id, policy)
        if self.controls:  # exactly as Engine.configure_tenant applies a policy
            cap = policy.max_running_steps
            burst = policy.burst_slots if cap else 0
            self.sched.configure_tenant(
                tenant_id,
                weight=policy.weight,
                running_cap=cap,
                guaranteed_slots=min(policy.guaranteed_slots, cap),
                burst_slots=burst,
                burst_window_s=policy.burst_window.total_seconds() if burst else 0.0,
                now_s=0.0,
            )
            self.admission.configure_tenant(tenant_id, active_cap=policy.max_active_runs, now_s=0.0)
            tenant.period = BudgetBook.for_period(tenant_id, policy.budget, self.epoch_s)
        return tenant

    # -- the loop ----------------------------------------------------------------------------

    def run(self, progress: Callable[[float, float], None] | None = None) -> SimResult:
        """Process events in time order until none is left or the drain window ends."""
        wall = time.perf_counter()
        spec = self.scenario.spec
        for stream in streams_for(self.scenario, self.scenario.seed):
            self._next_arrival(stream)
        self._at(0.0, _SAMPLE, spec.sample_every or max(1.0, self.end_s / _SAMPLES))
        handlers: list[Callable[[Any], None]] = [
            self._on_arrival,
            self._on_step_end,
            self._on_ready,
            self._on_bucket,
            self._on_review_end,
            self._on_sample,
            self._on_pump,
        ]
        heap, pop, end_s, events = self.heap, heapq.heappop, self.end_s, 0
        while heap:
            t, _, kind, obj = pop(heap)
            if t > end_s:
                break
            self.now = t
            events += 1
            handlers[kind](obj)
            if progress is not None and not events & _PROGRESS_EVERY:
                progress(t, end_s)
        if progress is not None:
            progress(end_s, end_s)
        self.stats.events = events
        return SimResult(self._trace(time.perf_counter() - wall), self.stats)

    def _at(self, t: float, kind: int, obj: Any) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, obj))

    def _pump(self) -> None:
        """Start steps while slots are free (the dispatcher's loop)."""
        sched, now, grant = self.sched, self.now, self._grant
        while sched.total_queued:  # (with nothing queued, pop has nothing to decide)
            item = sched.pop(now)
            if item is None:
                break
            grant(cast(RunState, item.key))
        if self.bursty:
            kinds = self.stats.burst_notices
            for notice in sched.drain_notices():
                kinds[notice.kind] = kinds.get(notice.kind, 0) + 1
            wake = sched.next_wake_s  # a burst-exhausted tenant is restored then
            if wake is not None and (self.pump_at is None or wake < self.pump_at):
                self.pump_at = wake
                self._at(max(wake, now), _PUMP, None)

    # -- events ------------------------------------------------------------------------------

    def _next_arrival(self, stream: ArrivalStream) -> None:
        arrival = stream.next()
        if arrival is not None:
            self._at(arrival.at_s, _ARRIVAL, (stream, arrival))

    def _on_arrival(self, payload: tuple[ArrivalStream, Arrival]) -> None:
        stream, arrival = payload
        self._next_arrival(stream)
        self._submit(arrival)
        self._pump()

    def _on_ready(self, run: RunState) -> None:
        """A backoff ended, or a paused run's budget period began."""
        run.status = "active"
        self._push(run)
        self._pump()

    def _on_pump(self, _: None) -> None:
        self.pump_at = None
        self._pump()

    def _on_sample(self, every_s: float) -> None:
        names, running, reviewing, live = self.classes, self.running, self.reviewing, self.live
        self.samples.append(
            Sample(
                t_s=self.now,
                running={c: running[i] for i, c in enumerate(names)},
                queued={c: live[i] - running[i] - reviewing[i] for i, c in enumerate(names)},
                reviews={c: reviewing[i] for i, c in enumerate(names)},
            )
        )
        if self.now + every_s <= self.end_s and (self.runs or self.now < self.duration_s):
            self._at(self.now + every_s, _SAMPLE, every_s)

    # -- admission ---------------------------------------------------------------------------

    def _submit(self, arrival: Arrival) -> None:
        tenant = self.tenants[arrival.tenant_id]
        rid = self.next_rid
        self.next_rid += 1
        rng = random.Random(arrival.run_seed)
        durations = [s.sampler.draw(rng) for s in self.steps]  # first attempts: same in both
        run = RunState(rid, tenant, arrival, rng, durations)
        if self.controls and tenant.period is not None:  # as the engine's admission check
            available = tenant.period.available_micros(self.now)
            if available is not None and available <= 0:
                self._refuse(run)
                return
        try:
            admitted = self.admission.submit(tenant.queue_id, run, run.lane, self.now)
        except BackpressureError:
            self._refuse(run)
            return
        self.runs[rid] = run
        self.live[tenant.cls] += 1
        if arrival.at_s <= self.duration_s:
            tenant.demand_s += sum(durations)
        if admitted:
            self._start(run)

    def _refuse(self, run: RunState) -> None:
        self.stats.refused += 1
        self.outcomes.append(RunOutcome(run.tenant.id, run.submitted_s, None, "refused"))

    def _start(self, run: RunState) -> None:
        tenant = run.tenant
        run.status = "active"
        tenant.active += 1
        top = self.stats.max_active
        if tenant.active > top.get(tenant.id, 0):
            top[tenant.id] = tenant.active
        if self.controls:
            run.book = BudgetBook.for_run(run.rid, tenant.policy.budget)
        self._push(run)

    def _push(self, run: RunState) -> None:
        """The run's next step (or compensation) is ready: queue it for a slot."""
        hint_s = 1.0 if run.compensations is not None else self.steps[run.step].hint_s
        if self.controls:
            item = ReadyItem(run.tenant.id, run, run.lane, run.started, hint_s, None)
        else:  # one FIFO for everyone: no weights, caps or lanes (as the engine's shared mode)
            item = ReadyItem(SHARED, run, "normal", True, hint_s, None)
        self.sched.push(item, self.now)

    def _finish(self, run: RunState, status: RunStatus) -> None:
        tenant = run.tenant
        del self.runs[run.rid]
        self.live[tenant.cls] -= 1
        tenant.active -= 1
        run.status = "done"
        self._record(run, status, self.now)
        for key in self.admission.finished(tenant.queue_id, run, self.now):
            self._start(cast(RunState, key))

    def _record(self, run: RunState, status: RunStatus, finished_s: float | None) -> None:
        budget = run.tenant.policy.budget.run_micros
        if budget is not None and run.cost > budget:
            self.stats.budget_overruns += 1
        self.outcomes.append(outcome(run, status, finished_s))

    # -- a step gets a slot ------------------------------------------------------------------

    def _grant(self, run: RunState) -> None:
        """The scheduler gave ``run``'s step a slot: take cells and holds, then hold the slot.

        Each stage that cannot go on gives the slot back itself (rate limit, no endpoint,
        budget), so the slot is never held while waiting.
        """
        run.grant_s = self.now
        if run.compensations is not None:
            self._hold(run, run.compensations.pop())
            return
        step = self.steps[run.step]
        if step.tool_resource is not None and not run.tool_done:
            if not self._take_cell(run, step.tool_resource):
                return
            run.tool_done = True  # kept while a later stage of this attempt waits
        model = step.model
        estimate = 0
        if model is not None:
            chosen = self._route(run, step, model)
            if chosen is None:
                return
            run.endpoint, estimate = chosen
            if not self._take_cell(run, f"model:{chosen[0].endpoint.name}"):
                return
        if run.book is not None or run.tenant.period is not None:
            if step.tool_cost and not self._hold_tool(run, step):
                return
            if model is not None and not self._hold_model(run, step, model, estimate):
                return
        duration = run.durations[step.index] if run.attempt == 0 else step.sampler.draw(run.rng)
        if run.endpoint is not None:
            duration += run.endpoint.latency_s
        self._hold(run, duration)

    def _hold(self, run: RunState, duration_s: float) -> None:
        """The attempt holds its slot for ``duration_s``."""
        tenant = run.tenant
        run.started = True
        tenant.running += 1
        self.running[tenant.cls] += 1
        top = self.stats.max_running
        if tenant.running > top.get(tenant.id, 0):
            top[tenant.id] = tenant.running
        self._at(self.now + duration_s, _STEP_END, run)

    def _release(self, run: RunState, service_s: float) -> None:
        """Give the slot back, charging the tenant the service it used."""
        tenant = run.tenant
        self.sched.done(tenant.queue_id, run, service_s, self.now)
        if service_s > 0.0:
            inside = min(self.now, self.duration_s) - max(run.grant_s, 0.0)
            if inside > 0.0:
                tenant.service_s += inside

    # -- rate limits -------------------------------------------------------------------------

    def _take_cell(self, run: RunState, resource: str) -> bool:
        """Take a rate-limit cell, or give the slot back and wait in the bucket's FIFO."""
        bucket = self._bucket(run.tenant, resource)
        if bucket is None:
            return True
        woken = run.woken is bucket
        if bucket.waiters and not woken:
            wait_s = 0.0  # others are waiting: queue behind them
        else:
            wait_s = bucket.try_take(self.now)
            if wait_s == 0.0:
                run.woken = None
                return True
        self._release(run, 0.0)
        if woken:
            bucket.waiters.appendleft(run)  # lost its turn to a newcomer: keeps its place
        else:
            run.waits += 1
            bucket.waiters.append(run)
        run.woken = None
        if not bucket.wake_pending:
            bucket.wake_pending = True
            self._at(self.now + (wait_s or bucket.interval_s), _BUCKET, bucket)
        return False

    def _bucket(self, tenant: TenantState, resource: str) -> RateBucket | None:
        """The tenant's bucket for ``resource`` (the shared one without controls), or None."""
        try:
            return tenant.buckets[resource]
        except KeyError:
            pass
        key = (tenant.queue_id, resource)
        if key not in self.buckets:
            if self.controls:
                limit = tenant.policy.rate_limit_for(resource)
            else:
                limit = self.scenario.shared_limits.get(resource)
            self.buckets[key] = None if limit is None else RateBucket(limit.rate_per_s, limit.burst)
        bucket = tenant.buckets[resource] = self.buckets[key]
        return bucket

    def _on_bucket(self, bucket: RateBucket) -> None:
        """A cell is free: wake the first waiter (it queues for a slot again)."""
        bucket.wake_pending = False
        if not bucket.waiters:
            return
        run = bucket.waiters.popleft()
        run.woken = bucket
        if bucket.waiters:
            bucket.wake_pending = True
            self._at(self.now + bucket.interval_s, _BUCKET, bucket)
        self._push(run)
        self._pump()

    # -- routing and budget ------------------------------------------------------------------

    def _route(
        self, run: RunState, step: StepPlan, model: ModelCallSpec
    ) -> tuple[SimEndpoint, int] | None:
        """The endpoint for this attempt and its worst case, or None if the attempt stops."""
        if not self.controls:
            tier = model.tier or run.tenant.policy.model_tier
            fastest = self.router.fastest(tier, model, self.now)
            if fastest is None:
                self._no_route(run, step)
                return None
            return fastest, fastest.endpoint.worst_case_micros(
                model.prompt_tokens, model.max_tokens
            )
        remaining = remaining_micros(run, self.now)
        if remaining is not None:
            remaining = max(0, remaining - step.tool_cost)  # the tool is reserved too
        try:
            selection = self.router.select(run.tenant.policy, model, remaining, self.now)
        except BudgetExceededError as exc:
            self._release(run, 0.0)
            self._degrade(run, step, exc, remaining)
            return None
        except (ResidencyError, NotAllowedError, ContractError):
            self._no_route(run, step)
            return None
        if selection.degraded:  # recorded as the gateway records it
            run.degradations.append("cheaper_model")
        return self.router.by_name[selection.endpoint.name], selection.estimate_micros

    def _no_route(self, run: RunState, step: StepPlan) -> None:
        """No usable endpoint (all down, or none in the region): the attempt fails."""
        self.stats.residency_blocked += 1
        self._release(run, 0.0)
        self._attempt_failed(run, step)

    def _hold_tool(self, run: RunState, step: StepPlan) -> bool:
        """Reserve the tool's price; if it does not fit, the attempt fails (as in the gateway)."""
        key = f"{run.rid}:{step.index}:{run.attempt}:tool"
        try:
            reserve_all(run_books(run), key, step.tool_cost, 0, self.now)
        except BudgetExceededError:
            self.stats.budget_refusals += 1
            self._release(run, 0.0)
            self._attempt_failed(run, step)
            return False
        run.tool_hold = key
        return True

    def _hold_model(
        self, run: RunState, step: StepPlan, model: ModelCallSpec, estimate: int
    ) -> bool:
        """Reserve the model call's worst case; if it does not fit, take the ladder."""
        key = f"{run.rid}:{step.index}:{run.attempt}:model"
        books = run_books(run)
        try:
            reserve_all(books, key, estimate, model.prompt_tokens + model.max_tokens, self.now)
        except BudgetExceededError as exc:
            if run.tool_hold is not None:  # the step does not run now: nothing to charge
                for book in books:
                    book.release(run.tool_hold)
                run.tool_hold = None
            self._release(run, 0.0)
            self._degrade(run, step, exc, remaining_micros(run, self.now))
            return False
        run.model_hold = key
        return True

    def _degrade(
        self, run: RunState, step: StepPlan, exc: BudgetExceededError, remaining: int | None
    ) -> None:
        """The call's worst case does not fit: the policy's ladder, decided as the gateway does."""
        available = exc.fields.get("available")
        left = int(available) if available is not None else (remaining or 0)
        decision = decide_degradation(
            remaining_micros=left,
            estimate_micros=max(left + 1, int(exc.fields.get("needed") or 1)),
            optional=step.optional,
            cheaper_estimate_micros=None,  # select_endpoint already tried every cheaper model
            ladder=run.tenant.policy.degradation,
        )
        run.degradations.append(decision.action)
        run.endpoint = None
        if decision.action == "skip_optional":
            self._advance(run)
        elif decision.action == "escalate_to_human":
            run.escalated = True
            self._open_review(run)
        else:
            self._pause(run, exc)

    def _pause(self, run: RunState, exc: BudgetExceededError) -> None:
        """Wait for budget: a spent period resumes at the next period; a spent run stays."""
        run.status = "paused"
        period = run.tenant.period
        if period is not None and str(exc.fields.get("scope") or "").startswith("tenant:"):
            resume_s = period.next_period_s(self.now)
            if resume_s is not None:
                self._at(max(resume_s, self.now), _READY, run)

    def _settle(self, run: RunState, tool_micros: int, model_micros: int, tokens: int) -> None:
        """Charge the attempt's actual cost against the holds it took, closing them."""
        if run.tool_hold is None and run.model_hold is None:
            return
        for book in run_books(run):
            if run.tool_hold is not None:
                book.settle(run.tool_hold, tool_micros, 0)
            if run.model_hold is not None:
                book.settle(run.model_hold, model_micros, tokens)
        run.tool_hold = run.model_hold = None

    # -- a step's slot time ends -------------------------------------------------------------

    def _on_step_end(self, run: RunState) -> None:
        tenant = run.tenant
        tenant.running -= 1
        self.running[tenant.cls] -= 1
        self.stats.steps += 1
        self._release(run, self.now - run.grant_s)
        if run.compensations is not None:
            if run.compensations:
                self._push(run)
            else:
                self._finish(run, "failed")
        else:
            self._step_done(run, self.steps[run.step])
        self._pump()

    def _step_done(self, run: RunState, step: StepPlan) -> None:
        """Price the attempt, settle it, then: retry, review, or the next step."""
        rng = run.rng
        model_micros = tokens = 0
        endpoint, model = run.endpoint, step.model
        if model is not None and endpoint is not None:
            completion = min(model.max_tokens, int(model.completion_tokens * (0.5 + rng.random())))
            model_micros = endpoint.endpoint.cost_micros(model.prompt_tokens, completion)
            tokens = model.prompt_tokens + completion
            region = endpoint.endpoint.region
            run.regions.append(region)
            home = run.tenant.policy.region
            if home is not None and region != home:
                self.stats.residency_violations += 1
        run.cost += step.tool_cost + model_micros  # a failed attempt is paid too
        self._settle(run, step.tool_cost, model_micros, tokens)
        run.endpoint = None
        if step.failure.probability and rng.random() < step.failure.probability:
            self._attempt_failed(run, step)
            return
        run.completed.append(step.index)
        if step.review_p and rng.random() < step.review_p:
            self._open_review(run)
        else:
            self._advance(run)

    def _advance(self, run: RunState) -> None:
        """The current step is done (or skipped): go on to the next, or finish."""
        run.step += 1
        run.attempt = 0
        run.tool_done = False
        if run.step == len(self.steps):
            self._finish(run, "completed")
        else:
            self._push(run)

    def _attempt_failed(self, run: RunState, step: StepPlan) -> None:
        """Retry after backoff with jitter; out of retries, skip an optional step or fail."""
        failure = step.failure
        run.tool_done = False
        if run.attempt < failure.retries:
            run.attempt += 1
            backoff = min(
                failure.max_backoff, failure.backoff * failure.multiplier ** (run.attempt - 1)
            )
            backoff *= 1.0 + failure.jitter * (2.0 * run.rng.random() - 1.0)
            self._at(self.now + max(0.0, backoff), _READY, run)
        elif step.optional:
            self._advance(run)
        else:
            self._compensate(run)

    def _compensate(self, run: RunState) -> None:
        """Run the compensations of completed steps, last first; then the run has failed."""
        plan = [
            s.comp_sampler.draw(run.rng)
            for s in (self.steps[i] for i in run.completed)
            if s.comp_sampler is not None
        ]  # popped from the end: the last completed step compensates first
        if not plan:
            self._finish(run, "failed")
            return
        run.compensations = plan
        self._push(run)

    # -- reviews -----------------------------------------------------------------------------

    def _open_review(self, run: RunState) -> None:
        """The run waits for a reviewer (holding no slot)."""
        tenant = run.tenant
        desk = self.reviews.desk_for(tenant.id, tenant.policy)
        run.review_opened_s = self.now
        self.reviewing[tenant.cls] += 1
        if self.controls:
            desk.submit(tenant.id, run, tenant.policy.review_lane, tenant.weight, self.now)
        else:
            desk.submit(SHARED, run, "normal", 1.0, self.now)
        self._assign_reviews(desk)

    def _assign_reviews(self, desk: ReviewDesk) -> None:
        while True:
            item = desk.next(self.now)
            if item is None:
                return
            run = cast(RunState, item.key)
            sampler = run.tenant.review_sampler
            took_s = sampler.draw(run.rng) if sampler is not None else 0.0
            self._at(self.now + took_s, _REVIEW_END, (desk, run, took_s))

    def _on_review_end(self, payload: tuple[ReviewDesk, RunState, float]) -> None:
        desk, run, took_s = payload
        tenant = run.tenant
        desk.decided(tenant.queue_id, run, took_s, self.now)
        self.reviewing[tenant.cls] -= 1
        waited = self.now - run.review_opened_s
        run.reviewed = True
        run.review_wait_s = waited if run.review_wait_s is None else run.review_wait_s + waited
        if run.escalated:  # a reviewer did the step instead of the model
            run.escalated = False
            run.completed.append(run.step)
        self._advance(run)
        self._assign_reviews(desk)
        self._pump()

    # -- the trace ---------------------------------------------------------------------------

    def _trace(self, wall_s: float) -> Trace:
        for run in self.runs.values():
            if run.status == "paused":
                self.stats.paused_at_end += 1
            self._record(run, "unfinished", None)
        self.outcomes.sort(key=lambda o: (o.submitted_s, o.tenant))
        return Trace(
            scenario="with controls" if self.controls else "without controls",
            controls=self.controls,
            slots=self.scenario.spec.slots,
            duration_s=self.duration_s,
            wall_s=wall_s,
            tenants=self.profiles,
            runs=self.outcomes,
            samples=self.samples,
            service_s={t.id: t.service_s for t in self.tenants.values()},
            demand_s={t.id: t.demand_s for t in self.tenants.values()},
            notes=notes(self.stats, self.now),
        )
