"""Hostile numbers through the library, on SQLite and PostgreSQL alike (issue 23): policy
integers at and past the store's 64-bit columns, non-finite run inputs, integers past 64 bits in
inputs stored exactly, and the budget ladder applied to priced tool calls."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.limits import INT64_MAX
from tenantflow.domain.routing import Endpoint
from tenantflow.observability.events import Observer, StepFinished

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tf.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hostile.db'}?synchronous=normal"
    else:
        pytest.importorskip("psycopg", reason="the postgres extra is not installed")
        url = request.getfixturevalue("postgres_url")
    async with tf.Engine.open(url, seed=1) as eng:
        yield eng


class _StepDone(Observer):
    """Set once a step attempt has given its slot back (after its outcome is recorded)."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    def on_step_finished(self, event: StepFinished) -> None:
        self.done.set()


async def _after_first_step(engine: tf.Engine, run: tf.RunHandle, seen: _StepDone) -> tf.RunStatus:
    await asyncio.wait_for(seen.done.wait(), 20)
    return await run.status()


def _priced(engine: tf.Engine, cost_usd: float) -> tf.Workflow:
    """One step calling a tool priced ``cost_usd``; ``input`` is echoed back."""

    @engine.tools.register(cost_usd=cost_usd)
    async def bureau(query: str) -> str:
        return f"report on {query}"

    wf = tf.Workflow("priced", input=dict[str, Any])

    @wf.step
    async def check(ctx: tf.StepContext, input: dict[str, Any]) -> dict[str, Any]:
        return {"report": await ctx.tool("bureau", query="ada"), "input": input}

    engine.register(wf)
    return wf


async def test_policy_integers_past_64_bits_are_refused_and_the_largest_work(
    engine: tf.Engine,
) -> None:
    for budget in ({"period_micros": 2**80}, {"run_tokens": 2**64}, {"run_micros": 2**63}):
        with pytest.raises(tf.ConfigurationError) as err:
            await engine.tenants.create("big", tier="standard", budget=budget)
        field = f"budget.{next(iter(budget))}"
        assert err.value.fields["field"] == field
        assert err.value.fields["maximum"] == INT64_MAX and f"0..{INT64_MAX}" in err.value.message
    for bad in ({"max_running_steps": math.inf}, {"weight": math.nan}, {"burst_slots": 2**64}):
        with pytest.raises(tf.ConfigurationError):
            await engine.tenants.create("big", tier="standard", **bad)
    assert engine.tenants.list() == []  # nothing half-written
    # At the very top of the range, a priced run's ledger writes still fit the store.
    _priced(engine, 0.01)
    await engine.tenants.create(
        "big",
        tier="standard",
        budget={"run_micros": INT64_MAX, "period_micros": INT64_MAX, "run_tokens": INT64_MAX},
    )
    run = await engine.submit("priced", tenant="big", input={"n": 1})
    assert (await run.result(timedelta(seconds=20)))["report"] == "report on ada"
    money = [r for r in await engine.budget("big") if r["unit"] == "micros"]
    assert {r["limit"] for r in money} == {INT64_MAX} and all(r["spent"] == 10_000 for r in money)


async def test_non_finite_inputs_are_refused_and_big_integers_kept_exactly(
    engine: tf.Engine,
) -> None:
    _priced(engine, 0.0)
    await engine.tenants.create("acme", tier="standard")
    for value, path in (
        ({"amount": math.inf}, "amount"),
        ({"deep": {"list": [1, -math.inf]}}, "deep.list[1]"),
        ({"x": [{"y": math.nan}]}, "x[0].y"),
    ):
        with pytest.raises(tf.ContractError) as err:
            await engine.submit("priced", tenant="acme", input=value)
        assert err.value.fields["field"] == path and "finite" in err.value.message
    assert await engine.list_runs("acme") == []  # nothing stored
    big = {"big": 2**80, "neg": -(2**70), "list": [2**64, 0.5]}
    run = await engine.submit("priced", tenant="acme", input=big)
    assert (await run.result(timedelta(seconds=20)))["input"] == big
    record = await engine.get_run("acme", run.id)
    assert record.input_json == (
        b'{"big":1208925819614629174706176,"neg":-1180591620717411303424,'
        b'"list":[18446744073709551616,0.5]}'
    )


async def test_a_priced_tool_call_that_does_not_fit_pauses_a_pause_ladder_tenant(
    engine: tf.Engine,
) -> None:
    _priced(engine, 0.5)  # 500_000 µ$ a call
    await engine.tenants.create(
        "broke", tier="standard", budget={"run_micros": 1}, degradation=["pause"]
    )
    seen = _StepDone()
    engine.observers.append(seen)
    run = await engine.submit("priced", tenant="broke", input={})
    assert (
        await _after_first_step(engine, run, seen) == tf.RunStatus.PAUSED
    )  # before: failed with BudgetExceededError
    degraded = [e for e in await engine.timeline("broke", run.id) if e.kind == "budget.degraded"]
    assert degraded[0].data["action"] == "pause"
    await engine.tenants.update("broke", budget={"run_micros": 1_000_000})
    assert (await run.result(timedelta(seconds=20)))["report"] == "report on ada"


@pytest.mark.parametrize(
    ("ladder", "optional", "outcome"),
    [
        (["skip_optional", "pause"], True, "skipped"),
        (["cheaper_model", "escalate_to_human"], False, "paused"),  # neither applies to a tool
    ],
)
async def test_the_tool_ladder_skips_optional_steps_and_pauses_when_no_rung_applies(
    engine: tf.Engine, ladder: list[str], optional: bool, outcome: str
) -> None:
    @engine.tools.register(cost_usd=0.5)
    async def bureau(query: str) -> str:
        return query

    wf = tf.Workflow("ladder")

    @wf.step(optional=optional)
    async def extra(ctx: tf.StepContext) -> str:
        return str(await ctx.tool("bureau", query="q"))

    @wf.step
    async def last(ctx: tf.StepContext, extra: str | None = None) -> str:
        return "done"

    engine.register(wf)
    await engine.tenants.create("t", tier="standard", budget={"run_micros": 1}, degradation=ladder)
    seen = _StepDone()
    engine.observers.append(seen)
    run = await engine.submit("ladder", tenant="t", input=None)
    if outcome == "skipped":
        assert await run.result(timedelta(seconds=20)) == "done"
        steps = {s.key: s.status for s in await engine.steps("t", run.id)}
        assert steps["extra"] == tf.StepStatus.SKIPPED
        return
    assert await _after_first_step(engine, run, seen) == tf.RunStatus.PAUSED
    assert await engine.reviews.list("t") == []  # no escalation for a tool


async def test_an_optional_agent_whose_priced_tool_call_does_not_fit_ends_with_budget(
    engine: tf.Engine,
) -> None:
    def ask_for_the_tool(request: tf.ModelRequest) -> tf.ModelResponse:
        call = tf.ToolCall("call-0", "bureau", {"query": "ada"})
        return tf.ModelResponse(
            text="look it up", tokens_in=1, tokens_out=1, model=request.model, tool_calls=(call,)
        )

    free = Endpoint(
        name="sim-free",
        provider="sim",
        model="sim-free",
        region="us-east-1",
        tier="small",
        price_in_per_1k_micros=0,
        price_out_per_1k_micros=0,
        max_context=100_000,
    )
    clock = SystemClock()
    engine.models.add(
        free, SimulatedProvider(clock=clock, latency_ms=(1, 2), respond=ask_for_the_tool)
    )

    @engine.tools.register(cost_usd=0.5)
    async def bureau(query: str) -> str:
        return query

    wf = tf.Workflow("agent", input=str)

    @wf.agent(tf.Agent(tools=("bureau",), max_iterations=3), optional=True)
    async def research(ctx: tf.StepContext, input: str) -> str:
        return input

    engine.register(wf)
    await engine.tenants.create(
        "t", tier="standard", budget={"run_micros": 1}, degradation=["skip_optional", "pause"]
    )
    run = await engine.submit("agent", tenant="t", input="x")
    result = await run.result(timedelta(seconds=20))
    assert isinstance(result, tf.AgentResult) and result.status == "budget", result
