"""``tenantflow mcp-servers …`` in a subprocess on a real SQLite database: add a server for one
tenant, list it (secrets hidden), remove it; bad input is a one-line error and a non-zero exit
with nothing written."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tenantflow as tf

pytest.importorskip("mcp")
pytestmark = pytest.mark.timeout(120)

SERVER = Path(__file__).with_name("mcp_notes_server.py")


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "mcp-servers", *args, "--db", url],
        capture_output=True,
        text=True,
        env={**base, "COLUMNS": "200"},
        timeout=90,
        check=False,
    )


async def _audit(url: str) -> list[tuple[str, str, str]]:
    async with tf.Engine.open(url, execute=False) as engine:
        return [(a.actor, a.action, a.subject) for a in await engine.audit_log("acme")]


def test_add_list_remove_on_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"

    async def setup() -> None:
        async with tf.Engine.open(url) as engine:
            await engine.tenants.create("acme", tier="enterprise")

    asyncio.run(setup())
    log = tmp_path / "n.log"
    args = ["--command", sys.executable, "--arg", str(SERVER), "--arg", str(log)]
    added = cli(url, "add", "acme", "notes", *args, "--env", "TOKEN=s3cret", "--expose", "note")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "MCP server notes added for tenant acme: notes__note"
    listed = cli(url, "list", "acme", "--json")
    assert listed.returncode == 0, listed.stderr
    [server] = json.loads(listed.stdout)
    assert server["tools"] == ["notes__note"] and server["env"] == {"TOKEN": "***"}
    assert "s3cret" not in listed.stdout

    for bad in (
        ["add", "acme", "x", *args, "--env", "NOEQUALS"],
        ["add", "acme", "x", "--url", "http://127.0.0.1:9/mcp", "--command", "y"],
        ["add", "nobody", "x", *args],
        ["remove", "acme", "missing"],
    ):
        proc = cli(url, *bad)
        assert proc.returncode != 0, bad
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert len(json.loads(cli(url, "list", "acme", "--json").stdout)) == 1

    removed = cli(url, "remove", "acme", "notes")
    assert removed.returncode == 0, removed.stderr
    assert cli(url, "list", "acme").stdout.strip() == "no MCP servers"
    audit = [a for a in asyncio.run(_audit(url)) if a[1].startswith("mcp_server.")]
    assert audit == [
        ("cli", "mcp_server.registered", "mcp_server:notes"),
        ("cli", "mcp_server.removed", "mcp_server:notes"),
    ]
