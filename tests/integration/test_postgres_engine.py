"""The engine on PostgreSQL: DAGs with retries, restarts, tenancy, readers beside executors.

Every test gets an empty migrated schema on the test server (``postgres_url`` in
``tests/conftest.py``).
Unlike SQLite, the PostgreSQL store is not exclusive: after a restart an attempt left RUNNING is
taken over when its lease expires (never assumed orphaned), so these engines use short leases.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.adapters.sqlite_schema import MIGRATIONS
from tenantflow.domain.routing import Endpoint

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

pytestmark = pytest.mark.timeout(60)

LEASE = timedelta(seconds=1)
FAST = tf.Retry(max_attempts=3, initial=timedelta(milliseconds=5), jitter=0.0)


def pipeline(executed: list[str], gate: asyncio.Event) -> tf.Workflow:
    """fetch (fails twice, then succeeds) → split → score each item (fan-out) → total, which
    waits for ``gate``. ``executed`` records every attempt as ``step:attempt``."""
    wf = tf.Workflow("pipeline", input=int)

    @wf.step(retry=FAST)
    async def fetch(ctx: tf.StepContext, input: int) -> int:
        executed.append(f"fetch:{ctx.attempt}")
        if ctx.attempt < 3:
            raise ConnectionError(f"upstream down (attempt {ctx.attempt})")
        return input

    @wf.step
    async def split(ctx: tf.StepContext, fetch: int) -> list[int]:
        return list(range(fetch))

    @wf.step(fan_out="split")
    async def score(ctx: tf.StepContext, split: int) -> int:
        return split * split

    @wf.step
    async def total(ctx: tf.StepContext, score: list[int]) -> int:
        executed.append(f"total:{ctx.attempt}")
        await gate.wait()
        return sum(score)

    return wf


def opened(gate: asyncio.Event | None = None) -> asyncio.Event:
    """A gate, open unless given one."""
    if gate is None:
        gate = asyncio.Event()
        gate.set()
    return gate


@pytest.mark.postgres
async def test_a_dag_with_retries_and_fan_out_runs_to_completion(postgres_url: str) -> None:
    executed: list[str] = []
    async with tf.Engine.open(postgres_url, auto_tenant="enterprise", lease=LEASE) as engine:
        engine.register(pipeline(executed, opened()))
        runs = [await engine.submit("pipeline", tenant=t, input=4) for t in ("a", "b")]
        assert [await r.result(timedelta(seconds=20)) for r in runs] == [14, 14]
        fetches = sorted(e for e in executed if e.startswith("fetch"))
        assert fetches == ["fetch:1", "fetch:1", "fetch:2", "fetch:2", "fetch:3", "fetch:3"]
        run = runs[0]
        kinds = [e.kind for e in await engine.timeline("a", run.id)]
        assert kinds.count("step.retrying") == 2
        assert kinds.count("step.succeeded") == 3 + 4  # fetch, split, total, 4 scores
        versions = [v.version for v in await engine.versions("a", run.id)]
        assert versions == list(range(len(versions)))  # contiguous, from the input
        assert (await engine.state("a", run.id)).state["total"] == 14
        with pytest.raises(tf.NotFoundError):  # another tenant's run is invisible
            await engine.timeline("b", run.id)


@pytest.mark.postgres
async def test_a_restart_takes_over_attempts_once_their_leases_expire(postgres_url: str) -> None:
    executed: list[str] = []
    gate = asyncio.Event()
    engine = tf.Engine.open(postgres_url, auto_tenant="enterprise", lease=LEASE)
    await engine.start()
    engine.register(pipeline(executed, gate))
    runs = [await engine.submit("pipeline", tenant="t", input=3) for _ in range(3)]
    for _ in range(500):
        if executed.count("total:1") == 3:
            break
        await asyncio.sleep(0.01)
    await engine.close()  # stops mid-step: "total" never committed, its attempts stay RUNNING
    assert executed.count("total:1") == 3

    executed.clear()
    gate.set()
    async with tf.Engine.open(postgres_url, auto_tenant="enterprise", lease=LEASE) as again:
        again.register(pipeline(executed, gate))
        results = [await again.run("t", r.id).result(timedelta(seconds=20)) for r in runs]
        assert results == [5, 5, 5]
        assert executed == ["total:2"] * 3  # nothing that had completed ran again
        for r in runs:
            events = await again.timeline("t", r.id)
            kinds = [e.kind for e in events]
            assert kinds.count("step.succeeded") == 3 + 3  # each completion recorded once
            assert "step.recovered" not in kinds  # taken over by lease expiry, not as an orphan
            starts = [e.attempt for e in events if e.kind == "step.started" and e.step == "total"]
            assert starts == [1, 2]
            versions = [v.version for v in await again.versions("t", r.id)]
            assert versions == list(range(len(versions)))


def small_model() -> tuple[Endpoint, SimulatedProvider]:
    endpoint = Endpoint(
        name="small",
        provider="sim",
        model="small",
        region="us-east-1",
        tier="small",
        price_in_per_1k_micros=0,
        price_out_per_1k_micros=1_000_000,
        max_context=100_000,
    )
    sim = SimulatedProvider(
        clock=SystemClock(), seed=0, latency_ms=(1.0, 2.0), out_tokens=(100, 100)
    )
    return endpoint, sim


@pytest.mark.postgres
async def test_budgets_reviews_and_audit_stay_inside_each_tenant(postgres_url: str) -> None:
    async with tf.Engine.open(postgres_url, slots=16, seed=3, lease=LEASE) as engine:
        endpoint, sim = small_model()
        engine.models.add(endpoint, sim)  # $0.10 a call
        race, go = tf.Workflow("race"), asyncio.Event()

        @race.step(optional=True)
        async def ask(ctx: tf.StepContext) -> str:
            await go.wait()  # every step in flight at once: their reservations race
            return (await ctx.model("score this", max_tokens=100)).text

        loan = tf.Workflow("loan", input=int)

        @loan.review
        async def review(ctx: tf.StepContext, input: int) -> dict[str, Any]:
            return {"amount": input}

        @loan.step
        async def decide(ctx: tf.StepContext, review: tf.ReviewDecision) -> str:
            return "approved" if review.approved else "declined"

        engine.register(race)
        engine.register(loan)
        await engine.tenants.create(
            "a",
            tier="standard",
            max_running_steps=20,
            degradation=["skip_optional"],
            budget={"run_micros": None, "period_micros": 300_000},
        )
        await engine.tenants.create("b", tier="standard")
        runs = [await engine.submit("race", tenant="a", input=None) for _ in range(12)]
        go.set()
        records = [await r.wait() for r in runs]
        assert {r.status for r in records} == {tf.RunStatus.COMPLETED}
        assert sim.calls == 3
        ledgers = await engine.budget("a")
        [money] = [r for r in ledgers if (r["scope"], r["unit"]) == ("period", "micros")]
        assert (money["spent"], money["reserved"]) == (300_000, 0)  # no overspend, no leak
        assert await engine.budget("b") == []

        run = await engine.submit("loan", tenant="b", input=50_000)  # a's budget is spent
        for _ in range(200):
            if await engine.reviews.list("b"):
                break
            await asyncio.sleep(0.01)
        [task] = await engine.reviews.list("b")
        assert await engine.reviews.list("a") == []
        with pytest.raises(tf.NotFoundError):
            await engine.reviews.claim("a", task.id, reviewer="mallory")
        await engine.reviews.claim("b", task.id, reviewer="alice")
        with pytest.raises(tf.ConflictError):
            await engine.reviews.claim("b", task.id, reviewer="bob")
        await engine.reviews.decide("b", task.id, reviewer="alice", approve=True)
        assert await run.result(timedelta(seconds=10)) == "approved"

        assert [r.action for r in await engine.audit_log("a")].count("budget.degraded") == 9
        actions = {r.action for r in await engine.audit_log("b")}
        assert {"tenant.created", "review.claimed", "review.approved"} <= actions
        assert (await engine.audit_verify("a")).ok and (await engine.audit_verify("b")).ok
        proof = await engine.tenants.delete("a")
        assert proof["deleted"]["runs"] == 12 and set(proof["left"].values()) == {0}
        assert [t.id for t in engine.tenants.list()] == ["b"]


@pytest.mark.postgres
async def test_readers_and_a_second_executor_open_beside_a_running_engine(
    postgres_url: str,
) -> None:
    async with tf.Engine.open(postgres_url, auto_tenant="enterprise", lease=LEASE) as engine:
        engine.register(pipeline([], opened()))
        run = await engine.submit("pipeline", tenant="t", input=2)
        assert await run.result(timedelta(seconds=10)) == 1
        async with tf.Engine.open(postgres_url, execute=False) as reader:
            assert (await reader.get_run("t", run.id)).status == tf.RunStatus.COMPLETED
            with pytest.raises(tf.ConfigurationError, match="not executing"):
                await reader.submit("pipeline", tenant="t", input=2)
        # No file lock: a second executing engine (another worker) may open the same database.
        async with tf.Engine.open(postgres_url, auto_tenant="enterprise", lease=LEASE) as other:
            other.register(pipeline([], opened()))
            again = await other.submit("pipeline", tenant="t", input=3)
            assert await again.result(timedelta(seconds=10)) == 5


@pytest.mark.postgres
def test_db_upgrade_creates_the_schema_from_the_command_line(postgres_empty_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    command = [
        sys.executable,
        "-m",
        "tenantflow.cli.main",
        "db",
        "upgrade",
        "--db",
        postgres_empty_url,
    ]
    for _ in range(2):  # the second run finds nothing to do
        proc = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=30, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"schema version {len(MIGRATIONS)}"


def test_postgres_urls_need_the_postgres_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    for module in ("tenantflow.adapters.postgres", "tenantflow.adapters.postgres_schema"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(tf.ConfigurationError, match=r"pip install 'tenantflow\[postgres\]'"):
        tf.Engine.open("postgresql://localhost/db")
