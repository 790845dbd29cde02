"""Fencing: an attempt that lost its lease can never commit, and the step runs again.

(A real worker process paused with SIGSTOP past its lease is the ``pause`` scenario of the
reliability suite, :mod:`tenantflow.selftest.pause`, run by ``test_selftest.py``.)

* The store ops with a fake clock: a stale fencing token, or the right token with an expired
  lease, is refused with ``STALE`` and changes nothing.
* The engine with a fake clock: a lost lease cancels the attempt (heartbeat ``renew_leases``) or
  refuses its late result, and the step is re-run as attempt 2; the run completes once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tenantflow import Engine, EngineConfig, RunStatus, StepContext, StepStatus, Workflow
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.records import (
    STALE,
    CreateRun,
    FailAttempt,
    FinishAttempt,
    Lease,
    NewEvent,
    RenewLeases,
    RunRecord,
    RunUpdate,
    StartAttempt,
    StepRecord,
    StepUpdate,
    Transition,
)
from tenantflow.ports import Store
from tenantflow.testing import FakeClock, MemoryStore

LEASE_S = 1.0


# -- store ops with a fake clock ---------------------------------------------------------------


@asynccontextmanager
async def _store(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    store: Store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "fence.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _snapshot(store: Store, tenant: str, run_id: str) -> tuple[Any, ...]:
    return (
        await store.get_run(tenant, run_id),
        await store.get_steps(tenant, run_id),
        await store.events(tenant, run_id),
        await store.state_versions(tenant, run_id),
    )


async def _one(store: Store, op: Any) -> Any:
    [result] = await store.apply([op])
    return result


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_stale_fence_and_expired_lease_are_refused(kind: str, tmp_path: Path) -> None:
    clock = FakeClock()
    t, run_id = "acme", "run_fence"
    now = clock.now()
    run = RunRecord(run_id, t, "w", "1", RunStatus.RUNNING, b'{"n":1}', now, now)
    async with _store(kind, tmp_path) as store:
        await _one(store, CreateRun(run, [StepRecord(run_id, t, "a", StepStatus.READY)], []))

        def start(owner: str) -> StartAttempt:
            return StartAttempt(t, run_id, "a", owner, clock.now(), clock.now() + LEASE_S)

        def finish(fence: int) -> FinishAttempt:
            then = Transition(
                t,
                run_id,
                clock.now(),
                run=RunUpdate(RunStatus.COMPLETED, result_json=b"2"),
                events=[NewEvent("run.completed")],
            )
            return FinishAttempt(t, run_id, "a", fence, clock.now(), b"2", b'{"a":2}', then)

        def fail(fence: int) -> FailAttempt:
            then = Transition(t, run_id, clock.now(), steps=[StepUpdate("a", StepStatus.FAILED)])
            return FailAttempt(t, run_id, "a", fence, clock.now(), "boom", None, then)

        first = await _one(store, start("owner-1"))
        assert isinstance(first, Lease)
        assert (first.fence, first.attempt) == (1, 1)
        clock.advance(LEASE_S / 2)
        assert await _one(store, start("owner-2")) is None  # a live lease cannot be taken

        clock.advance(LEASE_S)  # owner-1's lease has lapsed: the step may be claimed again
        second = await _one(store, start("owner-2"))
        assert isinstance(second, Lease)
        assert (second.fence, second.attempt) == (2, 2)

        before = await _snapshot(store, t, run_id)
        assert await _one(store, finish(first.fence)) is STALE
        assert await _one(store, fail(first.fence)) is STALE
        assert await _snapshot(store, t, run_id) == before  # nothing changed, not even events

        # The right fence is not enough once the lease has lapsed, and renewing cannot revive it.
        clock.advance(LEASE_S + 0.5)
        lost = await _one(store, RenewLeases("owner-2", clock.now(), clock.now() + LEASE_S))
        assert lost == [(run_id, "a", second.fence)]
        before = await _snapshot(store, t, run_id)
        assert await _one(store, finish(second.fence)) is STALE
        assert await _one(store, fail(second.fence)) is STALE
        assert await _snapshot(store, t, run_id) == before
        [step] = before[1]
        assert (step.status, step.fence, step.attempt, step.owner) == (
            StepStatus.RUNNING,
            2,
            2,
            "owner-2",
        )

        # Control: a fresh claim that commits within its lease is accepted, exactly once.
        third = await _one(store, start("owner-3"))
        assert isinstance(third, Lease)
        assert (third.fence, third.attempt) == (3, 3)
        clock.advance(LEASE_S / 2)
        assert await _one(store, finish(third.fence)) == 1  # state version 1
        assert await _one(store, finish(third.fence)) is STALE  # a second commit is refused
        record, [step], events, versions = await _snapshot(store, t, run_id)
        assert record.status == RunStatus.COMPLETED
        assert (step.status, step.attempt, step.output_json) == (StepStatus.SUCCEEDED, 3, b"2")
        assert [(e.kind, e.attempt) for e in events if e.kind == "step.succeeded"] == [
            ("step.succeeded", 3)
        ]
        assert [e.kind for e in events].count("run.completed") == 1
        assert [(v.version, v.step) for v in versions] == [(0, None), (1, "a")]


# -- the engine with a fake clock --------------------------------------------------------------


class Item(BaseModel):
    n: int


def _workflow(gate: asyncio.Event, seen: list[tuple[str, int]]) -> Workflow:
    wf = Workflow("fenced", input=Item)

    @wf.step
    async def hold(ctx: StepContext, input: Item) -> int:
        seen.append(("start", ctx.attempt))
        if ctx.attempt == 1:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                seen.append(("cancelled", ctx.attempt))
                raise
        seen.append(("end", ctx.attempt))
        return input.n + 1

    @wf.step
    async def after(ctx: StepContext, hold: int) -> int:
        seen.append(("after", ctx.attempt))
        return hold * 10

    return wf


async def _until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


@asynccontextmanager
async def _engine(kind: str, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Engine]:
    store: Store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "engine.db")
    async with Engine(
        store,
        EngineConfig(lease=timedelta(seconds=LEASE_S), seed=7, auto_tenant="enterprise"),
        clock=clock,
    ) as engine:
        yield engine


async def _check_rerun_once(engine: Engine, run_id: str, seen: list[tuple[str, int]]) -> None:
    try:
        record = await engine.wait("t", run_id, timedelta(seconds=5))
    except TimeoutError:
        steps = [(s.key, s.status.value, s.attempt) for s in await engine.steps("t", run_id)]
        events = [(e.kind, e.step, e.attempt) for e in await engine.timeline("t", run_id)]
        raise AssertionError(
            f"the run never completed after its lease was lost: steps={steps} seen={seen}"
            f" events={events}"
        ) from None
    assert record.status == RunStatus.COMPLETED
    assert engine.decode_result(record) == 20
    steps = {s.key: s for s in await engine.steps("t", run_id)}
    assert (steps["hold"].status, steps["hold"].attempt) == (StepStatus.SUCCEEDED, 2)
    assert (steps["after"].status, steps["after"].attempt) == (StepStatus.SUCCEEDED, 1)
    events = [(e.kind, e.step, e.attempt) for e in await engine.timeline("t", run_id)]
    assert [a for k, s, a in events if k == "step.started" and s == "hold"] == [1, 2]
    assert [(s, a) for k, s, a in events if k == "step.succeeded"] == [("hold", 2), ("after", 1)]
    assert [k for k, _, _ in events].count("run.completed") == 1
    assert [(v.version, v.step) for v in await engine.versions("t", run_id)] == [
        (0, None),
        (1, "hold"),
        (2, "after"),
    ]
    assert seen.count(("start", 2)) == 1
    assert seen.count(("after", 1)) == 1
    assert len([x for x in seen if x[0] == "start"]) == 2


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_lost_lease_cancels_attempt_and_reruns_it(kind: str, tmp_path: Path) -> None:
    clock = FakeClock()
    gate, seen = asyncio.Event(), []
    async with _engine(kind, tmp_path, clock) as engine:
        engine.register(_workflow(gate, seen))
        handle = await engine.submit("fenced", tenant="t", input={"n": 1})
        await _until(lambda: ("start", 1) in seen, "attempt 1 to start")
        await asyncio.sleep(0.01)
        assert ("cancelled", 1) not in seen  # the lease is renewed while the clock stands still

        clock.advance(2 * LEASE_S)  # the process "stalled" past its lease
        lost = await engine.runtime.renew_leases()
        assert [(r, k) for r, k, _ in lost] == [(handle.id, "hold")]
        await _check_rerun_once(engine, handle.id, seen)
        assert ("cancelled", 1) in seen  # attempt 1 was cancelled, never finished
        assert ("end", 1) not in seen
        gate.set()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_late_result_after_lost_lease_is_refused(kind: str, tmp_path: Path) -> None:
    clock = FakeClock()
    gate, seen = asyncio.Event(), []
    async with _engine(kind, tmp_path, clock) as engine:
        engine.register(_workflow(gate, seen))
        handle = await engine.submit("fenced", tenant="t", input={"n": 1})
        await _until(lambda: ("start", 1) in seen, "attempt 1 to start")

        clock.advance(2 * LEASE_S)  # stalled past the lease...
        gate.set()  # ...and attempt 1 finishes right as the process wakes up
        await _check_rerun_once(engine, handle.id, seen)
        assert ("end", 1) in seen  # attempt 1 produced a result: it was refused, not committed
        assert ("cancelled", 1) not in seen
