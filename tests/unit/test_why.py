"""Why a run is waiting: reasons computed from its stored state, one per thing that holds it."""

from __future__ import annotations

import asyncio

import tenantflow as tf
from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from tenantflow.domain.tenancy import ReviewRecord, ReviewStatus
from tenantflow.domain.why import WaitFacts, explain
from tenantflow.testing import FakeClock, MemoryStore

NOW = 1_800_000_000.0


def _run(status: RunStatus, **more: object) -> RunRecord:
    return RunRecord("run_1", "t1", "wf", "1", status, b"null", NOW - 60, NOW - 10, **more)  # type: ignore[arg-type]


def _event(
    kind: str, step: str | None, data: dict[str, object], ts: float = NOW - 5
) -> EventRecord:
    return EventRecord(1, "t1", "run_1", ts, kind, step, 1, dict(data))


def test_an_ended_run_is_not_waiting_and_says_how_to_retry() -> None:
    (reason,) = explain(WaitFacts(_run(RunStatus.FAILED, error="step 'a' failed"), [], []), NOW)
    assert reason.kind == "ended" and "failed: step 'a' failed" in reason.message
    assert "runs retry" in reason.message


def test_a_queued_run_names_its_position_and_the_cap_that_binds() -> None:
    facts = WaitFacts(
        _run(RunStatus.QUEUED), [], [], active_cap=2, active_runs=2, queued_ahead=3, queued=5
    )
    (reason,) = explain(facts, NOW)
    assert reason.kind == "admission"
    assert "position 4 of 5" in reason.message
    assert "cap of 2 active runs binds (2 active)" in reason.message
    assert reason.detail["position"] == 4 and reason.detail["active_cap"] == 2
    suspended = WaitFacts(_run(RunStatus.QUEUED), [], [], active_cap=0, queued=1)
    assert "suspended" in explain(suspended, NOW)[0].message


def test_a_paused_run_names_the_budget_reason() -> None:
    events = [_event("run.paused", "a", {"reason": "budget: run cap $0.50 reached"})]
    (reason,) = explain(WaitFacts(_run(RunStatus.PAUSED), [], events), NOW)
    assert reason.kind == "paused" and "run cap $0.50 reached" in reason.message
    assert "runs resume" in reason.message


def test_each_unfinished_step_says_what_holds_it() -> None:
    steps = [
        StepRecord("run_1", "t1", "done", StepStatus.SUCCEEDED),
        StepRecord("run_1", "t1", "rl", StepStatus.READY, attempt=1, available_at=NOW + 30),
        StepRecord("run_1", "t1", "flaky", StepStatus.READY, attempt=2, available_at=NOW + 4),
        StepRecord("run_1", "t1", "gate", StepStatus.WAITING, attempt=1),
        StepRecord("run_1", "t1", "sub", StepStatus.READY, attempt=1, available_at=NOW - 1),
        StepRecord(
            "run_1",
            "t1",
            "work",
            StepStatus.RUNNING,
            attempt=1,
            owner="host:42:ab",
            lease_expires_at=NOW + 20,
        ),
        StepRecord(
            "run_1",
            "t1",
            "lost",
            StepStatus.RUNNING,
            attempt=3,
            owner="w2",
            lease_expires_at=NOW - 1,
        ),
        StepRecord("run_1", "t1", "next", StepStatus.READY, available_at=NOW - 2),
    ]
    events = [
        _event("step.deferred", "rl", {"reason": "rate limit tool:bureau: retry in 30s"}),
        _event("step.retrying", "flaky", {"error": "RuntimeError: down", "retry_at": NOW + 4}),
        _event("review.requested", "gate", {"review_id": "rev_1", "pool": "credit"}),
        _event("step.waiting", "sub", {"child_run": "run_child"}),
    ]
    review = ReviewRecord(
        "rev_1",
        "t1",
        "run_1",
        "gate",
        "credit",
        "normal",
        ReviewStatus.PENDING,
        NOW + 3600,
        NOW - 5,
        {},
        claimed_by="alice",
    )
    facts = WaitFacts(
        _run(RunStatus.RUNNING),
        steps,
        events,
        reviews={"rev_1": review},
        children={"run_child": RunStatus.RUNNING},
        running_cap=4,
        running_steps=4,
    )
    reasons = {r.step: r for r in explain(facts, NOW)}
    assert set(reasons) == {"rl", "flaky", "gate", "sub", "work", "lost", "next"}
    assert reasons["rl"].kind == "rate_limit" and reasons["rl"].detail["bucket"] == "tool:bureau"
    assert reasons["rl"].detail["until"] == "2027-01-15T08:00:30.000Z"
    assert reasons["flaky"].kind == "backoff" and "attempt 3 at" in reasons["flaky"].message
    assert reasons["gate"].kind == "review"
    assert "pool 'credit' (claimed by alice, SLA due 2027-01-15T09:00:00.000Z)" in (
        reasons["gate"].message
    )
    assert reasons["sub"].kind == "child_run" and "run_child (running)" in reasons["sub"].message
    assert reasons["work"].kind == "leased" and "host:42:ab" in reasons["work"].message
    assert reasons["lost"].kind == "lease_lapsed"
    assert reasons["next"].kind == "slot" and "cap of 4 running steps binds" in (
        reasons["next"].message
    )


async def test_the_engine_explains_a_queued_run_and_a_backoff_from_real_state() -> None:
    release = asyncio.Event()
    wf = tf.Workflow("slow", input=int)

    @wf.step(retry=tf.Retry(max_attempts=3, initial=60.0, jitter=0.0))
    async def only(ctx: tf.StepContext, input: int) -> int:
        if input < 0:
            raise RuntimeError("negative")
        await release.wait()
        return input

    clock = FakeClock()
    async with tf.Engine(clock.watch(MemoryStore()), clock=clock) as engine:
        await engine.tenants.create("t1", tier="standard", max_active_runs=2)
        engine.register(wf)
        first = await engine.submit("slow", tenant="t1", input=1)
        backing_off = await engine.submit("slow", tenant="t1", input=-1)
        queued = await engine.submit("slow", tenant="t1", input=3)
        for _ in range(1000):
            steps = {s.key: s for s in await engine.steps("t1", backing_off.id)}
            if steps["only"].attempt == 1 and steps["only"].status == StepStatus.READY:
                break
            await asyncio.sleep(0)
        (admission,) = await engine.why("t1", queued.id)
        assert admission.kind == "admission"
        assert "position 1 of 1" in admission.message
        assert "cap of 2 active runs binds (2 active)" in admission.message
        (backoff,) = await engine.why("t1", backing_off.id)
        assert backoff.kind == "backoff" and "RuntimeError: negative" in backoff.message
        for _ in range(1000):
            running = await engine.why("t1", first.id)
            if running and running[0].kind == "leased":
                break
            await asyncio.sleep(0)
        assert running[0].kind == "leased" and engine.owner in running[0].message
        release.set()
        assert (await engine.wait("t1", first.id)).status == RunStatus.COMPLETED
        (ended,) = await engine.why("t1", first.id)
        assert ended.kind == "ended"
        await engine.cancel("t1", backing_off.id)
        await engine.wait("t1", queued.id)
