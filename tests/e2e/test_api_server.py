"""``tenantflow serve`` as a user runs it: a real server process on a loopback port, SQLite in a
temporary directory, the test workflows loaded with ``--app``.

An admin key is created with the command line; two tenants and their keys over HTTP; runs are
submitted, a review approved and another rejected, the timeline, state, usage and audit chain
read back; the event stream is read over a real connection. Then SIGTERM: the server drains,
closes the engine and exits 0, and a new server on the same file finds everything again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .served import cli_env, free_port, start_server
from .served import cli_ok as cli

pytestmark = pytest.mark.timeout(90)

BIG = {"applicant": "ada", "amount": 5000}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> int:
        """SIGTERM, and the exit code once the process has ended."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(cwd: Path, db: str, name: str) -> Server:
    log = cwd / f"{name}.log"
    proc, url = start_server(cwd, db, "--app", "api_workflows:setup", log=log)
    return Server(proc, url, log)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, str, str, Path]]:
    db = f"sqlite:///{tmp_path / 'served.db'}"
    cli(tmp_path, "db", "upgrade", "--db", db)
    admin = json.loads(
        cli(tmp_path, "keys", "create", "--admin", "--name", "ops", "--db", db, "--json")
    )
    assert admin["tenant_id"] is None and admin["secret"].startswith("tfk_")
    server = start(tmp_path, db, "first")
    try:
        yield server, admin["secret"], db, tmp_path
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def wait_for(client: httpx.Client, path: str, ok: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(path)
        assert r.status_code == 200, r.text
        if ok(r.json()):
            return r.json()
        assert time.monotonic() < deadline, f"timed out waiting on {path}: {r.text}"
        time.sleep(0.05)


def test_a_served_platform_end_to_end(served: tuple[Server, str, str, Path]) -> None:
    server, admin_key, db, cwd = served
    with contextlib.ExitStack() as stack:
        key_a, approved = _walk(server, admin_key, stack)

    # A second server on the same SQLite file is refused in one line: one executing engine.
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "tenantflow.cli.main",
            "serve",
            "--db",
            db,
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert second.stderr.startswith("error: another tenantflow engine is executing runs")
    assert "Traceback" not in second.stderr

    # SIGTERM: a graceful stop, exit code 0, the engine closed (the file's lock released).
    assert server.stop() == 0
    log = server.output()
    assert "Traceback" not in log, log
    assert "Finished server process" in log
    again = start(cwd, db, "second")
    try:
        with httpx.Client(base_url=again.url) as client:
            r = client.get(f"/v1/runs/{approved}", headers={"Authorization": f"Bearer {key_a}"})
            assert r.status_code == 200 and r.json()["result"] == "approved"
            r = client.get("/v1/tenants", headers={"Authorization": f"Bearer {admin_key}"})
            assert [t["id"] for t in r.json()["items"]] == ["bank-a", "bank-b"]
    finally:
        assert again.stop() == 0


def _walk(server: Server, admin_key: str, stack: contextlib.ExitStack) -> tuple[str, str]:
    """The platform's day over HTTP; returns bank-a's key and its approved run."""

    def client(key: str) -> httpx.Client:
        return stack.enter_context(
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})
        )

    admin = client(admin_key)
    keys: dict[str, str] = {}
    for tenant, tier in (("bank-a", "enterprise"), ("bank-b", "standard")):
        r = admin.post("/v1/tenants", json={"id": tenant, "tier": tier})
        assert r.status_code == 201, r.text
        r = admin.post(f"/v1/tenants/{tenant}/keys", json={"name": "backend"})
        assert r.status_code == 201, r.text
        keys[tenant] = r.json()["secret"]
    a, b = client(keys["bank-a"]), client(keys["bank-b"])

    # Submissions: a quick run each, and one each that waits for a human.
    quick = {}
    waiting = {}
    for tenant, client in (("bank-a", a), ("bank-b", b)):
        r = client.post(
            "/v1/runs", json={"workflow": "tally", "input": 10}, headers={"Idempotency-Key": "q1"}
        )
        assert r.status_code == 201, r.text
        quick[tenant] = r.json()["id"]
        again = client.post(
            "/v1/runs", json={"workflow": "tally", "input": 10}, headers={"Idempotency-Key": "q1"}
        )
        assert again.status_code == 200 and again.json()["id"] == quick[tenant]
        r = client.post("/v1/runs", json={"workflow": "approval", "input": BIG})
        assert r.status_code == 201, r.text
        waiting[tenant] = r.json()["id"]

    # Each tenant sees only its own review queue; decisions resume the runs.
    for client, tenant, approve in ((a, "bank-a", True), (b, "bank-b", False)):
        reviews = wait_for(client, "/v1/reviews", lambda body: len(body["items"]) == 1)["items"]
        assert reviews[0]["run_id"] == waiting[tenant]
        r = client.post(f"/v1/reviews/{reviews[0]['id']}/claim", json={"reviewer": "alice"})
        assert r.status_code == 200, r.text
        r = client.post(
            f"/v1/reviews/{reviews[0]['id']}/decide",
            json={"reviewer": "alice", "approve": approve, "comment": "checked"},
        )
        assert r.status_code == 200, r.text
    done_a = wait_for(a, f"/v1/runs/{waiting['bank-a']}", lambda run: run["status"] == "completed")
    done_b = wait_for(b, f"/v1/runs/{waiting['bank-b']}", lambda run: run["status"] == "completed")
    assert done_a["result"] == "approved" and done_b["result"] == "declined"
    assert (
        wait_for(a, f"/v1/runs/{quick['bank-a']}", lambda run: run["status"] == "completed")[
            "result"
        ]
        == 21
    )
    assert b.get(f"/v1/runs/{waiting['bank-a']}").status_code == 404

    # History: timeline, state (time travel), usage and the audit chain.
    timeline = a.get(f"/v1/runs/{waiting['bank-a']}/timeline").json()["items"]
    kinds = [e["kind"] for e in timeline]
    assert kinds[0] == "run.submitted" and kinds[-1] == "run.completed"
    assert "review.requested" in kinds
    state = a.get(f"/v1/runs/{waiting['bank-a']}/state").json()
    assert state["state"]["decide"] == "approved" and state["state"]["review"]["approved"] is True
    first = a.get(f"/v1/runs/{waiting['bank-a']}/state", params={"version": 0}).json()
    assert first["state"] == {"input": BIG}
    usage = a.get("/v1/usage").json()["items"]
    assert sum(u["value"] for u in usage if u["metric"] == "steps") == 4  # tally 2, approval 2
    assert sum(u["value"] for u in usage if u["metric"] == "reviews") == 1
    for client in (a, b):
        verify = client.get("/v1/audit/verify").json()
        assert verify["ok"] is True and verify["checked"] >= 2

    # The event stream over a real connection: the whole log, then the stream ends.
    with a.stream("GET", f"/v1/runs/{waiting['bank-a']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        ids = [int(line[4:]) for line in stream.iter_lines() if line.startswith("id: ")]
    assert ids == [e["id"] for e in timeline]

    metrics = admin.get("/metrics").text
    assert 'route="/v1/runs/{run_id}",status_class="2xx"' in metrics
    assert 'tenantflow_runs_submitted_total{tenant="bank-a"} 2.0' in metrics  # the engine's
    assert a.get("/metrics").status_code == 403
    return keys["bank-a"], waiting["bank-a"]


def test_serve_reports_a_bad_app_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tenantflow.cli.main",
            "serve",
            "--db",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--app",
            "no_such_module:setup",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot import app module 'no_such_module'")
    assert "Traceback" not in proc.stderr


def test_the_app_setting_comes_from_the_flag_or_the_environment() -> None:
    from tenantflow.errors import ConfigurationError
    from tenantflow.settings import Settings

    env = {"TENANTFLOW_APP": "api_workflows:setup, loan_platform.service:setup"}
    assert Settings.from_env(env).apps == ("api_workflows:setup", "loan_platform.service:setup")
    assert Settings.from_env({}).apps == ()
    with pytest.raises(ConfigurationError, match="TENANTFLOW_APP") as caught:
        Settings.from_env({"TENANTFLOW_APP": "no-function-here"})
    assert caught.value.fields["field"] == "app"
    # A flag wins, and then a bad variable is not read at all.
    assert Settings.from_env({"TENANTFLOW_APP": "bad"}, app="m:f").apps == ("m:f",)
