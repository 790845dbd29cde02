"""``tenantflow serve`` answers MCP at /mcp over a real connection, and an MCP server reached over
streamable HTTP (here: that one, with a tenant's key in its headers) becomes gateway tools.

A real server process on a loopback port, as a user runs it; SIGTERM at the end must still
drain and exit 0 with the MCP session manager running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tenantflow as tf
from tenantflow.engine.gateway import Tools

pytest.importorskip("mcp")
pytestmark = pytest.mark.timeout(120)

APPS = Path(__file__).parent / "apps"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _cli(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    db = f"sqlite:///{tmp_path / 'served.db'}"
    _cli(tmp_path, "db", "upgrade", "--db", db)
    admin = json.loads(
        _cli(tmp_path, "keys", "create", "--admin", "--name", "ops", "--db", db, "--json")
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tenantflow.cli.main",
            "serve",
            "--db",
            db,
            "--app",
            "api_workflows:setup",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield url, admin["secret"], proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


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
