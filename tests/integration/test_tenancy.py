"""Tenant isolation on all five dimensions, through the real engine (in-memory SQLite store)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.memory import MemoryStore
from tenantflow.adapters.postgres import PostgresStore
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.records import CreateRun
from tenantflow.domain.routing import Endpoint
from tenantflow.domain.scheduler import BurstNotice
from tenantflow.testing import FakeClock

CLOCK = SystemClock()
T = TypeVar("T")


def endpoint(
    name: str, region: str, tier: str, price_out: int, model: str | None = None
) -> Endpoint:
    return Endpoint(
        name=name,
        provider="sim",
        model=model or name,
        region=region,
        tier=tier,  # type: ignore[arg-type]
        price_in_per_1k_micros=0,
        price_out_per_1k_micros=price_out,
        max_context=100_000,
    )


def provider(seed: int = 0, out: int = 100) -> SimulatedProvider:
    return SimulatedProvider(clock=CLOCK, seed=seed, latency_ms=(1.0, 2.0), out_tokens=(out, out))


@pytest.fixture
async def engine() -> AsyncIterator[tf.Engine]:
    async with tf.Engine(MemoryStore(), tf.EngineConfig(slots=16, seed=3)) as eng:
        yield eng


def blocking_workflow(gate: asyncio.Event, started: list[str]) -> tf.Workflow:
    wf = tf.Workflow("block")

    @wf.step
    async def hold(ctx: tf.StepContext) -> str:
        started.append(ctx.run_id)
        await gate.wait()
        return "done"

    return wf


async def test_tenants_are_versioned_validated_and_audited(engine: tf.Engine) -> None:
    a = await engine.tenants.create("bank-a", tier="enterprise", org_id="holding")
    assert a.policy.max_active_runs == 50 and a.policy_version == 1
    b = await engine.tenants.update("bank-a", max_active_runs=5)
    assert b.policy.max_active_runs == 5 and b.policy_version == 2
    with pytest.raises(tf.ConfigurationError, match="max_active_runs"):
        await engine.tenants.create("bad-1", max_active_runs=-1)
    with pytest.raises(tf.ConfigurationError, match="unknown region"):
        await engine.tenants.create("bad-2", region="mars-1")
    with pytest.raises(tf.ConfigurationError, match="both allowed and denied"):
        await engine.tenants.create("bad-3", allowed_models=["m"], denied_models=["m"])
    with pytest.raises(tf.ConfigurationError):
        await engine.tenants.create("bad-4", tier="gold")
    with pytest.raises(tf.ConflictError):
        await engine.tenants.create("bank-a")
    assert [t.id for t in engine.tenants.list()] == ["bank-a"]  # nothing half-written
    log = await engine.audit_log("bank-a")
    assert [r.action for r in log] == ["tenant.created", "policy.updated"]
    assert (await engine.audit_verify("bank-a")).ok


async def test_unknown_tenants_are_refused_without_auto_registration(engine: tf.Engine) -> None:
    engine.register(blocking_workflow(asyncio.Event(), []))
    with pytest.raises(tf.NotFoundError, match="not registered"):
        await engine.submit("block", tenant="nobody", input=None)


async def test_active_run_cap_queues_per_tenant_and_backpressure_refuses() -> None:
    async with tf.Engine(MemoryStore(), tf.EngineConfig(slots=16, max_queued_runs=3)) as engine:
        gate, started = asyncio.Event(), []
        engine.register(blocking_workflow(gate, started))
        await engine.tenants.create("busy", tier="standard", max_active_runs=2)
        await engine.tenants.create("quiet", tier="standard")
        runs = [await engine.submit("block", tenant="busy", input=None) for _ in range(5)]
        statuses = [(await r.status()).value for r in runs]
        assert statuses == ["running", "running", "queued", "queued", "queued"]
        with pytest.raises(tf.BackpressureError) as err:
            await engine.submit("block", tenant="busy", input=None)
        assert err.value.retry_after_s > 0
        quiet = await engine.submit("block", tenant="quiet", input=None)
        with pytest.raises(tf.BackpressureError):  # the global queue is full for everyone…
            await engine.submit("block", tenant="busy", input=None)
        assert (await quiet.status()) == tf.RunStatus.RUNNING  # …but quiet was under its cap
        for _ in range(100):
            if len(started) == 3:
                break
            await asyncio.sleep(0.01)
        assert sorted(started) == sorted([runs[0].id, runs[1].id, quiet.id])
        gate.set()
        for r in [*runs, quiet]:
            assert (await r.wait()).status == tf.RunStatus.COMPLETED
        kinds = [e.kind for e in await engine.timeline("busy", runs[4].id)]
        assert kinds[:3] == ["run.submitted", "run.queued", "run.admitted"]


async def test_running_step_cap_holds(engine: tf.Engine) -> None:
    running = 0
    peak = 0
    wf = tf.Workflow("fan", input=list[int])

    @wf.step
    async def items(ctx: tf.StepContext, input: list[int]) -> list[int]:
        return input

    @wf.step(fan_out="items")
    async def work(ctx: tf.StepContext, items: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return items

    engine.register(wf)
    await engine.tenants.create(
        "capped", tier="standard", max_running_steps=3, guaranteed_slots=0, burst_slots=0
    )
    runs = [await engine.submit("fan", tenant="capped", input=list(range(10))) for _ in range(3)]
    for r in runs:
        assert await r.result() == list(range(10))
    assert peak == 3


async def test_budget_race_never_overspends_and_leaks_nothing(engine: tf.Engine) -> None:
    sim = provider(out=100)
    engine.models.add(
        endpoint("small", "us-east-1", "small", price_out=1_000_000), sim
    )  # $0.10/call
    wf = tf.Workflow("race")
    go = asyncio.Event()

    @wf.step(optional=True)
    async def ask(ctx: tf.StepContext) -> str:
        await go.wait()  # hold every step until all 100 are in flight: then they race
        return (await ctx.model("score this", max_tokens=100)).text

    engine.register(wf)
    await engine.tenants.create(
        "t",
        tier="standard",
        max_active_runs=200,
        max_running_steps=100,
        degradation=["skip_optional"],
        budget={"run_micros": None, "period_micros": 1_000_000},
    )
    runs = [await engine.submit("race", tenant="t", input=None) for _ in range(100)]
    go.set()
    records = [await r.wait() for r in runs]
    assert all(r.status == tf.RunStatus.COMPLETED for r in records)
    assert sim.calls == 10
    [money] = [
        row
        for row in await engine.budget("t")
        if row["scope"] == "period" and row["unit"] == "micros"
    ]
    assert money["spent"] == 1_000_000  # exactly the budget: overspend is 0
    assert money["reserved"] == 0  # no reservation leaked
    skipped = 0
    for r in runs:
        steps = {s.key: s.status for s in await engine.steps("t", r.id)}
        skipped += steps["ask"] == tf.StepStatus.SKIPPED
    assert skipped == 90
    usage = await engine.usage("t")
    assert sum(u["value"] for u in usage if u["metric"] == "degradations") == 90
    actions = [r.action for r in await engine.audit_log("t")]
    assert actions.count("budget.degraded") == 90


async def test_eu_tenant_never_leaves_the_eu() -> None:
    eu_store = MemoryStore()
    async with tf.Engine(
        MemoryStore(),
        tf.EngineConfig(region="us-east-1", breaker_failures=1, seed=1),
        regions={"eu-west-1": eu_store},
    ) as engine:
        us, eu = provider(1), provider(2)
        engine.models.add(endpoint("us-large", "us-east-1", "large", 1000), us)
        engine.models.add(endpoint("eu-large", "eu-west-1", "large", 1000), eu)
        eu.set_down(True)
        wf = tf.Workflow("comply")

        @wf.step(retry=tf.Retry(max_attempts=3, initial=timedelta(milliseconds=5)))
        async def check(ctx: tf.StepContext) -> str:
            return (await ctx.model("compliance check", max_tokens=50)).text

        engine.register(wf)
        await engine.tenants.create("gdpr-bank", tier="enterprise", region="eu-west-1")
        run = await engine.submit("comply", tenant="gdpr-bank", input=None)
        record = await run.wait()
        assert record.status == tf.RunStatus.FAILED
        assert "ResidencyError" in (record.error or "")
        assert us.calls == 0  # never a US endpoint, even with the EU one down
        kinds = [e.kind for e in await engine.timeline("gdpr-bank", run.id)]
        assert "residency.blocked" in kinds
        # Its state exists only in the EU store.
        assert (await eu_store.get_run("gdpr-bank", run.id)).id == run.id
        with pytest.raises(tf.NotFoundError):
            await engine.store.get_run("gdpr-bank", run.id)
        assert await engine.store.list_tenants() == []
        eu.set_down(False)
        engine.runtime.breaker("model:eu-large").record_success(0)
        ok = await engine.submit("comply", tenant="gdpr-bank", input=None)
        assert (await ok.wait()).status == tf.RunStatus.COMPLETED
        assert us.calls == 0 and eu.calls >= 1
        calls = [e for e in await engine.timeline("gdpr-bank", ok.id) if e.kind == "model.call"]
        assert [c.data["region"] for c in calls] == ["eu-west-1"]
        with pytest.raises(tf.ResidencyError):
            await engine.tenants.create("apac", region="ap-southeast-1")


async def test_a_bursting_tenant_does_not_touch_anothers_admissions_limits_or_budget(
    engine: tf.Engine,
) -> None:
    calls: dict[str, int] = {"a": 0, "b": 0}

    @engine.tools.register(name="bureau")
    async def bureau(applicant: str) -> int:
        calls[applicant] += 1
        return 700

    sim = provider()
    engine.models.add(endpoint("small", "us-east-1", "small", price_out=1_000_000), sim)
    wf = tf.Workflow("loan", input=str)

    @wf.step
    async def credit(ctx: tf.StepContext, input: str) -> int:
        return int(await ctx.tool("bureau", applicant=input))

    @wf.step(optional=True)
    async def comply(ctx: tf.StepContext, credit: int) -> str:
        return (await ctx.model("check", max_tokens=100)).text

    engine.register(wf)
    limits = {
        "rate_limits": {"tool:bureau": {"rate": "3/hour", "burst": 3}},
        "degradation": ["skip_optional"],
    }
    await engine.tenants.create(
        "a",
        tier="standard",
        max_active_runs=5,
        budget={"run_micros": None, "period_micros": 200_000},
        **limits,
    )
    await engine.tenants.create(
        "b", tier="standard", budget={"run_micros": None, "period_micros": 10_000_000}, **limits
    )
    burst = await asyncio.gather(*(engine.submit("loan", tenant="a", input="a") for _ in range(20)))
    with pytest.raises(tf.BudgetExceededError):  # a's spent budget refuses a's new runs…
        for _ in range(50):
            await engine.submit("loan", tenant="a", input="a")
            await asyncio.sleep(0.02)
    quiet = [await engine.submit("loan", tenant="b", input="b") for _ in range(3)]
    assert [await q.status() for q in quiet] == [tf.RunStatus.RUNNING] * 3  # admitted at once
    for q in quiet:
        assert (await q.wait(timedelta(seconds=10))).status == tf.RunStatus.COMPLETED
    assert calls["b"] == 3  # b's limit untouched by a's exhausted one
    assert calls["a"] == 3  # a is held to its own 3/hour
    b_steps = [s for q in quiet for s in await engine.steps("b", q.id)]
    assert all(s.status == tf.StepStatus.SUCCEEDED for s in b_steps)  # b's budget untouched
    usage_b = {u["metric"] for u in await engine.usage("b")}
    assert "rate_limit_waits" not in usage_b and "degradations" not in usage_b
    usage_a = {u["metric"] for u in await engine.usage("a")}
    assert "rate_limit_waits" in usage_a
    statuses = [(await r.status()).value for r in burst]
    assert statuses.count("running") <= 5  # a's own cap
    for r in burst:
        if (await r.status()) not in (tf.RunStatus.COMPLETED, tf.RunStatus.FAILED):
            await engine.cancel("a", r.id)


async def test_rate_limited_step_waits_without_holding_a_slot() -> None:
    clock = FakeClock()
    async with tf.Engine(
        clock.watch(MemoryStore()), tf.EngineConfig(slots=1), clock=clock
    ) as engine:

        @engine.tools.register(name="slow_api")
        async def slow_api() -> int:
            return 1

        wf = tf.Workflow("limited")

        @wf.step
        async def call(ctx: tf.StepContext) -> int:
            return int(await ctx.tool("slow_api"))

        other = tf.Workflow("other")

        @other.step
        async def quick(ctx: tf.StepContext) -> str:
            return "ran"

        engine.register(wf)
        engine.register(other)
        await engine.tenants.create(
            "t", tier="standard", rate_limits={"tool:slow_api": {"rate": "1/second", "burst": 1}}
        )
        first = await engine.submit("limited", tenant="t", input=None)
        second = await engine.submit("limited", tenant="t", input=None)
        await clock.drive(first.result(), limit_s=5)
        # The second waits ~1 s for its token; with one slot, another run still gets through.
        q = await engine.submit("other", tenant="t", input=None)
        assert await clock.drive(q.result(), limit_s=0.5) == "ran"
        assert await clock.drive(second.result(), limit_s=5) == 1
        deferred = [e for e in await engine.timeline("t", second.id) if e.kind == "step.deferred"]
        assert deferred and "rate limit" in deferred[0].data["reason"]


async def test_denied_tools_fail_at_once_and_are_audited(engine: tf.Engine) -> None:
    @engine.tools.register(name="wire_money")
    async def wire_money(amount: int) -> str:
        return "sent"

    wf = tf.Workflow("evil")

    @wf.step
    async def act(ctx: tf.StepContext) -> str:
        return str(await ctx.tool("wire_money", amount=10**6))

    engine.register(wf)
    await engine.tenants.create("t", tier="free", denied_tools=["wire_money"])
    run = await engine.submit("evil", tenant="t", input=None)
    record = await run.wait()
    assert record.status == tf.RunStatus.FAILED and "NotAllowedError" in (record.error or "")
    attempts = [e for e in await engine.timeline("t", run.id) if e.kind == "step.started"]
    assert len(attempts) == 1  # no retries of a policy refusal
    assert "tool.denied" in [r.action for r in await engine.audit_log("t")]


async def test_reviews_are_per_tenant_and_waiting_holds_no_slot() -> None:
    async with tf.Engine(MemoryStore(), tf.EngineConfig(slots=1)) as engine:
        wf = tf.Workflow("loan", input=int)

        @wf.review
        async def review(ctx: tf.StepContext, input: int) -> dict[str, Any]:
            return {"amount": input}

        @wf.step
        async def decide(ctx: tf.StepContext, review: tf.ReviewDecision) -> str:
            return "approved" if review.approved else "declined"

        quick = tf.Workflow("quick")

        @quick.step
        async def go(ctx: tf.StepContext) -> str:
            return "ok"

        engine.register(wf)
        engine.register(quick)
        await engine.tenants.create("a", tier="enterprise")
        await engine.tenants.create("b", tier="standard")
        run = await engine.submit("loan", tenant="a", input=50_000)
        for _ in range(100):
            if await engine.reviews.list("a"):
                break
            await asyncio.sleep(0.01)
        [task] = await engine.reviews.list("a")
        assert task.pool == "a-reviewers" and task.payload["request"] == {"amount": 50_000}
        # The waiting run holds no slot: with one slot, another run completes meanwhile.
        assert (
            await (await engine.submit("quick", tenant="b", input=None)).result(
                timedelta(seconds=2)
            )
            == "ok"
        )
        assert await engine.reviews.list("b") == []  # b sees nothing of a's queue
        with pytest.raises(tf.NotFoundError):
            await engine.reviews.claim("b", task.id, reviewer="mallory")
        with pytest.raises(tf.NotFoundError):
            await engine.reviews.decide("b", task.id, reviewer="mallory", approve=True)
        claimed = await engine.reviews.claim("a", task.id, reviewer="alice")
        assert claimed.claimed_by == "alice"
        with pytest.raises(tf.ConflictError):
            await engine.reviews.claim("a", task.id, reviewer="bob")
        await engine.reviews.decide("a", task.id, reviewer="alice", approve=True, comment="fine")
        assert await run.result() == "approved"
        state = await engine.state("a", run.id)
        assert state.state["review"]["reviewer"] == "alice"
        assert {"review.claimed", "review.approved"} <= {
            r.action for r in await engine.audit_log("a")
        }


@pytest.mark.parametrize(
    ("action", "expect"),
    [("auto_reject", "declined"), ("escalate:seniors", "seniors"), ("fail", "failed")],
)
async def test_review_sla_breach_follows_the_policy(action: str, expect: str) -> None:
    async with tf.Engine(MemoryStore()) as engine:
        wf = tf.Workflow("loan")

        @wf.review
        async def review(ctx: tf.StepContext) -> str:
            return "please look"

        @wf.step
        async def decide(ctx: tf.StepContext, review: tf.ReviewDecision) -> str:
            return "approved" if review.approved else "declined"

        engine.register(wf)
        await engine.tenants.create(
            "t",
            tier="standard",
            review_sla=timedelta(milliseconds=100),
            review_breach_action=action,
        )
        run = await engine.submit("loan", tenant="t", input=None)
        if expect == "seniors":
            for _ in range(100):
                tasks = await engine.reviews.list("t")
                if tasks and tasks[0].pool == "seniors":
                    break
                await asyncio.sleep(0.02)
            assert tasks[0].pool == "seniors" and tasks[0].escalations >= 1
            await engine.cancel("t", run.id)
            return
        record = await run.wait(timedelta(seconds=5))
        if expect == "failed":
            assert record.status == tf.RunStatus.FAILED
        else:
            assert await run.result() == "declined"


async def test_budget_ladder_cheaper_model_escalation_and_pause(engine: tf.Engine) -> None:
    big, small = provider(1, out=100), provider(2, out=100)
    engine.models.add(endpoint("large", "us-east-1", "large", price_out=10_000_000), big)  # $1.00
    engine.models.add(endpoint("small", "us-east-1", "small", price_out=1_000_000), small)  # $0.10
    wf = tf.Workflow("ask")

    @wf.step
    async def answer(ctx: tf.StepContext) -> str:
        return (await ctx.model("summarise", max_tokens=100)).text

    engine.register(wf)
    # Cheaper model: the large model does not fit the run budget, the small one does.
    await engine.tenants.create("cheap", tier="enterprise", budget={"run_micros": 500_000})
    run = await engine.submit("ask", tenant="cheap", input=None)
    await run.result()
    assert big.calls == 0 and small.calls == 1
    degraded = [e for e in await engine.timeline("cheap", run.id) if e.kind == "budget.degraded"]
    assert degraded[0].data["action"] == "cheaper_model"
    # Escalation: nothing fits; a human answers in place of the model.
    await engine.tenants.create(
        "human",
        tier="enterprise",
        budget={"run_micros": 1},
        degradation=["cheaper_model", "escalate_to_human"],
    )
    run = await engine.submit("ask", tenant="human", input=None)
    for _ in range(100):
        tasks = await engine.reviews.list("human")
        if tasks:
            break
        await asyncio.sleep(0.01)
    assert tasks[0].payload["kind"] == "escalation"
    await engine.reviews.decide(
        "human", tasks[0].id, reviewer="ops", approve=True, comment="risk is low"
    )
    assert await run.result() == "risk is low"
    # Pause: the run waits for budget and resumes when the policy raises it.
    await engine.tenants.create(
        "broke", tier="standard", budget={"run_micros": 1}, degradation=["pause"]
    )
    run = await engine.submit("ask", tenant="broke", input=None)
    for _ in range(100):
        if (await run.status()) == tf.RunStatus.PAUSED:
            break
        await asyncio.sleep(0.01)
    assert (await run.status()) == tf.RunStatus.PAUSED
    await engine.tenants.update("broke", budget={"run_micros": 1_000_000})
    assert isinstance(await run.result(timedelta(seconds=5)), str)
    kinds = [e.kind for e in await engine.timeline("broke", run.id)]
    assert "run.paused" in kinds and "run.resumed" in kinds


async def test_recorded_calls_are_replayed_not_repaid(engine: tf.Engine) -> None:
    sim = provider()
    engine.models.add(endpoint("small", "us-east-1", "small", price_out=1000), sim)
    wf = tf.Workflow("replay")

    @wf.step(retry=tf.Retry(max_attempts=2, initial=timedelta(milliseconds=1)))
    async def think(ctx: tf.StepContext) -> str:
        reply = await ctx.model("plan", max_tokens=20)
        if ctx.attempt == 1:
            raise RuntimeError("crashed after the model answered")
        return reply.text

    engine.register(wf)
    await engine.tenants.create("t", tier="standard")
    run = await engine.submit("replay", tenant="t", input=None)
    await run.result()
    assert sim.calls == 1  # attempt 2 replayed the recorded answer


async def test_deleting_a_tenant_purges_everything_but_the_audit(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    async with tf.Engine(SqliteStore(path)) as engine:
        engine.register(blocking_workflow(asyncio.Event(), []))
        wf = tf.Workflow("ok")

        @wf.step
        async def one(ctx: tf.StepContext) -> int:
            return 1

        engine.register(wf)
        await engine.tenants.create("gone", tier="standard")
        await engine.tenants.create("stays", tier="standard")
        for tenant in ("gone", "stays"):
            await (await engine.submit("ok", tenant=tenant, input=None)).result()
        proof = await engine.tenants.delete("gone")
        assert proof["deleted"]["runs"] == 1 and proof["deleted"]["events"] > 0
        assert set(proof["left"].values()) == {0}
        with pytest.raises(tf.NotFoundError):
            await engine.tenants.get("gone")
        assert [r.action for r in await engine.audit_log("gone")][-1] == "tenant.deleted"
        assert (await engine.audit_verify("gone")).ok
    conn = sqlite3.connect(path)
    for table in ("runs", "steps", "state_versions", "events", "usage", "tenants", "ledgers"):
        column = "id" if table == "tenants" else "tenant_id"
        n = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = 'gone'").fetchone()[0]
        assert n == 0, table
    assert conn.execute("SELECT COUNT(*) FROM runs WHERE tenant_id = 'stays'").fetchone()[0] == 1
    conn.close()


async def test_audit_verification_names_the_tampered_row(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    async with tf.Engine(SqliteStore(path)) as engine:
        await engine.tenants.create("t", tier="standard")
        for cap in (3, 4, 5):
            await engine.tenants.update("t", max_active_runs=cap)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE audit_log SET detail = '{}' WHERE tenant_id = 't' AND seq = 3")
    conn.commit()
    conn.close()
    async with tf.Engine(SqliteStore(path), tf.EngineConfig(execute=False)) as engine:
        result = await engine.audit_verify("t")
        assert not result.ok and result.first_bad_seq == 3


@asynccontextmanager
async def _retention_engine(
    store: Any = None,
) -> AsyncIterator[tuple[tf.Engine, FakeClock]]:
    """An engine on fake time (on ``store``, by default a memory store) with a one-step
    workflow ``ok`` and a tenant ``short`` whose policy keeps finished runs 30 days."""
    clock = FakeClock()
    async with tf.Engine(clock.watch(store or MemoryStore()), clock=clock) as engine:
        wf = tf.Workflow("ok")

        @wf.step
        async def one(ctx: tf.StepContext) -> int:
            return 1

        engine.register(wf)
        await engine.tenants.create("short", tier="standard", data_retention=timedelta(days=30))
        yield engine, clock


async def test_retention_purges_finished_runs_past_the_policy() -> None:
    async with _retention_engine() as (engine, clock):
        await engine.tenants.create("keep", tier="standard")
        old = await engine.submit("ok", tenant="short", input=None)
        kept = await engine.submit("ok", tenant="keep", input=None)
        await old.result()
        await kept.result()
        clock.advance(31 * 86400)
        fresh = await engine.submit("ok", tenant="short", input=None)
        await fresh.result()
        purged = await engine.purge_expired()
        assert purged["short"]["runs"] == 1 and purged["short"]["events"] > 0
        assert "keep" not in purged
        with pytest.raises(tf.NotFoundError):
            await engine.get_run("short", old.id)
        assert (await engine.get_run("short", fresh.id)).status == tf.RunStatus.COMPLETED
        assert (await engine.get_run("keep", kept.id)).status == tf.RunStatus.COMPLETED
        assert "retention.purged" in [r.action for r in await engine.audit_log("short")]


async def _borrowing(engine: tf.Engine) -> tuple[tf.RunHandle, asyncio.Event]:
    """Tenant ``bursty`` (cap 2, 2 burst slots) runs 4 fan-out elements that wait for the
    returned event: 2 of them on borrowed slots."""
    gate = asyncio.Event()
    wf = tf.Workflow("fan", input=list[int])

    @wf.step
    async def items(ctx: tf.StepContext, input: list[int]) -> list[int]:
        return input

    @wf.step(fan_out="items")
    async def work(ctx: tf.StepContext, items: int) -> int:
        await gate.wait()
        return items

    engine.register(wf)
    await engine.tenants.create(
        "bursty",
        tier="standard",
        max_running_steps=2,
        guaranteed_slots=0,
        burst_slots=2,
        burst_window=timedelta(minutes=5),
    )
    run = await engine.submit("fan", tenant="bursty", input=list(range(6)))
    for _ in range(100):
        if engine.dispatcher.scheduler.running("bursty") == 4:
            break
        await asyncio.sleep(0.01)
    assert engine.dispatcher.scheduler.running("bursty") == 4  # cap 2 + burst 2
    return run, gate


async def test_burst_credit_use_is_audited() -> None:
    async with tf.Engine(MemoryStore(), tf.EngineConfig(slots=8)) as engine:
        run, gate = await _borrowing(engine)
        gate.set()
        await run.result()
        await asyncio.sleep(0.05)
        actions = [r.action for r in await engine.audit_log("bursty")]
        assert actions.count("compute.burst_used") >= 2


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.audit_writes = 0

    async def apply(self, ops: Any) -> list[Any]:
        self.audit_writes += sum(1 for op in ops if getattr(op, "audit", None))
        return await super().apply(ops)


async def test_burst_uses_while_an_audit_write_is_in_flight_share_the_next_write() -> None:
    store = CountingStore()
    async with tf.Engine(store, tf.EngineConfig(slots=8)) as engine:
        await engine.tenants.create("bursty", tier="standard", burst_slots=2)
        writes_before = store.audit_writes
        notice = BurstNotice("bursty", "burst_used", 0.0, 3, 2, 0.0, 300.0)
        for _ in range(5):  # five uses before the first write could end
            engine.gate.burst_notice(notice)
        await asyncio.sleep(0)  # the write starts; three more uses while it is in flight
        for _ in range(3):
            engine.gate.burst_notice(notice)
        for _ in range(100):
            used = [r for r in await engine.audit_log("bursty") if r.action == "compute.burst_used"]
            if len(used) == 8:
                break
            await asyncio.sleep(0.01)
        assert len(used) == 8  # every use is audited
        assert store.audit_writes - writes_before == 2


async def test_burst_uses_pending_when_the_engine_closes_are_still_audited(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    async with tf.Engine.open(url, slots=8) as engine:
        await engine.tenants.create("bursty", tier="standard", burst_slots=2)
        notice = BurstNotice("bursty", "burst_used", 0.0, 3, 2, 0.0, 300.0)
        engine.gate.burst_notice(notice)
        await asyncio.sleep(0)  # its write is in flight; two more uses wait for the next
        engine.gate.burst_notice(notice)
        engine.gate.burst_notice(notice)
    async with tf.Engine.open(url) as engine:  # closed with those two still unwritten
        used = [r for r in await engine.audit_log("bursty") if r.action == "compute.burst_used"]
        assert len(used) == 3


async def test_a_provider_429_parks_the_step_and_lowers_that_tenants_rate() -> None:
    clock = FakeClock()
    async with tf.Engine(
        clock.watch(MemoryStore()), tf.EngineConfig(slots=16, seed=3), clock=clock
    ) as engine:
        await _a_provider_429_parks_the_step(engine, clock)


async def _a_provider_429_parks_the_step(engine: tf.Engine, clock: FakeClock) -> None:
    sim = SimulatedProvider(clock=clock, seed=0, latency_ms=(1.0, 2.0), out_tokens=(100, 100))
    engine.models.add(endpoint("small", "us-east-1", "small", price_out=1000), sim)
    wf = tf.Workflow("ask")

    @wf.step
    async def answer(ctx: tf.StepContext) -> str:
        return (await ctx.model("hello", max_tokens=10)).text

    engine.register(wf)
    limits = {"rate_limits": {"model:small": {"rate": "100/second", "burst": 5}}}
    await engine.tenants.create("throttled", tier="standard", **limits)
    await engine.tenants.create("other", tier="standard", **limits)
    sim.fail_next(1, throttle=True)
    run = await engine.submit("ask", tenant="throttled", input=None)
    assert isinstance(await clock.drive(run.result(), limit_s=10), str)
    kinds = [e.kind for e in await engine.timeline("throttled", run.id)]
    assert "step.deferred" in kinds and "step.retrying" not in kinds  # a wait, not a failure
    rows = await engine.store.execute_sql(  # type: ignore[attr-defined]
        "SELECT tenant_id, factor FROM rate_buckets WHERE resource = 'model:small'"
    )
    factors = dict(rows)
    assert factors["throttled"] < 1.0  # adaptive: this tenant's rate for the endpoint went down
    await clock.drive((await engine.submit("ask", tenant="other", input=None)).result(), limit_s=10)
    factors = dict(await engine.store.execute_sql("SELECT tenant_id, factor FROM rate_buckets"))  # type: ignore[attr-defined]
    assert factors["other"] == 1.0  # and no one else's


async def test_without_controls_tenants_share_one_fifo_and_no_caps() -> None:
    async with tf.Engine(MemoryStore(), tf.EngineConfig(slots=8, controls=False)) as engine:
        gate, started = asyncio.Event(), []
        engine.register(blocking_workflow(gate, started))
        await engine.tenants.create("capped", tier="free")  # max 3 active runs, 3 running steps
        runs = [await engine.submit("block", tenant="capped", input=None) for _ in range(6)]
        for _ in range(100):
            if len(started) == 6:
                break
            await asyncio.sleep(0.01)
        assert len(started) == 6  # the tenant's caps are not applied: the baseline behaviour
        gate.set()
        assert [(await r.wait()).status for r in runs] == [tf.RunStatus.COMPLETED] * 6
        assert engine.dispatcher.service_s.keys() == {"capped"}  # attribution stays per tenant


async def test_platform_limits_are_shared_and_controls_off_drops_tenant_limits() -> None:
    """A platform limit is one bucket for every tenant; without controls only it applies."""
    for controls in (True, False):
        clock = FakeClock()
        engine = tf.Engine(
            clock.watch(MemoryStore()),
            tf.EngineConfig(
                slots=4,
                controls=controls,
                platform_limits={"tool:bureau": {"rate": "2/hour", "burst": 2}},
            ),
            clock=clock,
        )
        async with engine:

            @engine.tools.register(name="bureau")
            async def bureau() -> int:
                return 1

            wf = tf.Workflow("pull")

            @wf.step
            async def pull(ctx: tf.StepContext) -> int:
                return int(await ctx.tool("bureau"))

            engine.register(wf)
            own = {"rate_limits": {"tool:bureau": {"rate": "1/hour", "burst": 1}}}
            await engine.tenants.create("a", tier="standard", **own)
            await engine.tenants.create("b", tier="standard", **own)
            tenants = ["a", "a", "b", "b"]
            runs = [await engine.submit("pull", tenant=t, input=None) for t in tenants]
            # Two runs complete at once; the other two wait for a token that comes back only
            # after half an hour, so ten minutes later they are still waiting.
            winners = (0, 2) if controls else (0, 1)
            await clock.drive(asyncio.gather(*(runs[i].wait() for i in winners)), limit_s=5)
            await clock.run_for(600, step=5)
            done = [(await r.status()) == tf.RunStatus.COMPLETED for r in runs]
            # with controls each tenant gets its own 1 call; without, the first two take the
            # platform's 2, whoever they belong to
            assert done == ([True, False, True, False] if controls else [True, True, False, False])
            for tenant, run, finished in zip(tenants, runs, done, strict=True):
                if not finished:
                    await engine.cancel(tenant, run.id)


def test_a_policy_refusal_is_not_an_outage() -> None:
    from tenantflow.domain.breaker import CircuitBreaker, record_outcome

    breaker = CircuitBreaker("bureau", failure_threshold=1)
    record_outcome(breaker, tf.RateLimitedError("over", retry_after_s=1.0), 0.0)
    record_outcome(breaker, tf.BudgetExceededError("no money"), 0.0)
    assert breaker.allow(1.0) and breaker.failures == 0
    record_outcome(breaker, ConnectionError("down"), 2.0)
    assert not breaker.allow(3.0)  # a real failure opens it


async def test_retention_purge_goes_in_batches_each_audited() -> None:
    async with _retention_engine() as (engine, clock):
        old = [await engine.submit("ok", tenant="short", input=None) for _ in range(5)]
        for handle in old:
            await handle.result()
        clock.advance(31 * 86400)
        fresh = await engine.submit("ok", tenant="short", input=None)
        await fresh.result()
        with pytest.raises(tf.ConfigurationError):
            await engine.purge_expired(batch=0)
        with pytest.raises(tf.ConfigurationError):
            await engine.purge_expired(share=0.0)
        purged = await engine.purge_expired(batch=2, share=1.0)
        assert purged["short"]["runs"] == 5
        assert purged["short"]["steps"] == 5
        assert [r.id for r in await engine.list_runs("short")] == [fresh.id]
        audit = [r for r in await engine.audit_log("short") if r.action == "retention.purged"]
        # Batches of 2, 2 and 1: each deletion audited in its own transaction.
        assert [r.detail["deleted"]["runs"] for r in audit] == [2, 2, 1]


async def test_retention_purge_shares_the_stores_time_by_its_transactions_own_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tenantflow.engine.tenants as tenants_module

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with _retention_engine() as (engine, clock):
        for handle in [await engine.submit("ok", tenant="short", input=None) for _ in range(5)]:
            await handle.result()
        clock.advance(31 * 86400)
        maintain = engine.tenants._background[engine.tenants.cached("short").store]  # type: ignore[union-attr]

        async def slow_to_start(op: Any) -> tuple[Any, float]:
            await asyncio.sleep(0.02)  # waiting for the store is not the store's time
            result, _ = await maintain(op)
            return result, 0.01  # what its transaction took

        engine.tenants._background = {key: slow_to_start for key in engine.tenants._background}
        monkeypatch.setattr(tenants_module, "asyncio", SimpleNamespace(sleep=sleep))
        purged = await engine.purge_expired(batch=2, share=0.25)
    assert purged["short"]["runs"] == 5
    # After each full batch, three times its own 0.01 s (a quarter of the store's time).
    assert slept == pytest.approx([0.03, 0.03])


async def _expired_and_timed(
    engine: tf.Engine,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    runs: int,
    per_run_s: float,
) -> list[int]:
    """``runs`` finished runs of ``short`` past retention; each purge transaction is then
    taken to last ``per_run_s`` a run it deleted, the purge's pauses are skipped, and the list
    returned gets the number of runs each transaction asked for."""
    import tenantflow.engine.tenants as tenants_module

    async def sleep(seconds: float) -> None:
        pass

    for handle in [await engine.submit("ok", tenant="short", input=None) for _ in range(runs)]:
        await handle.result()
    clock.advance(31 * 86400)
    maintain = engine.tenants._background[engine.tenants.cached("short").store]  # type: ignore[union-attr]
    limits: list[int] = []

    async def timed(op: Any) -> tuple[Any, float]:
        limits.append(op.limit)
        result, _ = await maintain(op)
        return result, per_run_s * result["runs"]  # the transaction's time, by its runs

    engine.tenants._background = {key: timed for key in engine.tenants._background}
    monkeypatch.setattr(tenants_module, "asyncio", SimpleNamespace(sleep=sleep))
    return limits


@pytest.mark.parametrize(
    ("per_run_s", "sizes"),
    [
        # 0.1 ms a run: 20 runs fit in the 2 ms target; the first batch is 10 (the last asks
        # for 20 and finds 10).
        (0.0001, [10] + [20] * 8),
        # 10 µs a run: the batches double, up to 100 at most.
        (0.00001, [10, 20, 40, 80, 100]),
        # 1 ms a run: never fewer than 10 a transaction (a commit's own cost is paid anyway);
        # the last finds none left.
        (0.001, [10] * 17),
        # No time at all: twice the last each time, up to 100.
        (0.0, [10, 20, 40, 80, 100]),
    ],
)
async def test_retention_purge_sizes_its_transactions_to_the_target_time(
    monkeypatch: pytest.MonkeyPatch, per_run_s: float, sizes: list[int]
) -> None:
    async with _retention_engine() as (engine, clock):
        limits = await _expired_and_timed(engine, clock, monkeypatch, 160, per_run_s)
        for bad in (0.0, -1.0, math.nan, math.inf):
            with pytest.raises(tf.ConfigurationError, match="target_s"):
                await engine.purge_expired(target_s=bad)
        assert limits == []  # refused before anything is deleted
        purged = await engine.purge_expired(target_s=0.002)
        assert purged["short"]["runs"] == 160
        assert limits == sizes
        assert await engine.list_runs("short") == []


async def test_while_a_tenant_borrows_slots_the_others_transitions_are_written_urgent() -> None:
    async with tf.Engine(MemoryStore(), tf.EngineConfig(slots=8)) as engine:
        pair = tf.Workflow("pair", input=int)

        @pair.step
        async def one(ctx: tf.StepContext, input: int) -> int:
            return input + 1

        @pair.step
        async def two(ctx: tf.StepContext, one: int) -> int:
            return one + 1

        engine.register(pair)
        echo = tf.Workflow("echo", input=str)

        @echo.step
        async def say(ctx: tf.StepContext, input: str) -> str:
            return input

        parent = tf.Workflow("parent", input=str)

        @parent.step
        async def ask(ctx: tf.StepContext, input: str) -> str:
            return (await ctx.delegate("echo", input))[1]

        engine.register(echo)
        engine.register(parent)
        await engine.tenants.create("quiet", tier="standard")
        writer = engine.gate.runtime_for_tenant("quiet").writer
        lanes: list[tuple[str, str, bool]] = []
        write = writer.write

        async def recording(op: Any, *, urgent: bool = False) -> Any:
            if type(op).__name__ in ("StartAttempt", "FinishAttempt"):
                lanes.append((op.tenant_id, type(op).__name__, urgent))
            elif isinstance(op, CreateRun):  # keeps the borrower's batches short meanwhile
                lanes.append((op.run.tenant_id, "CreateRun", urgent))
            return await write(op, urgent=urgent)

        writer.write = recording  # type: ignore[method-assign]
        burst, gate = await _borrowing(engine)
        assert engine.dispatcher.scheduler.borrowing("bursty")
        lanes.clear()
        assert await (await engine.submit("pair", tenant="quiet", input=1)).result() == 3
        quiet = [lane for lane in lanes if lane[0] == "quiet"]
        lanes.clear()
        assert await (await engine.submit("parent", tenant="quiet", input="hi")).result() == "hi"
        # the submission is urgent; its child run (no ingest gate) goes round-robin
        assert [(t, u) for t, kind, u in lanes if kind == "CreateRun"] == [
            ("quiet", True),
            ("quiet", False),
        ]
        gate.set()
        await burst.result()
    assert [kind for _, kind, _ in quiet] == ["CreateRun"] + ["StartAttempt", "FinishAttempt"] * 2
    assert all(urgent for _, _, urgent in quiet)
    bursty = [urgent for tenant, _, urgent in lanes if tenant == "bursty"]
    assert bursty and not any(bursty)


@pytest.mark.parametrize("kind", ["sqlite", "memory", "no-target"])
async def test_retention_purge_sizes_its_transactions_on_sqlite_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """SQLite, on a file or in memory (one writer thread: every write waits for the purge's
    transaction), has the purge start at 10 runs and size its transactions to about 2 ms; a
    store with no ``purge_target_s`` (PostgreSQL) has it delete ``batch`` runs each time."""
    store = SqliteStore(tmp_path / "purge.db") if kind == "sqlite" else MemoryStore()
    if kind == "no-target":  # as PostgreSQL's store has none, nor a wait of its own
        assert not hasattr(PostgresStore, "purge_target_s")
        assert not hasattr(PostgresStore, "background_wait_s")
        store.purge_target_s = None  # type: ignore[assignment]
    async with _retention_engine(store) as (engine, clock):
        limits = await _expired_and_timed(engine, clock, monkeypatch, 25, 0.0001)  # 20 in 2 ms
        purged = await engine.purge_expired(batch=50)
        assert purged["short"]["runs"] == 25
        assert limits == ([50] if kind == "no-target" else [10, 20])
        assert await engine.list_runs("short") == []


async def test_retention_purge_with_a_batch_under_ten_keeps_to_it() -> None:
    """``batch`` is the most a transaction deletes, also below the first sized batch (10)."""
    async with _retention_engine() as (engine, clock):
        for handle in [await engine.submit("ok", tenant="short", input=None) for _ in range(9)]:
            await handle.result()
        clock.advance(31 * 86400)
        purged = await engine.purge_expired(batch=4, share=1.0, target_s=10.0)  # room for all
        assert purged["short"]["runs"] == 9
        audit = [r for r in await engine.audit_log("short") if r.action == "retention.purged"]
        assert [r.detail["deleted"]["runs"] for r in audit] == [4, 4, 1]
