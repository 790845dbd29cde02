"""MCP servers' tools as gateway tools: named ``server__tool``, fail closed per tenant (never
listed, never called, refusals audited), priced, and recorded like any tool."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock
from tenantflow.integrations.mcp_tools import (
    MCPPool,
    MCPServerSpec,
    mcp_tool_names,
    pool_of,
    register_mcp_server,
    visible_tools,
)

pytest.importorskip("mcp")

SERVER = Path(__file__).with_name("mcp_notes_server.py")


def notes(log: Path, **options: float) -> MCPServerSpec:
    return MCPServerSpec("notes", command=sys.executable, args=[str(SERVER), str(log)], **options)  # type: ignore[arg-type]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tf.Engine]:
    async with tf.Engine.open(f"sqlite:///{tmp_path / 'mcp.db'}", clock=SystemClock()) as eng:
        yield eng


def test_spec_refuses_bad_names_and_transports() -> None:
    with pytest.raises(tf.ConfigurationError):
        MCPServerSpec("a__b", command="x")
    with pytest.raises(tf.ConfigurationError):
        MCPServerSpec("files")
    with pytest.raises(tf.ConfigurationError):
        MCPServerSpec("files", command="x", url="http://127.0.0.1:1/mcp")


async def test_unreachable_server_is_a_configuration_error(engine: tf.Engine) -> None:
    spec = MCPServerSpec("gone", command=sys.executable, args=["-c", "raise SystemExit(3)"])
    with pytest.raises(tf.ConfigurationError, match="could not be listed"):
        await register_mcp_server(engine.tools, spec)


async def test_tools_are_namespaced_filtered_priced_recorded_and_audited(
    engine: tf.Engine, tmp_path: Path
) -> None:
    log = tmp_path / "notes.log"
    names = await register_mcp_server(engine.tools, notes(log, cost_usd=0.25))
    assert names == ["notes__add", "notes__broken", "notes__crash", "notes__note"]
    assert mcp_tool_names(engine.tools) == names
    with pytest.raises(tf.ConfigurationError):  # registered once
        await register_mcp_server(engine.tools, notes(log))
    await engine.tenants.create("acme", tier="enterprise", allowed_tools=["notes__note"])
    await engine.tenants.create("open", tier="enterprise")  # allowed_tools: None
    acme = (await engine.tenants.get("acme")).policy
    other = (await engine.tenants.get("open")).policy
    assert visible_tools(engine.tools, acme, names) == ["notes__note"]
    assert visible_tools(engine.tools, other, names) == []  # fail closed: never listed

    wf = tf.Workflow("scribe", input=str)

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def write(ctx: tf.StepContext, input: str) -> list[str]:
        out = [str(await ctx.tool("notes__note", text=input, key=ctx.idempotency_key))]
        try:
            await ctx.tool("notes__add", a=1, b=2)
        except tf.NotAllowedError as exc:
            out.append(f"refused {exc.fields['tool']}")
        return out

    engine.register(wf)
    done = await (await engine.submit("scribe", tenant="acme", input="hello")).wait()
    assert done.status == tf.RunStatus.COMPLETED
    assert json.loads(done.result_json or b"") == ["noted hello", "refused notes__add"]
    refused = await (await engine.submit("scribe", tenant="open", input="nope")).wait()
    assert refused.status == tf.RunStatus.FAILED  # the first call is already refused
    assert [line.split()[2] for line in log.read_text().splitlines()] == ["hello"]

    for tenant, run in (("acme", done), ("open", refused)):
        audit = await engine.audit_log(tenant)
        denied = [a for a in audit if a.action == "tool.denied"]
        assert [a.subject for a in denied] == [
            "tool:notes__add" if tenant == "acme" else "tool:notes__note"
        ]
        assert (await engine.audit_verify(tenant)).ok
        calls = {}
        for step in await engine.steps(tenant, run.id):
            calls.update(await engine.store.recorded_calls(tenant, run.id, step.key))
        assert [c[:2] for c in calls.values()] == (
            [("tool", "notes__note")] if tenant == "acme" else []
        )
    usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
    assert usage[("tool_calls", "notes__note")] == 1
    assert usage[("cost_micros", "tool:notes__note")] == 250_000


async def test_a_tool_error_is_an_answer_for_the_model(engine: tf.Engine, tmp_path: Path) -> None:
    await register_mcp_server(engine.tools, notes(tmp_path / "n.log"))
    await engine.tenants.create("acme", tier="enterprise", allowed_tools=["notes__broken"])
    wf = tf.Workflow("broken", input=str)

    @wf.step
    async def call(ctx: tf.StepContext, input: str) -> str:
        return str(await ctx.tool("notes__broken"))

    engine.register(wf)
    done = await (await engine.submit("broken", tenant="acme", input="x")).wait()
    assert done.status == tf.RunStatus.COMPLETED
    assert (done.result_json or b"").decode().startswith('"error: ')


async def test_tenantflow_agents_see_an_mcp_tool_only_where_allowed(
    engine: tf.Engine, tmp_path: Path
) -> None:
    from tenantflow.adapters.providers import SimulatedProvider
    from tenantflow.domain.routing import Endpoint

    log = tmp_path / "notes.log"
    await register_mcp_server(engine.tools, notes(log))
    offered: dict[str, list[str]] = {}

    def respond(request: tf.ModelRequest) -> tf.ModelResponse:
        task = next(str(m["content"]) for m in request.messages if m.get("role") == "user")
        names = [t["function"]["name"] for t in request.tools]
        offered.setdefault(task, names)
        if "notes__note" in names and not any(m.get("role") == "tool" for m in request.messages):
            call = tf.ToolCall("c1", "notes__note", {"text": task, "key": "k"})
            return tf.ModelResponse("", 5, 5, request.model, tool_calls=(call,))
        return tf.ModelResponse(f"done {task}", 5, 5, request.model)

    engine.models.add(
        Endpoint(
            name="sim",
            provider="sim",
            model="sim",
            region="us-east-1",
            tier="large",
            price_in_per_1k_micros=0,
            price_out_per_1k_micros=0,
            max_context=100_000,
        ),
        SimulatedProvider(clock=SystemClock(), respond=respond),
    )
    await engine.tenants.create("acme", tier="enterprise", allowed_tools=["notes__note"])
    await engine.tenants.create("open", tier="enterprise")
    wf = tf.Workflow("scribe_agent", input=str)

    @wf.agent(tf.Agent(tools=("notes__note",), max_iterations=3))
    async def scribe(ctx: tf.StepContext, input: str) -> str:
        return input

    engine.register(wf)
    for tenant in ("acme", "open"):
        run = await (await engine.submit("scribe_agent", tenant=tenant, input=tenant)).wait()
        assert run.status == tf.RunStatus.COMPLETED, run.error
    assert offered == {"acme": ["notes__note"], "open": []}
    assert [line.split()[2] for line in log.read_text().splitlines()] == ["acme"]


def _pids(log: Path) -> list[int]:
    return [int(line.split()[0]) for line in log.read_text().splitlines()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_calls_share_a_pooled_session_and_a_dead_server_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "notes.log"
    async with tf.Engine.open(f"sqlite:///{tmp_path / 'p.db'}", clock=SystemClock()) as engine:
        await register_mcp_server(engine.tools, notes(log))
        await engine.tenants.create(
            "acme", tier="enterprise", allowed_tools=["notes__note", "notes__crash"]
        )
        wf = tf.Workflow("scribe", input=int)

        @wf.step(retry=tf.Retry(max_attempts=1))
        async def write(ctx: tf.StepContext, input: int) -> str:
            for i in range(input):
                await ctx.tool("notes__note", text=f"n{i}", key=ctx.idempotency_key)
            return "ok"

        crash = tf.Workflow("crash", input=str)

        @crash.step(retry=tf.Retry(max_attempts=1))
        async def die(ctx: tf.StepContext, input: str) -> str:
            return str(await ctx.tool("notes__crash"))

        engine.register(wf)
        engine.register(crash)
        pool = pool_of(engine.tools, "notes__note")
        first = await (await engine.submit("scribe", tenant="acme", input=5)).wait()
        assert first.status == tf.RunStatus.COMPLETED, first.error
        assert pool.opened == 1 and len(set(_pids(log))) == 1  # five calls, one server process
        dead = await (await engine.submit("crash", tenant="acme", input="x")).wait()
        assert dead.status == tf.RunStatus.FAILED  # the call failed like any failing tool
        again = await (await engine.submit("scribe", tenant="acme", input=2)).wait()
        assert again.status == tf.RunStatus.COMPLETED, again.error
        assert pool.opened == 2  # the dead session was dropped, a new one opened
        pids = _pids(log)
        assert len(set(pids)) == 2 and pids[-1] != pids[0]
        assert _alive(pids[-1])
    assert not _alive(pids[-1])  # closing the engine stopped the server


async def test_concurrent_calls_stay_within_the_pool(tmp_path: Path) -> None:
    log = tmp_path / "notes.log"
    pool = MCPPool(notes(log, pool_size=2))
    try:
        results = await asyncio.gather(
            *(pool.call("note", {"text": f"t{i}", "key": "k"}) for i in range(6))
        )
        assert [r.is_error for r in results] == [False] * 6
        assert pool.opened == 2 and len(set(_pids(log))) == 2
    finally:
        await pool.close()
    assert not any(_alive(pid) for pid in set(_pids(log)))


async def test_pool_size_zero_opens_a_connection_per_call(tmp_path: Path) -> None:
    log = tmp_path / "notes.log"
    pool = MCPPool(notes(log, pool_size=0))
    for i in range(2):
        await pool.call("note", {"text": f"t{i}", "key": "k"})
    assert pool.opened == 2 and len(set(_pids(log))) == 2
    with pytest.raises(tf.ConfigurationError, match="pool_size"):
        notes(log, pool_size=-1)
