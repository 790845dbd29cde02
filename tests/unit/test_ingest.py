"""Fair ingestion: a tenant's burst of submissions is let through a few at a time, in order."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.engine.ingest import IngestGate
from tenantflow.errors import ConfigurationError


async def _hold(
    gate: IngestGate, tenant: str, n: int, log: list[tuple[str, int]], release: asyncio.Event
) -> None:
    async with gate.enter(tenant):
        log.append((tenant, n))
        await release.wait()


async def test_a_tenant_gets_at_most_its_places_and_the_rest_follow_in_order() -> None:
    gate = IngestGate(2)
    log: list[tuple[str, int]] = []
    releases = [asyncio.Event() for _ in range(5)]
    tasks = [asyncio.create_task(_hold(gate, "burst", n, log, releases[n])) for n in range(5)]
    await asyncio.sleep(0)
    assert log == [("burst", 0), ("burst", 1)]
    assert gate.in_progress("burst") == 2 and gate.waiting("burst") == 3
    releases[1].set()  # the second ends first: the third (not any later one) takes its place
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert log == [("burst", 0), ("burst", 1), ("burst", 2)]
    for r in releases:
        r.set()
    await asyncio.gather(*tasks)
    assert [n for _, n in log] == [0, 1, 2, 3, 4]
    assert gate.in_progress("burst") == 0 and gate.waiting("burst") == 0


async def test_another_tenant_never_waits_behind_a_burst() -> None:
    gate = IngestGate(1)
    log: list[tuple[str, int]] = []
    hold = asyncio.Event()
    burst = [asyncio.create_task(_hold(gate, "burst", n, log, hold)) for n in range(100)]
    await asyncio.sleep(0)
    quiet_done = asyncio.Event()
    quiet_done.set()
    await asyncio.wait_for(_hold(gate, "quiet", 0, log, quiet_done), timeout=1)
    assert ("quiet", 0) in log and sum(1 for t, _ in log if t == "burst") == 1
    hold.set()
    await asyncio.gather(*burst)
    assert sum(1 for t, _ in log if t == "burst") == 100


async def test_a_cancelled_waiter_gives_up_its_turn_and_leaks_no_place() -> None:
    gate = IngestGate(1)
    log: list[tuple[str, int]] = []
    first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
    t1 = asyncio.create_task(_hold(gate, "t", 1, log, first))
    t2 = asyncio.create_task(_hold(gate, "t", 2, log, second))
    t3 = asyncio.create_task(_hold(gate, "t", 3, log, third))
    await asyncio.sleep(0)
    t2.cancel()
    await asyncio.sleep(0)
    first.set()
    third.set()
    await t1
    await t3
    with pytest.raises(asyncio.CancelledError):
        await t2
    assert [n for _, n in log] == [1, 3]
    assert gate.in_progress("t") == 0 and gate.waiting("t") == 0


async def test_cancelled_just_as_its_turn_came_it_passes_the_place_on() -> None:
    gate = IngestGate(1)
    log: list[tuple[str, int]] = []
    third = asyncio.Event()
    third.set()
    async with gate.enter("t"):
        t2 = asyncio.create_task(_hold(gate, "t", 2, log, asyncio.Event()))
        t3 = asyncio.create_task(_hold(gate, "t", 3, log, third))
        await asyncio.sleep(0)
        assert gate.waiting("t") == 2
    # Leaving handed the place to t2, which has not run yet; it is cancelled before it does.
    t2.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t2
    await asyncio.wait_for(t3, timeout=1)
    assert log == [("t", 3)]
    assert gate.in_progress("t") == 0 and gate.waiting("t") == 0


def test_a_gate_needs_a_place() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        IngestGate(0)
    with pytest.raises(ConfigurationError, match="ingest_per_tenant"):
        tf.Engine.open("memory://", ingest_per_tenant=0)


async def test_a_burst_through_the_engine_is_recorded_whole() -> None:
    wf = tf.Workflow("ingest-burst")

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        return input

    async with tf.Engine.open("memory://", slots=4, ingest_per_tenant=2) as engine:
        engine.register(wf)
        await engine.tenants.create("burst", tier="standard", max_active_runs=1000)
        handles = await asyncio.gather(
            *(engine.submit("ingest-burst", tenant="burst", input=n) for n in range(50))
        )
        assert engine.ingest.in_progress("burst") == 0
        results = [await h.result(timeout=timedelta(seconds=10)) for h in handles]
        assert results == list(range(50))
        runs = await engine.list_runs("burst", limit=100)
        assert len(runs) == 50


async def test_the_limit_holds_only_while_other_tenants_are_busy() -> None:
    others = {"busy": True}
    gate = IngestGate(1, alone=3, others_busy=lambda tenant: others["busy"])
    log: list[tuple[str, int]] = []
    releases = [asyncio.Event() for _ in range(5)]
    tasks = [asyncio.create_task(_hold(gate, "t", n, log, releases[n])) for n in range(5)]
    await asyncio.sleep(0)
    assert [n for _, n in log] == [0] and gate.limit("t") == 1
    others["busy"] = False  # the others went idle: the next release lets three through
    releases[0].set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [n for _, n in log] == [0, 1, 2, 3] and gate.in_progress("t") == 3
    others["busy"] = True  # busy again: those in progress finish, no new one starts
    releases[1].set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [n for _, n in log] == [0, 1, 2, 3] and gate.in_progress("t") == 2
    for r in releases:
        r.set()
    await asyncio.gather(*tasks)
    assert [n for _, n in log] == [0, 1, 2, 3, 4] and gate.in_progress("t") == 0


async def test_a_tenant_alone_on_the_engine_records_a_burst_at_full_speed(
    tmp_path: Path,
) -> None:
    # One place per tenant while others are busy; alone, its inserts still share commits.
    wf = tf.Workflow("ingest-alone")

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        return input

    async with tf.Engine.open(
        f"sqlite:///{tmp_path / 'ingest.db'}", slots=4, ingest_per_tenant=1
    ) as engine:
        engine.register(wf)
        await engine.tenants.create("burst", tier="standard", max_active_runs=1000)
        writer = engine.runtime.writer
        batches, ops = writer.batches, writer.ops
        await asyncio.gather(
            *(engine.submit("ingest-alone", tenant="burst", input=n) for n in range(64))
        )
        assert writer.ops - ops >= 64
        assert writer.batches - batches < 32  # one at a time would take 64 commits
