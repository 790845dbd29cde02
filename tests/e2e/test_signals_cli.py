"""``tenantflow runs signal`` and ``POST /v1/runs/{id}/signals/{name}`` against a real server:
a waiting step resumes with the payload; a signal sent early is kept until the step waits for
it; on the store (--db) a parked run takes it after a restart; bad input is a one-line error
or a 4xx JSON body; another tenant's run is a 404."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tenantflow as tf

from .apps.signal_workflows import handoff
from .test_cli_remote import Served, assert_one_line_error, cli, ok, serve, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def signalled(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, "signal_workflows:setup")


def _tenant(server: Served, tenant: str) -> dict[str, str]:
    r = httpx.post(
        f"{server.url}/v1/tenants",
        json={"id": tenant, "tier": "enterprise"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return {"TENANTFLOW_URL": server.url, "TENANTFLOW_API_KEY": server.tenant_key(tenant)}


def _get(server: Served, env: dict[str, str], path: str) -> Any:
    headers = {"Authorization": f"Bearer {env['TENANTFLOW_API_KEY']}"}
    r = httpx.get(f"{server.url}{path}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _timeline(server: Served, env: dict[str, str], run_id: str) -> list[str]:
    return [e["kind"] for e in _get(server, env, f"/v1/runs/{run_id}/timeline")["items"]]


def test_a_signal_resumes_the_waiting_step_over_the_api_and_on_the_store(
    signalled: Served,
) -> None:
    env = _tenant(signalled, "bank-a")
    other = _tenant(signalled, "bank-b")
    run = json.loads(ok(signalled.cwd, "runs", "submit", "handoff", "--json", env=env))
    wait_for(lambda: _timeline(signalled, env, run["id"]), lambda k: "step.waiting" in k)
    # Sent before the step waits for it: kept until it does.
    line = ok(
        signalled.cwd, "runs", "signal", run["id"], "local", "--data", '{"from": "early"}', env=env
    )
    assert line.startswith("sent signal local (sig_") and run["id"] in line
    # Another tenant's key: the run does not exist for it, and nothing is recorded.
    proc = cli(signalled.cwd, "runs", "signal", run["id"], "go", "--data", "1", env=other)
    assert_one_line_error(proc, 1, "not found")
    # Bad input: one line, nothing sent.
    proc = cli(signalled.cwd, "runs", "signal", run["id"], "go", "--data", "{oops", env=env)
    assert_one_line_error(proc, 2, "--data is not JSON")
    big = httpx.post(
        f"{signalled.url}/v1/runs/{run['id']}/signals/go",
        json={"payload": "x" * 70_000},
        headers={"Authorization": f"Bearer {env['TENANTFLOW_API_KEY']}"},
        timeout=10,
    )
    assert big.status_code == 422 and "at most" in big.json()["error"]["message"]
    # Over the API: the step takes "go", then the kept "local", and the run completes.
    args = ("runs", "signal", run["id"], "go", "--data", '{"ok": true}', "--json")
    sent = json.loads(ok(signalled.cwd, *args, "--idempotency-key", "g1", env=env))
    assert sent["signal_id"].startswith("sig_") and sent["duplicate"] is False
    again = json.loads(ok(signalled.cwd, *args, "--idempotency-key", "g1", env=env))
    assert again["duplicate"] is True and again["signal_id"] == sent["signal_id"]
    shown = wait_for(
        lambda: _get(signalled, env, f"/v1/runs/{run['id']}"),
        lambda shown: shown["status"] == "completed",
    )
    assert shown["result"] == {"go": {"ok": True}, "local": {"from": "early"}}
    kinds = _timeline(signalled, env, run["id"])
    assert kinds.count("signal.received") == 2 and kinds.count("signal.consumed") == 2
    proc = cli(signalled.cwd, "runs", "signal", run["id"], "go", env=env)
    assert_one_line_error(proc, 1, "already ended")


async def test_on_the_store_a_signal_reaches_a_parked_run_after_a_restart(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'parked.db'}"
    async with tf.Engine.open(db, auto_tenant="enterprise") as engine:
        engine.register(handoff)
        run = await engine.submit("handoff", tenant="bank-a", input=None)
        await engine.signal("bank-a", run.id, "go", "api")
        for _ in range(1000):
            kinds = [e.kind for e in await engine.timeline("bank-a", run.id)]
            if kinds.count("step.waiting") >= 1 and "signal.consumed" in kinds:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"the step never waited for 'local': {kinds}")
    # The engine is closed: the run is parked in the file only.
    args = ("--db", db, "runs", "signal", run.id, "local", "--tenant", "bank-a")
    sent = json.loads(ok(tmp_path, *args, "--data-file", str(_file(tmp_path)), "--json"))
    assert sent["woke"] == [] and sent["signal_id"].startswith("sig_")
    assert_one_line_error(cli(tmp_path, *args, "--data", "[1]", "--data-file", "x"), 2, "not both")
    assert_one_line_error(
        cli(tmp_path, "--db", db, "runs", "signal", run.id, "local", "--tenant", "bank-b"),
        1,
        "not found",
    )
    async with tf.Engine.open(db, auto_tenant="enterprise") as again:
        again.register(handoff)
        assert await again.run("bank-a", run.id).result() == {"go": "api", "local": [1, 2]}


def _file(directory: Path) -> Path:
    path = directory / "payload.json"
    path.write_text("[1, 2]", encoding="utf-8")
    return path
