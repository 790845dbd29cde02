"""Monday morning on the loan platform, with and without tenant controls, on the real engine.

One scenario: steady traffic from every institution (Poisson arrivals at each one's normal rate)
for ``minutes``, during which Institution X submits ``burst`` applications over
``burst_spread_min`` minutes; then ``drain_min`` minutes with no new submissions. It runs on
the embedded engine (two SQLite stores, US and EU, in a temporary or given directory) with time
compressed ``speed`` times (:class:`~tenantflow.adapters.clock.ScaledClock`): the default
38 minutes take 19 s at the default speed of 120. The same seed gives the same arrivals,
applications, latencies and reviewer decisions in both variants. With ``virtual=True`` it runs
on a :class:`~tenantflow.testing.FakeClock` instead, moved from one timer to the next only when
the engine has nothing left to do at the present instant (see :func:`_run_virtual`): what
happens then does not depend on how fast, or how loaded, the machine is — the tests use it.

* **with controls** — every institution's policy: fair scheduling by weight with running-step
  caps, per-tenant active-run caps and queues, per-tenant bureau quotas, reviewer queues isolated
  per tenant;
* **without** — ``EngineConfig(controls=False)``: one shared FIFO, no caps, only the bureau's
  platform-wide quota, reviewers working one queue in arrival order. Budgets, residency and
  allow-lists are hard rules and hold in both.

When the scenario's time is up the engine stops; the figures are then read back from the stores
(run records, execution logs, budget ledgers) by a read-only engine, so the report is computed
from what the engine durably recorded, not from the demo's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenantflow as tf
from tenantflow.adapters.clock import ScaledClock
from tenantflow.domain.policy import tier_preset
from tenantflow.domain.records import EventRecord, RunStatus
from tenantflow.examples.loan_platform.platform import (
    REVIEWER_POOLS,
    Institution,
    build_engine,
    institutions,
)
from tenantflow.examples.loan_platform.reviewers import ReviewDesk
from tenantflow.examples.loan_platform.workflow import Application
from tenantflow.ports import Clock
from tenantflow.report import (
    Report,
    RunOutcome,
    Sample,
    TenantProfile,
    Trace,
    build_report,
)
from tenantflow.testing import FakeClock

__all__ = ["DemoConfig", "Progress", "arrivals", "run_demo", "run_scenario"]

BURSTER = "institution-x"


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The scenario's size and pace (``tenantflow demo --help`` lists them)."""

    institutions: int = 40
    slots: int = 40
    burst: int = 1000
    seed: int = 1
    speed: float = 120.0
    minutes: float = 30.0
    """How long institutions submit applications."""
    drain_min: float = 8.0
    """How long the platform goes on working after the last submission."""
    burst_at_min: float = 8.0
    burst_spread_min: float = 5.0
    review_mean_s: float = 90.0
    sample_s: float = 10.0

    def __post_init__(self) -> None:
        checks = {
            "institutions": self.institutions >= 6,
            "slots": self.slots >= 5,
            "burst": self.burst >= 0,
            "speed": 0 < self.speed <= 2000,
            "minutes": 0 < self.minutes <= 24 * 60,
            "burst_at_min": 0 <= self.burst_at_min < self.minutes,
            "burst_spread_min": self.burst_spread_min >= 0,
            "drain_min": self.drain_min >= 0,
            "review_mean_s": self.review_mean_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise tf.ConfigurationError(f"invalid {name} = {getattr(self, name)!r}", field=name)

    @property
    def window_s(self) -> float:
        """Scenario seconds during which applications arrive."""
        return self.minutes * 60.0

    @property
    def duration_s(self) -> float:
        """Scenario seconds the platform runs: the arrival window and the drain after it."""
        return (self.minutes + self.drain_min) * 60.0


@dataclass(slots=True)
class Progress:
    """What a live display shows while a scenario runs."""

    scenario: str
    t_s: float
    duration_s: float
    submitted: int
    refused: int
    running: Counter[str]
    reviews_open: int


def arrivals(cfg: DemoConfig, members: list[Institution]) -> list[tuple[float, str, Application]]:
    """Every submission of the scenario, in time order: steady Poisson traffic from each
    institution, and Institution X's burst spread evenly over its window."""
    rng = random.Random(cfg.seed)
    schedule: list[tuple[float, str, Application]] = []

    def application(tenant: str, n: int) -> Application:
        income = rng.uniform(30_000, 160_000)
        return Application(
            application_id=f"{tenant}-{n:05d}",
            applicant=f"applicant-{rng.randrange(10**9):09d}",
            amount=round(income * rng.uniform(0.2, 4.2), 2),
            income=round(income, 2),
        )

    for member in members:
        t, n = 0.0, 0
        while True:
            t += rng.expovariate(member.per_hour / 3600.0)
            if t >= cfg.window_s:
                break
            n += 1
            schedule.append((t, member.tenant_id, application(member.tenant_id, n)))
    start, spread = cfg.burst_at_min * 60.0, cfg.burst_spread_min * 60.0
    for i in range(cfg.burst):
        at = start + spread * i / max(1, cfg.burst)
        schedule.append((at, BURSTER, application(BURSTER, 100_000 + i)))
    schedule.sort(key=lambda item: item[0])
    return schedule


async def run_scenario(
    cfg: DemoConfig,
    *,
    controls: bool,
    directory: Path,
    on_progress: Callable[[Progress], None] | None = None,
    clock: Clock | None = None,
) -> Trace:
    """Run one variant to the end of its time and return what happened (on ``clock``: by
    default ``ScaledClock(cfg.speed)``; a :class:`FakeClock` runs it in virtual time)."""
    name = "with controls" if controls else "without controls"
    members = institutions(cfg.institutions, slots=cfg.slots)
    klass = {m.tenant_id: m.tenant_class for m in members}
    schedule = arrivals(cfg, members)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    clock = clock if clock is not None else ScaledClock(cfg.speed)
    wall0 = time.perf_counter()
    engine = await build_engine(
        directory, clock=clock, controls=controls, slots=cfg.slots, seed=cfg.seed, members=members
    )
    desk = ReviewDesk(
        engine,
        clock,
        REVIEWER_POOLS,
        fair=controls,
        mean_s=cfg.review_mean_s,
        approve_rate=0.7,
        seed=cfg.seed,
    )
    desk.start()
    t0 = clock.now()
    submitted: list[tuple[str, str, float]] = []
    refused: list[tuple[str, float]] = []
    samples: list[Sample] = []

    async def source() -> None:
        for at, tenant, app in schedule:
            delay = t0 + at - clock.now()
            if delay > 0:
                await clock.sleep(delay)
            try:
                run = await engine.submit("loan-approval", tenant=tenant, input=app)
            except tf.BackpressureError:
                refused.append((tenant, at))
                continue
            submitted.append((tenant, run.id, at))

    async def sampler() -> None:
        while True:
            t = clock.now() - t0
            running: Counter[str] = Counter()
            queued: Counter[str] = Counter()
            for tenant, n in engine.dispatcher.running_by.items():
                running[klass[tenant]] += n
            for tenant, n in engine.dispatcher.queued_by.items():
                queued[klass[tenant]] += n
            if controls:  # without, nothing waits for admission: there are no caps
                for member in members:
                    queued[member.tenant_class] += engine.admission.queued(member.tenant_id)
            reviews: Counter[str] = Counter()
            for tenant, n in desk.open_by_tenant.items():
                reviews[klass[tenant]] += n
            samples.append(Sample(t, dict(running), dict(queued), dict(reviews)))
            if on_progress is not None:
                on_progress(
                    Progress(
                        name,
                        t,
                        cfg.duration_s,
                        len(submitted),
                        len(refused),
                        running,
                        sum(desk.open_by_tenant.values()),
                    )
                )
            await clock.sleep(cfg.sample_s)

    tasks = [asyncio.create_task(source()), asyncio.create_task(sampler())]
    try:
        if isinstance(clock, FakeClock):
            await _run_virtual(clock, engine, cfg.duration_s)
        else:
            await clock.sleep(cfg.duration_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await desk.stop()
        service = dict(engine.dispatcher.service_s)
        await engine.close()
    wall = time.perf_counter() - wall0
    runs = await _read_back(directory, members, submitted, t0, cfg.duration_s)
    runs.extend(
        RunOutcome(tenant=t, submitted_s=at, finished_s=None, status="refused") for t, at in refused
    )
    return Trace(
        scenario=name,
        controls=controls,
        slots=cfg.slots,
        duration_s=cfg.duration_s,
        wall_s=wall,
        tenants=[_profile(m) for m in members],
        runs=runs,
        samples=samples,
        service_s=service,
        demand_s=_demand(runs, service, submitted),
        notes=[] if controls else ["one shared FIFO, no caps, only the platform's bureau quota"],
    )


async def _run_virtual(clock: FakeClock, engine: tf.Engine, seconds: float) -> None:
    """Move ``clock`` ``seconds`` on, from one timer to the next, each time only once the
    engine is idle at the present instant: no store call in flight or with its result not yet
    taken up (``busy``), and no callback ready to run on the event loop. Work takes no virtual
    time, and every timer fires at its own instant, so the order of what happens is the same
    on a fast machine and on a starved one."""
    loop = asyncio.get_running_loop()
    stores = list(engine.stores.values())
    end = clock.now() + seconds

    def busy() -> bool:
        return any(bool(getattr(store, "busy", False)) for store in stores)

    while True:
        calm = 0
        while calm < 2:  # idle twice in a row: nothing ran in between
            await asyncio.sleep(0)
            if busy():
                while busy():  # noqa: ASYNC110 (a probe of the stores' threads, not an event)
                    await asyncio.sleep(0.0005)
                calm = 0
            elif len(getattr(loop, "_ready", ())) > 0:  # CPython's queue of ready callbacks
                calm = 0
            else:
                calm += 1
        due = clock.next_due()
        if due is None or due > end:
            clock.advance(max(0.0, end - clock.now()))
            return
        clock.advance(max(0.0, due - clock.now()))


def _profile(member: Institution) -> TenantProfile:
    policy = tier_preset(member.tier).with_overrides(**member.policy)
    return TenantProfile(
        tenant=member.tenant_id,
        tenant_class=member.tenant_class,
        tier=member.tier,
        weight=policy.weight,
        residency=policy.region,
        max_running_steps=policy.max_running_steps,
        sla_s=policy.run_sla.total_seconds() if policy.run_sla is not None else None,
    )


async def _read_back(
    directory: Path,
    members: list[Institution],
    submitted: list[tuple[str, str, float]],
    t0: float,
    end_s: float,
) -> list[RunOutcome]:
    """Each submitted run's outcome, from the stores, through a read-only engine."""
    reader = tf.Engine.open(
        f"sqlite:///{directory / 'us-east-1.db'}",
        regions={"eu-west-1": f"sqlite:///{directory / 'eu-west-1.db'}"},
        region="us-east-1",
        execute=False,
    )
    outcomes: list[RunOutcome] = []
    async with reader:
        cost: dict[str, int] = {}
        for member in members:
            for line in await reader.budget(member.tenant_id):
                scope = str(line.get("scope", ""))
                if scope.startswith("run:") and line.get("unit") == "micros":
                    cost[scope[4:]] = int(line.get("spent", 0))
        for tenant, run_id, at in submitted:
            record = await reader.get_run(tenant, run_id)
            events = await reader.timeline(tenant, run_id)
            outcomes.append(_outcome(tenant, at, record, events, t0, end_s, cost.get(run_id, 0)))
    return outcomes


_STATUS = {
    RunStatus.COMPLETED: "completed",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
}


def _outcome(
    tenant: str,
    at: float,
    record: Any,
    events: list[EventRecord],
    t0: float,
    end_s: float,
    cost: int,
) -> RunOutcome:
    finished = None if record.finished_at is None else record.finished_at - t0
    status = _STATUS.get(record.status, "unfinished")
    if finished is None or finished > end_s:
        finished, status = None, "unfinished"
    waits = sum(
        1
        for e in events
        if e.kind == "step.deferred" and str(e.data.get("reason", "")).startswith("rate limit")
    )
    degradations = tuple(str(e.data["action"]) for e in events if e.kind == "budget.degraded")
    regions = tuple(str(e.data["region"]) for e in events if e.kind == "model.call")
    opened = next((e.ts for e in events if e.kind == "review.requested"), None)
    decided = next(
        (e.ts for e in events if e.kind == "step.succeeded" and "review_id" in e.data), None
    )
    return RunOutcome(
        tenant=tenant,
        submitted_s=at,
        finished_s=finished,
        status=status,  # type: ignore[arg-type]
        cost_micros=cost,
        rate_limit_waits=waits,
        degradations=degradations,
        endpoint_regions=regions,
        reviewed=opened is not None,
        review_wait_s=None if opened is None or decided is None else decided - opened,
    )


def _demand(
    runs: list[RunOutcome], service: dict[str, float], submitted: list[tuple[str, str, float]]
) -> dict[str, float]:
    """Slot-seconds each tenant asked for: its runs times the mean slot time of a run.

    The mean comes from the tenants whose every submitted run completed (their service is
    exactly what their runs needed); a tenant's own completed runs would undercount a backlog.
    """
    per_tenant = Counter(t for t, _, _ in submitted)
    done = Counter(r.tenant for r in runs if r.status == "completed")
    complete = [t for t, n in per_tenant.items() if done[t] == n and n > 0]
    total_runs = sum(per_tenant[t] for t in complete)
    mean = sum(service.get(t, 0.0) for t in complete) / total_runs if total_runs else 0.0
    if not math.isfinite(mean) or mean <= 0:
        return dict(service)
    return {t: max(service.get(t, 0.0), n * mean) for t, n in per_tenant.items()}


async def run_demo(
    cfg: DemoConfig,
    *,
    directory: Path | None = None,
    variants: tuple[bool, ...] = (False, True),
    on_progress: Callable[[Progress], None] | None = None,
    virtual: bool = False,
) -> Report:
    """Run the scenario once per variant (without, then with controls) and build the report;
    ``virtual``: in virtual time (see :func:`_run_virtual`), ``cfg.speed`` unused."""
    traces: list[Trace] = []
    with tempfile.TemporaryDirectory(prefix="tenantflow-demo-") as tmp:
        base = Path(directory) if directory is not None else Path(tmp)
        for controls in variants:
            sub = base / ("controls" if controls else "no-controls")
            if (sub / "us-east-1.db").exists():
                raise tf.ConfigurationError(
                    f"{sub} already holds a demo's stores; give an empty --dir", field="dir"
                )
            clock = FakeClock() if virtual else None
            traces.append(
                await run_scenario(
                    cfg, controls=controls, directory=sub, on_progress=on_progress, clock=clock
                )
            )
    params = {
        "institutions": cfg.institutions,
        "worker slots": cfg.slots,
        "burst": f"{cfg.burst} applications from {BURSTER} at minute {cfg.burst_at_min:g}"
        f" over {cfg.burst_spread_min:g} min",
        "scenario": f"{cfg.minutes:g} min of arrivals + {cfg.drain_min:g} min drain,"
        f" at {cfg.speed:g}x speed",
        "seed": cfg.seed,
        "reviewers": ", ".join(f"{k} {v}" for k, v in REVIEWER_POOLS.items()),
        "SLAs": "enterprise 5 min, standard 10 min, free best effort",
    }
    return build_report("Monday morning on the loan platform (seed 001)", params, traces)
