"""Agent loops, subagents and their bounds, through the real engine on SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.routing import Endpoint

CLOCK = SystemClock()


class Query(BaseModel):
    query: str


def endpoint(price_out_per_1k_micros: int = 1_000) -> Endpoint:
    return Endpoint(
        name="sim-small",
        provider="sim",
        model="sim-small",
        region="us-east-1",
        tier="small",
        price_in_per_1k_micros=0,
        price_out_per_1k_micros=price_out_per_1k_micros,
        max_context=100_000,
    )


def researcher(
    calls_before_answer: int, tool: str = "search"
) -> Callable[[tf.ModelRequest], tf.ModelResponse]:
    """A model that asks for ``tool`` until it has seen that many tool results, then answers.
    It answers a subagent's task (no tools offered) at once."""

    def respond(request: tf.ModelRequest) -> tf.ModelResponse:
        seen = sum(1 for m in request.messages if m.get("role") == "tool")
        offered = {t["function"]["name"] for t in request.tools}
        if seen < calls_before_answer and tool in offered:
            return tf.ModelResponse(
                text=f"step {seen}",
                tokens_in=20,
                tokens_out=10,
                model=request.model,
                finish_reason="tool_calls",
                tool_calls=(tf.ToolCall(f"call-{seen}", tool, {"query": f"q{seen}"}),),
            )
        task = next(m["content"] for m in request.messages if m.get("role") == "user")
        return tf.ModelResponse(
            text=f"answer to {task} after {seen} lookups",
            tokens_in=20,
            tokens_out=10,
            model=request.model,
        )

    return respond


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(
        SqliteStore(tmp_path / "agents.db"), tf.EngineConfig(slots=8, seed=5)
    ) as eng:
        yield eng


def add_model(
    engine: tf.Engine, respond: Callable[[tf.ModelRequest], tf.ModelResponse], price: int = 1_000
) -> None:
    sim = SimulatedProvider(clock=CLOCK, latency_ms=(1.0, 2.0), respond=respond)
    engine.models.add(endpoint(price), sim)


def add_search(engine: tf.Engine, executed: list[str]) -> None:
    @engine.tools.register(input=Query, description="Search the knowledge base.")
    async def search(query: str) -> str:
        executed.append(query)
        return f"result for {query}"


def agent_workflow(name: str, agent: tf.Agent, *, optional: bool = False) -> tf.Workflow:
    wf = tf.Workflow(name, input=str)

    @wf.agent(agent, optional=optional)
    async def research(ctx: tf.StepContext, input: str) -> str:
        return f"research {input}"

    return wf


async def test_agent_loop_records_each_iteration_and_answers(engine: tf.Engine) -> None:
    executed: list[str] = []
    add_search(engine, executed)
    add_model(engine, researcher(3))
    await engine.tenants.create("acme", tier="enterprise")
    wf = agent_workflow("agent", tf.Agent(tools=("search",), max_iterations=6))
    engine.register(wf)
    handle = await engine.submit("agent", tenant="acme", input="tides")
    result = await handle.result(timeout=timedelta(seconds=20))
    assert isinstance(result, tf.AgentResult)
    assert result.status == "answered" and result.iterations == 4 and result.tool_calls == 3
    assert result.answer == "answer to research tides after 3 lookups"
    assert executed == ["q0", "q1", "q2"]
    timeline = await engine.timeline("acme", handle.id)
    iterations = [e for e in timeline if e.kind == "agent.iteration"]
    assert [e.step for e in iterations] == [f"research[{i}]" for i in range(4)]
    assert [e.data["next"] for e in iterations] == ["continue"] * 3 + ["finish"]
    assert [e.data["tools"] for e in iterations] == [["search"]] * 3 + [[]]
    # Every iteration is a state version; the agent's result is the last one.
    versions = await engine.versions("acme", handle.id)
    steps = [v.step for v in versions[1:]]
    assert steps == [*(f"research[{i}]" for i in range(4)), "research"]
    assert versions[2].state["research[1]"]["tool_results"][0]["content"] == "result for q1"
    assert versions[-1].state["research"]["status"] == "answered"
    usage = await engine.usage("acme")
    assert sum(u["value"] for u in usage if u["metric"] == "tool_calls") == 3


async def test_runaway_loop_stops_at_its_bound_and_fails_the_step(engine: tf.Engine) -> None:
    executed: list[str] = []
    add_search(engine, executed)
    add_model(engine, researcher(1_000))  # never answers
    await engine.tenants.create("acme", tier="enterprise")
    engine.register(agent_workflow("runaway", tf.Agent(tools=("search",), max_iterations=5)))
    engine.register(
        agent_workflow("bounded", tf.Agent(tools=("search",), max_iterations=3, on_limit="answer"))
    )
    failing = await engine.submit("runaway", tenant="acme", input="x")
    record = await failing.wait(timeout=timedelta(seconds=20))
    assert record.status == tf.RunStatus.FAILED
    assert "max_iterations=5" in (record.error or "")
    assert len(executed) == 5  # one tool call per iteration, and no sixth iteration
    answered = await engine.submit("bounded", tenant="acme", input="y")
    result = await answered.result(timeout=timedelta(seconds=20))
    assert result.status == "max_iterations" and result.iterations == 3
    assert result.answer == "step 2"


async def test_runaway_loop_never_exceeds_the_run_budget(engine: tf.Engine) -> None:
    executed: list[str] = []
    add_search(engine, executed)
    # 10 output tokens at $1 per 1k = 10,000 micros a call; the reservation is the worst case
    # (max_tokens=50: 50,000 micros), so a $0.12 run budget runs out after a few iterations.
    add_model(engine, researcher(1_000), price=1_000_000)
    await engine.tenants.create(
        "acme",
        tier="enterprise",
        budget={"run_micros": "$0.12"},
        degradation=["skip_optional"],
    )
    agent = tf.Agent(tools=("search",), max_iterations=50, max_tokens=50)
    engine.register(agent_workflow("spender", agent, optional=True))
    handle = await engine.submit("spender", tenant="acme", input="x")
    record = await handle.wait(timeout=timedelta(seconds=20))
    assert record.status == tf.RunStatus.COMPLETED
    steps = {s.key: s for s in await engine.steps("acme", handle.id)}
    result = tf.AgentResult.model_validate_json(steps["research"].output_json or b"")
    # Call i reserves 50,000 on top of 10,000 × i spent: calls 0..7 fit in 120,000, the
    # ninth iteration's reservation (80,000 + 50,000) is refused and the loop stops there.
    assert result.status == "budget"
    assert result.iterations == 9 and result.tool_calls == 8 and len(executed) == 8
    ledgers = {(row["scope"], row["unit"]): row for row in await engine.budget("acme")}
    run_ledger = ledgers[(f"run:{handle.id}", "micros")]
    assert int(run_ledger["spent"]) == 80_000 <= 120_000
    assert int(run_ledger["reserved"]) == 0  # no leaked reservation


async def test_tools_outside_the_agent_or_the_policy_are_refused_and_audited(
    engine: tf.Engine,
) -> None:
    executed: list[str] = []
    add_search(engine, executed)

    @engine.tools.register(input=Query)
    async def wire_money(query: str) -> str:
        executed.append("wire:" + query)
        return "sent"

    asked: list[str] = []

    def respond(request: tf.ModelRequest) -> tf.ModelResponse:
        seen = sum(1 for m in request.messages if m.get("role") == "tool")
        plan = ["wire_money", "shell", "search"]
        if seen < len(plan):
            asked.append(plan[seen])
            return tf.ModelResponse(
                text="",
                tokens_in=5,
                tokens_out=5,
                model=request.model,
                finish_reason="tool_calls",
                tool_calls=(tf.ToolCall(f"c{seen}", plan[seen], {"query": "all"}),),
            )
        results = [m["content"] for m in request.messages if m.get("role") == "tool"]
        return tf.ModelResponse(text=" | ".join(results), tokens_in=5, tokens_out=5, model="m")

    add_model(engine, respond)
    await engine.tenants.create("acme", tier="enterprise", denied_tools=["wire_money"])
    # The agent offers wire_money (the tenant's policy denies it) but not shell.
    agent = tf.Agent(tools=("search", "wire_money"), max_iterations=6)
    engine.register(agent_workflow("guarded", agent))
    handle = await engine.submit("guarded", tenant="acme", input="x")
    result = await handle.result(timeout=timedelta(seconds=20))
    assert asked == ["wire_money", "shell", "search"]
    assert executed == ["all"]  # neither refused tool ran
    assert result.answer is not None
    assert "not allowed" in result.answer and "not available to this agent" in result.answer
    audit = [r for r in await engine.audit_log("acme") if r.action == "tool.denied"]
    assert sorted(r.subject for r in audit) == ["tool:shell", "tool:wire_money"]
    assert (await engine.audit_verify("acme")).ok


async def test_subagents_draw_on_the_parent_budget_and_report_back(engine: tf.Engine) -> None:
    executed: list[str] = []
    add_search(engine, executed)

    def respond(request: tf.ModelRequest) -> tf.ModelResponse:
        offered = {t["function"]["name"] for t in request.tools}
        seen = sum(1 for m in request.messages if m.get("role") == "tool")
        if "delegate_scout" in offered and seen < 2:
            return tf.ModelResponse(
                text="delegating",
                tokens_in=10,
                tokens_out=10,
                model=request.model,
                finish_reason="tool_calls",
                tool_calls=(tf.ToolCall(f"d{seen}", "delegate_scout", {"task": f"area {seen}"}),),
            )
        return researcher(1)(request)

    add_model(engine, respond, price=1_000_000)
    await engine.tenants.create("acme", tier="enterprise")
    engine.register(agent_workflow("scout", tf.Agent(tools=("search",), max_iterations=4)))
    lead = tf.Agent(subagents={"scout": "scout"}, max_iterations=5)
    engine.register(agent_workflow("lead", lead))
    handle = await engine.submit("lead", tenant="acme", input="the coast")
    result = await handle.result(timeout=timedelta(seconds=30))
    assert result.status == "answered" and result.tool_calls == 2
    runs = await engine.list_runs("acme")
    children = [r for r in runs if r.parent_run_id == handle.id]
    assert len(children) == 2 and all(r.status == tf.RunStatus.COMPLETED for r in children)
    assert all(r.meta["budget_run"] == handle.id for r in children)
    assert sorted(executed) == ["q0", "q0"]  # each scout looked once
    timeline = await engine.timeline("acme", handle.id)
    waits = [e.data["child_run"] for e in timeline if e.kind == "step.waiting"]
    assert sorted(waits) == sorted(r.id for r in children)
    # The children's spending is charged to the parent's run ledger only.
    scopes = {row["scope"] for row in await engine.budget("acme")}
    assert f"run:{handle.id}" in scopes
    assert not any(f"run:{r.id}" in scopes for r in children)


async def test_cancelling_the_parent_reaches_its_children(engine: tf.Engine) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    @engine.tools.register(input=Query)
    async def slow(query: str) -> str:
        started.set()
        await gate.wait()
        return "late"

    def respond(request: tf.ModelRequest) -> tf.ModelResponse:
        offered = {t["function"]["name"] for t in request.tools}
        tool = "delegate_worker" if "delegate_worker" in offered else "slow"
        return tf.ModelResponse(
            text="",
            tokens_in=1,
            tokens_out=1,
            model=request.model,
            finish_reason="tool_calls",
            tool_calls=(tf.ToolCall("c", tool, {"task": "t", "query": "q"}),),
        )

    add_model(engine, respond)
    await engine.tenants.create("acme", tier="enterprise")
    engine.register(agent_workflow("worker", tf.Agent(tools=("slow",))))
    engine.register(agent_workflow("boss", tf.Agent(subagents={"worker": "worker"})))
    handle = await engine.submit("boss", tenant="acme", input="x")
    await asyncio.wait_for(started.wait(), 10)
    await engine.cancel("acme", handle.id, reason="operator")
    record = await handle.wait(timeout=timedelta(seconds=10))
    assert record.status == tf.RunStatus.CANCELLED
    child = next(r for r in await engine.list_runs("acme") if r.parent_run_id == handle.id)
    child_record = await engine.wait("acme", child.id, timeout=timedelta(seconds=10))
    assert child_record.status == tf.RunStatus.CANCELLED
    gate.set()


def test_agent_settings_are_validated() -> None:
    with pytest.raises(tf.ConfigurationError, match="max_iterations"):
        tf.Agent(max_iterations=0)
    with pytest.raises(tf.ConfigurationError, match="on_limit"):
        tf.Agent(on_limit="shrug")  # type: ignore[arg-type]
    with pytest.raises(tf.ConfigurationError, match="clash"):
        tf.Agent(tools=("delegate_x",), subagents={"x": "wf"})
    wf = tf.Workflow("w")
    with pytest.raises(tf.SpecError, match="takes an Agent"):
        wf.agent("not an agent")  # type: ignore[arg-type]


async def test_subagents_stay_within_the_tenants_step_cap_and_share(engine: tf.Engine) -> None:
    running: dict[str, int] = {"busy": 0, "quiet": 0}
    peak: dict[str, int] = {"busy": 0, "quiet": 0}
    finished: dict[str, float] = {}

    @engine.tools.register(input=Query)
    async def slow(query: str) -> str:
        tenant = query.split("-")[0]
        running[tenant] += 1
        peak[tenant] = max(peak[tenant], running[tenant])
        try:
            await asyncio.sleep(0.03)
        finally:
            running[tenant] -= 1
        return "ok"

    def respond(request: tf.ModelRequest) -> tf.ModelResponse:
        offered = {t["function"]["name"] for t in request.tools}
        task = next(str(m["content"]) for m in request.messages if m.get("role") == "user")
        seen = sum(1 for m in request.messages if m.get("role") == "tool")
        if "delegate_helper" in offered and seen == 0:
            calls = tuple(
                tf.ToolCall(f"d{i}", "delegate_helper", {"task": f"{task}-{i}"}) for i in range(3)
            )
            return tf.ModelResponse(text="", tokens_in=1, tokens_out=1, model="m", tool_calls=calls)
        if "slow" in offered and seen == 0:
            call = tf.ToolCall("s", "slow", {"query": task})
            return tf.ModelResponse(
                text="", tokens_in=1, tokens_out=1, model="m", tool_calls=(call,)
            )
        return tf.ModelResponse(text=f"done {task}", tokens_in=1, tokens_out=1, model="m")

    add_model(engine, respond)
    await engine.tenants.create("busy", tier="standard", max_running_steps=2, max_active_runs=2)
    await engine.tenants.create("quiet", tier="standard", max_running_steps=2)
    wf = tf.Workflow("helper", input=str)

    @wf.agent(tf.Agent(tools=("slow",), max_iterations=3))
    async def work(ctx: tf.StepContext, input: str) -> str:
        return input

    engine.register(wf)
    boss = tf.Workflow("boss", input=str)

    @boss.agent(tf.Agent(subagents={"helper": "helper"}, max_iterations=3))
    async def lead(ctx: tf.StepContext, input: str) -> str:
        return input

    engine.register(boss)
    bulk = [await engine.submit("boss", tenant="busy", input=f"busy-{i}") for i in range(8)]
    await asyncio.sleep(0.05)
    quiet = [await engine.submit("helper", tenant="quiet", input=f"quiet-{i}") for i in range(3)]

    async def done(handle: tf.RunHandle) -> None:
        record = await handle.wait(timeout=timedelta(seconds=60))
        assert record.status == tf.RunStatus.COMPLETED, record.error
        finished[handle.id] = asyncio.get_running_loop().time()

    await asyncio.gather(*(done(h) for h in [*bulk, *quiet]))
    children = [r for r in await engine.list_runs("busy") if r.parent_run_id is not None]
    assert len(children) == 24
    assert peak["busy"] <= 2  # the step cap held across 8 parents and 24 children
    assert peak["quiet"] >= 1
    # The quiet tenant was not stuck behind the busy tenant's tree of runs.
    assert max(finished[h.id] for h in quiet) < max(finished[h.id] for h in bulk)


async def test_a_loop_at_its_bound_can_escalate_to_a_reviewer(engine: tf.Engine) -> None:
    executed: list[str] = []
    add_search(engine, executed)
    add_model(engine, researcher(1_000))  # never answers by itself
    await engine.tenants.create("acme", tier="enterprise")
    agent = tf.Agent(tools=("search",), max_iterations=2, on_limit="escalate")
    engine.register(agent_workflow("escalating", agent))
    handle = await engine.submit("escalating", tenant="acme", input="x")
    for _ in range(200):
        reviews = await engine.reviews.list("acme")
        if reviews:
            break
        await asyncio.sleep(0.05)
    [review] = reviews
    assert review.step == "research[2]"
    assert "user: research x" in review.payload["request"]["prompt"]  # the transcript
    await engine.reviews.decide(
        "acme", review.id, reviewer="ann", approve=True, comment="The answer is 42."
    )
    result = await handle.result(timeout=timedelta(seconds=20))
    assert result.status == "escalated" and result.answer == "The answer is 42."
    assert result.iterations == 3 and len(executed) == 2


async def test_tool_calls_are_compensated_when_the_run_fails(engine: tf.Engine) -> None:
    booked: list[str] = []
    released: list[tuple[str, str]] = []

    class Room(BaseModel):
        room: str

    async def release(result: str, room: str) -> None:
        released.append((result, room))

    @engine.tools.register(input=Room, compensate=release)
    async def book(room: str) -> str:
        booked.append(room)
        return f"booking-{room}"

    def respond(request: tf.ModelRequest) -> tf.ModelResponse:
        seen = sum(1 for m in request.messages if m.get("role") == "tool")
        if seen < 2:
            call = tf.ToolCall(f"b{seen}", "book", {"room": f"r{seen}"})
            return tf.ModelResponse(
                text="", tokens_in=1, tokens_out=1, model="m", tool_calls=(call,)
            )
        return tf.ModelResponse(text="booked both", tokens_in=1, tokens_out=1, model="m")

    add_model(engine, respond)
    await engine.tenants.create("acme", tier="enterprise")
    wf = tf.Workflow("trip", input=str)

    @wf.agent(tf.Agent(tools=("book",), max_iterations=4))
    async def plan(ctx: tf.StepContext, input: str) -> str:
        return input

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def pay(ctx: tf.StepContext, plan: tf.AgentResult) -> str:
        raise RuntimeError("card declined")

    engine.register(wf)
    handle = await engine.submit("trip", tenant="acme", input="two rooms")
    record = await handle.wait(timeout=timedelta(seconds=20))
    assert record.status == tf.RunStatus.COMPENSATED
    assert booked == ["r0", "r1"]
    assert released == [("booking-r1", "r1"), ("booking-r0", "r0")]  # most recent first
    timeline = await engine.timeline("acme", handle.id)
    assert [e.data["index"] for e in timeline if e.kind == "tool.compensated"] == [2, 2]
    assert [e.step for e in timeline if e.kind == "tool.compensated"] == ["plan[1]", "plan[0]"]
