"""``tenantflow tenants move T --to cell|shared`` through a plane, live, as real processes.

A plane placing new tenants in its shared pool; a busy tenant with 220 runs in flight, each
waiting at a gate the test holds closed (a file: its ``hold`` step fails and is retried with a
backoff, which holds no attempt) — so the runs are in flight during both moves whatever the
machine's speed. The tenant moves to a dedicated cell (CLI, ``--url`` the plane) and back to
the shared pool (the plane's API); the gate then opens and every run must complete exactly
once with its result, its timeline showing the moves, the audit chain verifying, and a Client
that talked to the old cell following the redirect to the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantflow.client import Client
from tenantflow.placement.federated.plane import SHARED_CELL, free_port

pytest.importorskip("uvicorn", reason="the server extra is not installed")
pytestmark = pytest.mark.timeout(240)

RUNS = 220
TENANT = "busy"
APPS = Path(__file__).parent / "apps"


@dataclass
class Plane:
    dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    admin: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def cell_of(self, tenant: str) -> dict[str, Any]:
        items = httpx.get(f"{self.url}/plane/v1/cells", headers=self.headers(), timeout=30).json()
        found = [c for c in items["items"] if tenant in c["tenants"]]
        assert len(found) == 1, items
        cell: dict[str, Any] = found[0]
        return cell


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
        "TF_MOVE_EXEC_LOG": str(tmp_path / "exec.log"),
        "TF_MOVE_GATE": str(tmp_path / "gate"),
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    with (tmp_path / "plane.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tenantflow.cli.main",
                "plane",
                *("--state-dir", str(tmp_path / "state"), "--port", str(port)),
                *("--app", "gated_move_app:setup", "--place-new", "shared"),
                *("--shared-size", "8", "--cell-slots", "32", "--heartbeat-s", "0.5"),
                *("--log-level", "warning"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    p = Plane(tmp_path, port, proc, "")
    try:
        wait_for(lambda: _ready(p.url), 60, f"the plane ({tmp_path / 'plane.log'})")
        p.admin = (tmp_path / "state" / "admin.key").read_text().strip()
        yield p
    finally:
        db = tmp_path / "state" / "plane.db"
        pids: list[int] = []
        if db.exists():
            with sqlite3.connect(db) as conn:
                pids = [int(x) for (x,) in conn.execute("SELECT pid FROM cells") if x]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        for pid in pids:  # cells outlive the plane on purpose: stop this test's own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _executions(path: Path) -> Counter[tuple[str, str]]:
    if not path.exists():
        return Counter()
    lines = path.read_text().split("\n")[:-1]
    return Counter((run, step) for _, _, run, step, _ in (line.split() for line in lines))


def _statuses(client: Client, run_ids: list[str]) -> Counter[str]:
    return Counter(client.get_run(run_id).status.value for run_id in run_ids)


def test_a_busy_tenant_moves_to_a_cell_and_back_through_the_plane(plane: Plane) -> None:
    with Client(plane.url, plane.admin) as admin:
        admin.create_tenant(TENANT, tier="enterprise", policy={"max_active_runs": 1000})
        admin.create_tenant("neighbour", tier="standard")
    assert plane.cell_of(TENANT)["id"] == SHARED_CELL
    shared_url = plane.cell_of(TENANT)["url"]
    _refusals_change_nothing(plane)
    answer = httpx.post(
        f"{plane.url}/v1/tenants/{TENANT}/keys", headers=plane.headers(), json={}, timeout=30
    )
    assert answer.status_code == 201, answer.text
    key = answer.json()["secret"]
    log = plane.dir / "exec.log"

    client = Client(plane.url, key)
    try:
        run_ids = [client.submit("gated-move", {"i": i}).id for i in range(RUNS)]
        # Every run has passed its first step and waits at the gate: all in flight.
        wait_for(
            lambda: sum(1 for (_, step) in _executions(log) if step == "start") == RUNS,
            90,
            f"{RUNS} runs to reach the gate",
        )
        assert _statuses(client, run_ids[:20]) == Counter({"running": 20})

        # 1. Shared pool -> a dedicated cell, with the command line through the plane.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tenantflow.cli.main",
                *("--url", plane.url, "tenants", "move", TENANT, "--to", "cell", "--json"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TENANTFLOW_API_KEY": plane.admin},
            timeout=180,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        first = json.loads(out.stdout)
        assert first["from"] == SHARED_CELL and first["to"] != SHARED_CELL
        assert first["in_flight"] == RUNS and first["runs"] == RUNS
        assert sum(first["left"].values()) == 0 and first["rows"]["runs"] == RUNS
        cell = plane.cell_of(TENANT)
        assert cell["id"] == first["to"] and cell["tenants"] == [TENANT]
        assert plane.cell_of("neighbour")["id"] == SHARED_CELL  # untouched

        # The client remembered the shared pool: its next request is sent on by a 307 there.
        assert client._routed == shared_url
        raw = httpx.get(
            f"{shared_url}/v1/runs/{run_ids[0]}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert raw.status_code == 307 and raw.headers["location"].startswith(cell["url"])
        assert client.get_run(run_ids[0]).status.value == "running"
        assert client._routed == cell["url"]
        late = [client.submit("gated-move", {"i": i}).id for i in range(RUNS, RUNS + 5)]

        # 2. Back to the shared pool, with the plane's API; the runs still wait at the gate.
        back = httpx.post(
            f"{plane.url}/plane/v1/tenants/{TENANT}/move",
            headers=plane.headers(),
            json={"to": "shared"},
            timeout=180,
        )
        assert back.status_code == 200, back.text
        second = back.json()
        assert second["from"] == cell["id"] and second["to"] == SHARED_CELL
        assert second["in_flight"] == RUNS + 5 and sum(second["left"].values()) == 0
        assert plane.cell_of(TENANT)["id"] == SHARED_CELL

        # 3. Open the gate: every run completes, exactly once, with its result.
        (plane.dir / "gate").touch()
        every = run_ids + late
        wait_for(
            lambda: _statuses(client, every) == Counter({"completed": len(every)}),
            120,
            f"{len(every)} runs to complete",
        )
        assert client._routed == shared_url  # followed the cell's redirect back
        for i, run_id in enumerate(every):
            result = client.get_run(run_id).result_json
            assert result is not None and json.loads(result) == i * 2
        done = _executions(log)
        for run_id in every:
            for step in ("start", "hold", "done"):
                assert done[(run_id, step)] == 1, (run_id, step, done[(run_id, step)])

        # The timeline shows both moves; the audit chain records them and verifies.
        kinds = [e.kind for e in client.timeline(run_ids[0])]
        assert kinds.count("run.moved") == 2, kinds
        actions = [a.action for a in client.audit_log()]
        assert actions.count("tenant.moving") == 2 and actions.count("tenant.moved") == 2
        verified = client.audit_verify()
        assert verified.ok, verified
    finally:
        client.close()


def _refusals_change_nothing(plane: Plane) -> None:
    """Moves the plane refuses: typed answers, and the tenant stays where it was."""
    before = plane.cell_of("neighbour")
    cases = [
        ("neighbour", {"to": "shared"}, 409),  # in the shared pool already
        ("nobody", {"to": "cell"}, 404),
        ("neighbour", {"to": "moon"}, 422),
    ]
    for tenant, body, status in cases:
        answer = httpx.post(
            f"{plane.url}/plane/v1/tenants/{tenant}/move",
            headers=plane.headers(),
            json=body,
            timeout=30,
        )
        assert answer.status_code == status, (tenant, body, answer.text)
        assert isinstance(answer.json(), dict)
    no_key = httpx.post(f"{plane.url}/plane/v1/tenants/neighbour/move", json={"to": "cell"})
    assert no_key.status_code == 401
    after = plane.cell_of("neighbour")
    assert (after["id"], after["tenants"]) == (before["id"], before["tenants"])
    # The command line: --to cell without a plane is one line and a non-zero exit.
    out = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "tenants", "move", "x", "--to", "cell"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")},
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1 and "--url" in out.stderr, out.stderr
