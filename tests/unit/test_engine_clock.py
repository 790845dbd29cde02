"""Waiting on a run and on a cluster command keeps the engine's time, not the wall clock's: on a
FakeClock nothing moves until the clock does."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.engine.cluster import ClusterDriver
from tenantflow.ports import Coordinator
from tenantflow.testing import FakeClock, MemoryStore


def _blocked(release: asyncio.Event) -> tf.Workflow:
    wf = tf.Workflow("blocked", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        await release.wait()
        return input + 1

    return wf


async def _until_timer_added(clock: FakeClock, before: int) -> None:
    """Let the loop run until a task has gone to sleep on ``clock`` (no wall-clock wait)."""
    for _ in range(10_000):
        if clock.pending_timers > before:
            return
        await asyncio.sleep(0)
    raise AssertionError("nothing went to sleep on the engine's clock")


async def test_wait_polls_the_store_on_the_engine_clock(tmp_path: Path) -> None:
    release, db = asyncio.Event(), tmp_path / "wait.db"
    config = tf.EngineConfig(auto_tenant="standard")
    async with tf.Engine(SqliteStore(db), config, clock=FakeClock()) as a:
        a.register(_blocked(release))
        run = await a.submit("blocked", tenant="t1", input=1)
        clock = FakeClock()  # the reader's own: only its wait sleeps on it
        async with tf.Engine(SqliteStore(db), tf.EngineConfig(execute=False), clock=clock) as b:
            waiting = asyncio.create_task(b.wait("t1", run.id))
            await _until_timer_added(clock, 0)  # it polls the store: asleep on its clock
            release.set()
            assert (await run.wait()).status == tf.RunStatus.COMPLETED
            for _ in range(100):
                await asyncio.sleep(0)
            assert not waiting.done()  # the run ended, but the reader's clock has not moved
            clock.advance(0.1)
            record = await waiting
    assert record.status == tf.RunStatus.COMPLETED


async def test_wait_times_out_on_the_engine_clock(tmp_path: Path) -> None:
    release, db = asyncio.Event(), tmp_path / "timeout.db"
    config = tf.EngineConfig(auto_tenant="standard")
    async with tf.Engine(SqliteStore(db), config, clock=FakeClock()) as a:
        a.register(_blocked(release))
        run = await a.submit("blocked", tenant="t1", input=1)
        clock = FakeClock()
        async with tf.Engine(SqliteStore(db), tf.EngineConfig(execute=False), clock=clock) as b:
            waiting = asyncio.create_task(b.wait("t1", run.id, timeout=timedelta(hours=1)))
            await _until_timer_added(clock, 1)  # the deadline and the first poll
            clock.advance(3600.5)  # an hour of the engine's time, none of the wall clock's
            with pytest.raises(TimeoutError):
                await waiting
        release.set()
        assert (await run.wait()).status == tf.RunStatus.COMPLETED


class _Commands:
    """The two calls of a coordinator that posting a command makes."""

    def __init__(self) -> None:
        self.results: dict[int, dict[str, Any]] = {}
        self.posted: list[tuple[str, str, str]] = []
        self.polls = 0

    async def post(
        self, tenant_id: str, kind: str, target: str, payload: dict[str, Any], now: float
    ) -> int:
        self.posted.append((tenant_id, kind, target))
        return len(self.posted)

    async def result(self, tenant_id: str, command_id: int) -> dict[str, Any] | None:
        self.polls += 1
        return self.results.get(command_id)


def _driver(engine: tf.Engine, clock: FakeClock, commands: _Commands) -> ClusterDriver:
    return ClusterDriver(
        engine.ownership,
        engine.gate,
        engine.tenants,
        engine.runtime,
        clock,
        engine.owner,
        cast(Coordinator, commands),
        slots=1,
        command_timeout_s=10.0,
        reviews=engine.reviews,
        cancel=engine.cancel,
        review_opened=engine.review_opened,
    )


async def test_a_command_polls_and_gives_up_on_the_engine_clock() -> None:
    clock, commands = FakeClock(), _Commands()
    async with tf.Engine(MemoryStore(), clock=FakeClock()) as engine:
        driver = _driver(engine, clock, commands)  # on a clock of its own
        answer = asyncio.create_task(driver.command("t1", "cancel", "run_1", {}))
        await _until_timer_added(clock, 0)
        assert commands.polls == 1 and not answer.done()  # asleep until the clock moves
        commands.results[1] = {"ok": True}
        clock.advance(0.005)
        assert await answer == {"ok": True}

        start = clock.now()
        silent = asyncio.create_task(driver.command("t1", "cancel", "run_2", {}))
        for _ in range(10_000):  # no worker answers: it gives up at the clock's deadline
            if silent.done():
                break
            await asyncio.sleep(0)
            clock.advance(0.1)
        assert await silent is None
        assert 10.0 <= clock.now() - start < 11.0
