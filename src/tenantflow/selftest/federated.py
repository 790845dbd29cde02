"""The federated scenario: a plane and its cells as processes, faults injected, judged.

:class:`Federation` starts ``tenantflow plane`` (which starts the cells) on free loopback
ports, provisions tenants with a key each, and kills parts; the benchmark
(``benchmarks/federated.py``) uses it too. :func:`run_federated` measures, in order:

* **plane down**: quiet tenants' run latency p99 (submission to completion, from the cells'
  own records) while a burst tenant floods its cell, first with the plane up, then with the
  plane SIGKILLed right after the submissions start — no run may fail, and the ratio is judged
  against 1.1;
* **crash**: a cell SIGKILLed under load and restarted by the supervisor — no run lost, none
  completed twice (one ``run.completed`` event per run), every result right;
* **budget**: a tool under a global limit (``tool:bureau``) called by every tenant in every
  cell — the calls in any window never exceed ``rate × window + burst`` (overspend 0);
* **policy**: one change broadcast to every tenant — every cell acknowledges it; lag p50/p99;
* **isolation**: a tenant's key reads nothing of another's, on the plane or on the cell;
* **audit**: every tenant's audit chain verifies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tenantflow.selftest.core import Context, Row, Scenario, percentile

__all__ = ["FEDERATED_SCENARIOS", "Federation", "free_port", "run_federated"]

APP = "tenantflow.selftest.federated_app:setup"
QUOTA = ("tool:bureau", "20/second", 5)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")


@dataclass
class Federation:
    """A plane (a process) and the cells it supervises, in ``dir``."""

    dir: Path
    cell_size: int = 1
    cell_slots: int = 16
    heartbeat_s: float = 0.5
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    admin: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, tenant: str) -> Any:
        """The tenant's Client, kept: once it followed the plane's redirect it talks to the
        cell directly (a route cached, as a user's client keeps it)."""
        from tenantflow.client import Client

        if tenant not in self.clients:
            self.clients[tenant] = Client(self.url, self.keys[tenant])
        return self.clients[tenant]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin}"}

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "tenantflow.cli.main",
            "plane",
            "--state-dir",
            str(self.dir / "state"),
            "--port",
            str(self.port),
            "--app",
            APP,
            "--cell-size",
            str(self.cell_size),
            "--cell-slots",
            str(self.cell_slots),
            "--heartbeat-s",
            str(self.heartbeat_s),
            "--log-level",
            "warning",
        ]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with (self.dir / "plane.log").open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._ready, 90, f"the plane (see {self.dir / 'plane.log'})")
        self.admin = (self.dir / "state" / "admin.key").read_text(encoding="utf-8").strip()

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the plane exited (see {self.dir / 'plane.log'})")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_plane(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 300)
        answer = httpx.request(method, f"{self.url}{path}", headers=self.headers(), **kwargs)
        if not answer.is_success:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json()

    def provision(self, tenants: Sequence[str], *, parallel: int = 4) -> dict[str, float]:
        """Create the tenants (``parallel`` at once) and a key each; seconds per tenant."""

        def one(tenant: str) -> tuple[str, float]:
            started = time.monotonic()
            self.call("POST", "/v1/tenants", json={"id": tenant, "tier": "standard"})
            took = time.monotonic() - started
            made = self.call("POST", f"/v1/tenants/{tenant}/keys", json={"name": "selftest"})
            self.keys[tenant] = made["secret"]
            return tenant, took

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            return dict(pool.map(one, tenants))

    def cells(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.call("GET", "/plane/v1/cells")["items"]
        return items

    def cell_pids(self) -> list[int]:
        db = self.dir / "state" / "plane.db"
        if not db.exists():
            return []
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return [int(p) for (p,) in conn.execute("SELECT pid FROM cells") if p]

    def stop(self) -> None:
        """Stop the plane, then every cell it started."""
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        pids = self.cell_pids()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    return True


def submit_all(fed: Federation, tenant: str, workflow: str, inputs: Sequence[int]) -> list[str]:
    client = fed.client(tenant)
    return [client.submit(workflow, {"i": i}).id for i in inputs]


def wait_all(fed: Federation, tenant: str, run_ids: Sequence[str], timeout_s: float) -> list[Any]:
    """The runs' records once all ended (the Client follows the plane's redirect; with the plane
    down it needs a route learned before)."""
    from tenantflow.errors import StoreUnavailableError

    done: dict[str, Any] = {}
    client = fed.client(tenant)

    def finished() -> bool:
        for run_id in run_ids:
            if run_id in done:
                continue
            try:
                record = client.get_run(run_id)
            except StoreUnavailableError:
                return False
            if record.status.value in ("completed", "failed", "cancelled"):
                done[run_id] = record
        return len(done) == len(run_ids)

    wait_for(finished, timeout_s, f"{len(run_ids)} runs of {tenant}")
    return [done[r] for r in run_ids]


def latencies(records: Sequence[Any]) -> list[float]:
    return [r.finished_at - r.created_at for r in records if r.finished_at is not None]


def overspend(calls: Sequence[float], rate_per_s: float, burst: int) -> int:
    """The most calls over ``rate × window + burst`` in any window starting at a call."""
    worst = 0
    n = len(calls)
    j = 0
    for i in range(n):
        for window in (0.25, 0.5, 1.0, 2.0, 5.0):
            j = i
            while j < n and calls[j] - calls[i] <= window:
                j += 1
            allowed = rate_per_s * window + burst
            worst = max(worst, int((j - i) - allowed) if (j - i) > allowed else 0)
    return worst


def run_federated(ctx: Context, row: Row, workdir: Path) -> None:
    from tenantflow.errors import NotFoundError
    from tenantflow.selftest.federated_app import QUOTA_WORKFLOW, read_tool_calls
    from tenantflow.selftest.workload import WORKFLOW, expected_outputs

    tool_log = workdir / "tool.log"
    fed = Federation(
        workdir / "fed",
        env={"TF_FED_TOOL_LOG": str(tool_log), "TF_SELFTEST_STEP_MS": "10,40"},
    )
    burst_runs, quiet_runs = 120, 12
    tenants = ["burst", "quiet1", "quiet2", "other"]
    try:
        fed.start()
        resource, rate, burst = QUOTA
        fed.call("PUT", f"/plane/v1/quotas/{resource}", json={"rate": rate, "burst": burst})
        took = fed.provision(tenants)
        row.figures["provision_s_p50"] = round(percentile(list(took.values()), 0.5) or 0.0, 2)
        ctx.progress(f"  federated: {len(tenants)} tenants provisioned")

        def phase(kill_plane: bool) -> tuple[list[float], int]:
            burst_ids = submit_all(fed, "burst", WORKFLOW, range(burst_runs))
            quiet_ids = {
                t: submit_all(fed, t, WORKFLOW, range(quiet_runs)) for t in ("quiet1", "quiet2")
            }
            if kill_plane:
                fed.kill_plane()
            records = wait_all(fed, "burst", burst_ids, 300)
            quiet: list[Any] = []
            for t, ids in quiet_ids.items():
                quiet += wait_all(fed, t, ids, 300)
            failed = sum(1 for r in [*records, *quiet] if r.status.value != "completed")
            return latencies(quiet), failed

        base, failed_base = phase(kill_plane=False)
        fault, failed_fault = phase(kill_plane=True)
        p99_base, p99_fault = percentile(base, 0.99) or 0.0, percentile(fault, 0.99) or 0.0
        row.figures["quiet_p99_s_plane_up"] = round(p99_base, 3)
        row.figures["quiet_p99_s_plane_killed"] = round(p99_fault, 3)
        ratio = p99_fault / p99_base if p99_base > 0 else float("inf")
        row.figures["quiet_p99_ratio"] = round(ratio, 3)
        row.faults["plane_sigkill"] = 1
        row.check(failed_base + failed_fault == 0, f"{failed_base + failed_fault} runs failed")
        row.check(ratio <= 1.1, f"quiet p99 with the plane killed is {ratio:.2f}x (bound 1.1x)")
        fed.start()  # the same state: the running cells are adopted
        ctx.progress("  federated: plane killed and restarted, no run failed")

        # crash: a cell SIGKILLed under load
        cell = next(c for c in fed.cells() if "other" in c["tenants"])
        ids = submit_all(fed, "other", WORKFLOW, range(1000, 1000 + 60))
        time.sleep(0.5)
        os.kill(int(cell["pid"]), signal.SIGKILL)
        row.faults["cell_sigkill"] = 1
        killed_at = time.monotonic()
        records = wait_all(fed, "other", ids, 300)
        row.recovery_s.append(round(time.monotonic() - killed_at, 2))
        row.runs = len(ids) + burst_runs * 2 + quiet_runs * 4
        row.lost = sum(1 for r in records if r.status.value != "completed")
        client = fed.client("other")
        duplicates = wrong = 0
        for record, i in zip(records, range(1000, 1060), strict=True):
            events = client.timeline(record.id)
            duplicates += max(0, sum(e.kind == "run.completed" for e in events) - 1)
            state = client.state(record.id).state
            wrong += any(state.get(k) != v for k, v in expected_outputs(i).items())
        row.duplicate_completions = duplicates
        row.check(row.lost == 0, f"{row.lost} runs lost after the cell SIGKILL")
        row.check(duplicates == 0, f"{duplicates} runs completed twice")
        row.check(wrong == 0, f"{wrong} runs with a wrong result")
        ctx.progress("  federated: cell killed, nothing lost")

        # budget: a global limit shared by every cell
        quota_ids = {t: submit_all(fed, t, QUOTA_WORKFLOW, range(40)) for t in tenants}
        for t, ids_ in quota_ids.items():
            done = wait_all(fed, t, ids_, 300)
            row.check(all(r.status.value == "completed" for r in done), f"quota runs of {t} failed")
        calls = read_tool_calls(tool_log)
        rate_per_s = 20.0
        over = overspend(calls, rate_per_s, burst)  # calls, not money: a rate limit
        row.figures["quota_calls"] = len(calls)
        row.figures["quota_overspend_calls"] = over
        row.check(over == 0, f"{over} calls over the global limit")
        quotas = fed.call("GET", "/plane/v1/quotas")["items"]
        held = quotas[0]["held_rate_per_s"]
        row.figures["quota_held_rate"] = round(held, 3)
        row.check(held <= rate_per_s + 1e-9, f"leases held {held} > {rate_per_s}/s")

        # policy: one change, every cell acknowledges it
        fed.call("POST", "/plane/v1/policies", json={"policy": {"weight": 2.0}})
        status = wait_for(
            lambda: (
                (items := fed.call("GET", "/plane/v1/policies")["items"])
                and all(p["lag_s"] is not None for p in items)
                and items
            ),
            60,
            "every cell to acknowledge the policy",
        )
        lags = sorted(float(p["lag_s"]) for p in status)
        row.figures["policy_lag_s_p50"] = round(percentile(lags, 0.5) or 0.0, 4)
        row.figures["policy_lag_s_p99"] = round(percentile(lags, 0.99) or 0.0, 4)

        # isolation: another tenant's key sees nothing, on the plane or straight on the cell
        cross = 0
        victim_run = records[0].id
        victim_cell = next(c for c in fed.cells() if "other" in c["tenants"])["url"]
        for t in ("burst", "quiet1", "quiet2"):
            try:
                fed.client(t).get_run(victim_run)
                cross += 1
            except NotFoundError:
                pass
            direct = httpx.get(
                f"{victim_cell}/v1/runs/{victim_run}", headers=fed.headers(fed.keys[t]), timeout=10
            )
            cross += direct.status_code == 200
        row.cross_tenant = cross
        row.check(cross == 0, f"{cross} cross-tenant reads succeeded")

        # audit: every tenant's chain verifies
        broken = 0
        for t in tenants:
            broken += not fed.client(t).audit_verify().ok
        row.check(broken == 0, f"{broken} audit chains do not verify")
    finally:
        fed.stop()


FEDERATED_SCENARIOS: tuple[Scenario, ...] = (  # tenantflow selftest --placement federated
    Scenario(
        "federated",
        "plane and cells as processes: a cell and the plane SIGKILLed under load, a global"
        " quota across cells, a policy change, isolation, audit",
        run_federated,
    ),
)
