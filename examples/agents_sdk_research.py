"""An OpenAI Agents SDK agent as a durable, governed step.

Run it with ``python examples/agents_sdk_research.py``.

The agent is plain Agents SDK code (``Agent``, ``@function_tool``, ``needs_approval``). tenantflow
runs it inside a step: its model calls go through the tenant's gateway (endpoint by tier and
region, rate limits, budget reserved and settled, each call recorded), its tools through the
gateway's tool path (allow list, price, recorded by tool-call id), and the tool that needs
approval becomes a review task; the run resumes from the SDK's saved state once a reviewer
approves. It runs offline: the model is tenantflow's local OpenAI-compatible test server,
scripted to ask for two lookups at once, then to publish, then to answer.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from agents import Agent, function_tool

import tenantflow as tf
from tenantflow.adapters.providers import OpenAIProvider
from tenantflow.adapters.providers.testserver import OpenAITestServer
from tenantflow.integrations.openai_agents import register_function_tools, run_agent

NOTES = {"tides": "driven by the Moon's gravity", "moons": "Earth has one, 384,400 km away"}


@function_tool
async def lookup(topic: str) -> str:
    """Look a topic up in the notes."""
    return NOTES.get(topic, "nothing found")


@function_tool(needs_approval=True)
async def publish(title: str) -> str:
    """Publish a report (a reviewer approves it first)."""
    return f"published {title!r}"


researcher = Agent(
    name="researcher",
    instructions="Research the question, publish a short report, then answer.",
    tools=[lookup, publish],
)


def workflow() -> tf.Workflow:
    wf = tf.Workflow("sdk_research", input=str)

    @wf.step
    async def research(ctx: tf.StepContext, input: str) -> str:
        return str(await run_agent(ctx, researcher, input))

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
    register_function_tools(engine.tools, [lookup], cost_usd=0.002)
    engine.register(workflow())
    async with engine:
        await engine.tenants.create("acme", tier="enterprise")
        opened: asyncio.Queue[Any] = asyncio.Queue()
        engine.reviews.subscribe(opened.put_nowait)
        handle = await engine.submit("sdk_research", tenant="acme", input="Why are there tides?")
        review = await opened.get()
        print(f"review opened: {review.payload['request']['reason']}")
        await engine.reviews.decide("acme", review.id, reviewer="rita", approve=True)
        run = await handle.wait()
        print(f"run {run.status.value}: {(run.result_json or b'').decode()}")
        for event in await engine.timeline("acme", run.id):
            if event.kind in ("model.call", "review.requested", "step.resumed", "run.completed"):
                print(f"  {event.kind}")
        usage = await engine.usage("acme")
        totals: dict[str, int] = {}
        for row in usage:
            totals[row["metric"]] = totals.get(row["metric"], 0) + int(row["value"])
        print(
            f"model calls={totals.get('model_calls', 0)} tool calls={totals.get('tool_calls', 0)}"
            f" cost=${totals.get('cost_micros', 0) / 1e6:.6f}"
        )
        print(f"audit chain ok: {(await engine.audit_verify('acme')).ok}")


if __name__ == "__main__":
    with OpenAITestServer() as test_server, tempfile.TemporaryDirectory() as tmp:
        test_server.queue(
            tool_calls=[("lookup", {"topic": "tides"}), ("lookup", {"topic": "moons"})]
        )
        test_server.queue(tool_calls=[("publish", {"title": "Tides"})])
        test_server.queue(text="Tides are driven by the Moon's gravity; the report is published.")
        asyncio.run(main(test_server, Path(tmp) / "sdk.db"))
