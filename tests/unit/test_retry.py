"""Retrying an ended run: from its failed step (completed steps' outputs kept, history kept,
audited, through admission again) or from the start (a new run); refusals are typed."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.domain.records import StepStatus
from tenantflow.errors import ConfigurationError, ConflictError, NotFoundError
from tenantflow.testing import FakeClock, MemoryStore

ONCE = tf.Retry(max_attempts=1)


class Flaky:
    """Step bodies that fail until told not to, counting their calls."""

    def __init__(self) -> None:
        self.broken = True
        self.calls: Counter[str] = Counter()
        self.clock: FakeClock | None = None

    def workflow(self) -> tf.Workflow:
        wf = tf.Workflow("pipeline", input=int)

        @wf.step(retry=ONCE)
        async def fetch(ctx: tf.StepContext, input: int) -> int:
            self.calls["fetch"] += 1
            return input * 10

        @wf.step(retry=tf.Retry(max_attempts=2, initial=0.0, jitter=0.0))
        async def score(ctx: tf.StepContext, fetch: int) -> int:
            self.calls["score"] += 1
            if self.broken:
                raise RuntimeError("scoring service down")
            return fetch + 1

        @wf.step(retry=ONCE)
        async def decide(ctx: tf.StepContext, score: int) -> str:
            self.calls["decide"] += 1
            return f"score {score}"

        return wf


async def _engine(flaky: Flaky, **options: Any) -> tf.Engine:
    clock = FakeClock()
    flaky.clock = clock
    engine = tf.Engine(
        clock.watch(MemoryStore()),
        tf.EngineConfig(auto_tenant="standard", **options),
        clock=clock,
    )
    await engine.start()
    engine.register(flaky.workflow())
    return engine


async def _failed_run(engine: tf.Engine) -> str:
    handle = await engine.submit("pipeline", tenant="t1", input=4)
    record = await engine.wait("t1", handle.id)
    assert record.status == tf.RunStatus.FAILED
    return handle.id


async def test_retry_reruns_from_the_failed_step_and_keeps_completed_outputs() -> None:
    flaky = Flaky()
    engine = await _engine(flaky)
    try:
        run_id = await _failed_run(engine)
        assert flaky.calls == {"fetch": 1, "score": 2}
        before = await engine.versions("t1", run_id)
        flaky.broken = False
        result = await engine.retry("t1", run_id, actor="ops:ada", reason="service is back")
        assert result.ok and result.mode == "failed_step" and result.run is not None
        assert result.run.id == run_id and result.run.error is None
        record = await engine.wait("t1", run_id)
        assert record.status == tf.RunStatus.COMPLETED
        assert engine.decode_result(record) == "score 41"
        assert record.finished_at is not None and record.meta["retries"] == 1
        # fetch's recorded output was reused; score got a fresh retry budget (1 more call).
        assert flaky.calls == {"fetch": 1, "score": 3, "decide": 1}
        after = await engine.versions("t1", run_id)
        assert [v.version for v in after[: len(before)]] == [v.version for v in before]
        retry_version = after[len(before)]
        assert retry_version.state["retry"] == {
            "number": 1,
            "rerun": ["score", "decide"],
            "kept": ["fetch"],
        }
        kinds = [e.kind for e in await engine.timeline("t1", run_id)]
        assert kinds.index("run.failed") < kinds.index("run.retried") < kinds.index("run.admitted")
        assert kinds[-1] == "run.completed"
        steps = {s.key: s for s in await engine.steps("t1", run_id)}
        assert steps["score"].status == StepStatus.SUCCEEDED and steps["score"].error is None
        audit = [a for a in await engine.audit_log("t1") if a.action == "run.retried"]
        assert len(audit) == 1 and audit[0].actor == "ops:ada"
        assert audit[0].detail["reason"] == "service is back"
        assert (await engine.audit_verify("t1")).ok
    finally:
        await engine.close()


async def test_a_second_retry_of_a_completed_run_or_a_running_one_is_a_conflict() -> None:
    flaky = Flaky()
    engine = await _engine(flaky)
    try:
        run_id = await _failed_run(engine)
        flaky.broken = False
        await engine.retry("t1", run_id)
        await engine.wait("t1", run_id)
        with pytest.raises(ConflictError, match="completed"):
            await engine.retry("t1", run_id)
        with pytest.raises(NotFoundError):
            await engine.retry("t1", "run_nope")
        with pytest.raises(NotFoundError):  # another tenant's run is not found, not refused
            await engine.retry("t2", run_id)
    finally:
        await engine.close()


async def test_a_retry_that_fails_again_fails_the_run_again_with_the_history_kept() -> None:
    flaky = Flaky()
    engine = await _engine(flaky)
    try:
        run_id = await _failed_run(engine)
        await engine.retry("t1", run_id)
        record = await engine.wait("t1", run_id)
        assert record.status == tf.RunStatus.FAILED and "scoring service down" in str(record.error)
        assert flaky.calls["score"] == 4  # two more attempts: a fresh budget
        result = await engine.retry("t1", run_id)
        assert result.run is not None and result.run.meta["retries"] == 2
        await engine.wait("t1", run_id)
    finally:
        await engine.close()


async def test_retry_from_start_submits_a_new_run_once() -> None:
    flaky = Flaky()
    engine = await _engine(flaky)
    try:
        run_id = await _failed_run(engine)
        flaky.broken = False
        first = await engine.retry("t1", run_id, from_start=True)
        again = await engine.retry("t1", run_id, from_start=True)
        assert first.mode == "from_start" and first.run is not None
        assert again.run is not None and again.run.id == first.run.id != run_id
        record = await engine.wait("t1", first.run.id)
        assert record.status == tf.RunStatus.COMPLETED
        assert record.idempotency_key == f"retry:{run_id}"
        assert flaky.calls["fetch"] == 2  # from the start: every step again
        assert (await engine.get_run("t1", run_id)).status == tf.RunStatus.FAILED
        retried = [e for e in await engine.timeline("t1", run_id) if e.kind == "run.retried"]
        assert len(retried) == 1 and retried[0].data["new_run"] == first.run.id
    finally:
        await engine.close()


async def test_a_compensated_run_must_be_retried_from_the_start() -> None:
    undone: list[int] = []
    wf = tf.Workflow("booking", input=int)

    async def release(ctx: tf.StepContext, output: int) -> None:
        undone.append(output)

    @wf.step(retry=ONCE, compensate=release)
    async def reserve(ctx: tf.StepContext, input: int) -> int:
        return input

    @wf.step(retry=ONCE)
    async def charge(ctx: tf.StepContext, reserve: int) -> int:
        raise RuntimeError("card declined")

    clock = FakeClock()
    config = tf.EngineConfig(auto_tenant="standard")
    async with tf.Engine(clock.watch(MemoryStore()), config, clock=clock) as engine:
        engine.register(wf)
        handle = await engine.submit("booking", tenant="t1", input=7)
        record = await engine.wait("t1", handle.id)
        assert record.status == tf.RunStatus.COMPENSATED and undone == [7]
        with pytest.raises(ConflictError) as refused:
            await engine.retry("t1", handle.id)
        assert refused.value.fields["field"] == "from_start"
        assert "compensated" in refused.value.message
        assert (await engine.get_run("t1", handle.id)).status == tf.RunStatus.COMPENSATED
        result = await engine.retry("t1", handle.id, from_start=True)
        assert result.run is not None and result.run.id != handle.id


async def test_bulk_retry_answers_per_run_and_filters() -> None:
    flaky = Flaky()
    engine = await _engine(flaky)
    try:
        failed = []
        for _ in range(3):
            failed.append(await _failed_run(engine))
            assert flaky.clock is not None
            flaky.clock.advance(1.0)  # they end one after the other
        flaky.broken = False
        ok = await engine.submit("pipeline", tenant="t1", input=1)
        await engine.wait("t1", ok.id)
        with pytest.raises(ConfigurationError):
            await engine.retry_many("t1", status=tf.RunStatus.COMPLETED)
        none = await engine.retry_many("t1", workflow="other")
        assert none == []
        results = await engine.retry_many("t1", limit=2, actor="ops:bulk")
        assert [r.run_id for r in results] == failed[:2]  # oldest first
        assert all(r.ok for r in results)
        for r in results:
            await engine.wait("t1", r.run_id)
        rest = await engine.retry_many("t1")
        assert [r.run_id for r in rest] == failed[2:]
        await engine.wait("t1", failed[2])
        assert await engine.retry_many("t1") == []
        statuses = {(await engine.get_run("t1", r)).status for r in failed}
        assert statuses == {tf.RunStatus.COMPLETED}
    finally:
        await engine.close()


async def test_an_engine_that_does_not_execute_refuses_to_retry() -> None:
    engine = tf.Engine(MemoryStore(), tf.EngineConfig(execute=False))
    async with engine:
        with pytest.raises(ConfigurationError, match="not executing"):
            await engine.retry("t1", "run_x")


async def test_a_failed_fan_out_reruns_only_its_elements_that_did_not_succeed() -> None:
    bad = {2}
    calls: Counter[int] = Counter()
    wf = tf.Workflow("fan", input=list[int])

    @wf.step(retry=ONCE)
    async def items(ctx: tf.StepContext, input: list[int]) -> list[int]:
        return input

    @wf.step(fan_out="items", retry=ONCE)
    async def square(ctx: tf.StepContext, items: int) -> int:
        calls[items] += 1
        if items in bad:
            raise RuntimeError(f"cannot square {items}")
        return items * items

    @wf.step(retry=ONCE)
    async def total(ctx: tf.StepContext, square: list[int]) -> int:
        return sum(square)

    clock = FakeClock()
    config = tf.EngineConfig(auto_tenant="standard")
    async with tf.Engine(clock.watch(MemoryStore()), config, clock=clock) as engine:
        engine.register(wf)
        handle = await engine.submit("fan", tenant="t1", input=[3, 1, 2])
        assert (await engine.wait("t1", handle.id)).status == tf.RunStatus.FAILED
        succeeded = {
            s.key for s in await engine.steps("t1", handle.id) if s.status == StepStatus.SUCCEEDED
        }
        assert succeeded & {"square[0]", "square[1]"}, succeeded  # something to keep
        bad.clear()
        result = await engine.retry("t1", handle.id)
        assert result.ok
        record = await engine.wait("t1", handle.id)
        assert record.status == tf.RunStatus.COMPLETED and engine.decode_result(record) == 14
        # Elements that had succeeded were not run again.
        for key, value in (("square[0]", 3), ("square[1]", 1)):
            if key in succeeded:
                assert calls[value] == 1


async def test_a_cancelled_run_waiting_for_review_is_retried_to_the_review_again() -> None:
    wf = tf.Workflow("gate", input=int)

    @wf.step(retry=ONCE)
    async def assess(ctx: tf.StepContext, input: int) -> int:
        return input

    @wf.review()
    async def review(ctx: tf.StepContext, assess: int) -> dict[str, int]:
        return {"amount": assess}

    clock = FakeClock()
    config = tf.EngineConfig(auto_tenant="standard")
    async with tf.Engine(clock.watch(MemoryStore()), config, clock=clock) as engine:
        engine.register(wf)
        handle = await engine.submit("gate", tenant="t1", input=5)
        for _ in range(1000):
            steps = {s.key: s.status for s in await engine.steps("t1", handle.id)}
            if steps.get("review") == StepStatus.WAITING:
                break
            await clock.drive(asyncio.sleep(0))
        assert steps["review"] == StepStatus.WAITING
        await engine.cancel("t1", handle.id, "wrong amount")
        assert (await engine.wait("t1", handle.id)).status == tf.RunStatus.CANCELLED
        result = await engine.retry("t1", handle.id)
        assert result.run is not None and result.run.status in (
            tf.RunStatus.QUEUED,
            tf.RunStatus.RUNNING,
        )
        for _ in range(1000):
            steps = {s.key: s.status for s in await engine.steps("t1", handle.id)}
            if steps.get("review") == StepStatus.WAITING:
                break
            await clock.drive(asyncio.sleep(0))
        assert steps == {"assess": StepStatus.SUCCEEDED, "review": StepStatus.WAITING}
        assert (await engine.get_run("t1", handle.id)).status == tf.RunStatus.RUNNING
        await engine.cancel("t1", handle.id)
