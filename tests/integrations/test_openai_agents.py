"""An OpenAI Agents SDK agent as a step: its model calls go through the tenant's gateway (priced,
recorded, replayed), its function tools through the gateway's tool path (allow list, price,
recorded by tool-call id), and an approval becomes a review the run resumes from."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.providers.testserver import OpenAITestServer

agents = pytest.importorskip("agents")

from tenantflow.integrations.openai_agents import (  # noqa: E402
    gateway_tools,
    register_function_tools,
    run_agent,
)

from .common import open_engine  # noqa: E402

EFFECTS: Counter[str] = Counter()


@agents.function_tool
async def lookup(topic: str) -> str:
    """Look a topic up."""
    EFFECTS[f"lookup:{topic}"] += 1
    return f"facts about {topic}"


@agents.function_tool(needs_approval=True)
async def publish(title: str) -> str:
    """Publish a report."""
    EFFECTS[f"publish:{title}"] += 1
    return f"published {title}"


@pytest.fixture
def server() -> AsyncIterator[OpenAITestServer]:
    EFFECTS.clear()
    with OpenAITestServer() as s:
        yield s  # type: ignore[misc]


@pytest.fixture
async def engine(tmp_path: Path, server: OpenAITestServer) -> AsyncIterator[tf.Engine]:
    async with open_engine(str(tmp_path / "sdk.db"), server.base_url) as eng:
        yield eng


def research_workflow(agent: Any, *, crash_once: bool = False) -> tf.Workflow:
    wf = tf.Workflow("research", input=str)
    crashed: list[bool] = []

    @wf.step(retry=tf.Retry(max_attempts=2, jitter=0.0))
    async def research(ctx: tf.StepContext, input: str) -> str:
        answer = str(await run_agent(ctx, agent, input))
        if crash_once and not crashed:
            crashed.append(True)
            raise RuntimeError("the attempt dies after the agent finished")
        return answer

    return wf


async def test_model_and_parallel_tools_are_governed_and_replayed(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    register_function_tools(engine.tools, [lookup], cost_usd=0.5)
    agent = agents.Agent(name="researcher", instructions="Research.", tools=[lookup])
    server.queue(tool_calls=[("lookup", {"topic": "tides"}), ("lookup", {"topic": "moons"})])
    server.queue(text="Tides follow moons.")
    engine.register(research_workflow(agent, crash_once=True))
    run = await (await engine.submit("research", tenant="acme", input="why tides?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert json.loads(run.result_json or b"") == "Tides follow moons."
    # The second attempt replayed both model calls and both tools: nothing ran twice.
    assert len(server.requests) == 2
    assert EFFECTS == {"lookup:tides": 1, "lookup:moons": 1}
    first, second = (r.body for r in server.requests)
    assert first["messages"][0] == {"role": "system", "content": "Research."}
    assert [t["function"]["name"] for t in first["tools"]] == ["lookup"]
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert sorted(m["content"] for m in tool_msgs) == ["facts about moons", "facts about tides"]
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    assert usage[("model_calls", "local")] == 2
    assert usage[("tool_calls", "lookup")] == 2
    assert usage[("cost_micros", "tool:lookup")] == 1_000_000
    assert (await engine.audit_verify("acme")).ok


async def test_a_denied_tool_is_refused_audited_and_answered(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise", denied_tools=["lookup"])
    agent = agents.Agent(name="researcher", instructions="Research.", tools=[lookup])
    server.queue(tool_calls=[("lookup", {"topic": "tides"})])
    server.queue(text="I could not look it up.")
    engine.register(research_workflow(agent))
    run = await (await engine.submit("research", tenant="acme", input="why tides?")).wait()
    assert run.status == tf.RunStatus.COMPLETED
    assert EFFECTS == {}
    tool_msgs = [m for m in server.requests[1].body["messages"] if m["role"] == "tool"]
    assert tool_msgs[0]["content"].startswith("error: tool 'lookup' is not allowed")
    audit = await engine.audit_log("acme")
    assert [a.subject for a in audit if a.action == "tool.denied"] == ["tool:lookup"]


async def test_gateway_tools_lists_only_what_the_tenant_may_call(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    @engine.tools.register
    async def weather(city: str) -> str:
        return f"sunny in {city}"

    @engine.tools.register
    async def wire_money(amount: int) -> str:
        return "sent"

    await engine.tenants.create("acme", tier="enterprise", denied_tools=["wire_money"])
    seen: list[list[str]] = []
    wf = tf.Workflow("ask", input=str)

    @wf.step
    async def ask(ctx: tf.StepContext, input: str) -> str:
        tools = gateway_tools(ctx)
        seen.append([t.name for t in tools])
        agent = agents.Agent(name="asker", instructions="Answer.", tools=tools)
        return str(await run_agent(ctx, agent, input))

    server.queue(tool_calls=[("weather", {"city": "Oslo"})])
    server.queue(text="Sunny.")
    engine.register(wf)
    run = await (await engine.submit("ask", tenant="acme", input="weather?")).wait()
    assert run.status == tf.RunStatus.COMPLETED
    assert seen == [["weather"]]
    assert [t["function"]["name"] for t in server.requests[0].body["tools"]] == ["weather"]
    tool_msgs = [m for m in server.requests[1].body["messages"] if m["role"] == "tool"]
    assert tool_msgs[0]["content"] == "sunny in Oslo"


async def test_an_approval_becomes_a_review_and_the_run_resumes_from_saved_state(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    agent = agents.Agent(name="writer", instructions="Write.", tools=[lookup, publish])
    server.queue(tool_calls=[("lookup", {"topic": "tides"})])
    server.queue(tool_calls=[("publish", {"title": "Tides"})])
    server.queue(text="Published.")
    engine.register(research_workflow(agent))
    opened: asyncio.Queue[Any] = asyncio.Queue()
    engine.reviews.subscribe(opened.put_nowait)
    handle = await engine.submit("research", tenant="acme", input="write it")
    review = await asyncio.wait_for(opened.get(), timeout=30)
    assert EFFECTS == {"lookup:tides": 1}  # publish waits for the reviewer
    assert "publish" in json.dumps(review.payload)
    await engine.reviews.decide("acme", review.id, reviewer="rita", approve=True)
    run = await handle.wait()
    assert run.status == tf.RunStatus.COMPLETED
    assert json.loads(run.result_json or b"") == "Published."
    assert EFFECTS == {"lookup:tides": 1, "publish:Tides": 1}
    assert len(server.requests) == 3  # resumed from the saved state: no model call repeated


async def test_a_handoff_agent_is_governed_too(engine: tf.Engine, server: OpenAITestServer) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    specialist = agents.Agent(name="specialist", instructions="Specialise.", tools=[lookup])
    triage = agents.Agent(name="triage", instructions="Triage.", handoffs=[specialist])
    server.queue(tool_calls=[("transfer_to_specialist", {})])
    server.queue(tool_calls=[("lookup", {"topic": "tides"})])
    server.queue(text="Tides follow moons.")
    engine.register(research_workflow(triage))
    run = await (await engine.submit("research", tenant="acme", input="tides?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert json.loads(run.result_json or b"") == "Tides follow moons."
    assert server.requests[1].body["messages"][0] == {"role": "system", "content": "Specialise."}
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    assert usage[("model_calls", "local")] == 3 and usage[("tool_calls", "lookup")] == 1


async def test_an_agent_with_its_own_model_object_is_refused(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
    from openai import AsyncOpenAI

    await engine.tenants.create("acme", tier="enterprise")
    client = AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
    direct = OpenAIChatCompletionsModel("gpt-test", client)
    engine.register(research_workflow(agents.Agent(name="direct", model=direct)))
    run = await (await engine.submit("research", tenant="acme", input="x")).wait()
    assert run.status == tf.RunStatus.FAILED
    assert "give it a model name or a tier" in (run.error or "")
    assert server.requests == []  # the vendor was never called around the gateway
    await client.close()


async def test_a_rejected_approval_fails_the_step_without_calling_the_tool(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    agent = agents.Agent(name="writer", instructions="Write.", tools=[publish])
    server.queue(tool_calls=[("publish", {"title": "Tides"})])
    engine.register(research_workflow(agent))
    opened: asyncio.Queue[Any] = asyncio.Queue()
    engine.reviews.subscribe(opened.put_nowait)
    handle = await engine.submit("research", tenant="acme", input="write it")
    review = await asyncio.wait_for(opened.get(), timeout=30)
    await engine.reviews.decide(
        "acme", review.id, reviewer="rita", approve=False, comment="not this title"
    )
    with pytest.raises(tf.RunFailedError, match="not this title") as failed:
        await handle.result()
    assert failed.value.fields["status"] in ("failed", "compensated")
    assert f"review {review.id}" in failed.value.fields["error"]
    assert EFFECTS == {}
    assert len(server.requests) == 1
    events = await engine.timeline("acme", handle.id)
    assert [e.data["error"] for e in events if e.kind == "step.failed"] == [
        f"step 'research' failed: review {review.id} not this title"
    ]
    assert "step.retrying" not in [e.kind for e in events]  # a rejection is not retried


async def test_a_rate_limited_tool_parks_the_step_and_nothing_is_repeated(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create(
        "acme",
        tier="enterprise",
        rate_limits={"tool:lookup": {"rate": "5/second", "burst": 1}},
    )
    agent = agents.Agent(name="researcher", instructions="Research.", tools=[lookup])
    server.queue(tool_calls=[("lookup", {"topic": "tides"}), ("lookup", {"topic": "moons"})])
    server.queue(text="Tides follow moons.")
    engine.register(research_workflow(agent))
    run = await (await engine.submit("research", tenant="acme", input="why tides?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert EFFECTS == {"lookup:tides": 1, "lookup:moons": 1}
    assert len(server.requests) == 2
    tool_msgs = [m for m in server.requests[1].body["messages"] if m["role"] == "tool"]
    assert sorted(m["content"] for m in tool_msgs) == ["facts about moons", "facts about tides"]
    # The limit parked the step (no slot held), it did not fail an attempt through the SDK.
    events = await engine.timeline("acme", run.id)
    deferred = [e.data["reason"] for e in events if e.kind == "step.deferred"]
    assert deferred and deferred[0].startswith("rate limit tool:lookup")
    assert "step.retrying" not in [e.kind for e in events]


def streaming_workflow(agent: Any, seen: list[tuple[int, str]], *, crash_once: bool) -> tf.Workflow:
    """A step that streams the agent's run; ``seen`` gets (attempt, text delta) in order."""
    from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

    wf = tf.Workflow("stream", input=str)
    crashed: list[bool] = []

    @wf.step(retry=tf.Retry(max_attempts=2, jitter=0.0))
    async def research(ctx: tf.StepContext, input: str) -> str:
        async def on_event(event: Any) -> None:
            if event.type != "raw_response_event":
                return
            if isinstance(event.data, ResponseTextDeltaEvent):
                seen.append((ctx.attempt, event.data.delta))
            elif isinstance(event.data, ResponseCompletedEvent):
                seen.append((ctx.attempt, "<completed>"))

        answer = str(await run_agent(ctx, agent, input, on_event=on_event))
        if crash_once and not crashed:
            crashed.append(True)
            raise RuntimeError("the attempt dies after the agent finished")
        return answer

    return wf


async def test_a_streamed_run_streams_through_the_gateway_and_replays_when_finished(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    agent = agents.Agent(name="researcher", instructions="Research.", tools=[lookup])
    server.queue(tool_calls=[("lookup", {"topic": "tides"}), ("lookup", {"topic": "moons"})])
    server.queue(text="Tides follow the moon.")
    seen: list[tuple[int, str]] = []
    engine.register(streaming_workflow(agent, seen, crash_once=True))
    run = await (await engine.submit("stream", tenant="acme", input="why tides?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert json.loads(run.result_json or b"") == "Tides follow the moon."
    assert all(r.body["stream"] is True for r in server.requests)  # streamed from the vendor
    assert len(server.requests) == 2  # the second attempt replayed both calls
    first = [d for a, d in seen if a == 1]
    second = [d for a, d in seen if a == 2]
    # The first attempt got the answer word by word as the server sent it, then the end.
    assert first == ["<completed>", "Tides", " follow", " the", " moon.", "<completed>"]
    # The re-executed attempt replayed the finished stream: the whole text in one delta.
    assert second == ["<completed>", "Tides follow the moon.", "<completed>"]
    assert EFFECTS == {"lookup:tides": 1, "lookup:moons": 1}
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    assert usage[("model_calls", "local")] == 2
    from tenantflow.engine.gateway import response_from_json

    from .common import cost_micros

    recorded = await engine.store.recorded_calls("acme", run.id, "research")
    models = [response_from_json(r) for k, _, r in recorded.values() if k == "model"]
    assert len(models) == 2 and all(m.tokens_out > 0 for m in models)
    spent = sum(cost_micros(m.tokens_in, m.tokens_out) for m in models)
    ledger = {(b["scope"], b["unit"]): b for b in await engine.budget("acme")}
    assert int(ledger[("period", "micros")]["spent"]) == spent
    assert int(ledger[("period", "micros")]["reserved"]) == 0


async def test_a_streamed_run_carries_a_rate_limit_out_of_the_sdk(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create(
        "acme",
        tier="enterprise",
        rate_limits={"tool:lookup": {"rate": "5/second", "burst": 1}},
    )
    agent = agents.Agent(name="researcher", instructions="Research.", tools=[lookup])
    server.queue(tool_calls=[("lookup", {"topic": "tides"}), ("lookup", {"topic": "moons"})])
    server.queue(text="Tides follow moons.")
    seen: list[tuple[int, str]] = []
    engine.register(streaming_workflow(agent, seen, crash_once=False))
    run = await (await engine.submit("stream", tenant="acme", input="why tides?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert EFFECTS == {"lookup:tides": 1, "lookup:moons": 1}
    assert len(server.requests) == 2
    events = await engine.timeline("acme", run.id)
    assert "step.deferred" in [e.kind for e in events]
    assert "step.retrying" not in [e.kind for e in events]


async def test_a_stream_that_breaks_is_charged_for_what_it_produced_and_streams_again(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    agent = agents.Agent(name="writer", instructions="Write.")
    server.queue(text="Tides follow the moon.", stream_break_after=2)  # two words, then cut
    server.queue(text="Tides follow the moon.")
    seen: list[tuple[int, str]] = []
    engine.register(streaming_workflow(agent, seen, crash_once=False))
    run = await (await engine.submit("stream", tenant="acme", input="tides?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert [d for a, d in seen if a == 1] == ["Tides", " follow"]  # then the stream broke
    assert [d for a, d in seen if a == 2] == ["Tides", " follow", " the", " moon.", "<completed>"]
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    ledger = {(b["scope"], b["unit"]): b for b in await engine.budget("acme")}
    spent = int(ledger[("period", "micros")]["spent"])
    assert spent == usage[("cost_micros", "model:test-model")] > 0
    assert int(ledger[("period", "micros")]["reserved"]) == 0
    from tenantflow.engine.gateway import response_from_json

    from .common import cost_micros

    recorded = await engine.store.recorded_calls("acme", run.id, "research")
    [whole] = [response_from_json(r) for k, _, r in recorded.values() if k == "model"]
    # The broken stream was priced for the words it produced, the retry in full: more than
    # the recorded call alone, and the broken one is not recorded.
    assert spent > cost_micros(whole.tokens_in, whole.tokens_out)
