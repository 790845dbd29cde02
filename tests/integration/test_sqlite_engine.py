"""The engine on a real SQLite file: restarts resume runs without repeating completed steps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tenantflow as tf


def make_workflow(executed: list[str], gate: asyncio.Event) -> tf.Workflow:
    wf = tf.Workflow("resume")

    @wf.step
    async def first(ctx: tf.StepContext) -> int:
        executed.append(f"first:{ctx.attempt}")
        return 1

    @wf.step
    async def second(ctx: tf.StepContext, first: int) -> int:
        executed.append(f"second:{ctx.attempt}")
        await gate.wait()
        return first + 1

    @wf.step
    async def third(ctx: tf.StepContext, second: int) -> int:
        executed.append(f"third:{ctx.attempt}")
        return second + 1

    return wf


async def test_restart_resumes_runs_where_they_stopped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    executed: list[str] = []
    gate = asyncio.Event()
    engine = tf.Engine.open(url, auto_tenant="enterprise")
    await engine.start()
    engine.register(make_workflow(executed, gate))
    runs = [await engine.submit("resume", tenant="t", input=None) for _ in range(3)]
    for _ in range(200):
        if executed.count("second:1") == 3:
            break
        await asyncio.sleep(0.01)
    await engine.close()  # stops mid-step: "second" never committed
    assert executed.count("first:1") == 3

    executed.clear()
    gate.set()
    async with tf.Engine.open(url, auto_tenant="enterprise") as again:
        again.register(make_workflow(executed, gate))
        results = [await again.run("t", r.id).result() for r in runs]
        assert results == [3, 3, 3]
        assert sorted(executed) == sorted(["second:2"] * 3 + ["third:1"] * 3)  # first not re-run
        for r in runs:
            kinds = [e.kind for e in await again.timeline("t", r.id)]
            assert kinds.count("step.succeeded") == 3
            assert "step.recovered" in kinds
            assert [v.version for v in await again.versions("t", r.id)] == [0, 1, 2, 3]


async def test_runs_of_an_unregistered_version_wait_until_it_is_registered(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    gate = asyncio.Event()
    executed: list[str] = []
    engine = tf.Engine.open(url, auto_tenant="enterprise")
    await engine.start()
    engine.register(make_workflow(executed, gate))
    run = await engine.submit("resume", tenant="t", input=None)
    await asyncio.sleep(0.05)
    await engine.close()
    gate.set()
    async with tf.Engine.open(url, auto_tenant="enterprise") as again:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(again.run("t", run.id).result(), 0.3)
        again.register(make_workflow(executed, gate))
        assert await again.run("t", run.id).result() == 3


async def test_a_read_only_engine_reads_while_another_executes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ro.db'}"
    gate = asyncio.Event()
    gate.set()
    async with tf.Engine.open(url, auto_tenant="enterprise") as engine:
        engine.register(make_workflow([], gate))
        run = await engine.submit("resume", tenant="t", input=None)
        await run.result()
        async with tf.Engine.open(url, execute=False) as reader:
            assert (await reader.get_run("t", run.id)).status == tf.RunStatus.COMPLETED
            with pytest.raises(tf.ConfigurationError, match="not executing"):
                await reader.submit("resume", tenant="t", input=None)


async def test_wal_pages_reach_the_database_file_off_the_commit_path(tmp_path: Path) -> None:
    """The background checkpointer copies committed pages into the database file while the
    engine keeps running: the file alone (without its ``-wal``) holds the runs. The writer's own
    automatic checkpoint is raised far above what these runs write, so only the checkpointer
    can have put them there."""
    import shutil
    import sqlite3

    db = tmp_path / "c.db"
    wf = tf.Workflow("tiny")

    @wf.step
    async def only(ctx: tf.StepContext) -> int:
        return 1

    async with tf.Engine.open(f"sqlite:///{db}", auto_tenant="standard") as engine:
        engine.register(wf)
        store = engine.runtime.store
        assert store._conn is not None  # type: ignore[attr-defined]
        (pages,) = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()  # type: ignore[attr-defined]
        assert pages >= 10_000
        handles = [await engine.submit("tiny", tenant="t", input=None) for _ in range(20)]
        for handle in handles:
            await handle.result()
        copy = tmp_path / "copy.db"
        for _ in range(100):  # the checkpointer runs every 0.2 s
            await asyncio.sleep(0.05)
            shutil.copyfile(db, copy)  # the main file only: no -wal beside the copy
            conn = sqlite3.connect(copy)
            try:
                done = conn.execute(
                    "SELECT count(*) FROM runs WHERE status = 'completed'"
                ).fetchone()[0]
            except sqlite3.OperationalError:  # not even the schema checkpointed yet
                done = 0
            finally:
                conn.close()
            copy.unlink()
            if done == 20:
                break
        assert done == 20


def test_a_failing_checkpoint_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3
    import time

    from tenantflow.adapters.sqlite_checkpoint import Checkpointer

    writer = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    checkpointer = Checkpointer(tmp_path / "w.db", writer, interval=0.01)
    checkpointer._conn.close()  # every checkpoint now raises
    with caplog.at_level("WARNING", logger="tenantflow.store"):
        time.sleep(0.2)
        checkpointer._stop.set()
        checkpointer._thread.join()
    warnings = [r for r in caplog.records if "WAL checkpoint" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "16384 pages" in warnings[0].getMessage()
    writer.close()
