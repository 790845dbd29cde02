"""The gateway's spend guard (a federated cell's money-cap wallet): asked after a priced call's
budget reservation; a refusal is a ``platform`` budget refusal, handled by the policy's ladder;
what a call did not cost of its reservation is given back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import tenantflow as tf
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.routing import Endpoint
from tenantflow.errors import BudgetExceededError
from tenantflow.testing import FakeClock, MemoryStore


class Guard:
    """A wallet of ``allowance`` micros (what the gateway's protocol asks for)."""

    def __init__(self, allowance: int) -> None:
        self.allowance = allowance
        self.spent = 0
        self.refused: list[int] = []
        self.settled: list[tuple[int, int]] = []

    def reserve(self, micros: int) -> bool:
        if self.spent + micros > self.allowance:
            self.refused.append(micros)
            return False
        self.spent += micros
        return True

    def settle(self, reserved: int, actual: int) -> None:
        self.settled.append((reserved, actual))
        self.spent -= reserved - actual


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def engine(clock: FakeClock) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(
        MemoryStore(), tf.EngineConfig(slots=4, seed=3, auto_tenant="enterprise"), clock=clock
    ) as eng:
        yield eng


async def settle_status(
    engine: tf.Engine, clock: FakeClock, run_id: str, statuses: set[tf.RunStatus]
) -> tf.RunStatus:
    for _ in range(5_000):
        record = await engine.store.get_run("acme", run_id)
        if record.status in statuses:
            return record.status
        clock.advance(0.01)
        for _ in range(3):
            await asyncio.sleep(0)
    raise AssertionError(f"run {run_id} never reached {statuses}")


async def test_a_priced_tool_is_refused_once_the_guard_has_no_room(
    engine: tf.Engine, clock: FakeClock
) -> None:
    executed: list[int] = []

    @engine.tools.register(cost_usd=0.01)  # 10_000 micros a call
    async def bureau(i: int) -> int:
        executed.append(i)
        return i

    wf = tf.Workflow("priced", input=int)

    @wf.step()
    async def call(ctx: tf.StepContext, input: int) -> int:
        return int(await ctx.tool("bureau", i=input))

    engine.register(wf)
    guard = Guard(allowance=25_000)
    engine.gateway.spend_guard = guard
    done = {tf.RunStatus.COMPLETED, tf.RunStatus.PAUSED, tf.RunStatus.FAILED}
    statuses = []
    for i in range(3):
        handle = await engine.submit("priced", tenant="acme", input=i)
        statuses.append(await settle_status(engine, clock, handle.id, done))
    assert statuses == [tf.RunStatus.COMPLETED, tf.RunStatus.COMPLETED, tf.RunStatus.PAUSED]
    assert executed == [0, 1]  # the refused call never ran
    assert guard.spent == 20_000 and guard.refused == [10_000]
    assert guard.settled == [(10_000, 10_000), (10_000, 10_000)]
    # The refusal went through the budget ladder, naming the platform's cap, and the run's
    # own reservation was released (its ledger holds only what the two calls cost).
    usage = await engine.usage("acme")
    assert sum(r["value"] for r in usage if r["metric"] == "cost_micros") == 20_000
    assert sum(r["value"] for r in usage if r["metric"] == "degradations") == 1


async def test_a_model_call_gives_back_what_it_did_not_cost(
    engine: tf.Engine, clock: FakeClock
) -> None:
    engine.models.add(
        Endpoint(
            name="sim",
            provider="sim",
            model="sim",
            region="us-east-1",
            tier="large",
            price_in_per_1k_micros=1000,
            price_out_per_1k_micros=1000,
            max_context=100_000,
        ),
        SimulatedProvider(
            clock=clock,
            respond=lambda r: tf.ModelResponse(text="ok", tokens_in=5, tokens_out=5, model="sim"),
        ),
    )
    wf = tf.Workflow("ask", input=str)

    @wf.step()
    async def ask(ctx: tf.StepContext, input: str) -> str:
        return (await ctx.model(input, max_tokens=1000)).text

    engine.register(wf)
    guard = Guard(allowance=10**9)
    engine.gateway.spend_guard = guard
    handle = await engine.submit("ask", tenant="acme", input="hello")
    status = await settle_status(engine, clock, handle.id, {tf.RunStatus.COMPLETED})
    assert status == tf.RunStatus.COMPLETED
    [(reserved, actual)] = guard.settled
    assert actual == 10  # 10 tokens at 1000 micros per 1k
    assert reserved > actual and guard.spent == actual


class _Scope:
    """The few parts of a call scope ``Gateway._reserve`` uses (the store accepts the hold)."""

    tenant_id = "acme"
    budget_scope = "run:r1"

    def __init__(self) -> None:
        self.policy = tf.Policy.for_tier("enterprise")
        self.written: list[object] = []
        self.released: list[str] = []

    def now_s(self) -> float:
        return 0.0

    async def write(self, record: object) -> None:
        self.written.append(record)

    async def release_holds(self, key: str) -> None:
        self.released.append(key)


async def test_a_refusal_is_a_platform_budget_error_and_releases_the_hold(
    engine: tf.Engine,
) -> None:
    scope = _Scope()
    engine.gateway.spend_guard = Guard(allowance=5)
    with pytest.raises(BudgetExceededError) as caught:
        await engine.gateway._reserve(scope, "k1", 10, 0)  # type: ignore[arg-type]
    assert caught.value.fields["scope"] == "platform"
    assert caught.value.fields["needed"] == 10
    assert len(scope.written) == 1 and scope.released == ["k1"]  # the tenant's hold undone
    assert await engine.gateway._reserve(scope, "k2", 5, 0) is None  # type: ignore[arg-type,func-returns-value]
    assert scope.released == ["k1"]
