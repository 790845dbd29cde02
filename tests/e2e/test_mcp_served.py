"""``tenantflow serve`` answers MCP at /mcp over a real connection, and an MCP server reached over
streamable HTTP (here: that one, with a tenant's key in its headers) becomes gateway tools.

A real server process on a loopback port, as a user runs it; SIGTERM at the end must still
drain and exit 0 with the MCP session manager running.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tenantflow as tf
from tenantflow.engine.gateway import Tools

from .served import cli_ok as _cli
from .served import start_server

pytest.importorskip("mcp")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    db = f"sqlite:///{tmp_path / 'served.db'}"
    _cli(tmp_path, "db", "upgrade", "--db", db)
    admin = json.loads(
        _cli(tmp_path, "keys", "create", "--admin", "--name", "ops", "--db", db, "--json")
    )
    proc, url = start_server(
        tmp_path, db, "--app", "api_workflows:setup", log=tmp_path / "serve.log", timeout=60
    )
    try:
        yield url, admin["secret"], proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_tenantflow_mcp_over_http_as_gateway_tools(
    served: tuple[str, str, subprocess.Popen[bytes]],
) -> None:
    from tenantflow.integrations.mcp_tools import MCPServerSpec, register_mcp_server

    url, admin, proc = served
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {admin}"}
    ) as http:
        assert (await http.post("/v1/tenants", json={"id": "acme"})).status_code == 201
        key = (await http.post("/v1/tenants/acme/keys")).json()["secret"]
    tools = Tools()
    spec = MCPServerSpec("tf", url=f"{url}/mcp", headers={"Authorization": f"Bearer {key}"})
    names = await register_mcp_server(tools, spec)
    assert "tf__start_run" in names and "tf__list_runs" in names
    started = json.loads(await tools.get("tf__start_run").fn(workflow="tally", input=3))
    assert started["created"] is True
    runs = json.loads(await tools.get("tf__list_runs").fn())
    assert [r["id"] for r in runs] == [started["id"]]
    assert tools.get("tf__list_runs").explicit  # MCP tools need a tenant's explicit allow
    wrong = MCPServerSpec("bad", url=f"{url}/mcp", headers={"Authorization": "Bearer tfk_nope"})
    with pytest.raises(tf.ConfigurationError, match="could not be listed"):
        await register_mcp_server(Tools(), wrong)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
