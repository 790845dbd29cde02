"""Durable schedules: made per tenant at run time, kept in the tenant's store (across restarts),
paused, resumed and deleted; another tenant's are not found; a delayed start is a one-shot
schedule that fires once, through submission, even after downtime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.engine.schedules import NAMESPACE, Schedule
from tenantflow.errors import ConfigurationError, ConflictError, NotFoundError
from tenantflow.testing import FakeClock


def _workflow() -> tf.Workflow:
    wf = tf.Workflow("tick", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        return input

    return wf


def _engine(db: Path | None, clock: FakeClock) -> tf.Engine:
    store = tf.testing.MemoryStore() if db is None else SqliteStore(db)
    engine = tf.Engine(clock.watch(store), clock=clock)
    engine.register(_workflow())
    engine.schedules.start = lambda: None  # type: ignore[method-assign]  # ticked by hand
    return engine


async def _ticking(engine: tf.Engine) -> None:
    await engine.schedules.close()  # ticked by hand here (no loop was started)


async def test_a_durable_schedule_survives_a_restart_and_pauses_resumes_deletes(
    tmp_path: Path,
) -> None:
    db, clock = tmp_path / "s.db", FakeClock()
    every = Schedule("every-10s", "t1", "tick", input=4, every=timedelta(seconds=10))
    async with _engine(db, clock) as engine:
        await _ticking(engine)
        await engine.tenants.create("t1", tier="standard")
        await engine.tenants.create("t2", tier="standard")
        made = await engine.schedules.create(every)
        assert made.created_at == clock.now()
        with pytest.raises(ConflictError):
            await engine.schedules.create(every)
        bad = Schedule("x", "t1", "no-such-workflow", every=timedelta(seconds=10))
        with pytest.raises(ConfigurationError):
            await engine.schedules.create(bad)
        # Another tenant's schedule is not found, and t2 may use the same name.
        for call in (engine.schedules.pause, engine.schedules.resume, engine.schedules.delete):
            with pytest.raises(NotFoundError):
                await call("t2", "every-10s")
        assert await engine.schedules.read("t2") == []
        clock.advance(10.0)
        (fired,) = await engine.schedules.tick()
        assert fired.action == "submitted" and fired.tenant == "t1"
        assert fired.run_id is not None
        await engine.wait("t1", fired.run_id)  # else overlap "skip" skips the next time
    # Restarted: read back from the store; it fires on.
    async with _engine(db, clock) as engine:
        await _ticking(engine)
        [listed] = await engine.schedules.read("t1")
        assert (listed.name, listed.input, listed.every) == ("every-10s", 4, every.every)
        clock.advance(10.0)
        (second,) = await engine.schedules.tick()
        assert second.action == "submitted" and second.run_id is not None
        await engine.wait("t1", second.run_id)
        paused = await engine.schedules.pause("t1", "every-10s")
        assert paused.paused and engine.schedules.describe(paused)["next_at"] is None
        clock.advance(30.0)
        assert await engine.schedules.tick() == []  # paused: nothing
    async with _engine(db, clock) as engine:  # still paused after a restart
        await _ticking(engine)
        clock.advance(10.0)
        assert await engine.schedules.tick() == []
        await engine.schedules.resume("t1", "every-10s")
        # Missed while paused: made up bounded by catchup (1), plus the time now.
        made_up = await engine.schedules.tick()
        assert [f.action for f in made_up] == ["submitted", "skipped"]  # overlap: skip
        await engine.schedules.delete("t1", "every-10s")
        with pytest.raises(NotFoundError):
            await engine.schedules.delete("t1", "every-10s")
        clock.advance(60.0)
        assert await engine.schedules.tick() == []
        runs = await engine.list_runs("t1", workflow="tick", limit=100, payloads=False)
        keys = [r.idempotency_key for r in runs]
        assert len(keys) == len(set(keys)) == 3
    async with _engine(db, clock) as engine:
        await _ticking(engine)
        assert await engine.schedules.read("t1") == []


async def test_code_schedules_are_not_changed_at_run_time() -> None:
    clock = FakeClock()
    async with _engine(None, clock) as engine:
        await _ticking(engine)
        await engine.tenants.create("t1", tier="standard")
        engine.schedules.add(Schedule("code", "t1", "tick", every=timedelta(seconds=10)))
        with pytest.raises(ConflictError):
            await engine.schedules.pause("t1", "code")
        with pytest.raises(ConflictError):
            await engine.schedules.create(
                Schedule("code", "t1", "tick", every=timedelta(seconds=5))
            )
        assert [s.name for s in await engine.schedules.read("t1")] == ["code"]


async def test_schedules_live_in_a_reserved_namespace_deleted_with_the_tenant() -> None:
    clock = FakeClock()
    store = tf.testing.MemoryStore()
    engine = tf.Engine(clock.watch(store), clock=clock)
    engine.register(_workflow())
    async with engine:
        await _ticking(engine)
        await engine.tenants.create("t1", tier="standard")
        await engine.schedules.create(Schedule("s", "t1", "tick", cron="0 3 * * *"))
        stored = await store.list_memory("t1", NAMESPACE, now=clock.now())
        assert [e.key for e in stored] == ["s"]
        with pytest.raises(ConfigurationError):  # the memory API cannot name it
            await engine.memory.get("t1", "s", namespace=NAMESPACE)
        await engine.tenants.delete("t1")
        await engine.tenants.create("t1", tier="standard")
        assert await engine.schedules.read("t1") == []


async def test_a_delayed_start_fires_once_after_downtime(tmp_path: Path) -> None:
    db, clock = tmp_path / "d.db", FakeClock()
    async with _engine(db, clock) as engine:
        await _ticking(engine)
        await engine.tenants.create("t1", tier="standard")
        at = datetime.fromtimestamp(clock.now() + 600, UTC)
        scheduled = await engine.submit("tick", tenant="t1", input=9, start_at=at)
        assert isinstance(scheduled, Schedule) and scheduled.at == at.timestamp()
        again = await engine.submit("tick", tenant="t1", input=9, start_at=at, idempotency_key="k1")
        assert isinstance(again, Schedule)
        same = await engine.submit("tick", tenant="t1", input=9, start_at=at, idempotency_key="k1")
        assert isinstance(same, Schedule) and same.name == again.name  # the key: once
        with pytest.raises(ConfigurationError):
            await engine.submit("tick", tenant="t1", input=9, start_at=at.replace(tzinfo=None))
        past = await engine.submit(
            "tick", tenant="t1", input=1, start_at=datetime.fromtimestamp(0, UTC)
        )
        assert isinstance(past, tf.RunHandle)  # its time has come: submitted now
        clock.advance(300.0)
        assert await engine.schedules.tick() == []  # not yet
    clock.advance(3600.0)  # down past its time
    async with _engine(db, clock) as engine:
        await _ticking(engine)
        fired = await engine.schedules.tick()
        assert sorted(f.action for f in fired) == ["submitted", "submitted"]
        assert await engine.schedules.read("t1") == []  # one-shots are gone once fired
        for f in fired:
            assert f.run_id is not None
            record = await engine.wait("t1", f.run_id)
            assert record.status == tf.RunStatus.COMPLETED
    async with _engine(db, clock) as engine:
        await _ticking(engine)
        clock.advance(60.0)
        assert await engine.schedules.tick() == []
        runs = await engine.list_runs("t1", workflow="tick", limit=100, payloads=False)
        assert len(runs) == 3  # the immediate one and the two delayed ones, once each


async def test_a_refused_delayed_start_is_kept_and_tried_again_at_start(tmp_path: Path) -> None:
    db, clock = tmp_path / "r.db", FakeClock()
    async with _engine(db, clock) as engine:
        await engine.tenants.create("t1", tier="standard")
        at = datetime.fromtimestamp(clock.now() + 60, UTC)
        scheduled = await engine.submit("tick", tenant="t1", input=2, start_at=at)
        assert isinstance(scheduled, Schedule)
    clock.advance(120.0)
    bare = tf.Engine(clock.watch(SqliteStore(db)), clock=clock)  # "tick" not registered
    bare.schedules.start = lambda: None  # type: ignore[method-assign]
    async with bare:
        (refused,) = await bare.schedules.tick()
        assert refused.action == "failed" and refused.error is not None
        assert [s.name for s in await bare.schedules.read("t1")] == [scheduled.name]
    async with _engine(db, clock) as engine:
        (fired,) = await engine.schedules.tick()
        assert fired.action == "submitted" and fired.run_id is not None
        assert await engine.schedules.read("t1") == []
        assert (await engine.wait("t1", fired.run_id)).status == tf.RunStatus.COMPLETED


def test_the_cli_reads_durations_and_prints_every_kind_of_schedule() -> None:
    from tenantflow.cli.schedules import parse_duration, parse_time, schedule_line

    assert [parse_duration(t, field="in") for t in ("90s", "10m", "1.5h", "2d", "30")] == [
        90.0,
        600.0,
        5400.0,
        172800.0,
        30.0,
    ]
    for bad in ("0s", "-5m", "soon", "5 weeks", "nan"):
        with pytest.raises(ConfigurationError):
            parse_duration(bad, field="in")
    with pytest.raises(ConfigurationError):
        parse_time("2099-01-01T00:00:00", field="at")  # no zone
    base = {"workflow": "wf", "overlap": "skip", "next_at": "N", "durable": True}
    assert schedule_line({**base, "name": "a", "cron": "0 3 * * *"}).startswith(
        "a: wf cron '0 3 * * *', overlap skip, next N"
    )
    assert "every 60s" in schedule_line({**base, "name": "b", "every_s": 60.0})
    once = schedule_line({**base, "name": "c", "at": "T", "paused": True, "durable": False})
    assert once == "c: wf once at T, overlap skip, paused (in code)"
