"""MCP both ways: an MCP server's tools as governed gateway tools, and tenantflow as an MCP server.

Run it with ``python examples/mcp_tools.py``.

1. The platform registers an MCP server (this file, started with ``--serve``, over stdio). Its
   tools become gateway tools named ``kb__search`` and ``kb__delete``. MCP tools fail closed: the
   tenant ``acme`` may call ``kb__search`` only (its allow list names it), so an Agents SDK agent
   in its run is offered only that tool; calling ``kb__delete`` anyway is refused and audited.
   Each call is priced, rate-limited and recorded like any tool.
2. ``tenantflow serve`` answers MCP at ``/mcp``: here the app runs in-process and an MCP client,
   authenticated by acme's API key, lists acme's runs and reads one run's timeline.
3. The admin adds a server for the tenant ``globex`` alone while the platform runs (the admin
   API, ``POST /v1/admin/tenants/globex/mcp-servers``; the CLI's ``tenantflow mcp-servers add``
   does the same): its ``wiki__search`` exists for globex only — acme's call of that name finds
   no such tool — and the registration is audited in globex's chain.

It runs offline: the model is tenantflow's local OpenAI-compatible test server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx2
from agents import Agent
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

import tenantflow as tf
from tenantflow.adapters.providers import OpenAIProvider
from tenantflow.adapters.providers.testserver import OpenAITestServer
from tenantflow.api import create_app
from tenantflow.integrations.mcp_tools import MCPServerSpec, register_mcp_server
from tenantflow.integrations.openai_agents import gateway_tools, run_agent, tenant_tools

ARTICLES = {"tides": "Tides are driven by the Moon's gravity.", "waves": "Wind makes waves."}


def serve() -> None:
    """The knowledge-base MCP server (stdio)."""
    kb = MCPServer("kb", log_level="CRITICAL")

    @kb.tool()
    def search(query: str) -> str:
        """Search the knowledge base."""
        return next((text for key, text in ARTICLES.items() if key in query), "no match")

    @kb.tool()
    def delete(article: str) -> str:
        """Delete an article."""
        ARTICLES.pop(article, None)
        return f"deleted {article}"

    kb.run("stdio")


async def main(db: Path) -> None:
    wf = tf.Workflow("ask_kb", input=str)

    @wf.step
    async def ask(ctx: tf.StepContext, input: str) -> str:
        tools = gateway_tools(ctx)  # only what the tenant may call is listed
        print(f"offered to the agent: {[t.name for t in tools]}")
        try:
            await ctx.tool("kb__delete", article="tides")
        except tf.NotAllowedError as exc:
            print(f"kb__delete refused: {exc.message}")
        agent = Agent(name="librarian", instructions="Answer from the knowledge base.", tools=tools)
        return str(await run_agent(ctx, agent, input))

    wiki = tf.Workflow("ask_wiki", input=str)

    @wiki.step(retry=tf.Retry(max_attempts=1))
    async def look_up(ctx: tf.StepContext, input: str) -> str:
        own: list[Any] = await tenant_tools(ctx)  # its own servers' tools it may call
        agent = Agent(name="wiki", instructions="Answer from the wiki.", tools=own)
        return str(await run_agent(ctx, agent, input))

    peek = tf.Workflow("peek", input=str)

    @peek.step
    async def try_it(ctx: tf.StepContext, input: str) -> str:
        try:
            return str(await ctx.tool("wiki__search", query=input))
        except tf.NotFoundError as exc:
            return f"refused: {exc.message}"

    async def setup(engine: tf.Engine) -> None:
        spec = MCPServerSpec(
            "kb", command=sys.executable, args=[__file__, "--serve"], cost_usd=0.001
        )
        print(f"registered MCP tools: {await register_mcp_server(engine.tools, spec)}")
        engine.register(wf)
        engine.register(wiki)
        engine.register(peek)

    with OpenAITestServer() as model:
        model.queue(tool_calls=[("kb__search", {"query": "tides"})])
        model.queue(text="Tides are driven by the Moon's gravity.")
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
            OpenAIProvider("local", base_url=model.base_url),
        )
        app = create_app(engine, setup=[setup])
        async with app.router.lifespan_context(app):
            await engine.tenants.create("acme", tier="enterprise", allowed_tools=["kb__search"])
            _, key = await engine.keys.create("acme", name="assistant")
            run = await (await engine.submit("ask_kb", tenant="acme", input="Why tides?")).wait()
            print(f"run {run.status.value}: {(run.result_json or b'').decode()}")
            audit = [f"{a.action} {a.subject}" for a in await engine.audit_log("acme")]
            print(f"audited: {[a for a in audit if a.startswith('tool.')]}")

            http = httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app),
                base_url="http://tenantflow",
                headers={"Authorization": f"Bearer {key}"},
            )
            transport = streamable_http_client("http://tenantflow/mcp", http_client=http)
            async with http, Client(transport) as client:
                names = [t.name for t in (await client.list_tools()).tools]
                print(f"tenantflow's MCP tools: {names}")
                listed = await client.call_tool("list_runs", {})
                runs = json.loads(listed.content[0].text)  # type: ignore[union-attr]
                print(f"acme's runs over MCP: {[(r['workflow'], r['status']) for r in runs]}")
                timeline = await client.call_tool("get_run_timeline", {"run_id": run.id})
                kinds = [e["kind"] for e in json.loads(timeline.content[0].text)]  # type: ignore[union-attr]
                print(f"its timeline: {kinds[0]} … {kinds[-1]} ({len(kinds)} events)")

            # 3. A server for globex alone, added through the admin API while serving.
            await engine.tenants.create("globex", tier="enterprise", allowed_tools=["wiki__search"])
            _, admin = await engine.keys.create(None, name="ops")
            async with httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app),
                base_url="http://tenantflow",
                headers={"Authorization": f"Bearer {admin}"},
            ) as api:
                added = await api.post(
                    "/v1/admin/tenants/globex/mcp-servers",
                    json={
                        "name": "wiki",
                        "command": sys.executable,
                        "args": [__file__, "--serve"],
                        "expose": ["search"],
                    },
                )
                print(f"admin added for globex: {added.status_code} {added.json()['tools']}")
            model.queue(tool_calls=[("wiki__search", {"query": "waves"})])
            model.queue(text="Wind makes waves.")
            run = await (await engine.submit("ask_wiki", tenant="globex", input="Waves?")).wait()
            print(f"globex run {run.status.value}: {(run.result_json or b'').decode()}")
            other = await (await engine.submit("peek", tenant="acme", input="waves")).wait()
            print(f"acme calling wiki__search: {json.loads(other.result_json or b'null')}")
            audit = [f"{a.action} {a.subject}" for a in await engine.audit_log("globex")]
            print(f"globex audit: {[a for a in audit if a.startswith('mcp_server.')]}")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp) / "mcp.db"))
