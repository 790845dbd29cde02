"""MCP servers registered at run time for one tenant: its tools only, allow-listed twice (fail
closed), stored with an audit row in the tenant's data, found again after a restart, refused
cleanly when the server cannot be listed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.clock import SystemClock

pytest.importorskip("mcp")

from tenantflow.integrations.mcp_tenants import (
    NAMESPACE,
    TenantMCPServers,
    spec_from_json,
)
from tenantflow.integrations.mcp_tools import MCPServerSpec, register_mcp_server

SERVER = Path(__file__).with_name("mcp_notes_server.py")


def notes(log: Path, **options: Any) -> MCPServerSpec:
    return MCPServerSpec("notes", command=sys.executable, args=[str(SERVER), str(log)], **options)


def scribe() -> tf.Workflow:
    wf = tf.Workflow("scribe", input=str)

    @wf.step(retry=tf.Retry(max_attempts=1))
    async def write(ctx: tf.StepContext, input: str) -> str:
        return str(await ctx.tool("notes__note", text=input, key=ctx.idempotency_key))

    return wf


def _texts(log: Path) -> list[str]:
    return [line.split()[2] for line in log.read_text().splitlines()] if log.exists() else []


async def test_a_tenants_server_is_its_own_allow_listed_audited_and_durable(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 't.db'}"
    acme_log, beta_log = tmp_path / "acme.log", tmp_path / "beta.log"
    async with tf.Engine.open(db, clock=SystemClock()) as engine:
        servers = TenantMCPServers.of(engine)
        assert TenantMCPServers.of(engine) is servers  # one registry per engine
        await engine.tenants.create("acme", tier="enterprise", allowed_tools=["notes__note"])
        await engine.tenants.create("beta", tier="enterprise", allowed_tools=["notes__note"])
        await engine.tenants.create("gamma", tier="enterprise")  # allowed_tools: None
        names = await servers.register(
            "acme",
            notes(acme_log, env={"TOKEN": "s3cret"}, cost_usd=0.5),
            expose=["note"],
            actor="admin:ops",
        )
        assert names == ["notes__note"]
        [listed] = await servers.list_servers("acme")
        assert listed["tools"] == ["notes__note"] and listed["env"] == {"TOKEN": "***"}
        assert "s3cret" not in json.dumps(listed)
        assert await servers.list_servers("beta") == []
        engine.register(scribe())

        done = await (await engine.submit("scribe", tenant="acme", input="hello")).wait()
        assert done.status == tf.RunStatus.COMPLETED, done.error
        assert json.loads(done.result_json or b"") == "noted hello"
        # Another tenant's call of the same name finds nothing of acme's server.
        other = await (await engine.submit("scribe", tenant="beta", input="peek")).wait()
        assert other.status == tf.RunStatus.FAILED
        assert "no tool named 'notes__note'" in (other.error or "")
        assert _texts(acme_log) == ["hello"]
        # Beta gets a "notes" of its own: its calls reach its server, not acme's.
        await servers.register("beta", notes(beta_log))
        mine = await (await engine.submit("scribe", tenant="beta", input="mine")).wait()
        assert mine.status == tf.RunStatus.COMPLETED, mine.error
        assert (_texts(acme_log), _texts(beta_log)) == (["hello"], ["mine"])
        # A tenant whose policy does not name the tool is refused (fail closed), audited.
        await servers.register("gamma", notes(tmp_path / "gamma.log"))
        refused = await (await engine.submit("scribe", tenant="gamma", input="no")).wait()
        assert refused.status == tf.RunStatus.FAILED
        assert not (tmp_path / "gamma.log").exists()
        denied = [a.subject for a in await engine.audit_log("gamma") if a.action == "tool.denied"]
        assert denied == ["tool:notes__note"]

        audit = [a for a in await engine.audit_log("acme") if a.action.startswith("mcp_server.")]
        assert [(a.actor, a.action, a.subject) for a in audit] == [
            ("admin:ops", "mcp_server.registered", "mcp_server:notes")
        ]
        assert audit[0].detail == {"transport": "stdio", "tools": ["notes__note"]}
        usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
        assert usage[("cost_micros", "tool:notes__note")] == 500_000
        # The registration lives in a namespace the memory API refuses.
        with pytest.raises(tf.ConfigurationError):
            await engine.memory.get("acme", "notes", namespace=NAMESPACE)

    # After a restart the registration is read back from the tenant's store.
    async with tf.Engine.open(db, clock=SystemClock()) as engine:
        servers = TenantMCPServers.of(engine)
        engine.register(scribe())
        again = await (await engine.submit("scribe", tenant="acme", input="again")).wait()
        assert again.status == tf.RunStatus.COMPLETED, again.error
        assert _texts(acme_log) == ["hello", "again"]
        await servers.remove("acme", "notes", actor="admin:ops")
        gone = await (await engine.submit("scribe", tenant="acme", input="gone")).wait()
        assert gone.status == tf.RunStatus.FAILED and _texts(acme_log) == ["hello", "again"]
        with pytest.raises(tf.NotFoundError):
            await servers.remove("acme", "notes")
        actions = [a.action for a in await engine.audit_log("acme")]
        assert actions.count("mcp_server.removed") == 1
        assert (await engine.audit_verify("acme")).ok


async def test_bad_registrations_write_nothing(tmp_path: Path) -> None:
    async with tf.Engine.open(f"sqlite:///{tmp_path / 'b.db'}", clock=SystemClock()) as engine:
        servers = TenantMCPServers.of(engine)
        await engine.tenants.create("acme", tier="enterprise")
        before = len(await engine.audit_log("acme"))
        with pytest.raises(tf.ConfigurationError, match="lists no tool 'nope'"):
            await servers.register("acme", notes(tmp_path / "n.log"), expose=["nope"])
        gone = MCPServerSpec("gone", command=sys.executable, args=["-c", "raise SystemExit(3)"])
        with pytest.raises(tf.ConfigurationError, match="could not be listed"):
            await servers.register("acme", gone)
        with pytest.raises(tf.NotFoundError):
            await servers.register("nobody", notes(tmp_path / "n.log"))
        await register_mcp_server(engine.tools, notes(tmp_path / "platform.log"))
        with pytest.raises(tf.ConfigurationError, match="one of the platform's"):
            await servers.register("acme", notes(tmp_path / "n.log"))
        assert await servers.list_servers("acme") == []
        assert len(await engine.audit_log("acme")) == before


def test_spec_from_json_refuses_bad_fields() -> None:
    assert spec_from_json({"name": "crm", "url": "http://127.0.0.1:1/mcp"}).url is not None
    for bad, field in (
        ({"name": "crm", "url": "http://x/mcp", "shell": "rm"}, "shell"),
        ({"name": "", "url": "http://x/mcp"}, "name"),
        ({"name": "crm", "url": "http://x/mcp", "args": "x"}, "args"),
        ({"name": "crm", "url": "http://x/mcp", "headers": {"a": 1}}, "headers"),
        ({"name": "crm", "url": "http://x/mcp", "cost_usd": float("inf")}, "cost_usd"),
        ({"name": "crm", "url": "http://x/mcp", "pool_size": True}, "pool_size"),
        ({"name": "crm"}, "command"),
        ({"name": "a__b", "url": "http://x/mcp"}, "name"),
    ):
        with pytest.raises(tf.ConfigurationError) as err:
            spec_from_json(bad)
        assert err.value.fields["field"] == field, bad
