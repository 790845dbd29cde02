"""A run's result: answered from what the engine holds when it drove the run to the end, and
the same value as the stored result decodes to; the driver applies every kind of effect."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

import tenantflow as tf
from tenantflow.domain.progress import Effect
from tenantflow.engine.execution.driver import _APPLY
from tenantflow.testing import FakeClock, MemoryStore


class Item(BaseModel):
    n: int


class CountingStore(MemoryStore):
    """A memory store that counts the runs read back."""

    def __init__(self) -> None:
        super().__init__()
        self.run_reads = 0

    async def get_run(self, tenant_id: str, run_id: str) -> Any:
        self.run_reads += 1
        return await super().get_run(tenant_id, run_id)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
async def engine(clock: FakeClock, store: CountingStore) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(
        clock.watch(store), tf.EngineConfig(slots=4, seed=3, auto_tenant="enterprise"), clock=clock
    ) as eng:
        yield eng


def chain(gate: asyncio.Event | None = None) -> tf.Workflow:
    wf = tf.Workflow("chain", input=Item)

    @wf.step
    async def one(ctx: tf.StepContext, input: Item) -> Item:
        if gate is not None:
            await gate.wait()
        return Item(n=input.n + 1)

    @wf.step
    async def two(ctx: tf.StepContext, one: Item) -> Item:
        return Item(n=one.n * 10)

    return wf


async def test_a_result_the_engine_holds_costs_no_store_read(
    engine: tf.Engine, store: CountingStore, clock: FakeClock
) -> None:
    gate = asyncio.Event()
    engine.register(chain(gate))
    handles = [await engine.submit("chain", tenant="acme", input={"n": i}) for i in range(5)]
    store.run_reads = 0
    waiting = asyncio.gather(*(h.result() for h in handles))
    await asyncio.sleep(0)  # every result() is waiting before a step may finish
    gate.set()
    results = await clock.drive(waiting, step_s=0.01, limit_s=30)
    assert [r.n for r in results] == [(i + 1) * 10 for i in range(5)]
    assert store.run_reads == 0
    # the same value the stored record decodes to
    for handle, result in zip(handles, results, strict=True):
        record = await engine.get_run("acme", handle.id)
        assert engine.decode_result(record) == result


async def test_a_finished_run_is_read_from_the_store_once(
    engine: tf.Engine, store: CountingStore, clock: FakeClock
) -> None:
    engine.register(chain())
    handle = await engine.submit("chain", tenant="acme", input={"n": 1})
    await clock.drive(handle.wait(), step_s=0.01, limit_s=30)
    store.run_reads = 0
    assert (await engine.run("acme", handle.id).result()).n == 20
    assert store.run_reads == 1


async def test_a_result_whose_json_changes_its_type_is_the_decoded_one(
    engine: tf.Engine, clock: FakeClock
) -> None:
    wf = tf.Workflow("pairs", input=Item)

    @wf.step
    async def pair(ctx: tf.StepContext, input: Item) -> Any:
        return (input.n, input.n)  # a tuple: stored as a JSON array

    engine.register(wf)
    handle = await engine.submit("pairs", tenant="acme", input={"n": 2})
    held = await clock.drive(handle.result(), step_s=0.01, limit_s=30)
    stored = engine.decode_result(await engine.get_run("acme", handle.id))
    assert held == stored == [2, 2]


async def test_a_failed_run_raises_with_its_error(engine: tf.Engine, clock: FakeClock) -> None:
    wf = tf.Workflow("boom", input=Item)

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def explode(ctx: tf.StepContext, input: Item) -> Item:
        raise ValueError("no luck")

    engine.register(wf)
    handle = await engine.submit("boom", tenant="acme", input={"n": 1})
    with pytest.raises(tf.RunFailedError, match="no luck") as info:
        await clock.drive(handle.result(), step_s=0.01, limit_s=30)
    assert info.value.fields["status"] == "failed"


async def test_several_sinks_answer_the_stored_object(engine: tf.Engine, clock: FakeClock) -> None:
    wf = tf.Workflow("fork", input=Item)

    @wf.step
    async def left(ctx: tf.StepContext, input: Item) -> Item:
        return Item(n=input.n - 1)

    @wf.step
    async def right(ctx: tf.StepContext, input: Item) -> Item:
        return Item(n=input.n + 1)

    engine.register(wf)
    handle = await engine.submit("fork", tenant="acme", input={"n": 5})
    assert await clock.drive(handle.result(), step_s=0.01, limit_s=30) == {
        "left": {"n": 4},
        "right": {"n": 6},
    }


async def test_another_tenants_run_is_not_found(engine: tf.Engine, clock: FakeClock) -> None:
    engine.register(chain())
    handle = await engine.submit("chain", tenant="acme", input={"n": 1})
    await engine.tenants.create("other", tier="enterprise")
    with pytest.raises(tf.NotFoundError):
        await clock.drive(engine.run("other", handle.id).result(), step_s=0.01, limit_s=30)


def test_the_driver_applies_every_kind_of_effect() -> None:
    assert set(_APPLY) == set(typing.get_args(Effect))
