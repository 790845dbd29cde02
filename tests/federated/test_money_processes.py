"""A cross-tenant money cap as real processes: a plane, two cells of one tenant each, a priced
tool (``priced``, $0.01 a call) called by every run, and a cap of ten calls' worth.

What is measured is outside the engine: every execution of the tool appends a line to a log
(``O_APPEND``), so the money spent is ``lines × price``, whoever counts it. The cap is never
exceeded across the cells (overspend 0), the calls past it are refused (the runs pause on the
``platform`` budget refusal), and with the plane SIGKILLed each cell spends only within the
allowance it held when the plane died — its wallet survives in its state directory.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantflow.client import Client
from tenantflow.errors import StoreUnavailableError
from tenantflow.placement.federated.plane import free_port
from tenantflow.selftest.federated_app import MONEY_WORKFLOW, PRICE_USD

pytest.importorskip("uvicorn", reason="the server extra is not installed")

PRICE = round(PRICE_USD * 1_000_000)
CAP = 10 * PRICE
TENANTS = ("ma", "mb")
SETTLED = ("completed", "failed", "cancelled", "paused")


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls = root / "priced.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = ""
        self.keys: dict[str, str] = {}
        self.clients: dict[str, Client] = {}  # kept: their routes to the cells are cached

    def start_plane(self) -> None:
        env = {**os.environ, "TF_FED_PRICED_LOG": str(self.calls), "PYTHONUNBUFFERED": "1"}
        with (self.root / "plane.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tenantflow.cli.main",
                    "plane",
                    "--state-dir",
                    str(self.root / "state"),
                    "--port",
                    str(self.port),
                    "--app",
                    "tenantflow.selftest.federated_app:setup",
                    "--cell-size",
                    "1",
                    "--heartbeat-s",
                    "0.2",
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, f"the plane ({self.root / 'plane.log'})")
        self.admin = (self.root / "state" / "admin.key").read_text().strip()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def cells_db(self) -> list[tuple[str, str, str, int | None]]:
        db = self.root / "state" / "plane.db"
        if not db.exists():
            return []
        with sqlite3.connect(db) as conn:
            return list(conn.execute("SELECT id, url, admin_key, pid FROM cells"))

    def cell_status(self, url: str, key: str) -> dict[str, Any]:
        answer = httpx.get(
            f"{url}/cell/v1/status", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        return status

    def spent_by(self, which: Any = None) -> int:
        """Micros spent, from the tool's own log (lines ``<time> <pid>``), by ``which`` pids."""
        try:
            lines = self.calls.read_text().splitlines()
        except FileNotFoundError:
            return 0
        return sum(PRICE for line in lines if which is None or which(line.split()[1]))

    def spent(self) -> int:
        return self.spent_by()


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    d.start_plane()
    try:
        yield d
    finally:
        for client in d.clients.values():
            client.close()
        pids = [pid for *_, pid in d.cells_db() if pid]
        if d.proc is not None and d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.proc.kill()
        for pid in pids:  # cells outlive the plane on purpose: stop the test's own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def submit_all(d: Deployment, per_tenant: int, base: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for tenant in TENANTS:
        client = d.clients[tenant]
        out[tenant] = [client.submit(MONEY_WORKFLOW, {"i": base + i}).id for i in range(per_tenant)]
    return out


def wait_settled(d: Deployment, runs: dict[str, list[str]]) -> dict[str, str]:
    status: dict[str, str] = {}

    def settled() -> bool:
        for tenant, ids in runs.items():
            client = d.clients[tenant]
            for run_id in ids:
                if run_id in status:
                    continue
                try:
                    value = client.get_run(run_id).status.value
                except StoreUnavailableError:
                    return False
                if value in SETTLED:
                    status[run_id] = value
        return len(status) == sum(len(ids) for ids in runs.values())

    wait_for(settled, 30, "every run to complete or pause")
    return status


def test_money_cap_across_cells_and_with_the_plane_killed(dep: Deployment) -> None:
    # The cap, set before the tenants exist; bad input is refused with a 4xx and JSON.
    bad = httpx.put(f"{dep.url}/plane/v1/money-caps/daily", headers=dep.headers(), json={})
    assert bad.status_code == 422 and bad.json()["error"]
    anonymous = httpx.put(f"{dep.url}/plane/v1/money-caps/daily", json={"cap_micros": CAP})
    assert anonymous.status_code == 401
    put = httpx.put(
        f"{dep.url}/plane/v1/money-caps/daily", headers=dep.headers(), json={"cap_micros": CAP}
    )
    assert put.status_code == 200, put.text
    assert put.json()["cap_micros"] == CAP
    with Client(dep.url, dep.admin) as admin:
        for tenant in TENANTS:
            admin.create_tenant(tenant, tier="enterprise")
    for tenant in TENANTS:
        answer = httpx.post(
            f"{dep.url}/v1/tenants/{tenant}/keys", headers=dep.headers(), json={}, timeout=30
        )
        assert answer.status_code == 201, answer.text
        dep.keys[tenant] = answer.json()["secret"]
        dep.clients[tenant] = Client(dep.url, dep.keys[tenant])
    cells = dep.cells_db()
    assert len(cells) == 2  # a cell per tenant

    # Every cell holds a lease of the cap before the load (visible at the plane, per cell).
    def leased() -> bool:
        caps = httpx.get(f"{dep.url}/plane/v1/money-caps", headers=dep.headers()).json()
        [cap] = caps["items"]
        return len(cap["cells"]) == 2 and all(c["lease_seq"] > 0 for c in cap["cells"].values())

    wait_for(leased, 20, "both cells to hold a lease of the cap")

    # 1. Some load within the cap, the plane up.
    first = submit_all(dep, 3, 0)
    wait_settled(dep, first)
    assert dep.spent() <= CAP

    # 2. The plane SIGKILLed: each cell may spend only within the allowance it holds now.
    assert dep.proc is not None
    dep.proc.send_signal(signal.SIGKILL)
    dep.proc.wait(timeout=20)
    held: dict[str, dict[str, Any]] = {}
    for cell_id, url, key, _ in cells:
        held[cell_id] = dep.cell_status(url, key)["wallets"]["daily"]
    assert sum(h["allowance_micros"] for h in held.values()) <= CAP
    second = submit_all(dep, 5, 100)  # accepted with the plane down; 16 calls in all > 10
    status = wait_settled(dep, second)
    pids = {str(pid): cell_id for cell_id, _, _, pid in cells}
    for cell_id, url, key, _ in cells:
        wallet = dep.cell_status(url, key)["wallets"]["daily"]
        before = held[cell_id]
        assert wallet["seq"] == before["seq"]  # no lease from anywhere
        assert wallet["allowance_micros"] == before["allowance_micros"]
        executed = dep.spent_by(lambda pid, c=cell_id: pids.get(pid) == c)  # type: ignore[misc]
        assert wallet["spent_micros"] == executed <= before["allowance_micros"]
        # What it spent is in its state directory, as the cell wrote it before each call.
        saved = json.loads((dep.root / "state" / "cells" / cell_id / "wallets.json").read_text())[
            "daily"
        ]
        assert saved["spent_micros"] == wallet["spent_micros"]
    assert dep.spent() <= CAP, f"overspend: {dep.spent()} micros spent for a cap of {CAP}"
    # The calls past the cells' allowances were refused (the platform's refusals, counted
    # by the cells), their runs paused by the budget ladder; the others completed.
    paused = [r for r, s in status.items() if s == "paused"]
    assert paused and all(s in ("completed", "paused") for s in status.values())
    refused = sum(dep.cell_status(url, key)["money_refused"] for _, url, key, _ in cells)
    assert refused >= len(paused)

    # 3. The plane back: it counts what it granted before it died; the cap still holds.
    dep.start_plane()
    wait_for(leased, 20, "both cells to report to the restarted plane")
    third = submit_all(dep, 3, 200)
    wait_settled(dep, third)
    assert dep.spent() <= CAP, f"overspend: {dep.spent()} micros spent for a cap of {CAP}"
    caps = httpx.get(f"{dep.url}/plane/v1/money-caps/daily", headers=dep.headers()).json()
    assert caps["held_micros"] <= CAP
    # Every call executed was paid from a wallet: the cells' wallets account for the log.
    wallets = sum(
        dep.cell_status(url, key)["wallets"]["daily"]["spent_micros"] for _, url, key, _ in cells
    )
    assert wallets == dep.spent()
    # Removing the cap lifts it at the cells (their wallets go on the next heartbeat).
    gone = httpx.delete(f"{dep.url}/plane/v1/money-caps/daily", headers=dep.headers())
    assert gone.status_code == 200, gone.text
    missing = httpx.get(f"{dep.url}/plane/v1/money-caps/daily", headers=dep.headers())
    assert missing.status_code == 404 and missing.json()["error"]
    wait_for(
        lambda: all(not dep.cell_status(url, key)["wallets"] for _, url, key, _ in cells),
        20,
        "the cells to drop the removed cap's wallet",
    )
