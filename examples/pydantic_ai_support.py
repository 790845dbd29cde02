"""A PydanticAI support agent as a durable, governed step.

Run it with ``python examples/pydantic_ai_support.py``.

The agent is plain PydanticAI code with two additions: tenantflow's model (``TenantflowModel``)
and its durability capability (``TenantflowDurability``, PydanticAI's public extension point for
durable engines). Model requests then go through the tenant's gateway, tool calls through the
gateway's tool path, each recorded: a step re-executed after a crash replays them instead of
calling (and paying) again. The tenant ``acme`` may not issue refunds (``denied_tools``): the
model's refund call is refused, audited, and the model is told, while ``globex`` may.
Cancelling an order needs a person (``requires_approval=True``): the call becomes a review task
in the tenant's reviewer pool, the step waits holding no slot, and once a reviewer approves the
agent goes on from its recorded messages, its answer streamed through the gateway to an
``event_stream_handler``. It runs offline against tenantflow's local OpenAI-compatible test
server.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

import tenantflow as tf
from tenantflow.adapters.providers import OpenAIProvider
from tenantflow.adapters.providers.testserver import OpenAITestServer
from tenantflow.integrations.pydantic_ai import (
    TenantflowDurability,
    TenantflowModel,
    register_tools,
    run_agent,
)

ORDERS = {"A100": "shipped on Monday", "B200": "delayed by the carrier"}
support = Agent(
    TenantflowModel(),
    name="support",
    instructions="Help the customer with their orders.",
    capabilities=[TenantflowDurability()],
)


@support.tool_plain
async def order_status(order: str) -> str:
    """Where an order is."""
    return ORDERS.get(order, "no such order")


@support.tool_plain
async def refund(order: str) -> str:
    """Refund an order."""
    return f"refunded {order}"


@support.tool_plain(requires_approval=True)
async def cancel_order(order: str) -> str:
    """Cancel an order (a person approves it first)."""
    return f"cancelled {order}"


STREAMED: list[str] = []


async def show_stream(_run: Any, events: Any) -> None:
    """The answer's text as the model streams it."""
    async for event in events:
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
            STREAMED.append(event.part.content)
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            STREAMED.append(event.delta.content_delta)


def workflow() -> tf.Workflow:
    wf = tf.Workflow("support", input=str)

    @wf.step
    async def answer(ctx: tf.StepContext, input: str) -> str:
        return str(await run_agent(ctx, support, input, event_stream_handler=show_stream))

    return wf


async def main(server: OpenAITestServer, db: Path) -> None:
    engine = tf.Engine.open(f"sqlite:///{db}")
    engine.models.add(
        tf.Endpoint(
            name="local",
            provider="openai",
            model="gpt-test",
            region="us-east-1",
            tier="large",
            price_in_per_1k_micros=150,
            price_out_per_1k_micros=600,
            max_context=128_000,
        ),
        OpenAIProvider("local", base_url=server.base_url),
    )
    register_tools(engine.tools, ["order_status"], cost_usd=0.001)
    register_tools(engine.tools, ["refund"], cost_usd=0.05)
    engine.register(workflow())
    async with engine:
        await engine.tenants.create("acme", tier="enterprise", denied_tools=["refund"])
        await engine.tenants.create("globex", tier="enterprise")
        for tenant in ("acme", "globex"):
            server.queue(
                tool_calls=[("order_status", {"order": "B200"}), ("refund", {"order": "B200"})]
            )
            server.queue(text=f"Order B200 is delayed by the carrier. ({tenant})")
            run = await (
                await engine.submit("support", tenant=tenant, input="Where is B200? Refund it.")
            ).wait()
            print(f"{tenant}: run {run.status.value}: {(run.result_json or b'').decode()}")
            told = [
                m["content"]
                for m in server.requests[-1].body["messages"]
                if m["role"] == "tool" and "refund" in str(m.get("content"))
            ]
            print(f"  the model was told: {told[0] if told else '-'}")
            denied = [
                a.subject for a in await engine.audit_log(tenant) if a.action == "tool.denied"
            ]
            print(f"  refused and audited: {denied or 'nothing'}")
            usage = await engine.usage(tenant)
            cost = sum(int(r["value"]) for r in usage if r["metric"] == "cost_micros")
            tools = sorted(r["dim"] for r in usage if r["metric"] == "tool_calls")
            print(f"  tools called: {tools}; cost ${cost / 1e6:.6f}")

        # A cancellation waits for a reviewer; the agent resumes from its recorded messages.
        opened: asyncio.Queue[Any] = asyncio.Queue()
        engine.reviews.subscribe(opened.put_nowait)
        server.queue(tool_calls=[("cancel_order", {"order": "A100"})])
        server.queue(text="Order A100 is cancelled.")
        STREAMED.clear()
        handle = await engine.submit("support", tenant="globex", input="Cancel A100.")
        review = await asyncio.wait_for(opened.get(), timeout=60)
        print(f"globex review opened: {review.payload['request']['reason']}")
        await engine.reviews.decide("globex", review.id, reviewer="rita", approve=True)
        run = await handle.wait()
        print(f"  approved by rita; run {run.status.value}: {(run.result_json or b'').decode()}")
        print(f"  streamed: {[d for d in STREAMED if d]}")


if __name__ == "__main__":
    with OpenAITestServer() as test_server, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(test_server, Path(tmp) / "support.db"))
