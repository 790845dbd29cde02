"""Helpers of the tests of a federated cell's dashboard (tests/federated, tests/browser): a
plane with one tenant per cell, started with ``tenantflow plane`` on a free loopback port, and
signing in on a cell's ``/ui`` over real HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tenantflow.placement.federated.plane import free_port

__all__ = ["Federation", "csrf_of", "federation", "plane", "sign_in", "wait_for"]


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


@dataclass
class Federation:
    """A plane with two tenants, ``ca`` and ``cb``, each in its own cell."""

    url: str
    admin: str
    keys: dict[str, str]
    cells: dict[str, dict[str, Any]]  # by tenant: the plane's view of its cell
    cell_keys: dict[str, str]  # by tenant: its cell's admin key


@contextlib.contextmanager
def federation(root: Path) -> Iterator[Federation]:
    """A plane, two tenants provisioned through it (one cell each) and a key of each."""
    from tenantflow.client import Client

    with plane(root) as (url, admin):
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
        items = httpx.get(f"{url}/plane/v1/cells", headers=headers, timeout=10).json()["items"]
        cells = {c["tenants"][0]: c for c in items}
        assert sorted(cells) == ["ca", "cb"]  # one cell each
        with sqlite3.connect(root / "state" / "plane.db") as conn:
            cell_keys = {
                tenant: conn.execute(
                    "SELECT admin_key FROM cells WHERE id = ?", (cell["id"],)
                ).fetchone()[0]
                for tenant, cell in cells.items()
            }
        yield Federation(url, admin, keys, cells, cell_keys)
