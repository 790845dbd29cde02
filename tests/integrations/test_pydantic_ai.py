"""A PydanticAI agent as a step through its public durability capability: model requests through
the tenant's gateway (priced, recorded, replayed), tool calls through the gateway's tool path
(allow list, price), recorded by tool-call id."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.providers.testserver import OpenAITestServer

pydantic_ai = pytest.importorskip("pydantic_ai")

from tenantflow.integrations.pydantic_ai import (  # noqa: E402
    TenantflowDurability,
    TenantflowModel,
    register_tools,
    run_agent,
)

from .common import open_engine  # noqa: E402

EFFECTS: Counter[str] = Counter()


def support_agent() -> Any:
    agent = pydantic_ai.Agent(
        TenantflowModel(),
        name="support",
        instructions="Help the customer.",
        capabilities=[TenantflowDurability()],
    )

    @agent.tool_plain
    async def order_status(order: str) -> str:
        """The status of an order."""
        EFFECTS[f"status:{order}"] += 1
        return f"order {order} shipped"

    return agent


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    EFFECTS.clear()
    with OpenAITestServer() as s:
        yield s


@pytest.fixture
async def engine(tmp_path: Path, server: OpenAITestServer) -> AsyncIterator[tf.Engine]:
    async with open_engine(str(tmp_path / "pai.db"), server.base_url) as eng:
        yield eng


def support_workflow(agent: Any, *, crash_once: bool = False, attempts: int = 2) -> tf.Workflow:
    wf = tf.Workflow("support", input=str)
    crashed: list[bool] = []

    @wf.step(retry=tf.Retry(max_attempts=attempts, jitter=0.0))
    async def answer(ctx: tf.StepContext, input: str) -> str:
        output = str(await run_agent(ctx, agent, input))
        if crash_once and not crashed:
            crashed.append(True)
            raise RuntimeError("the attempt dies after the agent finished")
        return output

    return wf


async def test_model_and_parallel_tools_are_governed_and_replayed(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    register_tools(engine.tools, ["order_status"], cost_usd=0.25)
    server.queue(tool_calls=[("order_status", {"order": "A1"}), ("order_status", {"order": "B2"})])
    server.queue(text="Both orders shipped.")
    engine.register(support_workflow(support_agent(), crash_once=True))
    run = await (await engine.submit("support", tenant="acme", input="my orders?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert json.loads(run.result_json or b"") == "Both orders shipped."
    assert len(server.requests) == 2  # the second attempt replayed every call
    assert EFFECTS == {"status:A1": 1, "status:B2": 1}
    first, second = (r.body for r in server.requests)
    assert first["messages"][0] == {"role": "system", "content": "Help the customer."}
    assert [t["function"]["name"] for t in first["tools"]] == ["order_status"]
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert sorted(m["content"] for m in tool_msgs) == ["order A1 shipped", "order B2 shipped"]
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    assert usage[("model_calls", "local")] == 2
    assert usage[("tool_calls", "order_status")] == 2
    assert usage[("cost_micros", "tool:order_status")] == 500_000
    assert (await engine.audit_verify("acme")).ok


async def test_a_denied_tool_is_refused_audited_and_the_model_told(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise", denied_tools=["order_status"])
    server.queue(tool_calls=[("order_status", {"order": "A1"})])
    server.queue(text="I cannot check orders.")
    engine.register(support_workflow(support_agent()))
    run = await (await engine.submit("support", tenant="acme", input="my order?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert EFFECTS == {}
    retry = [m for m in server.requests[1].body["messages"] if m["role"] == "tool"]
    assert "not allowed" in retry[0]["content"]
    audit = await engine.audit_log("acme")
    assert [a.subject for a in audit if a.action == "tool.denied"] == ["tool:order_status"]


async def test_outside_a_step_the_model_refuses() -> None:
    with pytest.raises(tf.ConfigurationError, match="inside a step"):
        await support_agent().run("hello")


async def test_a_rate_limited_tool_parks_the_step_and_nothing_is_repeated(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create(
        "acme",
        tier="enterprise",
        rate_limits={"tool:order_status": {"rate": "5/second", "burst": 1}},
    )
    server.queue(tool_calls=[("order_status", {"order": "A1"}), ("order_status", {"order": "B2"})])
    server.queue(text="Both orders shipped.")
    engine.register(support_workflow(support_agent()))
    run = await (await engine.submit("support", tenant="acme", input="my orders?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert EFFECTS == {"status:A1": 1, "status:B2": 1}
    assert len(server.requests) == 2
    events = await engine.timeline("acme", run.id)
    deferred = [e.data["reason"] for e in events if e.kind == "step.deferred"]
    assert deferred and deferred[0].startswith("rate limit tool:order_status")
    assert "step.retrying" not in [e.kind for e in events]


def refund_agent() -> Any:
    """An agent with a tool that needs approval, one that a person answers, and a tool that
    asks the model to try again."""
    agent = support_agent()

    @agent.tool_plain(requires_approval=True)
    async def refund(order: str) -> str:
        """Refund an order."""
        EFFECTS[f"refund:{order}"] += 1
        return f"order {order} refunded"

    @agent.tool_plain
    async def ask_customer(question: str) -> str:
        """Ask the customer a question; a person answers."""
        EFFECTS[f"ask:{question}"] += 1
        raise pydantic_ai.CallDeferred(kind="question")

    @agent.tool_plain
    async def lookup_order(order: str) -> str:
        """Look an order up."""
        EFFECTS[f"lookup:{order}"] += 1
        if not order.startswith("A"):
            raise pydantic_ai.ModelRetry("orders start with A")
        return f"order {order} found"

    return agent


async def _next_review(engine: tf.Engine, opened: asyncio.Queue[Any]) -> Any:
    return await asyncio.wait_for(opened.get(), timeout=30)


async def test_approval_and_a_deferred_call_become_reviews_and_the_agent_resumes(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    register_tools(engine.tools, ["refund"], cost_usd=0.5)
    server.queue(
        tool_calls=[("refund", {"order": "A1"}), ("ask_customer", {"question": "which card?"})]
    )
    server.queue(text="Refunded A1 to the visa card.")
    engine.register(support_workflow(refund_agent(), crash_once=True, attempts=5))
    opened: asyncio.Queue[Any] = asyncio.Queue()
    engine.reviews.subscribe(opened.put_nowait)
    handle = await engine.submit("support", tenant="acme", input="refund A1")
    first = await _next_review(engine, opened)
    assert first.payload["kind"] == "escalation"
    assert (
        "refund" in first.payload["request"]["prompt"]
        and "A1" in first.payload["request"]["prompt"]
    )
    assert EFFECTS == {"ask:which card?": 1}  # the refund waits for its reviewer
    await engine.reviews.decide("acme", first.id, reviewer="rita", approve=True)
    second = await _next_review(engine, opened)
    assert "ask_customer" in second.payload["request"]["prompt"]
    await engine.reviews.decide("acme", second.id, reviewer="rita", approve=True, comment="visa")
    run = await handle.wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert json.loads(run.result_json or b"") == "Refunded A1 to the visa card."
    # Resumed from the recorded messages: one model call before the pause, one after; the
    # attempt that died after the agent finished replayed everything.
    assert len(server.requests) == 2
    assert EFFECTS == {"ask:which card?": 1, "refund:A1": 1}
    tool_msgs = {m["content"] for m in server.requests[1].body["messages"] if m["role"] == "tool"}
    assert tool_msgs == {"order A1 refunded", "visa"}
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    assert usage[("cost_micros", "tool:refund")] == 500_000  # the approved call, charged once
    assert sum(v for (metric, _), v in usage.items() if metric == "reviews") == 2
    assert "tool:ask_customer" not in {d for _, d in usage}  # a deferral is not a paid call
    assert (await engine.audit_verify("acme")).ok


async def test_a_rejected_approval_fails_the_step_with_the_tool_never_called(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    server.queue(tool_calls=[("refund", {"order": "A1"})])
    engine.register(support_workflow(refund_agent()))
    opened: asyncio.Queue[Any] = asyncio.Queue()
    engine.reviews.subscribe(opened.put_nowait)
    handle = await engine.submit("support", tenant="acme", input="refund A1")
    review = await _next_review(engine, opened)
    await engine.reviews.decide(
        "acme", review.id, reviewer="rita", approve=False, comment="no refunds today"
    )
    with pytest.raises(tf.RunFailedError, match="no refunds today") as failed:
        await handle.result()
    assert failed.value.fields["status"] in ("failed", "compensated")
    assert EFFECTS == {}
    assert len(server.requests) == 1


async def test_a_tool_asking_the_model_to_retry_is_an_answer_not_a_failure(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    server.queue(tool_calls=[("lookup_order", {"order": "B2"})])
    server.queue(tool_calls=[("lookup_order", {"order": "A2"})])
    server.queue(text="Found A2.")
    engine.register(support_workflow(refund_agent()))
    run = await (await engine.submit("support", tenant="acme", input="find B2")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    retry = [m for m in server.requests[1].body["messages"] if m["role"] == "tool"]
    assert "orders start with A" in retry[0]["content"]
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    # Both calls ran (the first answered with a retry prompt): both are recorded, so a
    # re-executed attempt replays the prompt instead of running the tool again.
    assert usage[("tool_calls", "lookup_order")] == 2
    assert EFFECTS == {"lookup:B2": 1, "lookup:A2": 1}


async def test_a_tool_that_asks_for_approval_itself_runs_again_once_approved(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    await engine.tenants.create("acme", tier="enterprise")
    agent = support_agent()

    @agent.tool
    async def cancel_order(ctx: pydantic_ai.RunContext[None], order: str) -> str:
        """Cancel an order (a large one needs approval)."""
        EFFECTS[f"cancel:{order}:{ctx.tool_call_approved}"] += 1
        if order.startswith("BIG") and not ctx.tool_call_approved:
            raise pydantic_ai.ApprovalRequired(metadata={"why": "large order"})
        return f"order {order} cancelled"

    register_tools(engine.tools, ["cancel_order"], cost_usd=0.1)
    server.queue(tool_calls=[("cancel_order", {"order": "BIG7"})])
    server.queue(text="Cancelled BIG7.")
    engine.register(support_workflow(agent, attempts=3))
    opened: asyncio.Queue[Any] = asyncio.Queue()
    engine.reviews.subscribe(opened.put_nowait)
    handle = await engine.submit("support", tenant="acme", input="cancel BIG7")
    review = await _next_review(engine, opened)
    assert "cancel_order" in review.payload["request"]["prompt"]
    await engine.reviews.decide("acme", review.id, reviewer="rita", approve=True)
    run = await handle.wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert EFFECTS == {"cancel:BIG7:False": 1, "cancel:BIG7:True": 1}
    assert len(server.requests) == 2
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    # Asking for approval is no result: only the approved call is recorded and charged.
    assert usage[("tool_calls", "cancel_order")] == 1
    assert usage[("cost_micros", "tool:cancel_order")] == 100_000


async def test_a_streamed_run_streams_through_the_gateway_and_replays_when_finished(
    engine: tf.Engine, server: OpenAITestServer
) -> None:
    from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

    await engine.tenants.create("acme", tier="enterprise")
    server.queue(tool_calls=[("order_status", {"order": "A1"})])
    server.queue(text="Your order A1 shipped.")
    seen: list[tuple[int, str]] = []
    wf = tf.Workflow("support", input=str)
    crashed: list[bool] = []
    agent = support_agent()

    @wf.step(retry=tf.Retry(max_attempts=2, jitter=0.0))
    async def answer(ctx: tf.StepContext, input: str) -> str:
        async def handler(_run: Any, events: Any) -> None:
            async for event in events:
                if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                    seen.append((ctx.attempt, event.part.content))
                elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                    seen.append((ctx.attempt, event.delta.content_delta))

        output = str(await run_agent(ctx, agent, input, event_stream_handler=handler))
        if not crashed:
            crashed.append(True)
            raise RuntimeError("the attempt dies after the agent finished")
        return output

    engine.register(wf)
    run = await (await engine.submit("support", tenant="acme", input="my order?")).wait()
    assert run.status == tf.RunStatus.COMPLETED, run.error
    assert json.loads(run.result_json or b"") == "Your order A1 shipped."
    assert [r.body["stream"] for r in server.requests] == [True, True]  # streamed, then replayed
    first = "".join(d for a, d in seen if a == 1)
    assert first == "Your order A1 shipped."
    assert len([d for a, d in seen if a == 1 and d]) == 4  # word by word, as the server sent it
    assert [d for a, d in seen if a == 2 and d] == ["Your order A1 shipped."]  # one replayed delta
    assert EFFECTS == {"status:A1": 1}
    ledger = {(b["scope"], b["unit"]): b for b in await engine.budget("acme")}
    assert int(ledger[(f"run:{run.id}", "micros")]["spent"]) > 0
    assert int(ledger[(f"run:{run.id}", "micros")]["reserved"]) == 0
