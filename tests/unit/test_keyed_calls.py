"""Calls recorded by identity (``ctx.call_identity``): a re-executed attempt that makes its calls
in parallel, or in another order, replays each one by what it is, never by position."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import TypeVar

import pytest

import tenantflow as tf
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.routing import Endpoint
from tenantflow.testing import FakeClock, MemoryStore

T = TypeVar("T")
RETRY = tf.Retry(max_attempts=3, initial=timedelta(milliseconds=10), jitter=0.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def engine(clock: FakeClock) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(
        MemoryStore(), tf.EngineConfig(slots=4, seed=3, auto_tenant="enterprise"), clock=clock
    ) as eng:
        yield eng


async def drive(clock: FakeClock, aw: Awaitable[T]) -> T:
    task = asyncio.ensure_future(aw)
    for _ in range(20_000):
        if task.done():
            return task.result()
        clock.advance(0.01)
        for _ in range(3):
            await asyncio.sleep(0)
    task.cancel()
    raise AssertionError("did not finish")


def model_endpoint() -> Endpoint:
    return Endpoint(
        name="sim",
        provider="sim",
        model="sim",
        region="us-east-1",
        tier="large",
        price_in_per_1k_micros=1000,
        price_out_per_1k_micros=1000,
        max_context=100_000,
    )


async def test_reordered_parallel_calls_replay_by_identity(
    engine: tf.Engine, clock: FakeClock
) -> None:
    executed: Counter[str] = Counter()
    prompts: list[str] = []

    @engine.tools.register(cost_usd=0.01)
    async def fetch(item: str) -> str:
        executed[item] += 1
        return f"value of {item}"

    def respond(request: tf.ModelRequest) -> tf.ModelResponse:
        prompts.append(str(request.messages[-1]["content"]))
        return tf.ModelResponse(
            text=f"summary of {request.messages[-1]['content']}",
            tokens_in=10,
            tokens_out=10,
            model=request.model,
        )

    engine.models.add(model_endpoint(), SimulatedProvider(clock=clock, respond=respond))
    attempts: list[int] = []
    wf = tf.Workflow("keyed", input=str)

    @wf.step(retry=RETRY)
    async def gather(ctx: tf.StepContext, input: str) -> list[str]:
        attempts.append(ctx.attempt)
        ids = ["a", "b", "c"] if ctx.attempt == 1 else ["c", "a", "b"]  # another order

        async def one(call_id: str) -> str:
            async with ctx.call_identity(f"tool:{call_id}"):
                return str(await ctx.tool("fetch", item=call_id))

        values = await asyncio.gather(*(one(i) for i in ids))
        by_id = dict(zip(ids, values, strict=True))
        summaries = []
        for prompt in sorted(by_id.values(), reverse=ctx.attempt > 1):
            async with ctx.call_identity(f"model:{prompt}"):
                summaries.append((await ctx.model(prompt)).text)
        if ctx.attempt == 1:
            raise RuntimeError("crash after every call was recorded")
        return [by_id[i] for i in ("a", "b", "c")] + sorted(summaries)

    engine.register(wf)
    handle = await engine.submit("keyed", tenant="acme", input="x")
    record = await drive(clock, handle.wait())
    assert record.status == tf.RunStatus.COMPLETED
    assert attempts == [1, 2]
    assert executed == {"a": 1, "b": 1, "c": 1}  # no tool ran twice
    assert sorted(prompts) == sorted(f"value of {i}" for i in "abc")  # no model call twice
    # Each call got its own result back, not the one recorded at its position.
    assert json.loads(record.result_json or b"") == [f"value of {i}" for i in "abc"] + [
        f"summary of value of {i}" for i in "abc"
    ]
    usage = await engine.usage("acme")
    tool_calls = sum(r["value"] for r in usage if r["metric"] == "tool_calls")
    model_calls = sum(r["value"] for r in usage if r["metric"] == "model_calls")
    assert (tool_calls, model_calls) == (3, 3)


async def test_same_identity_twice_is_two_calls(engine: tf.Engine, clock: FakeClock) -> None:
    executed: list[str] = []

    @engine.tools.register
    async def ping(n: int) -> int:
        executed.append(f"ping{n}")
        return n * 10

    wf = tf.Workflow("twice", input=str)

    @wf.step(retry=RETRY)
    async def twice(ctx: tf.StepContext, input: str) -> list[int]:
        out = []
        for n in (1, 2):
            async with ctx.call_identity("same") as index:
                assert index < 0
                out.append(int(await ctx.tool("ping", n=n)))
        if ctx.attempt == 1:
            raise RuntimeError("again")
        return out

    engine.register(wf)
    handle = await engine.submit("twice", tenant="acme", input="x")
    record = await drive(clock, handle.wait())
    assert record.status == tf.RunStatus.COMPLETED
    assert executed == ["ping1", "ping2"]
    assert json.loads(record.result_json or b"") == [10, 20]
