"""One API process and three worker processes on one PostgreSQL database, workers SIGKILLed.

``tenantflow serve --workers external`` (the API, a front that executes nothing) takes an admin
key made with ``tenantflow keys create --admin``; over HTTP the test creates six tenants — one
bulk tenant with 700 runs, five quiet ones with 60 each — and a key for each, and submits the
1,000 three-step runs while three ``tenantflow worker`` processes drive them. The test kills a
random worker with SIGKILL every second or so, and starts a new one at once, until every run has
ended. Then:

* every run completed, with the right result;
* each step's completion is recorded exactly once (one ``step.succeeded`` event per step);
  executions may repeat (a killed attempt is run again: at-least-once) and are counted;
* no tenant ever had more step bodies executing at once, across all workers, than its cap
  (from the executions log the workers append to: a killed worker's unfinished bodies count as
  executing until it was killed);
* the quiet tenants' runs were not held up behind the bulk tenant's: their p99 latency is below
  the bulk tenant's median.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest

import tenantflow as tf

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

HERE = Path(__file__).parent
TENANTFLOW = Path(sys.executable).with_name("tenantflow")
BULK, QUIET = "bulk", ("q1", "q2", "q3", "q4", "q5")
RUNS = {BULK: 700, **dict.fromkeys(QUIET, 60)}
CAP = 4
LEASE_S = 1.0
MIN_KILLS = 6
DEADLINE_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workers:
    """The worker processes: started, killed, replaced, stopped."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.output = log.with_name("workers.log").open("ab")
        self.env = {
            **os.environ,
            "TF_CLUSTER_LOG": str(log),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: dict[int, float] = {}  # pid -> when it was killed

    def start(self) -> None:
        command = [str(TENANTFLOW), "worker", "--db", self.url, "--app", "cluster_app:setup"]
        command += ["--lease", str(LEASE_S), "--slots", "16"]
        self.procs.append(
            subprocess.Popen(command, env=self.env, stdout=subprocess.DEVNULL, stderr=self.output)
        )

    def admin_key(self) -> str:
        """Create the schema and an admin key, as an operator would, from the command line."""
        upgrade = [str(TENANTFLOW), "db", "upgrade", "--db", self.url]
        subprocess.run(upgrade, env=self.env, capture_output=True, timeout=60, check=True)
        command = [str(TENANTFLOW), "keys", "create", "--admin", "--db", self.url, "--json"]
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=60, check=True
        )
        secret: str = json.loads(done.stdout)["secret"]
        return secret

    def serve(self, port: int) -> subprocess.Popen[bytes]:
        command = [str(TENANTFLOW), "serve", "--db", self.url, "--app", "cluster_app:setup"]
        command += ["--workers", "external", "--port", str(port), "--log-level", "warning"]
        return subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=self.output
        )

    def kill_one(self, rng: random.Random) -> None:
        proc = rng.choice([p for p in self.procs if p.poll() is None])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.killed[proc.pid] = time.time()
        self.procs.remove(proc)

    def stop(self) -> list[int]:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(20))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(-9)
        self.procs = []
        return codes


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def executing_at_once(log: Path, killed: dict[int, float]) -> dict[str, int]:
    """Per tenant, the most step bodies executing at once across every worker process."""
    open_: dict[tuple[str, str, str], tuple[str, float]] = {}
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in lines(log):
        kind, pid, tenant, run, step, ts = line.split()
        key = (pid, run, step)
        if kind == "start":
            open_[key] = (tenant, float(ts))
        elif key in open_:
            tenant, began = open_.pop(key)
            intervals[tenant].append((began, float(ts)))
    for (pid, _, _), (tenant, began) in open_.items():  # cut short by a kill
        intervals[tenant].append((began, killed.get(int(pid), began)))
    most: dict[str, int] = {}
    for tenant, spans in intervals.items():
        edges = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
        level = peak = 0
        for _, delta in edges:  # an end at the same instant as a start comes first
            level += delta
            peak = max(peak, level)
        most[tenant] = peak
    return most


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_workers_killed_again_and_again_lose_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    workers = Workers(postgres_url, log)
    rng = random.Random(20_261_121)
    port = free_port()
    admin = workers.admin_key()
    reader = tf.Engine.open(postgres_url, execute=False)
    api = workers.serve(port)
    try:
        async with reader:
            await run_the_test(workers, api, port, admin, reader, rng, log)
    finally:
        workers.stop()
        api.send_signal(signal.SIGTERM)
        api.wait(30)
        workers.output.close()
    assert api.returncode == 0


async def run_the_test(
    workers: Workers,
    api: subprocess.Popen[bytes],
    port: int,
    admin: str,
    reader: tf.Engine,
    rng: random.Random,
    log: Path,
) -> None:
    store = reader.store
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        deadline = time.monotonic() + 60
        while True:  # the API is up
            try:
                if (await http.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert api.poll() is None, "the API exited"
            assert time.monotonic() < deadline, "the API never became ready"
            await asyncio.sleep(0.1)
        for _ in range(3):
            workers.start()
        keys: dict[str, str] = {}
        for tenant in RUNS:
            policy = {"max_running_steps": CAP, "max_active_runs": 20, "burst_slots": 0}
            r = await http.post(
                "/v1/tenants",
                json={"id": tenant, "tier": "standard", "policy": policy},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code == 201, r.text
            r = await http.post(
                f"/v1/tenants/{tenant}/keys", headers={"Authorization": f"Bearer {admin}"}
            )
            assert r.status_code == 201, r.text
            keys[tenant] = r.json()["secret"]
        todo = iter([(t, i) for t, n in RUNS.items() for i in range(n)])
        submitted: list[tuple[str, int, str]] = []

        async def submitter() -> None:
            for tenant, i in todo:
                r = await http.post(
                    "/v1/runs",
                    json={"workflow": "cluster", "input": i},
                    headers={"Authorization": f"Bearer {keys[tenant]}"},
                )
                assert r.status_code == 201, r.text
                submitted.append((tenant, i, r.json()["id"]))

        await asyncio.gather(*(submitter() for _ in range(16)))

        started = time.monotonic()
        kills = 0
        while True:
            rows = await store.execute_sql(  # type: ignore[attr-defined]
                "SELECT count(*) FROM runs WHERE status IN ('completed', 'failed', 'cancelled')"
            )
            if rows[0][0] == len(submitted) and kills >= MIN_KILLS:
                break
            assert time.monotonic() - started < DEADLINE_S, f"{rows[0][0]} runs ended in time"
            await asyncio.sleep(rng.uniform(0.6, 1.4))
            if rows[0][0] < len(submitted) or kills < MIN_KILLS:
                workers.kill_one(rng)
                workers.start()
                kills += 1
        await asyncio.sleep(2.0)  # the newest worker is past its start-up
        codes = workers.stop()

        # Every run completed, with the right result.
        for tenant, i, run_id in submitted:
            record = await reader.get_run(tenant, run_id)
            assert record.status == tf.RunStatus.COMPLETED, record
            assert json.loads(record.result_json or b"null") == (i + 1) * 2 + 1
        # Each step's completion recorded once.
        recorded = await store.execute_sql(  # type: ignore[attr-defined]
            "SELECT run_id, step, count(*) FROM events WHERE kind = 'step.succeeded'"
            " GROUP BY run_id, step"
        )
        assert len(recorded) == 3 * len(submitted)
        assert {r[2] for r in recorded} == {1}
        executions = Counter(
            tuple(line.split()[3:5]) for line in lines(log) if line.startswith("start")
        )
        assert len(executions) == 3 * len(submitted)
        repeats = sum(n - 1 for n in executions.values())
        # At-least-once: only an attempt a kill cut short runs again (at most the cap of every
        # tenant per kill, since a kill cuts short at most what its worker was executing).
        assert repeats <= kills * CAP * len(RUNS)
        # Caps held across every worker.
        peaks = executing_at_once(log, workers.killed)
        assert set(peaks) == set(RUNS)
        assert max(peaks.values()) <= CAP, peaks
        # The quiet tenants were not queued behind the bulk tenant.
        latency: dict[str, list[float]] = defaultdict(list)
        for tenant, _, run_id in submitted:
            record = await reader.get_run(tenant, run_id)
            assert record.finished_at is not None
            latency["bulk" if tenant == BULK else "quiet"].append(
                record.finished_at - record.created_at
            )
        quiet_p99 = percentile(latency["quiet"], 0.99)
        bulk_p50 = percentile(latency["bulk"], 0.5)
        print(
            f"\n{kills} kills, {repeats} repeated executions, peaks {peaks},"
            f" quiet p99 {quiet_p99:.2f}s, bulk p50 {bulk_p50:.2f}s,"
            f" {time.monotonic() - started:.1f}s"
        )
        assert quiet_p99 < bulk_p50
        assert codes == [0] * len(codes)
