"""A federated cell serves the web dashboard at ``/ui``: a tenant key signs in on its cell and
sees its runs and a run's detail (and nothing of the tenant in the other cell); the cell's admin
key sees the placement — this cell, its plane, and both cells as the plane's registry has them
(state, tenants, last heartbeat) — and none of a tenant's runs.

Real processes: a plane started with ``tenantflow plane`` on a free port, one tenant per cell
(``--cell-size 1``), cells started by the plane's supervisor, all over real HTTP.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantflow.client import Client
from tenantflow.placement.federated.plane import free_port
from tenantflow.selftest.workload import WORKFLOW

pytest.importorskip("uvicorn", reason="the server extra is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def plane(root: Path) -> Iterator[tuple[str, str]]:
    """A plane on a free port (with one tenant per cell); its URL and admin key."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_SELFTEST_STEP_MS": "5,10", "PYTHONUNBUFFERED": "1"}
    env.pop("TF_SELFTEST_EXEC_LOG", None)
    with (root / "plane.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tenantflow.cli.main",
                "plane",
                "--state-dir",
                str(root / "state"),
                "--port",
                str(port),
                "--app",
                "tenantflow.selftest.workload:setup",
                "--cell-size",
                "1",
                "--heartbeat-s",
                "0.3",
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    pids: list[int] = []
    try:
        wait_for(lambda: _ready(url), 60, f"the plane ({root / 'plane.log'})")
        yield url, (root / "state" / "admin.key").read_text().strip()
    finally:
        db = root / "state" / "plane.db"
        if db.exists():
            with sqlite3.connect(db) as conn:
                pids = [int(p) for (p,) in conn.execute("SELECT pid FROM cells") if p]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in pids:  # cells outlive the plane on purpose: stop the test's own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def sign_in(base: str, key: str) -> httpx.Client:
    browser = httpx.Client(base_url=base, timeout=20)
    form = browser.get("/ui/login")
    assert form.status_code == 200, form.text
    answer = browser.post("/ui/login", data={"csrf": csrf_of(form.text), "key": key})
    assert answer.status_code == 303, answer.text
    return browser


def test_a_cells_dashboard_for_a_tenant_and_for_the_cells_admin(tmp_path: Path) -> None:
    with plane(tmp_path) as (url, admin):
        headers = {"Authorization": f"Bearer {admin}"}
        keys: dict[str, str] = {}
        with Client(url, admin) as client:
            for tenant in ("ca", "cb"):
                client.create_tenant(tenant, tier="standard")
        for tenant in ("ca", "cb"):
            answer = httpx.post(
                f"{url}/v1/tenants/{tenant}/keys", headers=headers, json={}, timeout=30
            )
            assert answer.status_code == 201, answer.text
            keys[tenant] = answer.json()["secret"]
        cells = httpx.get(f"{url}/plane/v1/cells", headers=headers, timeout=10).json()["items"]
        by_tenant = {c["tenants"][0]: c for c in cells}
        assert sorted(by_tenant) == ["ca", "cb"]  # one cell each
        home, other = by_tenant["ca"], by_tenant["cb"]
        with sqlite3.connect(tmp_path / "state" / "plane.db") as conn:
            [(cell_key,)] = conn.execute("SELECT admin_key FROM cells WHERE id = ?", (home["id"],))
        with Client(url, keys["ca"]) as client:
            run_id = client.submit(WORKFLOW, {"i": 2}).id
            wait_for(
                lambda: client.get_run(run_id).status.value == "completed", 60, "the run to end"
            )

        # The tenant's key on its cell: its runs, a run's detail.
        with contextlib.closing(sign_in(home["url"], keys["ca"])) as tenant:
            runs = tenant.get("/ui/runs")
            assert runs.status_code == 200 and run_id in runs.text
            detail = tenant.get(f"/ui/runs/{run_id}")
            assert detail.status_code == 200 and run_id in detail.text
            assert "completed" in detail.text
            assert tenant.get("/ui/admin/health").status_code == 403  # not the control plane
            assert keys["ca"] not in runs.text + detail.text
        # The other tenant's key is not a key of this cell, and its cell has none of ca's runs.
        refused = httpx.Client(base_url=home["url"], timeout=20)
        with refused:
            form = refused.get("/ui/login")
            answer = refused.post("/ui/login", data={"csrf": csrf_of(form.text), "key": keys["cb"]})
            assert answer.status_code == 401
        with contextlib.closing(sign_in(other["url"], keys["cb"])) as tenant_b:
            theirs = tenant_b.get(f"/ui/runs/{run_id}")
            assert theirs.status_code == 404 and run_id not in theirs.text
            assert run_id not in tenant_b.get("/ui/runs").text

        # The cell's admin key: the placement, the cell's facts and both cells from the plane.
        with contextlib.closing(sign_in(home["url"], cell_key)) as operator:

            def both_cells_up() -> str | None:
                page = operator.get("/ui/admin/health")
                assert page.status_code == 200, page.text
                rows = re.findall(r'<tr class="member" data-kind="cell">(.*?)</tr>', page.text)
                up = [r for r in rows if 'class="badge h-up"' in r]
                return page.text if len(up) == 2 else None

            page = html.unescape(wait_for(both_cells_up, 30, "both cells up on the health page"))
            assert '<dd id="placement">federated cell</dd>' in page
            assert f"<dd>{home['id']}</dd>" in page  # this cell
            assert f"<dd>{url}</dd>" in page  # its plane
            assert "<dd>yes</dd>" in page  # the plane is reachable
            assert "cell: 2 up" in page and "plane: 1 up" in page and "process: 1 up" in page
            rows = re.findall(r'<tr class="member" data-kind="cell">(.*?)</tr>', page)
            for cell, tenant in ((home, "ca"), (other, "cb")):
                [row] = [r for r in rows if f"<td>{cell['id']}</td>" in r]
                assert f"tenants {tenant}" in row and f"url {cell['url']}" in row
                assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", row)  # last beat
            [mine] = [r for r in rows if f"<td>{home['id']}</td>" in r]
            assert "this cell yes" in mine
            assert run_id not in page and keys["ca"] not in page and cell_key not in page
            fairness = operator.get("/ui/admin/fairness")
            assert fairness.status_code == 200 and "federated cell" in fairness.text
            assert operator.get("/ui/runs").status_code == 403  # an admin sees no runs
