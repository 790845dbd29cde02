"""Schedules: interval and cron times, firing through submission (admission like any run), at
most once per time across restarts, bounded catch-up after downtime, and the overlap policies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.engine.schedules import Cron, Schedule
from tenantflow.errors import ConfigurationError
from tenantflow.testing import FakeClock


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_cron_times_match_the_fields() -> None:
    nightly = Cron("30 2 * * *")
    assert nightly.next(_ts("2026-12-06T02:30:00")) == _ts("2026-12-07T02:30:00")
    assert nightly.previous(_ts("2026-12-06T02:29:59")) == _ts("2026-12-05T02:30:00")
    weekdays = Cron("*/15 9-10 * * 1-5")  # every 15 minutes, 9-11, Monday to Friday
    assert weekdays.next(_ts("2026-12-05T12:00:00")) == _ts("2026-12-07T09:00:00")  # Sat → Mon
    assert weekdays.next(_ts("2026-12-07T10:45:00")) == _ts("2026-12-08T09:00:00")
    assert Cron("0 0 1 * 0").next(_ts("2026-12-01T00:00:00")) == _ts("2026-12-06T00:00:00")
    for bad in ("* * * *", "61 * * * *", "*/0 * * * *", "a b c d e"):
        with pytest.raises(ConfigurationError):
            Cron(bad)


def test_a_schedule_is_checked_when_made() -> None:
    for bad in (
        {"every": None},
        {"every": timedelta(seconds=1), "cron": "* * * * *"},
        {"every": timedelta(milliseconds=10)},
        {"every": timedelta(seconds=5), "overlap": "pile"},
        {"every": timedelta(seconds=5), "catchup": -1},
        {"every": timedelta(seconds=5), "name": "Nightly Report"},
    ):
        fields = {"name": "nightly", "tenant": "t1", "workflow": "wf", **bad}
        with pytest.raises(ConfigurationError):
            Schedule(**fields)  # type: ignore[arg-type]
    every = Schedule("s", "t1", "wf", every=timedelta(seconds=10))
    assert every.times(95.0, 130.0) == [100.0, 110.0, 120.0, 130.0]


def _workflow(release: asyncio.Event | None = None) -> tf.Workflow:
    wf = tf.Workflow("tick", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        if release is not None:
            await release.wait()
        return input

    return wf


async def _settle(engine: tf.Engine) -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_an_interval_schedule_fires_each_time_once_and_catches_up_bounded(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sched.db"
    clock = FakeClock()
    start = clock.now()
    schedule = Schedule(
        "every-10s", "t1", "tick", input=7, every=timedelta(seconds=10), catchup=2, overlap="queue"
    )
    async with tf.Engine(clock.watch(SqliteStore(db)), clock=clock) as engine:
        await engine.schedules.close()  # ticked by hand here (the loop has its own test)
        await engine.tenants.create("t1", tier="standard")
        engine.register(_workflow())
        engine.schedules.add(schedule)
        assert await engine.schedules.tick() == []  # a new schedule makes up nothing
        clock.advance(35.0)
        fired = await engine.schedules.tick()
        # Three times came: the latest on time, the two before it made up (catchup=2).
        assert [f.action for f in fired] == ["submitted"] * 3
        assert await engine.schedules.tick() == []  # nothing twice
        for f in fired:
            assert f.run_id is not None
            assert (await engine.wait("t1", f.run_id)).status == tf.RunStatus.COMPLETED
    # Down for five minutes: 29 times missed and the current one; the latest 2 missed are made
    # up, the rest are not.
    clock.advance(300.0)
    async with tf.Engine(clock.watch(SqliteStore(db)), clock=clock) as engine:
        await engine.schedules.close()
        engine.register(_workflow())
        engine.schedules.add(schedule)
        made_up = await engine.schedules.tick()
        assert [f.action for f in made_up] == ["submitted"] * 3
        assert [f.at for f in made_up] == sorted(f.at for f in made_up)
        clock.advance(10.0)
        assert len(await engine.schedules.tick()) == 1
        runs = await engine.list_runs("t1", workflow="tick", limit=100, payloads=False)
        keys = [r.idempotency_key for r in runs]
        assert len(keys) == len(set(keys)) == 7
        assert all(k is not None and k.startswith("schedule:every-10s:") for k in keys)
        assert min(f.at for f in made_up) > start + 35.0


async def test_overlap_skip_waits_for_the_previous_run_and_cancel_replaces_it() -> None:
    release = asyncio.Event()
    clock = FakeClock()
    async with tf.Engine(clock.watch(tf.testing.MemoryStore()), clock=clock) as engine:
        await engine.schedules.close()
        await engine.tenants.create("t1", tier="standard")
        engine.register(_workflow(release))
        engine.schedules.add(Schedule("s", "t1", "tick", input=1, every=timedelta(seconds=10)))
        clock.advance(10.0)
        (first,) = await engine.schedules.tick()
        assert first.action == "submitted"
        clock.advance(10.0)
        (skipped,) = await engine.schedules.tick()
        assert skipped.action == "skipped" and skipped.run_id == first.run_id
        engine.schedules.add(
            Schedule("s", "t1", "tick", input=1, every=timedelta(seconds=10), overlap="cancel")
        )
        await engine.schedules.tick()  # re-reads what fired last from the store
        clock.advance(10.0)
        (replacing,) = await engine.schedules.tick()
        assert replacing.action == "submitted" and replacing.run_id != first.run_id
        assert first.run_id is not None
        cancelled = await engine.wait("t1", first.run_id)
        assert cancelled.status == tf.RunStatus.CANCELLED
        release.set()
        assert replacing.run_id is not None
        await engine.wait("t1", replacing.run_id)


async def test_the_engine_loop_fires_on_its_clock_and_refusals_are_recorded() -> None:
    clock = FakeClock()
    async with tf.Engine(clock.watch(tf.testing.MemoryStore()), clock=clock) as engine:
        await engine.tenants.create("t1", tier="standard")
        engine.register(_workflow())
        engine.schedules.add(Schedule("s", "t1", "tick", input=3, every=timedelta(seconds=5)))
        engine.schedules.add(Schedule("bad", "t1", "tick", input="x", every=timedelta(seconds=5)))
        await _settle(engine)
        await clock.drive(_until(lambda: len(engine.schedules.fired) >= 4), limit_s=120)
        actions = {(f.schedule, f.action) for f in engine.schedules.fired}
        assert ("s", "submitted") in actions and ("bad", "failed") in actions
        bad = [f for f in engine.schedules.fired if f.schedule == "bad"]
        assert bad[0].error is not None and "input" in bad[0].error


async def _until(done: object) -> None:
    for _ in range(100_000):  # bounded: clock.drive's limit fails first
        if done():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
