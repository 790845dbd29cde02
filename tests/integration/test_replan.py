"""Replanning: a workflow revises the rest of its plan when a step fails for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.replan import Failure, Revision

ONCE = tf.Retry(max_attempts=1)


class Quote(BaseModel):
    price: float = Field(ge=0)
    source: str


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(
        SqliteStore(tmp_path / "replan.db"),
        tf.EngineConfig(slots=4, seed=2, auto_tenant="enterprise"),
    ) as eng:
        yield eng


def quoting(calls: list[str], *, max_revisions: int = 3) -> tf.Workflow:
    """fetch (fails: a contract violation) -> enrich -> decide; standbys: fetch_cached, audit."""
    wf = tf.Workflow("quote", input=str, max_revisions=max_revisions)

    @wf.step(retry=ONCE)
    async def fetch(ctx: tf.StepContext, input: str) -> Quote:
        calls.append("fetch")
        return {"price": -1.0, "source": "live"}  # type: ignore[return-value]  # breaks ge=0

    @wf.step(standby=True, retry=ONCE)
    async def fetch_cached(ctx: tf.StepContext, input: str) -> Quote:
        calls.append("fetch_cached")
        return Quote(price=42.0, source="cache")

    @wf.step(standby=True)
    async def audit(ctx: tf.StepContext, input: str) -> str:
        calls.append("audit")
        return f"audited {input}"

    @wf.step
    async def enrich(ctx: tf.StepContext, fetch: Quote) -> float:
        calls.append("enrich")
        return fetch.price * 1.1

    @wf.step(after=["audit"])
    async def decide(ctx: tf.StepContext, fetch: Quote, enrich: float = 0.0) -> str:
        calls.append("decide")
        return f"{fetch.source}:{fetch.price}:{enrich:.1f}"

    return wf


async def test_a_revision_replaces_skips_and_inserts_and_is_a_plan_version(
    engine: tf.Engine,
) -> None:
    calls: list[str] = []
    wf = quoting(calls)
    failures: list[Failure] = []

    @wf.replan
    def revise(failure: Failure) -> Revision | None:
        failures.append(failure)
        return Revision(
            reason="live prices are down: use the cache, skip enrichment, audit the decision",
            replace={"fetch": "fetch_cached"},
            skip=("enrich",),
            insert=("audit",),
        )

    engine.register(wf)
    handle = await engine.submit("quote", tenant="acme", input="AAPL")
    assert await handle.result(timeout=timedelta(seconds=20)) == "cache:42.0:0.0"
    assert calls == ["fetch", "fetch_cached", "audit", "decide"] or calls == [
        "fetch",
        "audit",
        "fetch_cached",
        "decide",
    ]
    [failure] = failures
    assert failure.step == "fetch" and failure.error_type == "ContractError"
    assert failure.revision == 0 and failure.statuses["enrich"] == "pending"
    # The revision is the run's plan version 2 in the state history, with its reason.
    versions = await engine.versions("acme", handle.id)
    plans = [v for v in versions if "plan" in v.state and v.step == "fetch"]
    assert plans and plans[0].state["plan"]["version"] == 2
    assert plans[0].state["plan"]["reason"].startswith("live prices are down")
    assert plans[0].state["plan"]["replaced"] == {"fetch": "fetch_cached"}
    final = versions[-1].state
    assert final["plan"]["version"] == 2 and final["fetch"]["source"] == "cache"
    timeline = await engine.timeline("acme", handle.id)
    kinds = [(e.kind, e.step) for e in timeline]
    assert ("plan.revised", "fetch") in kinds and ("step.inserted", "audit") in kinds
    skipped = {e.step: e.data["reason"] for e in timeline if e.kind == "step.skipped"}
    assert skipped["enrich"] == "plan 2: skipped"
    audit = [r for r in await engine.audit_log("acme") if r.action == "plan.revised"]
    assert [r.detail["version"] for r in audit] == [2]
    assert (await engine.audit_verify("acme")).ok
    record = await engine.get_run("acme", handle.id)
    assert record.meta["plan"]["version"] == 2


async def test_without_a_revision_the_standby_steps_are_skipped(engine: tf.Engine) -> None:
    calls: list[str] = []
    wf = tf.Workflow("plain", input=str)

    @wf.step
    async def work(ctx: tf.StepContext, input: str) -> str:
        calls.append("work")
        return input.upper()

    @wf.step(standby=True)
    async def spare(ctx: tf.StepContext, input: str) -> str:
        calls.append("spare")
        return "never"

    engine.register(wf)
    handle = await engine.submit("plain", tenant="acme", input="ok")
    assert await handle.result(timeout=timedelta(seconds=10)) == "OK"  # the standby is no sink
    assert calls == ["work"]
    timeline = await engine.timeline("acme", handle.id)
    assert any(e.kind == "step.skipped" and e.step == "spare" for e in timeline)


async def test_refused_revisions_are_recorded_and_the_step_fails(engine: tf.Engine) -> None:
    calls: list[str] = []
    wf = quoting(calls)

    @wf.replan
    def revise(failure: Failure) -> Revision | None:
        return Revision(reason="wrong", replace={"fetch": "enrich"})  # not a standby step

    engine.register(wf)
    handle = await engine.submit("quote", tenant="acme", input="X")
    record = await handle.wait(timeout=timedelta(seconds=10))
    assert record.status == tf.RunStatus.FAILED
    timeline = await engine.timeline("acme", handle.id)
    [refused] = [e for e in timeline if e.kind == "plan.refused"]
    assert refused.data["reason"] == "step 'enrich' is not a standby step"
    assert not any(e.kind == "plan.revised" for e in timeline)


async def test_revisions_are_bounded_by_max_revisions(engine: tf.Engine) -> None:
    calls: list[str] = []
    wf = tf.Workflow("flaky", input=str, max_revisions=2)

    @wf.step(retry=ONCE)
    async def a(ctx: tf.StepContext, input: str) -> str:
        calls.append("a")
        raise RuntimeError("down")

    @wf.step(standby=True, retry=ONCE)
    async def b(ctx: tf.StepContext, input: str) -> str:
        calls.append("b")
        raise RuntimeError("also down")

    @wf.replan
    def revise(failure: Failure) -> Revision | None:
        return Revision(
            reason=f"try the spare (revision {failure.revision + 1})", replace={"a": "b"}
        )

    engine.register(wf)
    handle = await engine.submit("flaky", tenant="acme", input="x")
    record = await handle.wait(timeout=timedelta(seconds=10))
    assert record.status == tf.RunStatus.FAILED
    assert calls == ["a", "b", "b"]  # two revisions, then the step fails for good
    timeline = await engine.timeline("acme", handle.id)
    revised = [e.data["version"] for e in timeline if e.kind == "plan.revised"]
    assert revised == [2, 3]
    # Each plan version is in the state history, with its reason.
    versions = await engine.versions("acme", handle.id)
    plans = [(v.state["plan"]["version"], v.state["plan"]["reason"]) for v in versions[1:]]
    assert plans == [(2, "try the spare (revision 1)"), (3, "try the spare (revision 2)")]
    [refused] = [e for e in timeline if e.kind == "plan.refused"]
    assert "max_revisions=2" in refused.data["reason"]


async def test_a_replacement_survives_a_restart(tmp_path: Path) -> None:
    """The plan is in the run's meta: a restarted engine runs the standby, not the original."""
    calls: list[str] = []
    block = {"spare": True}
    db = tmp_path / "restart.db"
    wf = tf.Workflow("gated", input=str)

    @wf.step(retry=ONCE)
    async def primary(ctx: tf.StepContext, input: str) -> str:
        calls.append("primary")
        raise RuntimeError("down")

    @wf.step(standby=True)
    async def spare(ctx: tf.StepContext, input: str) -> str:
        calls.append("spare")
        if block["spare"]:  # the first engine stops while the spare is running
            await asyncio.Event().wait()
        return f"spare:{input}"

    @wf.replan
    def revise(failure: Failure) -> Revision | None:
        return Revision(reason="use the spare", replace={"primary": "spare"})

    def open_engine() -> tf.Engine:
        engine = tf.Engine(
            SqliteStore(db), tf.EngineConfig(auto_tenant="enterprise", lease=timedelta(seconds=1))
        )
        engine.register(wf)
        return engine

    async with open_engine() as first:
        handle = await first.submit("gated", tenant="acme", input="x")
        for _ in range(200):
            if "spare" in calls:
                break
            await asyncio.sleep(0.01)
    assert calls == ["primary", "spare"]
    block["spare"] = False
    async with open_engine() as second:
        record = await second.wait("acme", handle.id, timeout=timedelta(seconds=10))
    assert record.status == tf.RunStatus.COMPLETED
    assert calls == ["primary", "spare", "spare"]
