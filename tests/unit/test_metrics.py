"""Prometheus metrics per tenant: values, the ``_other`` bucket, bounded labels, no payloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

import tenantflow as tf
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.routing import Endpoint
from tenantflow.engine.writer import Writer
from tenantflow.observability import (
    Degraded,
    ModelCallFinished,
    Observer,
    RateLimitWait,
    ReviewSlaBreached,
    RunFinished,
    RunSubmitted,
    StepFinished,
    ToolCallFinished,
)
from tenantflow.observability.events import DEGRADATIONS, STEP_OUTCOMES
from tenantflow.observability.metrics import (
    OTHER,
    PLATFORM_SERIES,
    SERIES_PER_STORE,
    SERIES_PER_TENANT,
    TenantLabels,
    fairness_index,
    install_metrics,
)
from tenantflow.testing import FakeClock, MemoryStore

T = TypeVar("T")
SECRET = "SECRET-PAYLOAD-7f3a"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Text(BaseModel):
    text: str


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def engine(clock: FakeClock) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(
        MemoryStore(), tf.EngineConfig(slots=8, seed=7, auto_tenant="enterprise"), clock=clock
    ) as eng:
        yield eng


async def drive(clock: FakeClock, aw: Awaitable[T], limit_s: float = 600.0) -> T:
    """Await ``aw`` while moving fake time forward in small steps."""
    task = asyncio.ensure_future(aw)
    elapsed = 0.0
    while not task.done():
        if elapsed > limit_s:
            task.cancel()
            raise AssertionError("did not finish within the fake-time limit")
        clock.advance(0.05)
        elapsed += 0.05
        for _ in range(20):  # let the engine go as far as it can before time moves on
            await asyncio.sleep(0)
    return task.result()


async def settle(clock: FakeClock, seconds: float) -> None:
    elapsed = 0.0
    while elapsed < seconds:
        clock.advance(0.05)
        elapsed += 0.05
        for _ in range(20):
            await asyncio.sleep(0)


def scrape(registry: CollectorRegistry) -> tuple[str, Samples]:
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def label_values(samples: Samples, label: str = "tenant") -> set[str]:
    return {v for (_, labels) in samples for k, v in labels if k == label}


def work(clock: FakeClock) -> tf.Workflow:
    """Two steps: ``slow`` takes 2 s of fake time, ``flaky`` fails its first attempt."""
    wf = tf.Workflow("work", input=Text)
    tries: dict[str, int] = {}

    @wf.step
    async def slow(ctx: tf.StepContext, input: Text) -> Text:
        await clock.sleep(2.0)
        return Text(text=input.text.upper())

    @wf.step(retry=tf.Retry(max_attempts=2, initial=timedelta(seconds=1), jitter=0.0))
    async def flaky(ctx: tf.StepContext, slow: Text) -> str:
        tries[ctx.run_id] = tries.get(ctx.run_id, 0) + 1
        if tries[ctx.run_id] == 1:
            raise ConnectionError(f"upstream refused {slow.text}")
        return "ok"

    return wf


async def test_per_tenant_series_values_and_the_other_bucket(
    engine: tf.Engine, clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    install_metrics(engine, registry, max_tenants=2)
    engine.register(work(clock))
    doomed = tf.Workflow("doomed")

    @doomed.step(retry=tf.Retry(max_attempts=1))
    async def boom(ctx: tf.StepContext) -> str:
        raise ValueError(SECRET)

    engine.register(doomed)
    handles = []
    for tenant in ["t-a", "t-a", "t-b", "t-c", "t-d"]:
        handles.append(await engine.submit("work", tenant=tenant, input={"text": SECRET}))
    failing = await engine.submit("doomed", tenant="t-b", input=None)
    for h in handles:
        assert await drive(clock, h.result()) == "ok"
    assert (await drive(clock, failing.wait())).status == tf.RunStatus.FAILED

    text, samples = scrape(registry)
    submitted = "tenantflow_runs_submitted_total"
    assert value(samples, submitted, tenant="t-a") == 2
    assert value(samples, submitted, tenant="t-b") == 2
    assert value(samples, submitted, tenant=OTHER) == 2  # t-c and t-d, beyond max_tenants
    assert label_values(samples) == {"t-a", "t-b", OTHER}

    duration = "tenantflow_run_duration_seconds"
    assert value(samples, f"{duration}_count", tenant="t-a", outcome="completed") == 2
    assert value(samples, f"{duration}_count", tenant="t-b", outcome="failed") == 1
    # At least 2 s in ``slow`` plus the 1 s retry backoff of ``flaky``, in fake time.
    total = value(samples, f"{duration}_sum", tenant="t-a", outcome="completed")
    assert 2 * 3.0 <= total <= 2 * 30.0
    assert value(samples, f"{duration}_bucket", tenant="t-a", outcome="completed", le="2.5") == 0
    assert value(samples, f"{duration}_bucket", tenant="t-a", outcome="completed", le="60.0") == 2

    attempts = "tenantflow_step_attempts_total"
    assert value(samples, attempts, tenant="t-a", outcome="succeeded") == 4
    assert value(samples, attempts, tenant="t-a", outcome="failed") == 2
    assert value(samples, attempts, tenant="t-b", outcome="failed") == 2  # flaky + boom
    assert value(samples, attempts, tenant=OTHER, outcome="succeeded") == 4
    assert value(samples, "tenantflow_step_duration_seconds_count", tenant="t-a") == 6

    # Everything finished: the scrape-time gauges are back to zero, and the platform is idle.
    for gauge in ("runs_queued", "runs_active", "steps_queued", "steps_running"):
        for tenant in ("t-a", "t-b", OTHER):
            assert value(samples, f"tenantflow_{gauge}", tenant=tenant) == 0
    assert value(samples, "tenantflow_steps_running_cap", tenant="t-a") == 100  # enterprise
    assert value(samples, "tenantflow_slots_in_use") == 0
    assert value(samples, "tenantflow_slots") == 8
    assert value(samples, "tenantflow_fairness_index") == 1.0
    assert value(samples, "tenantflow_metrics_labelled_tenants") == 2
    assert value(samples, "tenantflow_store_ops") > 0
    # The commit-time histogram counts every committed transaction, cumulatively by bound.
    commits = value(samples, "tenantflow_store_commits")
    assert value(samples, "tenantflow_store_commit_seconds_count", store="default") == commits
    counts = [
        value(samples, "tenantflow_store_commit_seconds_bucket", store="default", le=le)
        for le in [*(repr(b) for b in Writer.commit_bounds), "+Inf"]
    ]
    assert counts == sorted(counts) and counts[-1] == commits
    assert value(samples, "tenantflow_store_commit_seconds_sum", store="default") > 0
    # described, so that a scrape of that series alone finds it
    only = registry.restricted_registry(["tenantflow_store_commit_seconds_bucket"])
    _, restricted = scrape(only)  # type: ignore[arg-type]
    assert len(restricted) == len(counts)

    # No run id, input or error message anywhere in the exposition.
    assert SECRET not in text and SECRET.upper() not in text
    for h in [*handles, failing]:
        assert h.id not in text
    assert "work" not in label_values(samples, "workflow")


async def test_queue_depth_running_steps_and_cap_are_read_at_scrape_time(
    engine: tf.Engine, clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    install_metrics(engine, registry)
    gate = asyncio.Event()
    wf = tf.Workflow("hold")

    @wf.step
    async def hold(ctx: tf.StepContext) -> str:
        await gate.wait()
        return "done"

    engine.register(wf)
    await engine.tenants.create("busy", tier="standard", max_active_runs=1)
    runs = [await engine.submit("hold", tenant="busy", input=None) for _ in range(3)]
    await settle(clock, 0.5)
    _, samples = scrape(registry)
    assert value(samples, "tenantflow_runs_queued", tenant="busy") == 2
    assert value(samples, "tenantflow_runs_active", tenant="busy") == 1
    assert value(samples, "tenantflow_steps_running", tenant="busy") == 1
    assert value(samples, "tenantflow_steps_running_cap", tenant="busy") == 20  # standard
    assert value(samples, "tenantflow_slots_in_use") == 1
    assert value(samples, "tenantflow_tenants_busy") == 1
    # A scrape from another thread (prometheus_client's own HTTP server) reads the same.
    _, from_thread = await asyncio.to_thread(scrape, registry)
    assert value(from_thread, "tenantflow_runs_queued", tenant="busy") == 2
    gate.set()
    for r in runs:
        await drive(clock, r.wait())
    _, samples = scrape(registry)
    assert value(samples, "tenantflow_runs_queued", tenant="busy") == 0
    assert (
        value(samples, "tenantflow_run_duration_seconds_count", tenant="busy", outcome="completed")
        == 3
    )


def model_endpoint() -> Endpoint:
    return Endpoint(
        name="sim-large",
        provider="sim",
        model="sim-model",
        region="us-east-1",
        tier="large",
        price_in_per_1k_micros=1_000,  # 1 µ$ a prompt token
        price_out_per_1k_micros=2_000,  # 2 µ$ a completion token
        max_context=100_000,
    )


async def test_model_tokens_cost_and_period_budget(engine: tf.Engine, clock: FakeClock) -> None:
    registry = CollectorRegistry()
    metrics = install_metrics(engine, registry)
    sim = SimulatedProvider(clock=clock, latency_ms=(1.0, 2.0), out_tokens=(40, 40))
    engine.models.add(model_endpoint(), sim)
    wf = tf.Workflow("ask", input=Text)

    @wf.step
    async def answer(ctx: tf.StepContext, input: Text) -> int:
        return (await ctx.model(input.text, max_tokens=50)).tokens_in

    engine.register(wf)
    await engine.tenants.create("payer", tier="enterprise", budget={"period_micros": 2_000_000})
    prompt = SECRET + " " + "x" * 60  # 79 characters: 20 prompt tokens at 0.25 per character
    tokens_in = await drive(
        clock, (await engine.submit("ask", tenant="payer", input={"text": prompt})).result()
    )
    assert tokens_in == 20
    cost_micros = 20 * 1 + 40 * 2
    await metrics.refresh_budgets()
    text, samples = scrape(registry)
    assert value(samples, "tenantflow_model_calls_total", tenant="payer", outcome="ok") == 1
    assert value(samples, "tenantflow_model_tokens_total", tenant="payer", direction="input") == 20
    assert value(samples, "tenantflow_model_tokens_total", tenant="payer", direction="output") == 40
    assert value(samples, "tenantflow_cost_usd_total", tenant="payer") == pytest.approx(
        cost_micros / 1e6
    )
    assert value(samples, "tenantflow_budget_period_limit_usd", tenant="payer") == 2.0
    assert value(samples, "tenantflow_budget_period_spent_usd", tenant="payer") == pytest.approx(
        cost_micros / 1e6
    )
    assert SECRET not in text


async def test_rate_limit_waits_and_run_sla_breaches(engine: tf.Engine, clock: FakeClock) -> None:
    registry = CollectorRegistry()
    install_metrics(engine, registry)

    @engine.tools.register(name="bureau")
    async def bureau(applicant: str) -> int:
        return 700

    wf = tf.Workflow("score", input=Text)

    @wf.step
    async def score(ctx: tf.StepContext, input: Text) -> int:
        return int(await ctx.tool("bureau", applicant=input.text))

    engine.register(wf)
    await engine.tenants.create(
        "limited",
        tier="standard",
        rate_limits={"tool:bureau": {"rate": "60/hour", "burst": 1}},
        run_sla=timedelta(seconds=30),
    )
    first = await engine.submit("score", tenant="limited", input={"text": SECRET})
    second = await engine.submit("score", tenant="limited", input={"text": SECRET})
    assert await drive(clock, first.result()) == 700
    assert await drive(clock, second.result()) == 700  # after one cell's 60 s wait
    text, samples = scrape(registry)
    # One wait of about a minute (a retry landing a hair early on the fake clock may add one
    # more of a millisecond); every wait is one parked attempt.
    waits = value(samples, "tenantflow_rate_limit_waits_total", tenant="limited", kind="tool")
    assert waits >= 1
    waited = value(
        samples, "tenantflow_rate_limit_wait_seconds_total", tenant="limited", kind="tool"
    )
    assert 50 <= waited <= 61
    assert value(samples, "tenantflow_tool_calls_total", tenant="limited", outcome="ok") == 2
    parked = "tenantflow_step_attempts_total"
    assert value(samples, parked, tenant="limited", outcome="rate_limited") == waits
    # The second run took over its 30 s run SLA; the first did not.
    assert value(samples, "tenantflow_sla_breaches_total", tenant="limited", kind="run") == 1
    assert SECRET not in text and "tool:bureau" not in text


async def test_review_sla_breaches_and_degradations(engine: tf.Engine, clock: FakeClock) -> None:
    registry = CollectorRegistry()
    install_metrics(engine, registry)
    wf = tf.Workflow("approve")

    @wf.review
    async def review(ctx: tf.StepContext) -> str:
        return "please look"

    engine.register(wf)
    await engine.tenants.create(
        "slow-reviewers",
        tier="standard",
        review_sla=timedelta(seconds=10),
        review_breach_action="fail",
    )
    run = await engine.submit("approve", tenant="slow-reviewers", input=None)
    assert (await drive(clock, run.wait())).status == tf.RunStatus.FAILED

    sim = SimulatedProvider(clock=clock, latency_ms=(1.0, 2.0), out_tokens=(40, 40))
    engine.models.add(model_endpoint(), sim)
    lean = tf.Workflow("lean")

    @lean.step
    async def first(ctx: tf.StepContext) -> str:
        return "done"

    @lean.step(optional=True)
    async def extra(ctx: tf.StepContext, first: str) -> str:
        return (await ctx.model("summarise " + first, max_tokens=500)).text

    engine.register(lean)
    await engine.tenants.create(
        "frugal", tier="enterprise", budget={"run_micros": 100}, degradation=["skip_optional"]
    )
    record = await drive(clock, (await engine.submit("lean", tenant="frugal", input=None)).wait())
    assert record.status == tf.RunStatus.COMPLETED
    _, samples = scrape(registry)
    assert (
        value(samples, "tenantflow_sla_breaches_total", tenant="slow-reviewers", kind="review") == 1
    )
    assert (
        value(samples, "tenantflow_step_attempts_total", tenant="slow-reviewers", outcome="review")
        == 1
    )
    assert (
        value(samples, "tenantflow_degradations_total", tenant="frugal", action="skip_optional")
        == 1
    )
    assert value(samples, "tenantflow_step_attempts_total", tenant="frugal", outcome="skipped") == 1
    assert sim.calls == 0


async def test_series_stay_bounded_whatever_the_number_of_tenants(
    engine: tf.Engine, clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    install_metrics(engine, registry, max_tenants=3, tenants=["vip"])
    wf = tf.Workflow("tiny")

    @wf.step
    async def only(ctx: tf.StepContext) -> int:
        return 1

    engine.register(wf)
    handles = [await engine.submit("tiny", tenant=f"tenant-{i}", input=None) for i in range(40)]
    for h in handles:
        await drive(clock, h.result())
    _, samples = scrape(registry)
    # "vip" was listed, so it keeps its place even though it has not been seen yet.
    assert label_values(samples) == {"vip", "tenant-0", "tenant-1", OTHER}
    assert value(samples, "tenantflow_runs_submitted_total", tenant=OTHER) == 38
    assert value(samples, "tenantflow_runs_submitted_total", tenant="tenant-1") == 1
    series_40 = len(samples)
    more = [await engine.submit("tiny", tenant=f"more-{i}", input=None) for i in range(40)]
    for h in more:
        await drive(clock, h.result())
    _, samples = scrape(registry)
    assert len(samples) == series_40  # 40 more tenants, not one more series


async def test_the_documented_series_bound_holds_with_every_label_value_used(
    engine: tf.Engine,
) -> None:
    registry = CollectorRegistry()
    install_metrics(engine, registry, max_tenants=2)
    emit = engine.observers.emit
    base: dict[str, Any] = {"run_id": "run_x", "at_s": 10.0}
    for tenant in ["a", "b", "c", "d", "e"]:  # c, d and e share the _other series
        ids = {"tenant_id": tenant, **base}
        call = {**ids, "step": "s", "attempt": 1}
        emit(RunSubmitted(**ids, workflow="w", lane="normal", queued=False))
        for status in ["completed", "failed", "compensated", "cancelled", "something-new"]:
            emit(
                RunFinished(
                    **ids,
                    workflow="w",
                    status=status,
                    submitted_at_s=0.0,
                    state_version=1,
                    run_sla_s=1.0,
                )
            )
        for outcome in STEP_OUTCOMES:
            emit(
                StepFinished(
                    **call, workflow="w", outcome=outcome, started_at_s=9.0, state_version=1
                )
            )
        for error in [None, "ProviderError"]:
            emit(
                ModelCallFinished(
                    **call,
                    endpoint="e",
                    provider="p",
                    model="m",
                    region="r",
                    started_at_s=9.0,
                    max_tokens=10,
                    temperature=0.0,
                    tokens_in=3,
                    tokens_out=4,
                    cost_micros=5,
                    error_type=error,
                )
            )
            emit(ToolCallFinished(**call, tool="t", started_at_s=9.0, error_type=error))
        for resource in ["tool:x", "model:y", "z"]:
            emit(RateLimitWait(**call, resource=resource, wait_s=1.0))
        for action in [*DEGRADATIONS, "novel"]:
            emit(Degraded(**call, action=action))
        emit(
            ReviewSlaBreached(**ids, review_id="rev", step="s", pool="p", action="fail", due_s=1.0)
        )
    _, samples = scrape(registry)
    bound = (2 + 1) * SERIES_PER_TENANT + PLATFORM_SERIES + SERIES_PER_STORE  # one store
    assert len(samples) <= bound, len(samples)
    assert len(samples) >= (2 + 1) * (SERIES_PER_TENANT - 7)  # every counter and histogram
    assert label_values(samples) == {"a", "b", OTHER}
    assert value(samples, "tenantflow_degradations_total", tenant=OTHER, action="other") == 3


def test_tenant_labels_policy() -> None:
    labels = TenantLabels(2, tenants=["b"])
    assert labels("a") == "a"  # first come
    assert labels("c") == OTHER  # full: b was listed, a came first
    assert labels("b") == "b" and labels("a") == "a"  # kept
    assert labels("_bad") == OTHER
    assert labels.labelled() == ["b", "a"]
    with pytest.raises(tf.ConfigurationError):
        TenantLabels(1, tenants=["x", "y"])
    with pytest.raises(tf.ConfigurationError):
        TenantLabels(5, tenants=["not valid!"])
    none = TenantLabels(0)
    assert none("a") == OTHER and len(none) == 0


async def test_fairness_index_against_weighted_max_min_shares(engine: tf.Engine) -> None:
    await engine.tenants.create("heavy", tier="enterprise")  # weight 5
    await engine.tenants.create("light", tier="standard")  # weight 2
    slots = engine.dispatcher.scheduler.slots  # 8: fair shares 40/7 and 16/7
    assert fairness_index(engine, {"heavy": slots}, {"light": 3}) == pytest.approx(0.5)
    near = fairness_index(engine, {"heavy": 6, "light": 2}, {"heavy": 10, "light": 10})
    assert near == pytest.approx(1.0, abs=0.01)
    assert fairness_index(engine, {}, {}) == 1.0


async def test_a_failing_observer_never_fails_a_run(engine: tf.Engine, clock: FakeClock) -> None:
    class Broken(Observer):
        def on_step_finished(self, event: StepFinished) -> None:
            raise RuntimeError("observer bug")

    registry = CollectorRegistry()
    engine.observers.append(Broken())
    install_metrics(engine, registry)
    wf = tf.Workflow("fine")

    @wf.step
    async def one(ctx: tf.StepContext) -> int:
        return 1

    @wf.step
    async def two(ctx: tf.StepContext, one: int) -> int:
        return one + 1

    engine.register(wf)
    assert await drive(clock, (await engine.submit("fine", tenant="t", input=None)).result()) == 2
    assert engine.observers.failures["Broken.on_step_finished"] == 2
    _, samples = scrape(registry)  # the observer after the broken one still ran
    assert value(samples, "tenantflow_step_attempts_total", tenant="t", outcome="succeeded") == 2


async def test_close_detaches_and_unregisters(engine: tf.Engine) -> None:
    registry = CollectorRegistry()
    metrics = install_metrics(engine, registry)
    assert metrics in engine.observers
    metrics.close()
    assert metrics not in engine.observers
    assert generate_latest(registry) == b""
    install_metrics(engine, registry)  # the names are free again
    with pytest.raises(ValueError):
        install_metrics(engine, registry)
