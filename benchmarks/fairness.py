"""Noisy-neighbour isolation: seed 001's "Monday morning", time-compressed, on the real engine.

    python benchmarks/fairness.py            # 200 tenants, 100 slots, burst of 5,000 (~2 min)
    python benchmarks/fairness.py --quick    # 40 tenants, 20 slots, burst of 600 (< 30 s)
    python benchmarks/fairness.py --timeline # + per-second latency, slots and commit figures
    python benchmarks/fairness.py --skip-fifo # only the baseline and controls scenarios (~70 s)
    python benchmarks/fairness.py --variant short --repeat 5   # issue 22's burst shapes, 5 runs

Variants (``--variant``; each also has a ``--quick`` size, and explicit options win):

* ``default``      the seed's Monday morning below.
* ``short``        issue 22's shape: 20 quiet tenants paced at 10 runs/s in all, institution-x
                   bursts 2,000 runs of 4 x 5 ms steps over 1 s on 16 slots, capped at 4
                   running steps and borrowing the 12 others while they are idle
                   (``--x-burst-slots 12``, ``--x-runs 16``; ``--x-burst-slots 0`` for a hard
                   cap, which leaves idle slots empty and cannot drain as fast as alone).
* ``all-at-once``  the same burst submitted at one instant (every submit in one loop turn).
* ``spread-names`` 30 quiet tenants of mixed tiers (enterprise / standard / free); the burst,
                   3,000 runs, spread over 20 workflow names, every 4th run in the urgent lane.

The variants skip the no-controls scenario and measure X's drain: the run waits (at most
``--x-drain-max`` s) for X's whole burst and times it from the burst's start to its last run's
end, then runs the burst once more with nobody else and every slot open to X ("X alone"); the
target is X's drain under the burst <= 1.15 x alone. ``--repeat N`` runs the variant N times
(seed, seed + 1, ...; each run its own baseline, controls and X alone) and prints every run's
quiet p99 ratio (burst / no burst), not only a median, and every drain ratio.

The seed: 200 institutions share 100 worker slots; one Monday, Institution X submits 5,000 loan
applications at once. Without tenant controls everyone else's latency goes 45 s -> 15 min; with
per-tenant caps they stay normal. Here the same story runs on the embedded engine (SQLite in a
temporary directory, ``synchronous=normal``; ``--store memory`` for the in-memory store), in real
asyncio time, with the four-step loan workflow (verify -> credit -> compliance -> decide) whose
steps ``await asyncio.sleep(step)`` to stand in for work.

Workload (defaults; every figure scales with the options):

* 199 quiet tenants submit runs as independent Poisson processes whose total rate loads the
  slots to ``--load`` (45 %) of capacity: ``load * slots / (4 * step)`` runs/s.
* ``institution-x`` submits ``--burst`` runs spread evenly over ``--burst-spread`` seconds,
  ``--burst-at`` seconds into the measurement window.
* Timeline per scenario: ``--warmup`` s of quiet traffic (not measured), then the ``--seconds`` s
  window; quiet arrivals stop at its end. Quiet runs submitted from the burst to the end of the
  window are measured, in every scenario (the same seed gives the same arrivals everywhere).
  After the window the measured quiet runs may finish (at most ``--drain`` s); then the engine
  is closed and what is left of the burst is abandoned with the throwaway store (reported).

Scenarios, each on a fresh engine and store, one after another in this process:

1. baseline      quiet tenants only, tenant controls on.
2. controls      + the burst; every tenant registered with a policy: institution-x gets
                 ``max_running_steps=--x-steps`` (20) and ``max_active_runs=--x-runs`` (50),
                 quiet tenants the standard tier's caps; weights equal, no burst credit for X.
3. no controls   + the burst on ``Engine(controls=False)``: one shared FIFO queue, no caps.
                 ``--no-controls emulate`` instead submits every run under one engine tenant
                 whose caps are the whole platform (the same single admission and step queue);
                 the table marks it *. ``auto`` (the default) uses the engine's own mode.

Metrics: end-to-end latency (submission to ``RunHandle.wait()`` returning) of the measured
quiet runs (institution-x's runs are submitted but not waited for, unless ``--wait-burst``:
their completion is the end of their last step); SLA violations (latency over ``--sla-x`` times
the baseline p50, or unfinished) and how many quiet tenants had one; institution-x's completed
runs per second inside the window and the most steps it ever held slots for
(``scheduler.running`` sampled every few ms, and an exact count of step bodies executing at
once); and Jain's fairness index over the slot-seconds each tenant received in the window
(``dispatcher.service_s``), each divided by its weighted max-min fair share of the window's
capacity given its demand and its cap in the controls policy. When every tenant is backlogged
that share is proportional to weight, so the index is exactly Jain's index over
weight-normalised throughput among backlogged tenants; normalising by the share is what keeps
it meaningful when, as here, most tenants ask for less than their share.
The details also give the p99 of quiet runs submitted >= 2 s after the burst began (past the
burst's submission transient), CPU per step, event-loop lag and garbage-collector pauses. The
process calls ``gc.freeze()`` once after start-up, before the first scenario, as a long-running
service does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import tenantflow as tf
from tenantflow.domain.fairness import jain_index, max_min_shares
from tenantflow.errors import NotFoundError

BURSTER = "institution-x"
SAMPLE_S = 0.005  # sampler period (scheduler.running, event-loop lag)
SETTLE_S = 2.0  # "settled" latencies: runs submitted at least this long after the burst began


class GcWatch:
    """Records the pauses of Python's cyclic garbage collector (they stall the event loop)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._t))

    def take(self) -> list[tuple[int, float]]:
        out, self.pauses = self.pauses, []
        return out


GC = GcWatch()


# -- the workload ---------------------------------------------------------------------------


class Loan(BaseModel):
    tenant: str  # the logical tenant (the engine's tenant id may be a stand-in, see below)
    n: int


class Probe:
    """What the step bodies see: per-tenant concurrency and step-seconds, measured exactly."""

    def __init__(self, step_s: float) -> None:
        self.reset(step_s)

    def reset(self, step_s: float) -> None:
        self.step_s = step_s
        self.in_step: dict[str, int] = defaultdict(int)
        self.max_in_step: dict[str, int] = defaultdict(int)
        self.step_seconds: dict[str, float] = defaultdict(float)
        self.finished: dict[str, list[float]] = defaultdict(list)  # last step's end (loop time)
        self.burst_size = 0  # institution-x's runs; x_done is set when that many finished
        self.x_done = asyncio.Event()

    def run_finished(self, tenant: str) -> None:
        done = self.finished[tenant]
        done.append(asyncio.get_running_loop().time())
        if tenant == BURSTER and len(done) >= self.burst_size:
            self.x_done.set()

    async def work(self, tenant: str) -> None:
        self.in_step[tenant] += 1
        if self.in_step[tenant] > self.max_in_step[tenant]:
            self.max_in_step[tenant] = self.in_step[tenant]
        t0 = time.perf_counter()
        try:
            await asyncio.sleep(self.step_s)
        finally:
            self.step_seconds[tenant] += time.perf_counter() - t0
            self.in_step[tenant] -= 1


PROBE = Probe(0.1)


def make_loan(name: str) -> tf.Workflow:
    """The four-step loan workflow under ``name`` (the spread-names variant registers 20)."""
    wf = tf.Workflow(name, input=Loan)

    @wf.step
    async def verify(ctx: tf.StepContext, input: Loan) -> Loan:
        await PROBE.work(input.tenant)
        return input

    @wf.step
    async def credit(ctx: tf.StepContext, verify: Loan) -> Loan:
        await PROBE.work(verify.tenant)
        return verify

    @wf.step
    async def compliance(ctx: tf.StepContext, credit: Loan) -> Loan:
        await PROBE.work(credit.tenant)
        return credit

    @wf.step
    async def decide(ctx: tf.StepContext, compliance: Loan) -> Loan:
        await PROBE.work(compliance.tenant)
        PROBE.run_finished(compliance.tenant)
        return compliance

    return wf


loan = make_loan("loan-approval")
BURST_WORKFLOWS = [loan] + [make_loan(f"loan-approval-{k:02d}") for k in range(2, 21)]
TIER_CYCLE = ("enterprise", "standard", "free")


@dataclass(frozen=True)
class Config:
    tenants: int
    slots: int
    burst: int
    step_s: float
    seconds: float
    seed: int
    load: float
    warmup: float
    burst_at: float
    burst_spread: float
    drain: float
    x_steps: int
    x_runs: int
    sla_x: float
    store: str
    no_controls: str
    timeline: bool = False
    wait_burst: bool = False
    skip_fifo: bool = False
    names: int = 1  # workflow names the burst is spread over (the quiet runs use the first)
    urgent_every: int = 0  # every k-th burst run in the urgent lane (0: none)
    mixed_tiers: bool = False  # quiet tenants cycle enterprise / standard / free
    x_burst_slots: int = 0  # X's burst_slots (borrowing above its cap when slots are idle)
    x_drain: bool = False  # wait for X's whole burst and time it (+ the "X alone" scenario)
    x_drain_max: float = 120.0  # at most this long after the window
    variant: str = "default"

    def tier(self, tenant: str) -> str:
        if not self.mixed_tiers or tenant == BURSTER:
            return "standard"
        return TIER_CYCLE[int(tenant.rsplit("-", 1)[1]) % len(TIER_CYCLE)]

    @property
    def quiet(self) -> list[str]:
        return [f"inst-{i:03d}" for i in range(1, self.tenants)]

    @property
    def quiet_rate(self) -> float:
        """Total quiet arrivals per second."""
        return self.load * self.slots / (4 * self.step_s)

    @property
    def window(self) -> tuple[float, float]:
        return self.warmup, self.warmup + self.seconds

    @property
    def burst_start(self) -> float:
        return self.warmup + self.burst_at


def arrivals(cfg: Config) -> list[tuple[float, str]]:
    """Quiet arrivals (offset s, tenant): one Poisson process per tenant, merged."""
    rng = random.Random(cfg.seed)
    per_tenant = cfg.quiet_rate / len(cfg.quiet)
    end = cfg.window[1]
    out: list[tuple[float, str]] = []
    for tenant in cfg.quiet:
        t = rng.expovariate(per_tenant)
        while t < end:
            out.append((t, tenant))
            t += rng.expovariate(per_tenant)
    out.sort()
    return out


# -- one scenario -----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    note: str = ""
    latencies: list[float] = field(default_factory=list)  # measured quiet runs, finished
    runs: list[tuple[str, float]] = field(default_factory=list)  # (tenant, latency or inf)
    unfinished: int = 0  # measured quiet runs still running at the end of the drain
    late_tenants: set[str] = field(default_factory=set)
    sla_s: float = math.nan
    violations: int = 0
    measured: int = 0
    x_done_window: int = 0
    x_done_total: int = 0
    x_submitted: int = 0
    x_max_sched: int | None = None
    x_max_in_step: int = 0
    jain: float = math.nan
    jain_raw: float = math.nan
    jain_source: str = ""
    served: dict[str, float] = field(default_factory=dict)
    demand: dict[str, float] = field(default_factory=dict)
    share: dict[str, float] = field(default_factory=dict)
    utilisation: float = math.nan
    lag_p99_ms: float = math.nan
    lag_max_ms: float = math.nan
    cpu_s: float = 0.0
    steps_done: int = 0
    wall_s: float = 0.0
    failed: int = 0
    timeline: list[str] = field(default_factory=list)
    settled: list[float] = field(default_factory=list)  # measured runs submitted >= burst + 2 s
    gc_pauses: list[tuple[int, float]] = field(default_factory=list)  # (generation, seconds)
    x_drain_s: float = math.nan  # burst start -> X's last run done (inf: not done in time)

    def pct(self, q: float) -> float:
        """Percentile of the measured quiet latencies; unfinished runs count as +inf."""
        values = sorted(self.latencies) + [math.inf] * self.unfinished
        if not values:
            return math.nan
        return values[min(len(values) - 1, int(q * len(values)))]


async def no_controls_works(step_s: float) -> bool:
    """Whether ``Engine(controls=False)`` can run a step (a check before measuring with it)."""
    async with tf.Engine.open("memory://", slots=2, controls=False) as engine:
        engine.register(loan)
        await engine.tenants.create("probe", tier="standard")
        try:
            handle = await engine.submit(
                "loan-approval", tenant="probe", input={"tenant": "probe", "n": 0}
            )
        except NotFoundError:
            return False
        record = await handle.wait(timeout=timedelta(seconds=10 * step_s + 5))
        return record.status.value == "completed"


async def scenario(
    name: str,
    cfg: Config,
    schedule: list[tuple[float, str]],
    *,
    burst: bool,
    controls: bool,
    emulate_shared: bool = False,
    x_alone: bool = False,
) -> Result:
    """Run one scenario on a fresh engine and store and return its figures.

    ``x_alone``: institution-x's burst with no quiet tenant at all, X allowed every slot
    (``max_running_steps`` and ``max_active_runs`` = ``slots``): the time X's burst needs when
    nobody else needs the slots, against which its drain time under the burst is compared.

    ``emulate_shared``: tenant controls off, emulated through the public API because
    ``controls=False`` does not run (see the report): every run is submitted under one engine
    tenant with caps no lower than the whole platform, so the engine keeps a single admission
    queue and a single FIFO step queue, exactly what ``controls=False`` is documented to do.
    Per-tenant figures then come from the step bodies (the workflow input names the tenant).
    """
    res = Result(name)
    # Without controls the scheduler does not know tenants (one shared queue): per-tenant
    # figures come from the step bodies, whichever way scenario 3 is run.
    by_body = emulate_shared or not controls
    PROBE.reset(cfg.step_s)  # fresh counters
    PROBE.burst_size = cfg.burst
    gc.collect()
    GC.take()
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.store == "memory":
            url = "memory://"
        else:
            url = f"sqlite:///{Path(tmp) / 'fairness.db'}?synchronous=normal"
        engine = tf.Engine.open(
            url, slots=cfg.slots, controls=controls or emulate_shared, seed=cfg.seed
        )
        async with engine:
            for wf in BURST_WORKFLOWS[: max(1, cfg.names)]:
                engine.register(wf)
            sched = engine.dispatcher.scheduler
            weights: dict[str, float] = {}
            caps: dict[str, int] = {}
            # Everyone on the standard tier (equal weights); X with the seed's caps and no
            # burst credit, so that its cap is a hard 20.
            std = tf.Policy.for_tier("standard")
            quiet_policy: dict[str, Any] = {}
            x_steps = cfg.slots if x_alone else cfg.x_steps
            x_policy: dict[str, Any] = {
                "max_running_steps": x_steps,
                "max_active_runs": cfg.slots if x_alone else cfg.x_runs,
                "guaranteed_slots": min(std.guaranteed_slots, x_steps),
                "burst_slots": 0 if x_alone else cfg.x_burst_slots,
            }
            quiet = [] if x_alone else cfg.quiet
            tenants = quiet + ([BURSTER] if burst else [])
            for t in quiet:
                tier = tf.Policy.for_tier(cfg.tier(t))
                weights[t] = tier.weight
                caps[t] = tier.max_running_steps
            if burst:
                weights[BURSTER] = std.weight
                caps[BURSTER] = x_steps
            if emulate_shared:
                shared = "platform"
                await engine.tenants.create(
                    shared,
                    tier="standard",
                    max_running_steps=max(cfg.slots, 1),
                    max_active_runs=10 * (cfg.burst + len(schedule)) + 1,
                    guaranteed_slots=0,
                    burst_slots=0,
                )
                engine_tenant: Callable[[str], str] = lambda t: shared  # noqa: E731
            else:
                await asyncio.gather(
                    *(
                        engine.tenants.create(
                            t, tier=cfg.tier(t), **(x_policy if t == BURSTER else quiet_policy)
                        )
                        for t in tenants
                    )
                )
                engine_tenant = lambda t: t  # noqa: E731

            loop = asyncio.get_running_loop()
            t0 = loop.time()
            w0, w1 = t0 + cfg.window[0], t0 + cfg.window[1]
            b0 = t0 + cfg.burst_start
            quiet_tasks: set[asyncio.Task[None]] = set()
            x_tasks: set[asyncio.Task[None]] = set()
            x_sent = 0
            measured: dict[int, tuple[str, float]] = {}
            done_at: dict[int, float] = {}
            failures: list[str] = []

            async def one(i: int, tenant: str) -> None:
                """A quiet run: submit it and wait for it, as a client would."""
                submitted = loop.time()
                if b0 <= submitted < w1:
                    measured[i] = (tenant, submitted)
                handle = await engine.submit(
                    "loan-approval", tenant=engine_tenant(tenant), input={"tenant": tenant, "n": i}
                )
                record = await handle.wait()
                done_at[i] = loop.time()
                if record.status.value != "completed":
                    failures.append(f"{tenant}: {record.status.value} {record.error}")

            async def one_x(j: int) -> None:
                """A burst run: only submitted; its completion is seen by its last step. With
                --wait-burst it is also waited for, as a client would (5,000 more waiters, each
                reading the store twice through the engine's single SQLite thread)."""
                handle = await engine.submit(
                    BURST_WORKFLOWS[j % max(1, cfg.names)],
                    tenant=engine_tenant(BURSTER),
                    input={"tenant": BURSTER, "n": j},
                    lane="urgent" if cfg.urgent_every and j % cfg.urgent_every == 0 else None,
                )
                if cfg.wait_burst:
                    await handle.wait()

            async def quiet_source() -> None:
                for i, (offset, tenant) in enumerate(schedule):
                    delay = t0 + offset - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    task = loop.create_task(one(i, tenant))
                    quiet_tasks.add(task)
                    task.add_done_callback(quiet_tasks.discard)

            async def burst_source() -> None:
                nonlocal x_sent
                ticks = max(1, int(cfg.burst_spread / 0.01))
                per_tick = cfg.burst / ticks
                sent = 0
                for k in range(ticks):
                    delay = b0 + k * cfg.burst_spread / ticks - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    upto = round((k + 1) * per_tick)
                    for j in range(sent, upto):
                        task = loop.create_task(one_x(j))
                        x_tasks.add(task)
                        task.add_done_callback(x_tasks.discard)
                    sent = x_sent = upto

            lags: list[float] = []
            series: list[tuple[float, int, int, int, int, int]] = []
            writer = engine.runtime.writer
            snapshots: dict[str, dict[str, float]] = {}
            stop = asyncio.Event()

            async def sampler() -> None:
                x_max = 0
                while not stop.is_set():
                    before = loop.time()
                    await asyncio.sleep(SAMPLE_S)
                    now = loop.time()
                    lags.append(now - before - SAMPLE_S)
                    if not by_body:
                        x_max = max(x_max, sched.running(BURSTER))
                    if cfg.timeline:
                        series.append(
                            (
                                now - t0,
                                sched.total_running,
                                sched.total_queued,
                                writer.batches,
                                writer.ops,
                                len(writer._pending),
                            )
                        )
                    if w0 <= now < w1 and "start" not in snapshots:
                        snapshots["start"] = _served(engine, by_body)
                    if now >= w1 and "end" not in snapshots:
                        snapshots["end"] = _served(engine, by_body)
                res.x_max_sched = None if by_body else x_max

            sampler_task = loop.create_task(sampler())
            sources = [loop.create_task(quiet_source())]
            if burst:
                sources.append(loop.create_task(burst_source()))
            await asyncio.gather(*sources)
            await asyncio.sleep(max(0.0, w1 - loop.time()) + 2 * SAMPLE_S)
            # Let the measured quiet runs finish, for at most --drain seconds.
            if quiet_tasks:
                await asyncio.wait(set(quiet_tasks), timeout=cfg.drain)
            if burst and cfg.x_drain:
                # X's whole burst: wait (bounded) until its last run has finished.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(PROBE.x_done.wait(), cfg.x_drain_max)
                done_x = PROBE.finished.get(BURSTER, [])
                res.x_drain_s = max(done_x) - b0 if len(done_x) >= cfg.burst else math.inf
            stop.set()
            await sampler_task
            res.unfinished = sum(1 for i in measured if i not in done_at)
            x_done = list(PROBE.finished.get(BURSTER, []))
            res.x_done_total = len(x_done)
            res.x_done_window = sum(1 for t in x_done if t < w1)
            res.x_submitted = x_sent
            res.x_max_in_step = PROBE.max_in_step.get(BURSTER, 0)
            res.failed = len(failures)
            res.steps_done = int(sum(PROBE.step_seconds.values()) / cfg.step_s + 0.5)
            for i, (tenant, sub) in measured.items():
                lat = done_at[i] - sub if i in done_at else math.inf
                if i in done_at:
                    res.latencies.append(lat)
                res.runs.append((tenant, lat))
                if sub >= b0 + SETTLE_S:
                    res.settled.append(lat)
            res.measured = len(measured)
            if cfg.timeline:
                res.timeline = _timeline(cfg, measured, done_at, t0, x_done, series)
            # Per-tenant service inside the window.
            start, end = snapshots.get("start", {}), snapshots.get("end", {})
            res.served = {t: end.get(t, 0.0) - start.get(t, 0.0) for t in tenants}
            res.jain_source = "step bodies" if by_body else "dispatcher.service_s"
            res.utilisation = sum(res.served.values()) / (cfg.slots * cfg.seconds)
            # Demand inside the window, in slot-seconds: quiet runs submitted in it at the mean
            # slot time per step observed in this scenario; X: all of its burst.
            per_step = _slot_time_per_step(engine, by_body, cfg)
            demand: dict[str, float] = defaultdict(float)
            for offset, tenant in schedule:
                if cfg.window[0] <= offset < cfg.window[1]:
                    demand[tenant] += 4 * per_step
            if burst:
                demand[BURSTER] = 4 * per_step * cfg.burst
            res.demand = dict(demand)
            active = [t for t in tenants if demand.get(t, 0.0) > 0.0]
            res.share = max_min_shares(
                {t: demand[t] for t in active},
                {t: weights[t] for t in active},
                {
                    t: caps[t] * (cfg.seconds - (cfg.burst_at if t == BURSTER else 0.0))
                    for t in active
                },
                cfg.slots * cfg.seconds,
            )
            res.jain = jain_index([res.served.get(t, 0.0) / res.share[t] for t in active])
            res.jain_raw = jain_index([res.served.get(t, 0.0) / weights[t] for t in active])
            res.gc_pauses = GC.take()
            lag_sorted = sorted(lags)
            if lag_sorted:
                res.lag_p99_ms = 1000 * lag_sorted[int(0.99 * (len(lag_sorted) - 1))]
                res.lag_max_ms = 1000 * lag_sorted[-1]
            # Stop: the burst's remainder is abandoned with the store; waiters are cancelled.
            for task in [*quiet_tasks, *x_tasks]:
                task.cancel()
            await asyncio.gather(*quiet_tasks, *x_tasks, return_exceptions=True)
    res.cpu_s = time.process_time() - cpu0
    res.wall_s = time.perf_counter() - wall0
    return res


def _timeline(
    cfg: Config,
    measured: dict[int, tuple[str, float]],
    done_at: dict[int, float],
    t0: float,
    x_done: list[float],
    series: list[tuple[float, int, int, int, int, int]],
) -> list[str]:
    """Per-second buckets: quiet latency by submission second, slots, writer batches."""
    rows = []
    buckets: dict[int, list[float]] = defaultdict(list)
    for i, (_, sub) in measured.items():
        buckets[int(sub - t0)].append(done_at.get(i, math.inf) - sub)
    xs: dict[int, int] = defaultdict(int)
    for t in x_done:
        xs[int(t - t0)] += 1
    per: dict[int, list[tuple[float, int, int, int, int, int]]] = defaultdict(list)
    for row in series:
        per[int(row[0])].append(row)
    for sec in sorted(set(buckets) | set(per)):
        lat = sorted(buckets.get(sec, []))
        rs = per.get(sec, [])
        run = statistics.mean(r[1] for r in rs) if rs else math.nan
        que = statistics.mean(r[2] for r in rs) if rs else math.nan
        pend = max((r[5] for r in rs), default=0)
        if len(rs) >= 2:
            nb, no = rs[-1][3] - rs[0][3], rs[-1][4] - rs[0][4]
        else:
            nb = no = 0
        p50 = lat[len(lat) // 2] if lat else math.nan
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else math.nan
        rows.append(
            f"t={sec:3d}s quiet n={len(lat):4d} p50 {p50 * 1000:7.0f}ms p99 {p99 * 1000:7.0f}ms"
            f" | running {run:5.1f} queued {que:7.1f} | X done {xs.get(sec, 0):4d}"
            f" | commits {nb:4d} ops/commit {no / max(1, nb):6.1f} max pending {pend}"
        )
    return rows


def _served(engine: tf.Engine, by_body: bool) -> dict[str, float]:
    if by_body:
        return dict(PROBE.step_seconds)
    return dict(engine.dispatcher.service_s)


def _slot_time_per_step(engine: tf.Engine, by_body: bool, cfg: Config) -> float:
    """Mean slot-seconds one step holds: the step body plus the engine's work around it."""
    body = sum(PROBE.step_seconds.values())
    steps = body / cfg.step_s
    if by_body or steps == 0:
        return cfg.step_s
    return sum(engine.dispatcher.service_s.values()) / steps


# -- the report -------------------------------------------------------------------------------


def fmt_s(value: float) -> str:
    if math.isinf(value):
        return "   unfin."
    if value >= 10:
        return f"{value:8.1f}s"
    return f"{value * 1000:7.0f}ms"


def report(cfg: Config, results: list[Result]) -> None:
    base = results[0]
    print()
    print(
        f"quiet runs measured: submitted in [{cfg.burst_start:g} s, {cfg.window[1]:g} s) of"
        f" each scenario; SLA = {cfg.sla_x:g} x baseline p50 = {base.sla_s * 1000:.0f} ms"
    )
    header = (
        f"{'scenario':<13}{'quiet p50':>10}{'quiet p95':>10}{'quiet p99':>10}{'p99/base':>9}"
        f"{'SLA viol':>14}{'X max run':>10}{'X runs/s':>9}{'Jain':>7}{'wall s':>8}"
    )
    print(header)
    print("-" * len(header))
    bp99 = base.pct(0.99)
    for r in results:
        p99 = r.pct(0.99)
        ratio = p99 / bp99 if bp99 > 0 else math.nan
        viol = f"{r.violations}/{r.measured} ({len(r.late_tenants)}t)"
        if r.x_submitted:
            xmax = f"{r.x_max_sched if r.x_max_sched is not None else '-'}/{r.x_max_in_step}"
            xrate = f"{r.x_done_window / (cfg.window[1] - cfg.burst_start):.1f}"
        else:
            xmax, xrate = "-", "-"
        print(
            f"{r.name:<13}{fmt_s(r.pct(0.5)):>10}{fmt_s(r.pct(0.95)):>10}{fmt_s(p99):>10}"
            f"{ratio:>8.2f}x{viol:>14}{xmax:>10}{xrate:>9}{r.jain:>7.3f}{r.wall_s:>8.1f}"
        )
    print()
    print("columns: SLA viol = measured quiet runs over the SLA (or unfinished) / measured, and")
    print("  (Nt) = quiet tenants with at least one; X max run = institution-x's most steps")
    print("  holding slots (scheduler.running, sampled every 5 ms) / most step bodies executing")
    print("  at once (exact); X runs/s = its runs completed from the burst to the window's end;")
    print("  Jain = over served slot-seconds / weighted max-min fair share (demand, policy caps).")
    print()
    print("details:")
    for r in results:
        extra = f"  note: {r.note}" if r.note else ""
        x = ""
        if r.x_submitted:
            x = (
                f"; X: {r.x_done_window} done in window, {r.x_done_total} by close, "
                f"{r.x_submitted - r.x_done_total} abandoned at close"
            )
        print(
            f"  {r.name:<12} utilisation {r.utilisation * 100:5.1f}% of slots in window,"
            f" {r.steps_done} steps, CPU {r.cpu_s:5.1f}s"
            f" ({1000 * r.cpu_s / max(1, r.steps_done):.2f} ms/step all-in),"
            f" loop lag p99 {r.lag_p99_ms:.0f} ms max {r.lag_max_ms:.0f} ms,"
            f" unfinished quiet {r.unfinished}, failed runs {r.failed}{x}"
        )
        settled = sorted(r.settled)
        g2 = [p for g, p in r.gc_pauses if g == 2]
        print(
            f"  {'':<12} quiet p99 of runs submitted >= {SETTLE_S:g} s after the burst began:"
            f" {fmt_s(_q(settled, 0.99)).strip()} ({len(settled)} runs);"
            f" GC gen-2 pauses {len(g2)}, max {1000 * max(g2, default=0):.0f} ms"
        )
        if r.x_submitted:
            xs = r.served.get(BURSTER, 0.0)
            quiet_served = sum(v for t, v in r.served.items() if t != BURSTER)
            quiet_demand = sum(v for t, v in r.demand.items() if t != BURSTER)
            print(
                f"  {'':<12} slot-s in window: X {xs:.0f} (fair share {r.share[BURSTER]:.0f}),"
                f" quiet {quiet_served:.0f} of {quiet_demand:.0f} demanded;"
                f" Jain source: {r.jain_source}; Jain of raw slot-s/weight {r.jain_raw:.3f}"
            )
        if extra:
            print(f"  {'':<12}{extra}")
    for r in results:
        if r.timeline:
            print(f"timeline {r.name}:")
            for row in r.timeline:
                print("  " + row)
    ratio, settled_ratio, drain_ratio = ratios(results)
    print()
    print(
        f"target: quiet p99 during the burst with controls <= 1.10 x baseline p99:"
        f" {'MET' if ratio <= 1.10 else 'NOT MET'} ({ratio:.2f}x; {settled_ratio:.2f}x for runs"
        f" submitted >= {SETTLE_S:g} s after the burst began)"
    )
    if cfg.x_drain:
        ctl, alone = results[1], results[-1]
        print(
            f"target: X drains within 1.15 x its time alone:"
            f" {'MET' if drain_ratio <= 1.15 else 'NOT MET'} ({drain_ratio:.2f}x: X's"
            f" {cfg.burst} runs done {fmt_s(ctl.x_drain_s).strip()} after the burst began with"
            f" the quiet tenants, {fmt_s(alone.x_drain_s).strip()} alone with every slot)"
        )


def ratios(results: list[Result]) -> tuple[float, float, float]:
    """Quiet p99 with the burst / without (all measured runs; settled ones); X drain / alone."""
    base, ctl = results[0], results[1]
    ratio = ctl.pct(0.99) / base.pct(0.99)
    settled_ratio = _q(sorted(ctl.settled), 0.99) / _q(sorted(base.settled), 0.99)
    alone = results[-1] if results[-1].name == "X alone" else None
    drain_ratio = ctl.x_drain_s / alone.x_drain_s if alone is not None else math.nan
    return ratio, settled_ratio, drain_ratio


def _q(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan


def finish(result: Result, sla_s: float) -> None:
    result.sla_s = sla_s
    late = [(t, lat) for t, lat in result.runs if lat > sla_s]
    result.violations = len(late)
    result.late_tenants = {t for t, _ in late}


async def main_async(cfg: Config) -> list[Result]:
    schedule = arrivals(cfg)
    # What a long-running service does once it has started: move the objects that live as long
    # as the process (modules, classes, the workflow) out of the collector's way, so a full
    # collection walks only what the runs allocate. Every scenario runs after this.
    gc.freeze()
    mode = cfg.no_controls
    if mode == "auto":
        mode = "engine" if await no_controls_works(cfg.step_s) else "emulate"
    shape = ""
    if cfg.names > 1 or cfg.urgent_every:
        shape = f" over {cfg.names} workflow names"
        if cfg.urgent_every:
            shape += f", every {cfg.urgent_every}th run in the urgent lane"
    tiers = "mixed tiers (enterprise/standard/free)" if cfg.mixed_tiers else "standard tier"
    print(
        f"fairness [{cfg.variant}]: {cfg.tenants} tenants ({cfg.tenants - 1} quiet, {tiers},"
        f" + {BURSTER} capped at {cfg.x_steps} steps / {cfg.x_runs} runs,"
        f" burst_slots {cfg.x_burst_slots}), {cfg.slots} slots,"
        f" 4 x {cfg.step_s * 1000:.0f} ms steps, quiet {cfg.quiet_rate:.1f} runs/s"
        f" (~{cfg.load * 100:.0f}% of capacity, {len(schedule)} runs), burst {cfg.burst} runs"
        f"{shape} over {cfg.burst_spread:g} s at t={cfg.burst_start:g} s,"
        f" window [{cfg.window[0]:g}, {cfg.window[1]:g}) s, seed {cfg.seed},"
        f" store {'MemoryStore' if cfg.store == 'memory' else 'SQLite synchronous=normal'}"
    )
    if mode == "emulate":
        print(
            "NOTE: Engine(controls=False) cannot run a step (dispatcher pushes the run's tenant to"
            " a scheduler that only knows '*': NotFoundError); 'no controls' is emulated by"
            " submitting every run under one engine tenant with platform-wide caps"
            " (one admission queue, one FIFO step queue, no per-tenant caps)."
        )
    results: list[Result] = []
    base = await scenario("baseline", cfg, schedule, burst=False, controls=True)
    results.append(base)
    sla = cfg.sla_x * base.pct(0.5)
    finish(base, sla)
    print(f"  baseline     done in {base.wall_s:.1f}s", flush=True)
    ctl = await scenario("controls", cfg, schedule, burst=True, controls=True)
    finish(ctl, sla)
    results.append(ctl)
    print(f"  controls     done in {ctl.wall_s:.1f}s", flush=True)
    if cfg.skip_fifo:
        return await x_alone(cfg, results)
    nc = await scenario(
        "no controls",
        cfg,
        schedule,
        burst=True,
        controls=False,
        emulate_shared=(mode == "emulate"),
    )
    if mode == "emulate":
        nc.name = "no controls*"
        nc.note = "* emulated: one engine tenant for all runs (controls=False is broken)"
    finish(nc, sla)
    results.append(nc)
    print(f"  no controls  done in {nc.wall_s:.1f}s", flush=True)
    return await x_alone(cfg, results)


async def x_alone(cfg: Config, results: list[Result]) -> list[Result]:
    """With ``x_drain``: the burst again with nobody else and every slot open to X."""
    if cfg.x_drain:
        alone = await scenario("X alone", cfg, [], burst=True, controls=True, x_alone=True)
        finish(alone, results[0].sla_s)
        results.append(alone)
        print(f"  X alone      done in {alone.wall_s:.1f}s", flush=True)
    return results


_SHORT = {
    "tenants": 21,
    "slots": 16,
    "burst": 2000,
    "step_ms": 5.0,
    "load": 0.0125,  # quiet tenants paced at 10 runs/s in all: 10 x 4 x 5 ms on 16 slots
    "seconds": 10.0,
    "warmup": 2.0,
    "burst_at": 1.0,
    "burst_spread": 1.0,
    "drain": 10.0,
    "x_steps": 4,
    "x_runs": 16,
    "x_burst_slots": 12,
}
_SHORT_QUICK = {
    **_SHORT,
    "tenants": 11,
    "slots": 8,
    "burst": 150,
    "load": 0.025,  # 10 runs/s in all on 8 slots
    "seconds": 4.0,
    "warmup": 1.0,
    "burst_at": 0.5,
    "burst_spread": 0.5,
    "drain": 5.0,
    "x_steps": 2,
    "x_runs": 8,
    "x_burst_slots": 6,
}
_NAMES = {"names": 20, "urgent_every": 4, "mixed_tiers": True}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "full": {},
        "quick": {
            "tenants": 40,
            "slots": 20,
            "burst": 600,
            "step_ms": 50.0,
            "seconds": 5.0,
            "warmup": 1.5,
            "drain": 8.0,
            "burst_at": 1.0,
            "burst_spread": 0.5,
        },
    },
    "short": {"full": _SHORT, "quick": _SHORT_QUICK},
    "all-at-once": {
        "full": {**_SHORT, "burst_spread": 0.0},
        "quick": {**_SHORT_QUICK, "burst_spread": 0.0},
    },
    "spread-names": {
        "full": {**_SHORT, **_NAMES, "tenants": 31, "burst": 3000},
        "quick": {**_SHORT_QUICK, **_NAMES, "tenants": 16, "burst": 200},
    },
}
"""Burst shapes: option values per variant, full and ``--quick`` (explicit options win)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=200, help="tenants, burster included")
    parser.add_argument("--slots", type=int, default=100)
    parser.add_argument("--burst", type=int, default=5000, help="runs institution-x submits")
    parser.add_argument("--step-ms", type=float, default=100.0, help="duration of each step")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, default=0.45, help="quiet load, share of slots")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--burst-at", type=float, default=2.0, help="s into the window")
    parser.add_argument("--burst-spread", type=float, default=1.0, help="s to submit the burst")
    parser.add_argument("--drain", type=float, default=30.0, help="max s after the window")
    parser.add_argument("--x-steps", type=int, help="X's max_running_steps (20%% of slots)")
    parser.add_argument("--x-runs", type=int, help="X's max_active_runs (50%% of slots)")
    parser.add_argument("--sla-x", type=float, default=3.0, help="SLA = this x baseline p50")
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument(
        "--no-controls",
        choices=["auto", "engine", "emulate"],
        default="auto",
        help="scenario 3 on controls=False (engine), one shared tenant (emulate), or auto",
    )
    parser.add_argument(
        "--wait-burst", action="store_true", help="also RunHandle.wait() every burst run"
    )
    parser.add_argument("--timeline", action="store_true", help="per-second diagnostics")
    parser.add_argument(
        "--skip-fifo", action="store_true", help="run only the baseline and controls scenarios"
    )
    parser.add_argument("--quick", action="store_true", help="a small version (< 30 s)")
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="default",
        help="burst shape: the seed's (default), 5 ms steps (short), all at one instant"
        " (all-at-once), over 20 workflow names and the urgent lane (spread-names)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the variant N times; every run's ratios"
    )
    parser.add_argument(
        "--x-burst-slots",
        type=int,
        help="X's burst_slots (default 0, a hard cap; the variants: every other slot)",
    )
    parser.add_argument(
        "--x-drain",
        action=argparse.BooleanOptionalAction,
        help="wait for X's whole burst and compare with X alone (default: on for the variants)",
    )
    parser.add_argument("--verbose", action="store_true", help="the full report of every run")
    parser.add_argument(
        "--x-drain-max", type=float, default=120.0, help="max s to wait for X's burst to drain"
    )
    parser.add_argument("--names", type=int, default=1, help="workflow names of the burst (<=20)")
    parser.add_argument(
        "--urgent-every", type=int, default=0, help="every k-th burst run in the urgent lane"
    )
    parser.add_argument(
        "--mixed-tiers", action="store_true", help="quiet tenants on enterprise/standard/free"
    )
    args = parser.parse_args()
    explicit = {
        a.dest
        for a in parser._actions
        if a.dest != "help" and getattr(args, a.dest) != parser.get_default(a.dest)
    }
    preset = VARIANTS[args.variant]["quick" if args.quick else "full"]
    for key, value in preset.items():
        if key not in explicit:
            setattr(args, key, value)
    x_steps = args.x_steps if args.x_steps is not None else max(1, round(0.2 * args.slots))
    x_runs = args.x_runs if args.x_runs is not None else max(1, round(0.5 * args.slots))
    x_drain = args.x_drain if args.x_drain is not None else args.variant != "default"
    cfg = Config(
        tenants=args.tenants,
        slots=args.slots,
        burst=args.burst,
        step_s=args.step_ms / 1000,
        seconds=args.seconds,
        seed=args.seed,
        load=args.load,
        warmup=args.warmup,
        burst_at=args.burst_at,
        burst_spread=args.burst_spread,
        drain=args.drain,
        x_steps=x_steps,
        x_runs=x_runs,
        sla_x=args.sla_x,
        store=args.store,
        no_controls=args.no_controls,
        timeline=args.timeline,
        wait_burst=args.wait_burst,
        skip_fifo=args.skip_fifo or args.variant != "default",
        names=args.names,
        urgent_every=args.urgent_every,
        mixed_tiers=args.mixed_tiers,
        x_burst_slots=args.x_burst_slots or 0,
        x_drain=x_drain,
        x_drain_max=args.x_drain_max,
        variant=args.variant,
    )
    t0 = time.perf_counter()
    if args.repeat <= 1:
        results = asyncio.run(main_async(cfg))
        report(cfg, results)
        print(f"total wall time {time.perf_counter() - t0:.1f}s")
        return
    rows: list[tuple[int, float, float, float, Result, Result | None]] = []
    for k in range(args.repeat):
        run_cfg = replace(cfg, seed=cfg.seed + k)
        print(f"run {k + 1}/{args.repeat} (seed {run_cfg.seed})", flush=True)
        results = asyncio.run(main_async(run_cfg))
        if args.verbose:
            report(run_cfg, results)
        ratio, settled, drain = ratios(results)
        alone = results[-1] if results[-1].name == "X alone" else None
        rows.append((run_cfg.seed, ratio, settled, drain, results[1], alone))
        print(f"  {_row(k + 1, *rows[-1])}", flush=True)
    print()
    print(f"every run of [{cfg.variant}] (quiet p99 with the burst / without; X drain / alone):")
    for k, row in enumerate(rows, 1):
        print(f"  {_row(k, *row)}")
    met = sum(1 for r in rows if r[1] <= 1.10)
    summary = f"quiet p99 <= 1.10x in {met} of {len(rows)} runs"
    summary += f" (ratios {', '.join(f'{r[1]:.2f}' for r in rows)})"
    if cfg.x_drain:
        drained = sum(1 for r in rows if r[3] <= 1.15)
        summary += f"; X drain <= 1.15x alone in {drained} of {len(rows)}"
        summary += f" ({', '.join(f'{r[3]:.2f}' for r in rows)})"
    print(summary)
    print(f"total wall time {time.perf_counter() - t0:.1f}s")


def _row(
    k: int,
    seed: int,
    ratio: float,
    settled: float,
    drain: float,
    ctl: Result,
    alone: Result | None,
) -> str:
    text = (
        f"run {k} seed {seed}: quiet p99 {fmt_s(ctl.pct(0.99)).strip()} = {ratio:.2f}x"
        f" ({settled:.2f}x settled), loop lag max {ctl.lag_max_ms:.0f} ms"
    )
    if alone is not None:
        text += (
            f"; X drain {fmt_s(ctl.x_drain_s).strip()} vs alone"
            f" {fmt_s(alone.x_drain_s).strip()} = {drain:.2f}x"
        )
    return text


if __name__ == "__main__":
    main()
