"""Engine behaviour on the in-memory store with a fake clock: no sleeps, no disk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, Field

import tenantflow as tf
from tenantflow.domain.records import CreateRun, next_state_hash
from tenantflow.testing import FakeClock, MemoryStore

T = TypeVar("T")


class App(BaseModel):
    applicant: str
    amount: float


class Identity(BaseModel):
    verified: bool
    confidence: float = Field(ge=0.7)


class Decision(BaseModel):
    approved: bool


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def engine(clock: FakeClock) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(
        clock.watch(MemoryStore()),
        tf.EngineConfig(slots=8, seed=7, auto_tenant="enterprise"),
        clock=clock,
    ) as eng:
        yield eng


def loan_workflow(calls: list[str], *, confidence: float = 0.9) -> tf.Workflow:
    wf = tf.Workflow("loan", input=App)

    async def release(ctx: tf.StepContext, out: Identity) -> None:
        calls.append(f"release:{ctx.run_id}")

    @wf.step(compensate=release)
    async def verify(ctx: tf.StepContext, app: App) -> Identity:
        calls.append("verify")
        return Identity(verified=True, confidence=confidence)

    @wf.step
    async def decide(ctx: tf.StepContext, app: App, verify: Identity) -> Decision:
        calls.append("decide")
        return Decision(approved=app.amount < 10_000 and verify.verified)

    return wf


async def test_run_completes_with_log_and_contiguous_state(engine: tf.Engine) -> None:
    calls: list[str] = []
    engine.register(loan_workflow(calls))
    run = await engine.submit("loan", tenant="bank-a", input={"applicant": "a", "amount": 5000})
    assert await run.result() == Decision(approved=True)
    kinds = [e.kind for e in await engine.timeline("bank-a", run.id)]
    assert kinds[0] == "run.submitted" and kinds[-1] == "run.completed"
    assert kinds.count("step.succeeded") == 2
    history = await engine.versions("bank-a", run.id)
    assert [v.version for v in history] == [0, 1, 2]
    assert [v.parent for v in history] == [None, 0, 1]
    assert [v.step for v in history] == [None, "verify", "decide"]
    assert history[2].state == {
        "input": {"applicant": "a", "amount": 5000.0},
        "verify": {"verified": True, "confidence": 0.9},
        "decide": {"approved": True},
    }
    # The hash chain is reproducible from the stored deltas.
    rows = await engine.store.state_versions("bank-a", run.id)
    h = ""
    for row in rows:
        h = next_state_hash(h, row.version, row.step, row.delta_json)
        assert row.hash == h
    assert calls == ["verify", "decide"]


async def test_input_contract_is_checked_before_anything_is_written(engine: tf.Engine) -> None:
    engine.register(loan_workflow([]))
    with pytest.raises(tf.ContractError) as err:
        await engine.submit("loan", tenant="bank-a", input={"applicant": "a", "amount": "lots"})
    assert err.value.field == "amount"
    assert await engine.list_runs("bank-a") == []


async def test_output_contract_violation_names_step_field_and_value(
    engine: tf.Engine, clock: FakeClock
) -> None:
    calls: list[str] = []
    engine.register(loan_workflow(calls, confidence=0.5))
    run = await engine.submit("loan", tenant="bank-a", input={"applicant": "a", "amount": 1})
    record = await clock.drive(run.wait())
    assert record.status == tf.RunStatus.FAILED  # verify never succeeded: nothing to compensate
    assert "decide" not in calls  # the bad output never reached downstream
    failures = [
        e
        for e in await engine.timeline("bank-a", run.id)
        if e.kind in ("step.retrying", "step.failed")
    ]
    # The step built the model itself: pydantic's error in user code retries like any other.
    assert len(failures) == 3  # default Retry: 3 attempts
    assert "confidence" in failures[-1].data["error"] and "0.5" in failures[-1].data["error"]
    with pytest.raises(tf.RunFailedError):
        await run.result()


async def test_an_output_that_breaks_the_contract_is_not_retried(
    engine: tf.Engine, clock: FakeClock
) -> None:
    wf = tf.Workflow("contract", input=App)
    attempts: list[int] = []

    @wf.step  # default Retry: 3 attempts, but the same inputs break the contract again
    async def verify(ctx: tf.StepContext, app: App) -> Identity:
        attempts.append(ctx.attempt)
        return {"verified": True, "confidence": 0.5}  # type: ignore[return-value]

    engine.register(wf)
    run = await engine.submit("contract", tenant="bank-a", input={"applicant": "a", "amount": 1})
    record = await clock.drive(run.wait())
    assert record.status == tf.RunStatus.FAILED
    assert attempts == [1]
    kinds = [e.kind for e in await engine.timeline("bank-a", run.id)]
    assert "step.retrying" not in kinds and kinds.count("step.failed") == 1
    assert "ContractError" in (record.error or "")


async def test_a_contract_error_is_retried_only_when_the_retry_names_it() -> None:
    error = tf.ContractError("output breaks its contract")
    assert not tf.Retry().should_retry(1, error)
    assert not tf.Retry(retry_on=(Exception,)).should_retry(1, error)
    assert tf.Retry(retry_on=(tf.ContractError,)).should_retry(1, error)
    assert tf.Retry().should_retry(1, RuntimeError("flaky"))


def test_retry_takes_seconds_or_a_timedelta_and_refuses_anything_else() -> None:
    assert tf.Retry(initial=0.1).initial == timedelta(milliseconds=100)
    assert tf.Retry(initial=2, max_interval=60).max_interval == timedelta(seconds=60)
    assert tf.Retry(initial=0.1).delay_s(1, 0.5) == pytest.approx(0.1)
    with pytest.raises(tf.SpecError, match=r"Retry\.initial"):
        tf.Retry(initial="1s")  # type: ignore[arg-type]
    with pytest.raises(tf.ConfigurationError):
        tf.Retry(initial=-1)


async def test_retries_back_off_on_the_clock(engine: tf.Engine, clock: FakeClock) -> None:
    wf = tf.Workflow("flaky")
    tries: list[float] = []

    @wf.step(retry=tf.Retry(max_attempts=4, initial=timedelta(seconds=10), jitter=0.0))
    async def call(ctx: tf.StepContext) -> int:
        tries.append(clock.now())
        if len(tries) < 3:
            raise ConnectionError("bureau down")
        return ctx.attempt

    engine.register(wf)
    run = await engine.submit("flaky", tenant="t1", input=None)
    assert await clock.drive(run.result()) == 3
    retries = [e for e in await engine.timeline("t1", run.id) if e.kind == "step.retrying"]
    assert [round(e.data["retry_at"] - e.ts, 6) for e in retries] == [10.0, 20.0]
    assert tries[1] >= retries[0].data["retry_at"] and tries[2] >= retries[1].data["retry_at"]


async def test_hung_step_times_out_and_is_retried(engine: tf.Engine, clock: FakeClock) -> None:
    wf = tf.Workflow("slow")

    @wf.step(
        timeout=timedelta(seconds=5), retry=tf.Retry(max_attempts=2, initial=timedelta(seconds=1))
    )
    async def hang(ctx: tf.StepContext) -> int:
        if ctx.attempt == 1:
            await asyncio.Event().wait()  # never set
        return ctx.attempt

    engine.register(wf)
    run = await engine.submit("slow", tenant="t1", input=None)
    assert await clock.drive(run.result()) == 2
    retry = [e for e in await engine.timeline("t1", run.id) if e.kind == "step.retrying"]
    assert "StepTimeoutError" in retry[0].data["error"]


async def test_conditional_edges_skip_and_joins_take_defaults(engine: tf.Engine) -> None:
    wf = tf.Workflow("branch", input=App)

    @wf.step
    async def risk(ctx: tf.StepContext, app: App) -> float:
        return app.amount / 100_000

    @wf.step(when=lambda risk: risk > 0.5)
    async def review(ctx: tf.StepContext, risk: float) -> str:
        return "reviewed"

    @wf.step
    async def decide(ctx: tf.StepContext, risk: float, review: str | None = None) -> str:
        return f"{risk:.2f}:{review}"

    engine.register(wf)
    low = await engine.submit("branch", tenant="t", input={"applicant": "x", "amount": 1000})
    high = await engine.submit("branch", tenant="t", input={"applicant": "x", "amount": 90_000})
    assert await low.result() == "0.01:None"
    assert await high.result() == "0.90:reviewed"
    skipped = [e for e in await engine.timeline("t", low.id) if e.kind == "step.skipped"]
    assert [(e.step, e.data["reason"]) for e in skipped] == [("review", "condition is false")]
    steps = {s.key: s.status for s in await engine.steps("t", low.id)}
    assert steps["review"] == tf.StepStatus.SKIPPED


async def test_skip_propagates_to_steps_that_require_the_output(engine: tf.Engine) -> None:
    wf = tf.Workflow("chain")

    @wf.step(when=lambda: False)
    async def a(ctx: tf.StepContext) -> int:
        return 1

    @wf.step
    async def b(ctx: tf.StepContext, a: int) -> int:
        return a + 1

    @wf.step(after=[b])
    async def c(ctx: tf.StepContext) -> str:
        return "ran"

    engine.register(wf)
    run = await engine.submit("chain", tenant="t", input=None)
    assert await run.result() == "ran"
    steps = {s.key: s.status for s in await engine.steps("t", run.id)}
    assert steps == {"a": "skipped", "b": "skipped", "c": "succeeded"}


async def test_fan_out_gathers_in_order_and_handles_empty_lists(engine: tf.Engine) -> None:
    wf = tf.Workflow("fan", input=list[int])

    @wf.step
    async def items(ctx: tf.StepContext, input: list[int]) -> list[int]:
        return input

    @wf.step(fan_out="items")
    async def square(ctx: tf.StepContext, items: int) -> int:
        await asyncio.sleep(0)
        return items * items

    @wf.step
    async def total(ctx: tf.StepContext, square: list[int]) -> list[int]:
        return square

    engine.register(wf)
    run = await engine.submit("fan", tenant="t", input=[3, 1, 2])
    assert await run.result() == [9, 1, 4]
    keys = {s.key for s in await engine.steps("t", run.id)}
    assert {"square[0]", "square[1]", "square[2]"} <= keys
    state = await engine.state("t", run.id)
    assert state.state["square"] == [9, 1, 4]
    empty = await engine.submit("fan", tenant="t", input=[])
    assert await empty.result() == []


async def test_optional_step_failure_does_not_fail_the_run(engine: tf.Engine) -> None:
    wf = tf.Workflow("opt")

    @wf.step(optional=True, retry=tf.Retry(max_attempts=1))
    async def enrich(ctx: tf.StepContext) -> str:
        raise RuntimeError("enrichment service down")

    @wf.step
    async def decide(ctx: tf.StepContext, enrich: str = "none") -> str:
        return f"decided with {enrich}"

    engine.register(wf)
    run = await engine.submit("opt", tenant="t", input=None)
    assert await run.result() == "decided with none"
    steps = {s.key: s.status for s in await engine.steps("t", run.id)}
    assert steps["enrich"] == tf.StepStatus.FAILED


async def test_saga_compensates_completed_steps_in_reverse_order(engine: tf.Engine) -> None:
    wf = tf.Workflow("saga")
    order: list[str] = []

    async def undo_hold(ctx: tf.StepContext, out: str) -> None:
        order.append(f"undo {out}")

    @wf.step(compensate=undo_hold)
    async def hold(ctx: tf.StepContext) -> str:
        return "hold"

    @wf.step(compensate=undo_hold)
    async def reserve(ctx: tf.StepContext, hold: str) -> str:
        return "reserve"

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def charge(ctx: tf.StepContext, reserve: str) -> str:
        raise ValueError("card declined")

    engine.register(wf)
    run = await engine.submit("saga", tenant="t", input=None)
    record = await run.wait()
    assert record.status == tf.RunStatus.COMPENSATED
    assert "card declined" in (record.error or "")
    assert order == ["undo reserve", "undo hold"]
    kinds = [(e.kind, e.step) for e in await engine.timeline("t", run.id)]
    assert ("step.compensated", "reserve") in kinds and ("step.compensated", "hold") in kinds
    assert kinds[-1] == ("run.compensated", None)


async def test_logs_reach_the_timeline_from_steps_and_compensations_with_their_time(
    engine: tf.Engine, clock: FakeClock
) -> None:
    wf = tf.Workflow("logged")

    async def undo(ctx: tf.StepContext, out: str) -> None:
        ctx.log("releasing the hold", hold=out)

    @wf.step(compensate=undo)
    async def hold(ctx: tf.StepContext) -> str:
        ctx.log("placing a hold")
        await clock.sleep(5.0)  # the step goes on after the log
        return "h-1"

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def charge(ctx: tf.StepContext, hold: str) -> str:
        raise ValueError("card declined")

    engine.register(wf)
    run = await engine.submit("logged", tenant="t", input=None)
    record = await clock.drive(run.wait())
    assert record.status == tf.RunStatus.COMPENSATED
    events = await engine.timeline("t", run.id)
    logs = [e for e in events if e.kind == "step.log"]
    assert [e.data["message"] for e in logs] == ["placing a hold", "releasing the hold"]
    assert logs[1].data["hold"] == "h-1"
    started = next(e for e in events if e.kind == "step.started" and e.step == "hold")
    succeeded = next(e for e in events if e.kind == "step.succeeded" and e.step == "hold")
    # Recorded when it was written, not when the step's outcome was committed: the step slept
    # 5 s (on the clock) after logging. (How long after step.started the body began depends on
    # scheduling: not asserted.)
    assert started.ts <= logs[0].data["logged_at"] <= succeeded.ts - 4.999
    compensated = next(e for e in events if e.kind == "step.compensated")
    assert logs[1].data["logged_at"] <= compensated.ts


async def test_cancel_stops_running_steps_and_compensates(engine: tf.Engine) -> None:
    wf = tf.Workflow("cancel")
    undone: list[str] = []
    started = asyncio.Event()

    async def undo(ctx: tf.StepContext, out: int) -> None:
        undone.append(ctx.step)

    @wf.step(compensate=undo)
    async def first(ctx: tf.StepContext) -> int:
        return 1

    @wf.step
    async def second(ctx: tf.StepContext, first: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return 2

    engine.register(wf)
    run = await engine.submit("cancel", tenant="t", input=None)
    await asyncio.wait_for(started.wait(), 5)
    await engine.cancel("t", run.id)
    record = await run.wait()
    assert record.status == tf.RunStatus.CANCELLED
    assert undone == ["first"]
    steps = {s.key: s.status for s in await engine.steps("t", run.id)}
    assert steps == {"first": "compensated", "second": "cancelled"}
    with pytest.raises(tf.ConflictError):
        await engine.cancel("t", run.id)


async def test_circuit_breaker_opens_and_fails_fast(clock: FakeClock) -> None:
    calls = 0
    wf = tf.Workflow("cb")

    @wf.step(circuit="bureau", retry=tf.Retry(max_attempts=1))
    async def pull(ctx: tf.StepContext) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError("bureau down")

    async with tf.Engine(
        clock.watch(MemoryStore()),
        tf.EngineConfig(
            breaker_failures=3, breaker_cooldown=timedelta(seconds=30), auto_tenant="standard"
        ),
        clock=clock,
    ) as engine:
        engine.register(wf)
        for _ in range(5):
            handle = await engine.submit("cb", tenant="t", input=None)
            await handle.wait()
        assert calls == 3  # the 4th and 5th failed fast without calling
        last = [e for e in await engine.timeline("t", handle.id) if e.kind == "step.failed"]
        assert "CircuitOpenError" in last[0].data["error"]
        clock.advance(31)  # half-open: one trial call goes through
        handle = await engine.submit("cb", tenant="t", input=None)
        await handle.wait()
        assert calls == 4


async def test_idempotency_key_returns_the_same_run(engine: tf.Engine) -> None:
    engine.register(loan_workflow([]))
    a = await engine.submit(
        "loan", tenant="t", input={"applicant": "a", "amount": 1}, idempotency_key="k1"
    )
    b = await engine.submit(
        "loan", tenant="t", input={"applicant": "a", "amount": 1}, idempotency_key="k1"
    )
    other = await engine.submit(
        "loan", tenant="u", input={"applicant": "a", "amount": 1}, idempotency_key="k1"
    )
    assert a.id == b.id and b.created is False
    assert other.id != a.id  # keys are per tenant


async def test_tenants_cannot_see_each_others_runs(engine: tf.Engine) -> None:
    engine.register(loan_workflow([]))
    run = await engine.submit("loan", tenant="bank-a", input={"applicant": "a", "amount": 1})
    await run.result()
    with pytest.raises(tf.NotFoundError):
        await engine.get_run("bank-b", run.id)
    with pytest.raises(tf.NotFoundError):
        await engine.timeline("bank-b", run.id)
    with pytest.raises(tf.NotFoundError):
        await engine.state("bank-b", run.id)
    assert await engine.list_runs("bank-b") == []


async def test_bad_requests_get_typed_errors(engine: tf.Engine) -> None:
    engine.register(loan_workflow([]))
    with pytest.raises(tf.NotFoundError, match="not registered"):
        await engine.submit("nope", tenant="t", input={})
    with pytest.raises(tf.ConfigurationError, match="invalid tenant id"):
        await engine.submit("loan", tenant="../etc", input={"applicant": "a", "amount": 1})
    with pytest.raises(tf.ConfigurationError, match="unknown lane"):
        await engine.submit("loan", tenant="t", input={"applicant": "a", "amount": 1}, lane="vip")
    with pytest.raises(tf.ConfigurationError, match="unsupported store URL"):
        tf.Engine.open("mysql://x")


async def test_runs_stay_on_the_version_they_started_with(engine: tf.Engine) -> None:
    v1 = tf.Workflow("ver", version=1)
    gate = asyncio.Event()

    @v1.step
    async def a(ctx: tf.StepContext) -> str:
        await gate.wait()
        return "v1"

    v2 = tf.Workflow("ver", version=2)

    @v2.step
    async def b(ctx: tf.StepContext) -> str:
        return "v2"

    engine.register(v1)
    old = await engine.submit("ver", tenant="t", input=None)
    engine.register(v2)
    new = await engine.submit("ver", tenant="t", input=None)
    gate.set()
    assert await old.result() == "v1"
    assert await new.result() == "v2"
    assert (await engine.get_run("t", old.id)).workflow_version == "1"
    changed = tf.Workflow("ver", version=2)

    @changed.step
    async def c(ctx: tf.StepContext) -> str:
        return "other"

    with pytest.raises(tf.SpecError, match="already registered"):
        engine.register(changed)


async def test_diff_and_bisect_over_state_history(engine: tf.Engine) -> None:
    wf = tf.Workflow("hist")

    @wf.step
    async def s1(ctx: tf.StepContext) -> dict[str, Any]:
        return {"score": 0.9}

    @wf.step
    async def s2(ctx: tf.StepContext, s1: dict[str, Any]) -> dict[str, Any]:
        return {"score": 0.8}

    @wf.step
    async def s3(ctx: tf.StepContext, s2: dict[str, Any]) -> dict[str, Any]:
        return {"score": -1.0}  # the step that breaks the state

    @wf.step
    async def s4(ctx: tf.StepContext, s3: dict[str, Any]) -> dict[str, Any]:
        return {"score": -2.0}

    engine.register(wf)
    run = await engine.submit("hist", tenant="t", input=None)
    await run.result()
    changes = await engine.diff("t", run.id, 1, 2)
    assert [(c.path, c.kind) for c in changes] == [("s2", "added")]
    bad = await engine.bisect(
        "t", run.id, lambda st: all(v["score"] >= 0 for k, v in st.items() if k != "input")
    )
    assert bad is not None and bad.version == 3 and bad.step == "s3"
    assert await engine.bisect("t", run.id, lambda st: True) is None
    with pytest.raises(tf.NotFoundError):
        await engine.state("t", run.id, 99)


async def test_parallel_branches_join_exactly_once(engine: tf.Engine) -> None:
    wf = tf.Workflow("diamond")
    joined: list[int] = []

    @wf.step
    async def root(ctx: tf.StepContext) -> int:
        return 1

    @wf.step
    async def left(ctx: tf.StepContext, root: int) -> int:
        await asyncio.sleep(0)
        return root + 1

    @wf.step
    async def right(ctx: tf.StepContext, root: int) -> int:
        return root + 2

    @wf.step
    async def join(ctx: tf.StepContext, left: int, right: int) -> int:
        joined.append(left + right)
        return left + right

    engine.register(wf)
    runs = [await engine.submit("diamond", tenant="t", input=None) for _ in range(20)]
    assert [await r.result() for r in runs] == [5] * 20
    assert joined == [5] * 20


async def test_a_run_admitted_while_its_submission_is_written_still_starts() -> None:
    # The tenant's one slot frees up (its running run finishes) while the next run's submission
    # is being written: that run, admitted before its own write returned, must still start.
    gate = asyncio.Event()
    wf = tf.Workflow("gated", input=int)

    @wf.step
    async def only(ctx: tf.StepContext, input: int) -> int:
        if input == 1:
            await gate.wait()
        return input

    async with tf.Engine(MemoryStore(), tf.EngineConfig(slots=4)) as engine:
        engine.register(wf)
        await engine.tenants.create("solo", tier="standard", max_active_runs=1)
        first = await engine.submit("gated", tenant="solo", input=1)
        write = engine.runtime.writer.write

        async def finish_first_meanwhile(op: Any, **lane: Any) -> Any:
            if isinstance(op, CreateRun) and op.run.input_json == b"2":
                gate.set()
                assert await first.result() == 1  # the slot is free before this write lands
            return await write(op, **lane)

        engine.runtime.writer.write = finish_first_meanwhile  # type: ignore[method-assign]
        second = await engine.submit("gated", tenant="solo", input=2)
        assert await asyncio.wait_for(second.result(), timeout=10) == 2
        assert engine.admission.total_active == 0 and engine.admission.total_queued == 0


class SlowStore(MemoryStore):
    """A store whose every call takes real time on its thread, like a loaded machine's."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def _run(self, fn: Any) -> Any:
        def slow(conn: Any) -> Any:
            time.sleep(self.delay_s)
            return fn(conn)

        return await super()._run(slow)


async def test_fake_time_waits_for_a_slow_store_so_no_lease_lapses() -> None:
    """Each store call takes 50 ms of real time, in which an unwatched drive would move fake
    time 2.5 s on (0.05 s a millisecond): past the 1 s lease of an attempt whose finish is in
    flight. Watched, time holds until the call is done: one attempt, done once."""
    clock = FakeClock()
    wf = tf.Workflow("once")
    attempts: list[int] = []

    @wf.step
    async def work(ctx: tf.StepContext) -> int:
        attempts.append(ctx.attempt)
        return ctx.attempt

    config = tf.EngineConfig(slots=2, lease=timedelta(seconds=1), auto_tenant="standard")
    async with tf.Engine(clock.watch(SlowStore(0.05)), config, clock=clock) as engine:
        engine.register(wf)
        run = await engine.submit("once", tenant="t", input=None)
        assert await clock.drive(run.result(), limit_s=60) == 1
    assert attempts == [1]
