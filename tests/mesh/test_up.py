"""``tenantflow mesh up`` end to end: a NATS server, two agent processes and the REST API; an
admin registers a tenant over HTTP, the tenant submits runs with the ``Client`` and they
complete on the agents; the timeline and steps read back through the same API, from the read
model the API projects into SQLite (``--read-model``); the dashboard is served; a missing store
or a non-PostgreSQL store is refused in one line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import tenantflow as tf
from tenantflow.client import Client
from tenantflow.selftest.workload import WORKFLOW, expected_outputs

pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _admin_key(url: str) -> str:
    async with tf.Engine.open(url) as engine:
        _, key = await engine.keys.create(None)
        return key


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the API did not come up: {log.read_text()}")


def test_mesh_up_serves_the_api(nats_server_binary: Any, postgres_url: str, tmp_path: Path) -> None:
    admin_key = asyncio.run(_admin_key(postgres_url))
    port = _free_port()
    log = tmp_path / "up.log"
    env = {
        **os.environ,
        "TF_SELFTEST_STEP_MS": "5,10",
        "TENANTFLOW_NATS_SERVER": str(nats_server_binary),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "tenantflow.cli.main", "mesh", "up",
                "--agents", "2", "--app", "tenantflow.selftest.workload:setup",
                "--db", postgres_url, "--port", str(port), "--dir", str(tmp_path / "mesh"),
                "--lease", "5", "--ack-wait", "5",
                "--read-model", f"sqlite:///{tmp_path / 'read.db'}",
            ],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, proc, log)
        with Client(url, admin_key) as admin:
            admin.create_tenant("acme", tier="standard")
        tenant_key = asyncio.run(_tenant_key(postgres_url, "acme"))
        with Client(url, tenant_key) as client:
            runs = [client.submit(WORKFLOW, {"i": i}).id for i in range(5)]
            # A submission retried with its Idempotency-Key answers the first run over HTTP.
            keyed = client.submit(WORKFLOW, {"i": 9}, idempotency_key="order-9")
            again = client.submit(WORKFLOW, {"i": 9}, idempotency_key="order-9")
            assert again.id == keyed.id
            runs.append(keyed.id)
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                records = [client.get_run(r) for r in runs]
                if all(r.status in (tf.RunStatus.COMPLETED, tf.RunStatus.FAILED) for r in records):
                    break
                time.sleep(0.2)
            assert [r.status for r in records] == [tf.RunStatus.COMPLETED] * 6, log.read_text()
            steps = {s.key: s for s in client.steps(runs[3])}
            assert int(steps["e"].output_json or b"0") == expected_outputs(3)["e"]
            kinds = [e.kind for e in client.timeline(runs[3])]
            assert kinds[0] == "run.submitted" and kinds[-1] == "run.completed"
            # Cancelling a run that already ended is refused with a JSON 4xx (a conflict).
            with pytest.raises(tf.ConflictError):
                client.cancel(runs[0])
        # The reads above came from the read model the API projected into SQLite.
        with sqlite3.connect(tmp_path / "read.db") as db:
            projected = {r[0]: r[1] for r in db.execute("SELECT id, status FROM runs")}
        assert projected == dict.fromkeys(runs, "completed")
        assert httpx.get(f"{url}/ui/login", timeout=5.0).status_code == 200  # the dashboard
        # Both agents watched the policy bucket and applied acme's policy (version 1).
        agent_logs = sorted((tmp_path / "mesh").glob("agent-*.log"))
        assert len(agent_logs) == 2
        for agent_log in agent_logs:
            assert "policy of acme: version 1 applied" in agent_log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, log.read_text()
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "mesh")], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == "", "agent or server processes outlived mesh up"


async def _tenant_key(url: str, tenant: str) -> str:
    async with tf.Engine.open(url) as engine:
        _, key = await engine.keys.create(tenant)
        return key


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["mesh", "up", "--db", "sqlite:///x.db"], "error: the mesh needs a PostgreSQL store"),
        (["mesh", "up", "--db", "postgresql://h/db", "--regions", "EU!"], "invalid mesh region"),
        (["agent", "--db", "sqlite:///x.db", "--kinds", "tool"], "--kinds: unknown kind tool"),
    ],
)
def test_bad_mesh_commands_fail_in_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tenantflow.cli.main import app

    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert not (tmp_path / "x.db").exists()
