"""A worker process for the integration kill tests (``test_integration_kill.py``); a script:

    python integration_worker.py --kind KIND --db DB --base-url URL --dir DIR

It opens ``sqlite:///DB`` with one model endpoint, the local OpenAI-compatible test server at
URL, and runs one ``research`` run (idempotency key ``r1``: resubmitting after a kill is safe)
whose step is an agent of KIND: ``openai-agents`` (an Agents SDK agent with a Python tool;
``openai-agents-stream``: the same, streamed, its text deltas appended to ``DIR/stream`` as
``<attempt> <delta>`` lines), ``pydantic-ai`` (a PydanticAI agent with a Python tool;
``pydantic-ai-stream``: streamed), ``mcp`` (an Agents SDK agent whose tool is an MCP server's,
over stdio) or ``mcp-tenant`` (the same server, registered at run time for the tenant alone).
The tool is ``lookup(topic)``: it waits until the file ``DIR/gate-<topic>`` exists (the test
opens gates to hold a call where it wants a kill), then appends
``<pid> <tool-call id> <topic>`` to ``DIR/effects`` (its side effect), flushed at once.
When the run ends its status and result go to ``DIR/result.json``.

With ``--approval`` the agent also has ``publish(title)``, which needs a reviewer's approval (the
call becomes a review task); the worker approves every open review of the tenant once the file
``DIR/approve`` exists, and ``publish`` appends ``<pid> <tool-call id> publish`` to the effects.
"""

# No ``from __future__ import annotations``: the SDKs read the tools' annotations at decoration
# time, and each SDK is imported only by the kind that uses it.
import argparse
import asyncio
import contextlib
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.adapters.providers import OpenAIProvider
from tenantflow.domain.routing import Endpoint

TOOL_PRICE_USD = 0.01
MCP_TOOL = "facts__lookup"
ENDPOINT = Endpoint(
    name="local",
    provider="openai",
    model="test-model",
    region="us-east-1",
    tier="large",
    price_in_per_1k_micros=1_000,
    price_out_per_1k_micros=2_000,
    max_context=100_000,
)


async def gate(directory: Path, topic: str) -> None:
    """Wait for the test to open this call's gate (a file)."""
    while not (directory / f"gate-{topic}").exists():  # noqa: ASYNC110 - another process's file
        await asyncio.sleep(0.005)


def effect(directory: Path, call_id: str, topic: str) -> None:
    with (directory / "effects").open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {call_id} {topic}\n")
        f.flush()
        os.fsync(f.fileno())


async def approver(engine: tf.Engine, directory: Path) -> None:
    """Approve every open review of the tenant once the test creates ``DIR/approve``."""
    while True:
        if (directory / "approve").exists():
            for review in await engine.reviews.list("acme"):
                # Decided meanwhile, or its run not driven yet: try again on the next round.
                with contextlib.suppress(tf.TenantflowError):
                    await engine.reviews.decide("acme", review.id, reviewer="ops", approve=True)
        await asyncio.sleep(0.01)


def openai_agents_step(
    engine: tf.Engine,
    directory: Path,
    *,
    mcp: bool,
    approval: bool = False,
    stream: bool = False,
    tenant_mcp: bool = False,
) -> Any:
    from agents import Agent, function_tool
    from agents.tool_context import ToolContext

    from tenantflow.integrations.openai_agents import (
        gateway_tools,
        register_function_tools,
        run_agent,
    )

    @function_tool
    async def lookup(ctx: ToolContext[Any], topic: str) -> str:
        """Look a topic up."""
        await gate(directory, topic)
        effect(directory, ctx.tool_call_id, topic)
        return f"facts about {topic}"

    @function_tool(needs_approval=True)
    async def publish(ctx: ToolContext[Any], title: str) -> str:
        """Publish a report."""
        effect(directory, ctx.tool_call_id, "publish")
        return f"published {title}"

    if not mcp:
        register_function_tools(engine.tools, [lookup, publish], cost_usd=TOOL_PRICE_USD)

    async def research(ctx: tf.StepContext, input: str) -> str:
        if tenant_mcp:  # the tenant's own server, registered at run time
            from tenantflow.integrations.openai_agents import tenant_tools

            tools: list[Any] = await tenant_tools(ctx)
        else:
            tools = gateway_tools(ctx, [MCP_TOOL]) if mcp else [lookup]
        if approval:
            tools.append(publish)
        agent = Agent(name="researcher", instructions="Research the topic.", tools=tools)
        if not stream:
            return str(await run_agent(ctx, agent, input))

        def on_event(event: Any) -> None:  # the text as it streams, one delta a line
            if event.type == "raw_response_event" and event.data.type.endswith("text.delta"):
                with (directory / "stream").open("a", encoding="utf-8") as f:
                    f.write(f"{ctx.attempt} {event.data.delta!r}\n")

        return str(await run_agent(ctx, agent, input, on_event=on_event))

    return research


def pydantic_ai_step(directory: Path, *, approval: bool = False, stream: bool = False) -> Any:
    from pydantic_ai import Agent, RunContext
    from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

    from tenantflow.integrations.pydantic_ai import TenantflowDurability, TenantflowModel, run_agent

    agent = Agent(
        TenantflowModel(),
        name="researcher",
        instructions="Research the topic.",
        capabilities=[TenantflowDurability()],
    )

    @agent.tool
    async def lookup(ctx: RunContext[None], topic: str) -> str:
        """Look a topic up."""
        await gate(directory, topic)
        effect(directory, ctx.tool_call_id or "", topic)
        return f"facts about {topic}"

    if approval:

        @agent.tool(requires_approval=True)
        async def publish(ctx: RunContext[None], title: str) -> str:
            """Publish a report."""
            effect(directory, ctx.tool_call_id or "", "publish")
            return f"published {title}"

    async def research(ctx: tf.StepContext, input: str) -> str:
        if not stream:
            return str(await run_agent(ctx, agent, input))

        async def handler(_run: Any, events: Any) -> None:  # the text as it streams
            async for event in events:
                delta = None
                if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                    delta = event.part.content
                elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                    delta = event.delta.content_delta
                if delta:
                    with (directory / "stream").open("a", encoding="utf-8") as f:
                        f.write(f"{ctx.attempt} {delta!r}\n")

        return str(await run_agent(ctx, agent, input, event_stream_handler=handler))

    return research


def facts_server(directory: Path) -> Any:
    from tenantflow.integrations.mcp_tools import MCPServerSpec

    server = Path(__file__).with_name("mcp_facts_server.py")
    return MCPServerSpec(
        "facts", command=sys.executable, args=[str(server), str(directory)], cost_usd=TOOL_PRICE_USD
    )


async def tenant_servers_of(engine: tf.Engine, servers: Any) -> list[Any]:
    """The tenant's registered servers (the tenant is created first if it is new)."""
    try:
        await engine.tenants.get("acme")
    except tf.NotFoundError:
        await engine.tenants.create("acme", tier="enterprise", allowed_tools=[MCP_TOOL])
    found: list[Any] = await servers.list_servers("acme")
    return found


async def main(kind: str, db: str, base_url: str, directory: Path, approval: bool) -> int:
    policy = tf.Policy.for_tier("enterprise", allowed_tools=["lookup", "publish", MCP_TOOL])
    engine = tf.Engine.open(
        f"sqlite:///{db}",
        clock=SystemClock(),
        slots=2,
        seed=1,
        auto_tenant=policy,
        lease=timedelta(seconds=1),
    )
    engine.models.add(ENDPOINT, OpenAIProvider("local", base_url=base_url, timeout_s=600))
    spec = facts_server(directory)
    tenant_servers = None
    if kind == "mcp":
        from tenantflow.integrations.mcp_tools import register_mcp_server

        await register_mcp_server(engine.tools, spec)
        step = openai_agents_step(engine, directory, mcp=True, approval=approval)
    elif kind == "mcp-tenant":
        from tenantflow.integrations.mcp_tenants import TenantMCPServers

        tenant_servers = TenantMCPServers.of(engine)  # before start: recovery finds its tools
        step = openai_agents_step(engine, directory, mcp=True, tenant_mcp=True)
    elif kind in ("openai-agents", "openai-agents-stream"):
        stream = kind == "openai-agents-stream"
        step = openai_agents_step(engine, directory, mcp=False, approval=approval, stream=stream)
    else:
        from tenantflow.integrations.pydantic_ai import register_tools

        register_tools(engine.tools, ["lookup", "publish"], cost_usd=TOOL_PRICE_USD)
        step = pydantic_ai_step(directory, approval=approval, stream=kind == "pydantic-ai-stream")
    wf = tf.Workflow("research", input=str)
    wf.step(retry=tf.Retry(max_attempts=5, initial=timedelta(milliseconds=50)))(step)
    engine.register(wf)
    async with engine:
        if tenant_servers is not None and not await tenant_servers_of(engine, tenant_servers):
            await tenant_servers.register("acme", spec, actor="admin:test")  # once, durably
        approving = asyncio.create_task(approver(engine, directory))
        handle = await engine.submit("research", tenant="acme", input="tides", idempotency_key="r1")
        record = await handle.wait()
        approving.cancel()
    result = {
        "status": record.status.value,
        "result": json.loads(record.result_json) if record.result_json else None,
        "error": record.error,
        "run_id": record.id,
    }
    (directory / "result.json").write_text(json.dumps(result))
    return 0 if record.status == tf.RunStatus.COMPLETED else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--kind",
        required=True,
        choices=(
            "openai-agents",
            "openai-agents-stream",
            "pydantic-ai",
            "pydantic-ai-stream",
            "mcp",
            "mcp-tenant",
        ),
    )
    parser.add_argument("--db", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--approval", action="store_true")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.kind, args.db, args.base_url, Path(args.dir), args.approval)))
