"""``/v1/admin/tenants/{tenant}/mcp-servers``: the admin registers, lists and removes one
tenant's MCP servers over the API; tenant keys are refused; bad bodies get a 4xx JSON error and
nothing is written; the tenant's steps call the server's tools, another tenant's cannot."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e" / "apps"))
from api_harness import Api, bearer, serving

pytest.importorskip("mcp")
pytestmark = pytest.mark.timeout(120)

SERVER = Path(__file__).with_name("mcp_notes_server.py")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(tmp_path) as served:
        wf = tf.Workflow("scribe", input=str)

        @wf.step(retry=tf.Retry(max_attempts=1))
        async def write(ctx: tf.StepContext, input: str) -> str:
            return str(await ctx.tool("notes__note", text=input, key=ctx.idempotency_key))

        served.engine.register(wf)
        yield served


def notes(log: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "notes", "command": sys.executable, "args": [str(SERVER), str(log)], **extra}


async def test_the_admin_registers_a_server_for_one_tenant(api: Api, tmp_path: Path) -> None:
    acme = await api.tenant("acme", allowed_tools=["notes__note"])
    beta = await api.tenant("beta", allowed_tools=["notes__note"])
    path = "/v1/admin/tenants/acme/mcp-servers"
    body = notes(tmp_path / "acme.log", env={"TOKEN": "s3cret"}, expose=["note"])
    for key in (acme, beta):  # a tenant's key is not an admin's
        r = await api.client.post(path, json=body, headers=bearer(key))
        assert r.status_code == 403, r.text
    r = await api.client.post(path, json=body, headers=api.admin)
    assert r.status_code == 201, r.text
    assert r.json() == {"tenant": "acme", "name": "notes", "tools": ["notes__note"]}
    r = await api.client.get(path, headers=api.admin)
    assert r.status_code == 200
    [server] = r.json()["servers"]
    assert server["env"] == {"TOKEN": "***"} and "s3cret" not in r.text
    r = await api.client.get("/v1/admin/tenants/beta/mcp-servers", headers=api.admin)
    assert r.json() == {"servers": []}

    run = await api.submit(acme, "scribe", "hello")
    done = await api.wait_run(acme, run["id"], ("completed", "failed"), timeout=60)
    assert done["status"] == "completed", done
    run = await api.submit(beta, "scribe", "peek")
    other = await api.wait_run(beta, run["id"], ("completed", "failed"), timeout=60)
    assert other["status"] == "failed" and "no tool named" in other["error"]
    assert (tmp_path / "acme.log").read_text().split()[2] == "hello"
    audit = [a for a in await api.engine.audit_log("acme") if a.action == "mcp_server.registered"]
    admin_key_id = (await api.engine.keys.authenticate(api.admin_key)).key_id
    assert [a.actor for a in audit] == [f"api:{admin_key_id}"]  # who registered it

    r = await api.client.delete(f"{path}/notes", headers=api.admin)
    assert r.status_code == 200 and r.json() == {"tenant": "acme", "removed": "notes"}
    r = await api.client.delete(f"{path}/notes", headers=api.admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_bad_registrations_are_refused_with_json_and_write_nothing(
    api: Api, tmp_path: Path
) -> None:
    await api.tenant("acme")
    path = "/v1/admin/tenants/acme/mcp-servers"
    cases: list[tuple[Any, str]] = [
        ({"name": "notes"}, "body.command"),  # neither command nor url
        ({**notes(tmp_path / "n.log"), "shell": "rm -rf"}, "body.shell"),  # unknown field
        ({**notes(tmp_path / "n.log"), "expose": "note"}, "body.expose"),
        ({**notes(tmp_path / "n.log"), "expose": ["nope"]}, "body.expose"),
        ({**notes(tmp_path / "n.log"), "cost_usd": -1}, "body.cost_usd"),
        ({"name": "gone", "command": sys.executable, "args": ["-c", "exit(3)"]}, "mcp_server"),
        ([1, 2], "body"),
    ]
    for body, field in cases:
        r = await api.client.post(path, json=body, headers=api.admin)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["field"] == field, (body, r.text)
    r = await api.client.post(
        "/v1/admin/tenants/nobody/mcp-servers", json=notes(tmp_path / "n.log"), headers=api.admin
    )
    assert r.status_code == 404
    r = await api.client.get(path, headers=api.admin)
    assert r.json() == {"servers": []}
    assert not [a for a in await api.engine.audit_log("acme") if a.action.startswith("mcp_")]
