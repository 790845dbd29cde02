"""The decider (tenantflow.domain.progress): outcome + run view -> ops and effects.

Plain functions, no event loop: each row of a table builds a run view, calls one ``on_*``
function and states what must be written and what must follow. ``scripts/check`` fails unless
these tests alone reach every branch of the module (coverage, ``--fail-under=100``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.domain.agent import Agent, AgentResult, ToolResult, Turn
from tenantflow.domain.progress import (
    Attempt,
    Decision,
    Enqueue,
    EnqueueAfter,
    Finish,
    MirrorUpdate,
    Requeue,
    ReviewOpened,
    RunView,
    StartUnwind,
    describe,
    on_awaiting_child,
    on_awaiting_signal,
    on_failed,
    on_iteration,
    on_paused,
    on_rate_limited,
    on_review_decided,
    on_review_requested,
    on_skipped,
    on_succeeded,
    plan_to_transition,
    result_json,
)
from tenantflow.domain.records import RunStatus, StepStatus, Transition
from tenantflow.domain.replan import Failure, Revision
from tenantflow.domain.reviews import ReviewDecision
from tenantflow.domain.run import Plan, advance
from tenantflow.domain.spec import Retry, WorkflowSpec
from tenantflow.domain.tenancy import ReviewRecord, ReviewStatus
from tenantflow.errors import CircuitOpenError, NotAllowedError

S = StepStatus
NOW = 100.0
ONCE = Retry(max_attempts=1)

# -- workflows ---------------------------------------------------------------------------------

lin = tf.Workflow("lin", input=int)


@lin.step
async def a(ctx: tf.StepContext, input: int) -> int:
    return input


@lin.step
async def b(ctx: tf.StepContext, a: int) -> int:
    return a


fan = tf.Workflow("fan", input=list[int])


@fan.step
async def items(ctx: tf.StepContext, input: list[int]) -> list[int]:
    return input


@fan.step(fan_out="items", retry=ONCE)
async def square(ctx: tf.StepContext, items: int) -> int:
    return items


@fan.step
async def total(ctx: tf.StepContext, square: list[int]) -> list[int]:
    return square


def _raise(first: int) -> bool:
    raise RuntimeError("broken predicate")


cond = tf.Workflow("cond", input=int)


@cond.step
async def first(ctx: tf.StepContext, input: int) -> int:
    return input


@cond.step(when=lambda first: first > 0)
async def maybe(ctx: tf.StepContext, first: int) -> int:
    return first


@cond.step(when=_raise)
async def broken(ctx: tf.StepContext, first: int) -> int:
    return first


@cond.step(when=_raise, optional=True)
async def soft(ctx: tf.StepContext, first: int) -> int:
    return first


opt = tf.Workflow("opt", input=int)


@opt.step(optional=True, retry=Retry(max_attempts=2))
async def extra(ctx: tf.StepContext, input: int) -> int:
    return input


@opt.step
async def last(ctx: tf.StepContext, input: int, extra: int = 0) -> int:
    return extra


def _agent_workflow(*, max_iterations: int, optional: bool) -> WorkflowSpec:
    wf = tf.Workflow("ag", input=str)

    @wf.agent(Agent(max_iterations=max_iterations), optional=optional)
    async def research(ctx: tf.StepContext, input: str) -> str:
        return input

    @wf.step
    async def report(ctx: tf.StepContext, research: AgentResult) -> str:
        return research.answer or ""

    return wf.spec


agent_spec = _agent_workflow(max_iterations=3, optional=False)
agent_bound = _agent_workflow(max_iterations=1, optional=False)
agent_soft = _agent_workflow(max_iterations=1, optional=True)

rev = tf.Workflow("rev", input=str)


@rev.step(retry=ONCE)
async def fetch(ctx: tf.StepContext, input: str) -> str:
    return input


@rev.step(standby=True, retry=ONCE)
async def cached(ctx: tf.StepContext, input: str) -> str:
    return input


@rev.step(standby=True)
async def audit(ctx: tf.StepContext, input: str) -> str:
    return input


@rev.step(after=["audit"])
async def decide(ctx: tf.StepContext, fetch: str) -> str:
    return fetch


gate = tf.Workflow("gate", input=int)


@gate.review(pool="credit", sla=timedelta(minutes=5))
async def approve(ctx: tf.StepContext, input: int) -> dict[str, int]:
    return {"amount": input}


@gate.step
async def book(ctx: tf.StepContext, approve: ReviewDecision) -> bool:
    return approve.approved


plain_gate = tf.Workflow("plain_gate", input=int)


@plain_gate.review
async def check(ctx: tf.StepContext, input: int) -> dict[str, int]:
    return {"amount": input}


two = tf.Workflow("two", input=int)


@two.step
async def left(ctx: tf.StepContext, input: int) -> int:
    return input


@two.step
async def right(ctx: tf.StepContext, input: int) -> int | None:
    return None


# -- helpers -----------------------------------------------------------------------------------


def view(spec: WorkflowSpec, statuses: dict[str, StepStatus], **kw: Any) -> RunView:
    fields: dict[str, Any] = {
        "id": "run_1",
        "tenant_id": "acme",
        "lane": "normal",
        "spec": spec,
        "input": 1,
        "status": RunStatus.RUNNING,
        "statuses": statuses,
        "outputs": {},
        "jsons": {},
        "versions": {},
        "children": {},
        "replaced": {},
        "meta": {},
        "deferrals": {},
        "policy": None,
        "now": NOW,
    }
    fields.update(kw)
    return RunView(**fields)


def att(key: str, attempt: int = 1) -> Attempt:
    return Attempt(key, fence=7, attempt=attempt)


def fx(effects: list[Any]) -> list[tuple[Any, ...]]:
    """Effects as short tuples (a mirror update by its statuses)."""
    out: list[tuple[Any, ...]] = []
    for e in effects:
        if isinstance(e, MirrorUpdate):
            out.append(("mirror", {k: s.value for k, s in e.statuses.items()}))
        elif isinstance(e, Enqueue):
            out.append(("enqueue", *e.keys))
        elif isinstance(e, EnqueueAfter):
            out.append(("after", e.key, round(e.delay_s, 6)))
        elif isinstance(e, Requeue):
            out.append(("requeue", e.key))
        elif isinstance(e, StartUnwind):
            out.append(("unwind",))
        elif isinstance(e, Finish):
            out.append(("finish", e.status.value, e.result))
        else:
            assert isinstance(e, ReviewOpened)
            out.append(("review", e.review.pool))
    return out


def then_of(d: Decision) -> Transition:
    then = d.ops[-1].then
    assert isinstance(then, Transition)
    return then


def render(d: Decision) -> dict[str, Any]:
    then = then_of(d)
    return {
        "ops": [type(op).__name__ for op in d.ops],
        "steps": [(u.key, u.status.value) for u in then.steps],
        "events": [e.kind for e in then.events],
        "run": None if then.run is None else then.run.status.value,
        "effects": fx(d.effects),
        "stale": fx(d.if_stale),
    }


def mirror(d: Decision, n: int = 0) -> MirrorUpdate:
    found = [e for e in d.effects if isinstance(e, MirrorUpdate)]
    return found[n]


def turn(index: int, *, tools: int = 0, text: str = "") -> Turn:
    results = [ToolResult(id=str(i), name="lookup", content="ok") for i in range(tools)]
    return Turn(iteration=index, task="t", started_at_s=0.0, text=text, tool_results=results)


def review(kind: str = "step", step: str = "approve", **payload: Any) -> ReviewRecord:
    return ReviewRecord(
        id="rev_1",
        tenant_id="acme",
        run_id="run_1",
        step=step,
        pool="credit",
        lane="normal",
        status=ReviewStatus.PENDING,
        sla_due=None,
        created_at=0.0,
        payload={"kind": kind, **payload},
    )


def decided(v: RunView, r: ReviewRecord, *, approved: bool, fail: bool = False) -> Decision:
    return on_review_decided(
        v,
        r,
        approved=approved,
        comment=None,
        reviewer="rita",
        fail_step=fail,
        human_response=lambda text: f"human:{text}",
    )


def make_policy(**fields: Any) -> tf.Policy:
    return tf.Policy(tier="standard", weight=1.0, max_active_runs=1, max_running_steps=1, **fields)


def never() -> float:
    raise AssertionError("no jitter is drawn without a retry")


def replanning(revise: Callable[[Failure], Revision | None]) -> WorkflowSpec:
    spec = rev.spec
    return WorkflowSpec(spec.name, spec.version, spec.input_type, list(spec.steps), replan=revise)


REV_START = {"fetch": S.RUNNING, "cached": S.SKIPPED, "audit": S.SKIPPED, "decide": S.PENDING}


def _revise_replace(f: Failure) -> Revision:
    return Revision(reason="use the cache", replace={"fetch": "cached"})


def _revise_skip_all(f: Failure) -> Revision:
    return Revision(reason="give up on it", skip=("fetch", "decide"))


def _revise_bad(f: Failure) -> Revision:
    return Revision(reason="wrong", replace={"fetch": "decide"})  # not a standby step


def _revise_raises(f: Failure) -> Revision:
    raise ValueError("replanner bug")


def _revise_none(f: Failure) -> None:
    return None


def _revise_insert(f: Failure) -> Revision:
    return Revision(reason="audit instead", skip=("fetch",), insert=("audit",))


LIN = {"a": S.RUNNING, "b": S.PENDING}
FAN3 = {"items": S.SUCCEEDED, "square": S.MAPPED, "square[0]": S.SUCCEEDED}
FAN_OUT = {"items": [2, 3], "square[0]": 4}
COND = {"first": S.RUNNING, "maybe": S.PENDING, "broken": S.PENDING, "soft": S.PENDING}
AG = {"research": S.MAPPED, "research[0]": S.RUNNING, "report": S.PENDING}
GATE = {"approve": S.WAITING, "book": S.PENDING}
FAIL = ValueError("boom")

# -- the table ---------------------------------------------------------------------------------

CASES: list[tuple[str, Callable[[], Decision], dict[str, Any]]] = [
    (
        "succeeded: the next step becomes ready",
        lambda: on_succeeded(view(lin.spec, LIN), att("a"), 1, b"1"),
        {
            "ops": ["FinishAttempt"],
            "steps": [("b", "ready")],
            "run": None,
            "effects": [
                ("mirror", {"a": "succeeded"}),
                ("mirror", {"b": "ready"}),
                ("enqueue", "b"),
            ],
            "stale": [("requeue", "a")],
        },
    ),
    (
        "succeeded: the last step completes the run",
        lambda: on_succeeded(
            view(lin.spec, {"a": S.SUCCEEDED, "b": S.RUNNING}, outputs={"a": 1}),
            att("b"),
            5,
            b"5",
        ),
        {
            "steps": [],
            "events": ["run.completed"],
            "run": "completed",
            "effects": [("mirror", {"b": "succeeded"}), ("mirror", {}), ("finish", "completed", 5)],
        },
    ),
    (
        "succeeded while the run compensates: recorded only",
        lambda: on_succeeded(view(lin.spec, LIN, status=RunStatus.COMPENSATING), att("a"), 1, b"1"),
        {
            "steps": [],
            "run": None,
            "effects": [("mirror", {"a": "succeeded"}), ("mirror", {}), ("enqueue",)],
        },
    ),
    (
        "succeeded: a step fans out",
        lambda: on_succeeded(
            view(fan.spec, {"items": S.RUNNING, "square": S.PENDING, "total": S.PENDING}),
            att("items"),
            [2, 3],
            b"[2,3]",
        ),
        {
            "steps": [("square", "mapped"), ("square[0]", "ready"), ("square[1]", "ready")],
            "events": ["step.mapped"],
            "effects": [
                ("mirror", {"items": "succeeded"}),
                ("mirror", {"square": "mapped", "square[0]": "ready", "square[1]": "ready"}),
                ("enqueue", "square[0]", "square[1]"),
            ],
        },
    ),
    (
        "succeeded: an empty fan-out gathers at once and the run completes",
        lambda: on_succeeded(
            view(fan.spec, {"items": S.RUNNING, "square": S.PENDING, "total": S.PENDING}),
            att("items"),
            [],
            b"[]",
        ),
        {
            "steps": [("total", "ready"), ("square", "succeeded")],
            "events": [],
            "effects": [
                ("mirror", {"items": "succeeded"}),
                ("mirror", {"square": "succeeded", "total": "ready"}),
                ("enqueue", "total"),
            ],
        },
    ),
    (
        "succeeded: a fan-out element, others still running",
        lambda: on_succeeded(
            view(
                fan.spec,
                {**FAN3, "square[1]": S.RUNNING, "total": S.PENDING},
                outputs=FAN_OUT,
                children={"square": 2},
            ),
            att("square[0]"),
            4,
            b"4",
        ),
        {
            "steps": [],
            "events": [],
            "effects": [("mirror", {"square[0]": "succeeded"}), ("mirror", {}), ("enqueue",)],
        },
    ),
    (
        "succeeded: the last fan-out element gathers the output",
        lambda: on_succeeded(
            view(
                fan.spec,
                {**FAN3, "square[1]": S.RUNNING, "total": S.PENDING},
                outputs=FAN_OUT,
                jsons={"square[0]": b"4"},
                children={"square": 2},
            ),
            att("square[1]"),
            9,
            b"9",
        ),
        {
            "steps": [("square", "succeeded"), ("total", "ready")],
            "events": ["step.gathered"],
            "effects": [
                ("mirror", {"square[1]": "succeeded", "square": "succeeded"}),
                ("mirror", {"total": "ready"}),
                ("enqueue", "total"),
            ],
        },
    ),
    (
        "succeeded: the last element while the run compensates gathers nothing",
        lambda: on_succeeded(
            view(
                fan.spec,
                {**FAN3, "square[1]": S.RUNNING, "total": S.PENDING},
                outputs=FAN_OUT,
                children={"square": 2},
                status=RunStatus.COMPENSATING,
            ),
            att("square[1]"),
            9,
            b"9",
        ),
        {
            "steps": [],
            "events": [],
            "effects": [("mirror", {"square[1]": "succeeded"}), ("mirror", {}), ("enqueue",)],
        },
    ),
    (
        "succeeded: conditions skip one step, a broken one fails the run",
        lambda: on_succeeded(view(cond.spec, COND), att("first"), 0, b"0"),
        {
            "steps": [("maybe", "skipped"), ("broken", "failed"), ("soft", "failed")],
            "events": ["step.skipped", "step.failed", "step.failed", "run.failing"],
            "run": "compensating",
            "effects": [
                ("mirror", {"first": "succeeded"}),
                ("mirror", {"maybe": "skipped", "broken": "failed", "soft": "failed"}),
                ("unwind",),
            ],
        },
    ),
    (
        "iteration: the loop goes on",
        lambda: on_succeeded(
            view(agent_spec, AG, input="t", children={"research": 1}),
            att("research[0]"),
            turn(0, tools=1),
            b"{}",
        ),
        {
            "steps": [("research[1]", "ready")],
            "events": ["agent.iteration"],
            "effects": [
                ("mirror", {"research[0]": "succeeded"}),
                ("mirror", {"research[1]": "ready"}),
                ("enqueue", "research[1]"),
            ],
        },
    ),
    (
        "iteration: the model answered, the agent step settles",
        lambda: on_iteration(
            view(agent_spec, AG, input="t"), att("research[0]"), turn(0, text="done"), b"{}"
        ),
        {
            "steps": [("research", "succeeded"), ("report", "ready")],
            "events": ["agent.iteration", "agent.finished"],
            "effects": [
                ("mirror", {"research[0]": "succeeded"}),
                ("mirror", {"research": "succeeded"}),
                ("mirror", {"report": "ready"}),
                ("enqueue", "report"),
            ],
        },
    ),
    (
        "iteration: a required loop at its bound fails the run",
        lambda: on_iteration(
            view(agent_bound, AG, input="t"), att("research[0]"), turn(0, tools=1), b"{}"
        ),
        {
            "steps": [("research", "failed")],
            "events": ["agent.iteration", "step.failed", "run.failing"],
            "run": "compensating",
            "effects": [
                ("mirror", {"research[0]": "succeeded"}),
                ("mirror", {"research": "failed"}),
                ("unwind",),
            ],
        },
    ),
    (
        "iteration: an optional loop at its bound lets the run go on",
        lambda: on_iteration(
            view(agent_soft, AG, input="t"), att("research[0]"), turn(0, tools=1), b"{}"
        ),
        {
            "steps": [("research", "failed"), ("report", "skipped")],
            "run": "completed",
            "effects": [
                ("mirror", {"research[0]": "succeeded"}),
                ("mirror", {"research": "failed"}),
                ("mirror", {"report": "skipped"}),
                ("finish", "completed", None),
            ],
        },
    ),
    (
        "iteration while the run compensates: recorded only",
        lambda: on_iteration(
            view(agent_spec, AG, input="t", status=RunStatus.COMPENSATING),
            att("research[0]"),
            turn(0, tools=1),
            b"{}",
        ),
        {"steps": [], "run": None, "effects": [("mirror", {"research[0]": "succeeded"})]},
    ),
    (
        "failed: a cancelled attempt",
        lambda: on_failed(view(lin.spec, LIN), att("a"), None, jitter=never),
        {
            "ops": ["FailAttempt"],
            "steps": [("a", "cancelled")],
            "effects": [("mirror", {"a": "cancelled"})],
            "stale": [],
        },
    ),
    (
        "failed while the run compensates: cancelled",
        lambda: on_failed(
            view(lin.spec, LIN, status=RunStatus.COMPENSATING), att("a"), FAIL, jitter=never
        ),
        {"steps": [("a", "cancelled")], "effects": [("mirror", {"a": "cancelled"})]},
    ),
    (
        "failed: retried after a backoff",
        lambda: on_failed(view(lin.spec, LIN), att("a"), FAIL, jitter=lambda: 0.5),
        {
            "steps": [],
            "run": None,
            "effects": [("mirror", {"a": "ready"}), ("after", "a", 0.2)],
            "stale": [("requeue", "a")],
        },
    ),
    (
        "failed: an open circuit retries no sooner than it closes",
        lambda: on_failed(
            view(lin.spec, LIN),
            att("a"),
            CircuitOpenError("open", retry_after_s=7.5),
            jitter=lambda: 0.5,
        ),
        {"effects": [("mirror", {"a": "ready"}), ("after", "a", 7.5)]},
    ),
    (
        "failed: an error no retry can fix fails the run",
        lambda: on_failed(view(lin.spec, LIN), att("a"), NotAllowedError("no"), jitter=never),
        {
            "steps": [],
            "events": ["run.failing"],
            "run": "compensating",
            "effects": [("mirror", {"a": "failed"}), ("unwind",)],
            "stale": [("requeue", "a")],
        },
    ),
    (
        "failed: an optional step out of attempts lets the run go on",
        lambda: on_failed(
            view(opt.spec, {"extra": S.RUNNING, "last": S.PENDING}),
            att("extra", 3),
            FAIL,
            jitter=never,
        ),
        {
            "steps": [("last", "ready")],
            "run": None,
            "effects": [
                ("mirror", {"extra": "failed"}),
                ("mirror", {"last": "ready"}),
                ("enqueue", "last"),
            ],
        },
    ),
    (
        "failed: deferrals do not count as failures",
        lambda: on_failed(
            view(opt.spec, {"extra": S.RUNNING, "last": S.PENDING}, deferrals={"extra": 2}),
            att("extra", 3),
            FAIL,
            jitter=lambda: 0.0,
        ),
        {"effects": [("mirror", {"extra": "ready"}), ("after", "extra", 0.16)]},
    ),
    (
        "failed: a fan-out element fails its step",
        lambda: on_failed(
            view(
                fan.spec,
                {**FAN3, "square[1]": S.RUNNING, "total": S.PENDING},
                children={"square": 2},
            ),
            att("square[1]"),
            FAIL,
            jitter=never,
        ),
        {
            "steps": [("square", "failed")],
            "run": "compensating",
            "effects": [("mirror", {"square[1]": "failed", "square": "failed"}), ("unwind",)],
        },
    ),
    (
        "failed: the replanner declines",
        lambda: on_failed(
            view(replanning(_revise_none), REV_START, input="x"), att("fetch"), FAIL, jitter=never
        ),
        {"events": ["run.failing"], "run": "compensating"},
    ),
    (
        "failed: a revision runs a standby in the step's place",
        lambda: on_failed(
            view(replanning(_revise_replace), REV_START, input="x", meta={"plan": {"version": 1}}),
            att("fetch"),
            FAIL,
            jitter=never,
        ),
        {
            "steps": [("fetch", "ready")],
            "events": ["plan.revised"],
            "run": "running",
            "effects": [
                ("mirror", {"fetch": "ready"}),
                ("mirror", {}),
                ("enqueue",),
                ("enqueue",),
                ("requeue", "fetch"),
            ],
            "stale": [("requeue", "fetch")],
        },
    ),
    (
        "failed: a revision that skips the rest completes the run",
        lambda: on_failed(
            view(replanning(_revise_skip_all), REV_START, input="x"),
            att("fetch"),
            FAIL,
            jitter=never,
        ),
        {
            "steps": [("fetch", "skipped"), ("decide", "skipped"), ("fetch", "skipped")],
            "events": ["plan.revised", "step.skipped", "step.skipped", "run.completed"],
            "run": "completed",
            "effects": [
                ("mirror", {"fetch": "skipped", "decide": "skipped"}),
                ("mirror", {}),
                ("finish", "completed", None),
                ("enqueue",),
            ],
        },
    ),
    (
        "failed: a revision inserts a standby step",
        lambda: on_failed(
            view(replanning(_revise_insert), REV_START, input="x"), att("fetch"), FAIL, jitter=never
        ),
        {
            "steps": [("fetch", "skipped"), ("audit", "ready"), ("fetch", "skipped")],
            "events": ["plan.revised", "step.skipped", "step.inserted"],
            "run": "running",
            "effects": [
                ("mirror", {"fetch": "skipped", "audit": "ready"}),
                ("mirror", {}),
                ("enqueue",),
                ("enqueue", "audit"),
            ],
        },
    ),
    (
        "failed: a refused revision is noted and the step fails",
        lambda: on_failed(
            view(replanning(_revise_bad), REV_START, input="x"), att("fetch"), FAIL, jitter=never
        ),
        {
            "events": ["plan.refused", "run.failing"],
            "run": "compensating",
            "effects": [("mirror", {"fetch": "failed"}), ("unwind",)],
        },
    ),
    (
        "failed: a replanner that raises is a refusal",
        lambda: on_failed(
            view(replanning(_revise_raises), REV_START, input="x"), att("fetch"), FAIL, jitter=never
        ),
        {"events": ["plan.refused", "run.failing"], "run": "compensating"},
    ),
    (
        "skipped by the budget: the run goes on",
        lambda: on_skipped(
            view(opt.spec, {"extra": S.RUNNING, "last": S.PENDING}), att("extra"), "budget"
        ),
        {
            "ops": ["ParkAttempt"],
            "steps": [("last", "ready")],
            "effects": [
                ("mirror", {"extra": "skipped"}),
                ("mirror", {"last": "ready"}),
                ("enqueue", "last"),
            ],
            "stale": [("requeue", "extra")],
        },
    ),
    (
        "paused by the budget",
        lambda: on_paused(view(lin.spec, LIN), att("a"), "budget: over"),
        {
            "ops": ["ParkAttempt"],
            "events": ["run.paused"],
            "run": "paused",
            "effects": [("mirror", {"a": "ready"})],
        },
    ),
    (
        "rate limited: parked, queued again after the wait",
        lambda: on_rate_limited(view(lin.spec, LIN), att("a"), "tool:x", 2.5),
        {
            "ops": ["ParkAttempt"],
            "run": None,
            "effects": [("mirror", {"a": "ready"}), ("after", "a", 2.5)],
        },
    ),
    (
        "waiting for a child run",
        lambda: on_awaiting_child(view(lin.spec, LIN), att("a"), "run_child", "waiting"),
        {
            "ops": ["ParkAttempt"],
            "events": ["step.waiting"],
            "effects": [("mirror", {"a": "ready"})],
        },
    ),
    (
        "waiting for a signal without a timeout: re-checked after the safety net",
        lambda: on_awaiting_signal(view(lin.spec, LIN), att("a"), "approved", None, 30.0),
        {
            "ops": ["ParkAttempt"],
            "events": ["step.waiting"],
            "effects": [("mirror", {"a": "ready"}), ("after", "a", 30.0)],
        },
    ),
    (
        "waiting for a signal: woken at its deadline when that comes first",
        lambda: on_awaiting_signal(view(lin.spec, LIN), att("a"), "approved", NOW + 4.0, 30.0),
        {"effects": [("mirror", {"a": "ready"}), ("after", "a", 4.0)]},
    ),
    (
        "waiting for a signal past its deadline: woken at once to time out",
        lambda: on_awaiting_signal(view(lin.spec, LIN), att("a"), "approved", NOW - 1.0, 30.0),
        {"effects": [("mirror", {"a": "ready"}), ("after", "a", 0.0)]},
    ),
    (
        "review requested with the step's pool and SLA",
        lambda: on_review_requested(
            view(gate.spec, {"approve": S.RUNNING, "book": S.PENDING}),
            att("approve"),
            {"amount": 1},
            "rev_1",
        ),
        {
            "ops": ["ParkAttempt"],
            "events": ["review.requested"],
            "effects": [("mirror", {"approve": "waiting"}), ("review", "credit")],
        },
    ),
    (
        "review requested without a policy: the shared pool",
        lambda: on_review_requested(
            view(plain_gate.spec, {"check": S.RUNNING}), att("check"), {}, "rev_1"
        ),
        {"effects": [("mirror", {"check": "waiting"}), ("review", "shared")]},
    ),
    (
        "review requested under the tenant's policy",
        lambda: on_review_requested(
            view(
                plain_gate.spec,
                {"check": S.RUNNING},
                policy=make_policy(dedicated_reviewers=True, review_sla=timedelta(hours=1)),
            ),
            att("check"),
            {},
            "rev_1",
            kind="escalation",
            extra={"call_index": 2},
        ),
        {"effects": [("mirror", {"check": "waiting"}), ("review", "acme-reviewers")]},
    ),
    (
        "review decided after the run moved on: recorded only",
        lambda: decided(view(gate.spec, {**GATE, "approve": S.CANCELLED}), review(), approved=True),
        {"ops": ["DecideReview"], "steps": [], "run": None, "effects": []},
    ),
    (
        "review decided while the run compensates: recorded only",
        lambda: decided(
            view(gate.spec, GATE, status=RunStatus.COMPENSATING), review(), approved=True
        ),
        {"steps": [], "effects": []},
    ),
    (
        "review approved: the step succeeds with the decision",
        lambda: decided(view(gate.spec, GATE), review(), approved=True),
        {
            "steps": [("approve", "succeeded"), ("book", "ready")],
            "events": ["step.succeeded"],
            "effects": [
                ("mirror", {"approve": "succeeded"}),
                ("mirror", {"book": "ready"}),
                ("enqueue", "book"),
            ],
        },
    ),
    (
        "review decided while paused: the step still succeeds",
        lambda: decided(
            view(gate.spec, GATE, status=RunStatus.PAUSED, versions={"x": 3}),
            review(),
            approved=False,
        ),
        {"steps": [("approve", "succeeded"), ("book", "ready")]},
    ),
    (
        "review with fail_step fails the step and the run",
        lambda: decided(view(gate.spec, GATE), review(), approved=False, fail=True),
        {
            "steps": [("approve", "failed")],
            "events": ["step.failed", "run.failing"],
            "run": "compensating",
            "effects": [("mirror", {"approve": "failed"}), ("unwind",)],
        },
    ),
    (
        "escalation rejected fails the step",
        lambda: decided(view(gate.spec, GATE), review("escalation"), approved=False),
        {"run": "compensating", "effects": [("mirror", {"approve": "failed"}), ("unwind",)]},
    ),
    (
        "escalation approved: the answer is recorded and the step runs again",
        lambda: decided(view(gate.spec, GATE), review("escalation", call_index=3), approved=True),
        {
            "ops": ["RecordCall", "DecideReview"],
            "steps": [("approve", "ready")],
            "events": ["step.resumed"],
            "effects": [("mirror", {"approve": "ready"}), ("enqueue", "approve")],
        },
    ),
]


@pytest.mark.parametrize(("case", "decide", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decision(case: str, decide: Callable[[], Decision], expected: dict[str, Any]) -> None:
    got = render(decide())
    assert {k: got[k] for k in expected} == expected


# -- details the table does not show -----------------------------------------------------------


def test_success_records_output_version_and_delta() -> None:
    d = on_succeeded(view(lin.spec, LIN), att("a"), 1, b"1")
    op = d.ops[0]
    assert (op.key, op.fence, op.now, op.output_json, op.delta_json) == (
        "a",
        7,
        NOW,
        b"1",
        b'{"a":1}',
    )
    update = mirror(d)
    assert (update.version_of, update.progressed, dict(update.outputs)) == ("a", True, {"a": 1})
    assert [(u.metric, u.value, u.dim) for u in then_of(d).usage] == [("steps", 1, "a")]


def test_a_fan_out_element_has_no_delta_and_the_gather_is_in_order() -> None:
    v = view(
        fan.spec,
        {**FAN3, "square[1]": S.RUNNING, "total": S.PENDING},
        outputs=FAN_OUT,
        jsons={"square[0]": b"4"},
        children={"square": 2},
    )
    d = on_succeeded(v, att("square[1]"), 9, b"9")
    assert d.ops[0].delta_json is None
    update = mirror(d)
    assert update.version_of is None
    assert update.outputs["square"] == [4, 9] and update.jsons["square"] == b"[4,9]"
    assert then_of(d).steps[0].delta_json == b'{"square":[4,9]}'


def test_a_fatal_plan_sets_the_runs_error() -> None:
    d = on_succeeded(view(cond.spec, COND), att("first"), 0, b"0")
    assert (
        mirror(d).error == "step 'broken' failed: condition raised RuntimeError: broken predicate"
    )


def test_iteration_continue_counts_the_next_element() -> None:
    d = on_iteration(view(agent_spec, AG, input="t"), att("research[0]"), turn(0, tools=1), b"{}")
    assert mirror(d, 1).children == {"research": 2}
    assert then_of(d).steps[0].create


def test_a_finished_loop_records_its_result() -> None:
    d = on_iteration(view(agent_spec, AG, input="t"), att("research[0]"), turn(0, text="hi"), b"{}")
    result = mirror(d, 1).outputs["research"]
    assert isinstance(result, AgentResult) and result.answer == "hi" and result.status == "answered"


def test_a_retry_draws_jitter_once_and_writes_when() -> None:
    draws: list[float] = []

    def jitter() -> float:
        draws.append(1.0)
        return 0.0

    d = on_failed(view(lin.spec, LIN), att("a"), FAIL, jitter=jitter)
    assert draws == [1.0]
    assert d.ops[0].retry_at == pytest.approx(NOW + 0.16)
    assert d.ops[0].error == "ValueError: boom"


def test_a_revision_updates_plan_meta_and_retry_budget() -> None:
    spec = replanning(_revise_replace)
    d = on_failed(
        view(spec, REV_START, input="x", meta={"plan": {"version": 2}}),
        att("fetch", 4),
        FAIL,
        jitter=never,
    )
    update = mirror(d)
    assert update.meta is not None and update.meta["plan"]["version"] == 3
    assert update.replaced == {"fetch": "cached"} and update.deferrals == {"fetch": 4}
    assert d.ops[0].retry_at == NOW
    assert then_of(d).steps[-1].delta_json is not None


def test_a_revision_that_ends_the_run_keeps_it_in_meta() -> None:
    d = on_failed(
        view(replanning(_revise_skip_all), REV_START, input="x"), att("fetch"), FAIL, jitter=never
    )
    run = then_of(d).run
    assert run is not None and run.meta is not None and run.meta["plan"]["version"] == 2
    assert d.ops[0].retry_at is None


def test_a_replanner_failure_is_described_in_the_refusal() -> None:
    d = on_failed(
        view(replanning(_revise_raises), REV_START, input="x"), att("fetch"), FAIL, jitter=never
    )
    [refused] = [e for e in then_of(d).events if e.kind == "plan.refused"]
    assert refused.data["reason"] == "the replanner raised ValueError: replanner bug"


def test_rate_limit_usage_and_reason() -> None:
    d = on_rate_limited(view(lin.spec, LIN), att("a"), "tool:x", 2.5)
    op = d.ops[0]
    assert (op.status, op.available_at, op.reason) == (
        S.READY,
        NOW + 2.5,
        "rate limit tool:x: retry in 2.5s",
    )
    assert [(u.metric, u.value) for u in then_of(d).usage] == [
        ("rate_limit_waits", 1),
        ("rate_limit_wait_s", 2.5),
    ]


def test_paused_sets_the_run_status_in_the_mirror() -> None:
    assert mirror(on_paused(view(lin.spec, LIN), att("a"), "r")).status == RunStatus.PAUSED


def test_review_record_fields() -> None:
    d = on_review_requested(
        view(gate.spec, {"approve": S.RUNNING, "book": S.PENDING}),
        att("approve"),
        {"amount": 1},
        "rev_9",
    )
    review_opened = d.effects[1]
    assert isinstance(review_opened, ReviewOpened)
    r = review_opened.review
    assert (r.id, r.pool, r.sla_due, r.lane, r.payload) == (
        "rev_9",
        "credit",
        NOW + 300.0,
        "normal",
        {"kind": "step", "request": {"amount": 1}},
    )
    policy = make_policy(review_sla=timedelta(hours=1), review_lane="urgent")
    d = on_review_requested(
        view(plain_gate.spec, {"check": S.RUNNING}, policy=policy),
        att("check"),
        {},
        "r",
        kind="escalation",
        extra={"call_index": 2},
    )
    r = then_of(d).review
    assert r is not None and (r.sla_due, r.lane, r.payload["call_index"]) == (
        NOW + 3600.0,
        "urgent",
        2,
    )


def test_review_versions_and_answers() -> None:
    d = decided(view(gate.spec, GATE, versions={"x": 3, "y": None}), review(), approved=True)
    assert mirror(d).versions == {"approve": 4}
    assert isinstance(mirror(d).outputs["approve"], ReviewDecision)
    assert mirror(decided(view(gate.spec, GATE), review(), approved=True)).versions == {
        "approve": 1
    }
    d = decided(view(gate.spec, GATE), review("escalation", call_index=3), approved=True)
    call = d.ops[0]
    assert (call.index, call.name, call.result_json) == (3, "human", "human:approved")
    assert d.ops[1].then is then_of(d)


def test_plan_to_transition_at_submission() -> None:
    spec = cond.spec
    pending = {s.name: S.PENDING for s in spec.steps}
    plan = Plan(skipped=[("maybe", "condition is false")], failed=[("broken", "x")])
    planned = plan_to_transition(spec, plan, {}, run_id="run_1", submission=True)
    assert planned.run is not None and planned.run.status == RunStatus.FAILED
    assert planned.error == "step 'broken' failed: x"
    assert [e.kind for e in planned.events] == ["step.skipped", "step.failed", "run.failed"]
    done = plan_to_transition(
        lin.spec, Plan(completed=True), {"b": 2}, run_id="run_1", submission=True
    )
    assert done.run is not None and done.run.result_json == b"2" and done.release_prefix is None
    live = plan_to_transition(lin.spec, Plan(completed=True), {"b": 2}, run_id="run_1")
    assert live.release_prefix == "run_1:"
    assert advance(spec, pending, {}, 1).ready == ["first"]


def test_result_json_of_several_sinks_and_of_none() -> None:
    assert result_json(two.spec, {"left": 1, "right": None}) == b'{"left": 1, "right": null}'
    assert result_json(lin.spec, None) == b"null"


def test_describe_bounds_long_errors() -> None:
    text = describe(ValueError("x" * 5000))
    assert len(text) == 2000 and text.endswith("…")
    assert describe(ValueError("short")) == "ValueError: short"


def test_the_view_counts_revisions() -> None:
    assert view(lin.spec, LIN).revisions == 0
    assert view(lin.spec, LIN, meta={"plan": {"version": 3}}).revisions == 2


# -- side effects under the hybrid placement (domain.outbox) ----------------------------------

fxwf = tf.Workflow("fxwf", input=int)


@fxwf.step
async def pay(ctx: tf.StepContext, input: int) -> int:
    return input * 10


@fxwf.step(side_effect=True)
async def mail(ctx: tf.StepContext, pay: int, input: int) -> None:
    return None


@fxwf.step
async def ship(ctx: tf.StepContext, pay: int) -> int:
    return pay + 1


def test_a_choreographed_side_effect_goes_to_the_outbox_in_the_same_transaction() -> None:
    spec = fxwf.spec.choreographed()
    d = on_succeeded(
        view(spec, {"pay": S.RUNNING, "mail": S.PENDING, "ship": S.PENDING}), att("pay"), 10, b"10"
    )
    then = then_of(d)
    assert [(u.key, u.status.value, u.output_json) for u in then.steps] == [
        ("ship", "ready", None),
        ("mail", "succeeded", b"null"),
    ]
    [event] = [e for e in then.events if e.kind == "fx.enqueued"]
    assert (event.step, event.data) == (
        "mail",
        {
            "outbox_id": "run_1:mail",
            "workflow": "fxwf",
            "version": "1",
            "args": {"pay": 10, "input": 1},
        },
    )
    assert fx(d.effects)[1:] == [
        ("mirror", {"ship": "ready", "mail": "succeeded"}),
        ("enqueue", "ship"),
    ]
    # Without the hybrid placement the same step is simply ready, executed by the engine.
    plain = then_of(
        on_succeeded(
            view(fxwf.spec, {"pay": S.RUNNING, "mail": S.PENDING, "ship": S.PENDING}),
            att("pay"),
            10,
            b"10",
        )
    )
    assert [(u.key, u.status.value) for u in plain.steps] == [("mail", "ready"), ("ship", "ready")]
    assert not [e for e in plain.events if e.kind == "fx.enqueued"]
