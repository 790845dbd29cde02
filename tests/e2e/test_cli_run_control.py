"""``tenantflow runs submit | cancel | resume | retry`` against a running server (``--url``), and
a clear one-line refusal on the store, where nothing would execute the run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .test_cli_remote import Served, assert_one_line_error, cli, ok, serve, served, wait_for

pytestmark = pytest.mark.timeout(180)
__all__ = ["served"]  # the fixture, imported for these tests


def _tenant(server: Served, tenant: str = "bank-a") -> dict[str, str]:
    r = httpx.post(
        f"{server.url}/v1/tenants",
        json={"id": tenant, "tier": "enterprise"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return {"TENANTFLOW_URL": server.url, "TENANTFLOW_API_KEY": server.tenant_key(tenant)}


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
    # Why is it waiting? The review, its pool, unclaimed: over the API, in runs why and show.
    why = json.loads(ok(served.cwd, "runs", "why", run["id"], "--json", env=env))
    (review,) = [r for r in why["reasons"] if r["kind"] == "review"]
    assert review["step"] == "review" and review["detail"]["claimed_by"] is None
    assert review["detail"]["pool"] and review["detail"]["review_id"].startswith("rev")
    text = ok(served.cwd, "runs", "why", run["id"], env=env)
    assert f"run {run['id']} is running" in text and "step review: waits for review" in text
    assert "step review: waits for review" in ok(served.cwd, "runs", "show", run["id"], env=env)
    out = ok(served.cwd, "runs", "cancel", run["id"], "--reason", "withdrawn", env=env)
    assert out.startswith(f"cancelled run {run['id']}")
    wait_for(lambda: _status(served, env, run["id"]), lambda s: s == "cancelled")


def test_on_the_store_they_say_a_server_is_needed(served: Served) -> None:
    # (And the operator's view of workers: an admin key's; an embedded store has none.)
    r = httpx.get(
        f"{served.url}/v1/workers",
        headers={"Authorization": f"Bearer {served.admin_key}"},
        timeout=10,
    )
    assert r.status_code == 422 and "no workers" in r.json()["error"]["message"]
    tenant_env = _tenant(served)
    r = httpx.get(
        f"{served.url}/v1/workers",
        headers={"Authorization": f"Bearer {tenant_env['TENANTFLOW_API_KEY']}"},
        timeout=10,
    )
    assert r.status_code == 403
    proc = cli(served.cwd, "workers", "list", "--url", served.url, "--api-key", served.admin_key)
    assert_one_line_error(proc, 2, "no workers")
    # A tenant's keys over --url with an admin key: create, list, rotate, revoke.
    as_admin = ("--url", served.url, "--api-key", served.admin_key)
    made = json.loads(
        ok(served.cwd, "keys", "create", "-t", "bank-a", "-n", "ci", "--json", *as_admin)
    )
    assert made["tenant_id"] == "bank-a" and made["secret"].startswith("tfk_")
    rotated = json.loads(
        ok(served.cwd, "keys", "rotate", made["id"], "-t", "bank-a", "--json", *as_admin)
    )
    assert rotated["replaces"] == made["id"] and rotated["name"] == "ci"
    ok(served.cwd, "keys", "revoke", rotated["id"], "-t", "bank-a", *as_admin)
    listed = json.loads(ok(served.cwd, "keys", "list", "-t", "bank-a", "--json", *as_admin))
    assert {k["id"]: k["active"] for k in listed if k["name"] == "ci"} == {
        made["id"]: False,
        rotated["id"]: False,
    }
    r = httpx.get(f"{served.url}/v1/runs", headers={"Authorization": f"Bearer {rotated['secret']}"})
    assert r.status_code == 401  # revoked
    proc = cli(served.cwd, "keys", "create", "--admin", *as_admin)
    assert_one_line_error(proc, 2, "admin keys are made on the store")
    # The cross-tenant overview: an admin key's, over HTTP and from the command line.
    r = httpx.get(
        f"{served.url}/v1/operator/overview",
        headers={"Authorization": f"Bearer {tenant_env['TENANTFLOW_API_KEY']}"},
        timeout=10,
    )
    assert r.status_code == 403
    shown = json.loads(ok(served.cwd, "operator", "overview", "--json", *as_admin))
    assert shown["by_status"]["queued"] == 0 and shown["stuck"] == []
    proc = cli(served.cwd, "--db", served.db, "runs", "submit", "tally", "--tenant", "bank-a")
    assert_one_line_error(proc, 2, "--url")
    proc = cli(served.cwd, "runs", "submit", "tally", "--input", "{oops", "--url", served.url)
    assert_one_line_error(proc, 2, "--input is not JSON")


# -- retry ---------------------------------------------------------------------------------------


@pytest.fixture
def flaky_served(tmp_path: Path) -> Iterator[Served]:
    """``tenantflow serve`` with the test workflows and ``flaky`` (fails while a file exists)."""
    yield from serve(tmp_path, "api_workflows:setup", "run_control_workflows:setup")


def _api_status(server: Served, env: dict[str, str], run_id: str) -> str:
    """The run's status over HTTP (cheaper to poll than a CLI process)."""
    r = httpx.get(
        f"{server.url}/v1/runs/{run_id}",
        headers={"Authorization": f"Bearer {env['TENANTFLOW_API_KEY']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def _run_of(server: Served, env: dict[str, str], run_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(ok(server.cwd, "runs", "show", run_id, "--json", env=env))
    return shown


def _failed_flaky(server: Served, env: dict[str, str], flag: Path, n: int) -> str:
    body = json.dumps({"flag": str(flag), "n": n})
    run = json.loads(ok(server.cwd, "runs", "submit", "flaky", "--input", body, "--json", env=env))
    wait_for(lambda: _api_status(server, env, run["id"]), lambda s: s == "failed")
    return str(run["id"])


def test_retry_reruns_a_failed_run_from_its_failed_step(flaky_served: Served) -> None:
    env = _tenant(flaky_served)
    flag = flaky_served.cwd / "outage"
    flag.touch()
    run_id = _failed_flaky(flaky_served, env, flag, 4)
    before = _run_of(flaky_served, env, run_id)
    assert "scoring service is down" in before["error"]
    # Still down: retried, fails again, history grows.
    out = ok(flaky_served.cwd, "runs", "retry", run_id, "--reason", "try again", env=env)
    assert out.startswith(f"retried run {run_id} from its failed step (")
    wait_for(lambda: _api_status(flaky_served, env, run_id), lambda s: s == "failed")
    flag.unlink()
    again = json.loads(ok(flaky_served.cwd, "runs", "retry", run_id, "--json", env=env))
    assert again["ok"] and again["mode"] == "failed_step" and again["run"]["id"] == run_id
    wait_for(lambda: _api_status(flaky_served, env, run_id), lambda s: s == "completed")
    done = _run_of(flaky_served, env, run_id)
    assert done["result"] == "score 40" and done["error"] is None
    assert done["meta"]["retries"] == 2
    steps = {s["key"]: s for s in done["steps"]}
    assert steps["load"]["attempt"] == 1  # its recorded output was reused, never re-run
    assert steps["score"]["attempt"] == 3 and steps["score"]["error"] is None
    events = json.loads(ok(flaky_served.cwd, "runs", "timeline", run_id, "--json", env=env))
    retried = [e for e in events if e["kind"] == "run.retried"]
    assert [e["data"]["number"] for e in retried] == [1, 2]
    assert retried[0]["data"]["reason"] == "try again"
    assert retried[0]["data"]["kept"] == ["load"]
    audit = json.loads(ok(flaky_served.cwd, "audit", "log", "--json", env=env))
    assert [a["action"] for a in audit].count("run.retried") == 2
    # A completed run is not retried: one line, exit 1; the API answers 409 in JSON.
    proc = cli(flaky_served.cwd, "runs", "retry", run_id, env=env)
    assert_one_line_error(proc, 1, "completed", "only a failed, cancelled or compensated")
    r = httpx.post(
        f"{flaky_served.url}/v1/runs/{run_id}/retry",
        headers={"Authorization": f"Bearer {env['TENANTFLOW_API_KEY']}"},
        timeout=10,
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


def test_bulk_retry_by_filter_per_run_and_never_across_tenants(
    flaky_served: Served,
) -> None:
    env = _tenant(flaky_served)
    flag = flaky_served.cwd / "outage"
    flag.touch()
    failed = [_failed_flaky(flaky_served, env, flag, n) for n in (1, 2)]
    tally = json.loads(
        ok(flaky_served.cwd, "runs", "submit", "tally", "-i", "3", "--json", env=env)
    )
    wait_for(lambda: _api_status(flaky_served, env, tally["id"]), lambda s: s == "completed")
    # Another tenant's run is not found (never "not yours"), and stays as it was.
    other = _tenant(flaky_served, "bank-b")
    proc = cli(flaky_served.cwd, "runs", "retry", failed[0], env=other)
    assert_one_line_error(proc, 1, "not found")
    r = httpx.post(
        f"{flaky_served.url}/v1/runs/{failed[0]}/retry",
        json={"from_start": True},
        headers={"Authorization": f"Bearer {other['TENANTFLOW_API_KEY']}"},
        timeout=10,
    )
    assert r.status_code == 404, r.text
    assert "bank-a" not in r.text
    assert _api_status(flaky_served, env, failed[0]) == "failed"
    # The schedules of the app, as each tenant sees them.
    (leap,) = json.loads(ok(flaky_served.cwd, "runs", "schedules", "--json", env=env))
    assert (leap["name"], leap["cron"], leap["last_run_id"]) == ("leap-day", "0 0 29 2 *", None)
    assert leap["next_at"].startswith("2028-02-29T00:00:00")
    assert json.loads(ok(flaky_served.cwd, "runs", "schedules", "--json", env=other)) == []
    flag.unlink()
    none = json.loads(
        ok(flaky_served.cwd, "runs", "retry", "--failed", "--workflow", "tally", "--json", env=env)
    )
    assert none == []
    future = ok(flaky_served.cwd, "runs", "retry", "--failed", "--since", "2999-01-01", env=env)
    assert future.strip() == "no runs match"
    out = ok(
        flaky_served.cwd,
        "runs",
        "retry",
        "--failed",
        "--workflow",
        "flaky",
        "--since",
        "1h",
        env=env,
    )
    assert "retried 2 of 2 runs" in out
    for run_id in failed:
        assert run_id in out
        wait_for(lambda r=run_id: _api_status(flaky_served, env, r), lambda s: s == "completed")
    # A run id and a filter together, or neither: a usage error.
    proc = cli(flaky_served.cwd, "runs", "retry", failed[0], "--failed", env=env)
    assert_one_line_error(proc, 2, "not both")
    assert_one_line_error(cli(flaky_served.cwd, "runs", "retry", env=env), 2, "--failed")
    proc = cli(flaky_served.cwd, "runs", "retry", "--failed", "--since", "yesterday", env=env)
    assert_one_line_error(proc, 2, "--since")
    # The API's bulk route: per-run results, a bad status is a 422 in JSON.
    headers = {"Authorization": f"Bearer {env['TENANTFLOW_API_KEY']}"}
    r = httpx.post(
        f"{flaky_served.url}/v1/runs/retry", json={"status": "completed"}, headers=headers
    )
    assert r.status_code == 422 and "error" in r.json()
    r = httpx.post(f"{flaky_served.url}/v1/runs/retry", json={}, headers=headers, timeout=10)
    assert r.status_code == 200 and r.json() == {"items": [], "retried": 0, "refused": 0}
