"""A retry on PostgreSQL: the reopened run's result, error and finish time are cleared in the
same statement language as SQLite's, the retry is a state version, and two concurrent retries
of one run commit once (the second is refused)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest

import tenantflow as tf
from tenantflow.errors import ConflictError

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

pytestmark = [pytest.mark.timeout(90), pytest.mark.postgres]


async def test_a_failed_run_is_retried_once_on_postgres(postgres_url: str) -> None:
    broken = {"on": True}
    calls: Counter[str] = Counter()
    wf = tf.Workflow("pg-flaky", input=int)

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def load(ctx: tf.StepContext, input: int) -> int:
        calls["load"] += 1
        return input

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def score(ctx: tf.StepContext, load: int) -> int:
        calls["score"] += 1
        if broken["on"]:
            raise RuntimeError("down")
        return load * 2

    async with tf.Engine.open(
        postgres_url, auto_tenant="standard", lease=timedelta(seconds=2)
    ) as engine:
        engine.register(wf)
        handle = await engine.submit("pg-flaky", tenant="t1", input=21)
        failed = await engine.wait("t1", handle.id, timeout=timedelta(seconds=30))
        assert failed.status == tf.RunStatus.FAILED and failed.finished_at is not None
        broken["on"] = False
        first, second = await asyncio.gather(
            engine.retry("t1", handle.id),
            engine.retry("t1", handle.id),
            return_exceptions=True,
        )
        outcomes = [first, second]
        assert sum(isinstance(o, ConflictError) for o in outcomes) == 1, outcomes
        (ok,) = [o for o in outcomes if not isinstance(o, BaseException)]
        assert ok.run is not None and ok.run.error is None and ok.run.finished_at is None
        done = await engine.wait("t1", handle.id, timeout=timedelta(seconds=30))
        assert done.status == tf.RunStatus.COMPLETED and engine.decode_result(done) == 42
        assert calls == {"load": 1, "score": 2}
        versions = await engine.versions("t1", handle.id)
        assert [v.state.get("retry", {}).get("number") for v in versions].count(1) >= 1
