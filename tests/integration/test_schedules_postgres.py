"""Durable schedules on PostgreSQL: kept in the tenant's rows (row-level security applies),
read back by the next engine, paused, and a delayed start fired once through submission."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

import tenantflow as tf
from tenantflow.engine.schedules import Schedule


def _workflow() -> tf.Workflow:
    wf = tf.Workflow("tick", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        return input

    return wf


def _engine(url: str) -> tf.Engine:
    engine = tf.Engine.open(url, lease=timedelta(seconds=2))
    engine.register(_workflow())
    engine.schedules.start = lambda: None  # type: ignore[method-assign]  # ticked by hand
    return engine


@pytest.mark.postgres
async def test_durable_schedules_on_postgresql(postgres_url: str) -> None:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    async with _engine(postgres_url) as engine:
        await engine.tenants.create("bank-a", tier="standard")
        await engine.tenants.create("bank-b", tier="standard")
        await engine.schedules.create(
            Schedule("nightly", "bank-a", "tick", input=1, cron="30 2 * * *")
        )
        soon = datetime.now(UTC) + timedelta(seconds=1)
        delayed = await engine.submit("tick", tenant="bank-a", input=5, start_at=soon)
        assert isinstance(delayed, Schedule)
        assert await engine.schedules.read("bank-b") == []
    async with _engine(postgres_url) as engine:
        names = sorted(s.name for s in await engine.schedules.read("bank-a"))
        assert names == sorted(["nightly", delayed.name])
        await engine.schedules.pause("bank-a", "nightly")
        with pytest.raises(tf.NotFoundError):
            await engine.schedules.pause("bank-b", "nightly")
        fired: list[str] = []
        for _ in range(600):  # the delayed start is due in a second: 30 s at most
            fired = [f.run_id for f in await engine.schedules.tick() if f.run_id]
            if fired:
                break
            await asyncio.sleep(0.05)
        assert len(fired) == 1
        assert (await engine.wait("bank-a", fired[0])).status == tf.RunStatus.COMPLETED
        [left] = await engine.schedules.read("bank-a")
        assert (left.name, left.paused) == ("nightly", True)
