"""``tenantflow runs submit | cancel | resume`` against a running server (``--url``), and a
clear one-line refusal on the store, where nothing would execute the run."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from .test_cli_remote import Served, assert_one_line_error, cli, ok, served, wait_for

pytestmark = pytest.mark.timeout(180)
__all__ = ["served"]  # the fixture, imported for these tests


def _tenant(server: Served) -> dict[str, str]:
    r = httpx.post(
        f"{server.url}/v1/tenants",
        json={"id": "bank-a", "tier": "enterprise"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return {"TENANTFLOW_URL": server.url, "TENANTFLOW_API_KEY": server.tenant_key("bank-a")}


def _status(server: Served, env: dict[str, str], run_id: str) -> str:
    shown = json.loads(ok(server.cwd, "runs", "show", run_id, "--json", env=env))
    return str(shown["status"])


def _steps(server: Served, env: dict[str, str], run_id: str) -> dict[str, str]:
    shown = json.loads(ok(server.cwd, "runs", "show", run_id, "--json", env=env))
    return {step["key"]: step["status"] for step in shown["steps"]}


def test_submit_runs_the_workflow_and_an_idempotency_key_returns_the_same_run(
    served: Served,
) -> None:
    env = _tenant(served)
    args = ("runs", "submit", "tally", "--input", "20", "--idempotency-key", "k-1", "--json")
    first = json.loads(ok(served.cwd, *args, env=env))
    again = json.loads(ok(served.cwd, *args, env=env))
    assert first["id"] == again["id"] and first["tenant_id"] == "bank-a"
    assert first["workflow"] == "tally"
    wait_for(lambda: _status(served, env, first["id"]), lambda s: s == "completed")
    shown = json.loads(ok(served.cwd, "runs", "show", first["id"], "--json", env=env))
    assert shown["result"] == 41
    line = ok(served.cwd, "runs", "submit", "tally", "--input", "1", env=env)
    assert line.startswith("submitted run ") and line.split()[2] != first["id"]


def test_cancel_stops_a_waiting_run_and_resume_refuses_one_that_is_not_paused(
    served: Served, tmp_path: Path
) -> None:
    env = _tenant(served)
    (tmp_path / "big.json").write_text('{"applicant": "ada", "amount": 5000}', encoding="utf-8")
    run = json.loads(
        ok(
            served.cwd,
            "runs",
            "submit",
            "approval",
            "--input-file",
            str(tmp_path / "big.json"),
            "--json",
            env=env,
        )
    )
    # The run waits for a reviewer (high amount): running, its review step waiting.
    wait_for(lambda: _steps(served, env, run["id"]), lambda s: "waiting" in s.values())
    assert_one_line_error(cli(served.cwd, "runs", "resume", run["id"], env=env), 1, "not paused")
    out = ok(served.cwd, "runs", "cancel", run["id"], "--reason", "withdrawn", env=env)
    assert out.startswith(f"cancelled run {run['id']}")
    wait_for(lambda: _status(served, env, run["id"]), lambda s: s == "cancelled")


def test_on_the_store_they_say_a_server_is_needed(served: Served) -> None:
    proc = cli(served.cwd, "--db", served.db, "runs", "submit", "tally", "--tenant", "bank-a")
    assert_one_line_error(proc, 2, "--url")
    proc = cli(served.cwd, "runs", "submit", "tally", "--input", "{oops", "--url", served.url)
    assert_one_line_error(proc, 2, "--input is not JSON")
