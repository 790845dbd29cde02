"""Crash, centralized on PostgreSQL: an API process and three workers, SIGKILLed again and again.

``tenantflow serve --workers external`` (the front: it records submissions and executes
nothing) and three ``tenantflow worker`` processes — each one drives the tenants it holds a
lease on: their admission, fair dispatch and execution — share one PostgreSQL schema. Over HTTP
the scenario creates three tenants (one bulk, two quiet) with a key each and submits the runs,
every one with an ``Idempotency-Key``, retried until answered. While the runs are in flight it
SIGKILLs a worker that is executing steps, and starts a new one at once, again and again — each
kill a random moment after the tenants the last one interrupted are running again and its
replacement has started, so that each recovery is measured on its own; two kills hit the
front during submission (the submitters retry with the same key until it is back). Then, from
the store and the executions log the workers append to:

* every run completed with the right result, each step's completion recorded once, in DAG
  order, with its state history intact; executions may repeat (at-least-once), within the bound
  of what a kill can cut short: the steps the dead worker ran, and those of the tenants moved
  to its replacement when it joins — each at most every tenant's cap;
* recovery: after each worker kill, how long until every attempt it cut short had started
  again in another worker (the tenant's lease and the attempts' leases must lapse first);
* no tenant ever had more step bodies executing at once, across all workers, than its cap (a
  killed worker's unfinished bodies count as executing until the kill);
* the quiet tenants' runs were not held up behind the bulk tenant's (their p99 latency is below
  the bulk tenant's median).

The quiet tenants are quiet on any machine: each submits its 10 % of the runs paced like the
bulk tenant's, but never more than one run at a time (the next once the last has ended), so its
latency is one run's own five steps plus the stalls kills cause (each bounded by the recovery
bound), never a backlog of its own; the bulk tenant's 80 %, all submitted within 8 s, queue
behind its own cap of 3 running steps, so its median run waits for about half of them: the 120th
of 240 cannot end before 120 × 5 steps × 50 ms / 3 = 10 s, 4 s after it was submitted at the
earliest — 6 s at least, tens of seconds in practice, more on a slower machine, which slows
every step alike. (Paced open-loop at 3.75 runs a second, the quiet tenants' own backlog grew
when a loaded machine finished fewer than that — and with 20 % each they were over their cap
even on an idle one: on seed 11 their p99 exceeded the bulk median, a bound that held by luck.)

The kills are counted only while runs are in flight, and the scenario keeps runs in flight
until they have all landed: past their share, the quiet tenants go on submitting (one run at a
time) until the last kill. On a starved machine, where each replacement worker takes seconds
to start, that takes longer, not fewer kills; ``KILL_DEADLINE_S`` (15 min) only stops a
machine that cannot start workers at all, and is then reported as a failure.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from tenantflow.domain.records import TERMINAL_RUN
from tenantflow.engine.engine import Engine
from tenantflow.selftest.core import Context, Row, percentile
from tenantflow.selftest.pg import scratch_schema
from tenantflow.selftest.procs import Process, admin_key, cli_env, free_port, wait_ready
from tenantflow.selftest.verify import Expected, recovery_after_kills, verify_runs
from tenantflow.selftest.workload import TENANTS, WORKFLOW, Execution, read_executions

__all__ = ["executing_at_once", "run_crash_postgres"]

KILLED_WORKER = "worker SIGKILL"
KILLED_FRONT = "front SIGKILL"
CAP = 3
WORKERS = 3
APP = "tenantflow.selftest.workload:setup"
DEADLINE_S = 240.0  # for every run to end after the last kill
KILL_DEADLINE_S = 900.0  # for the kills to land (each waits for a replacement worker's start)
SUBMIT_S = 8.0  # submissions are spread over this long
KILL_PAUSE_S = (0.2, 0.8)  # from the recovery of one kill to the next


class Cluster:
    """The front and the worker processes: started, killed, replaced, stopped."""

    def __init__(self, url: str, directory: Path, lease_s: float, step_ms: tuple[int, int]) -> None:
        self.url = url
        self.dir = directory
        self.lease_s = lease_s
        self.log = directory / "executions.log"
        self.env = cli_env(
            TF_SELFTEST_EXEC_LOG=str(self.log), TF_SELFTEST_STEP_MS="{},{}".format(*step_ms)
        )
        self.workers: list[Process] = []
        self.front: Process | None = None
        self.port = free_port()
        self.kills: list[tuple[int, float]] = []  # workers: (pid, when)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_worker(self) -> None:
        command = [sys.executable, "-m", "tenantflow.cli.main", "worker", "--db", self.url]
        command += ["--app", APP, "--lease", str(self.lease_s), "--slots", "16"]
        self.workers.append(Process(command, output=self.dir / "workers.out", env=self.env))

    def start_front(self) -> None:
        command = [sys.executable, "-m", "tenantflow.cli.main", "serve", "--db", self.url]
        command += ["--app", APP, "--workers", "external", "--port", str(self.port)]
        command += ["--log-level", "warning"]
        self.front = Process(command, output=self.dir / "front.out", env=self.env)

    def kill_worker(self, pick: int) -> tuple[int, float, set[str]]:
        """SIGKILL a live worker — one that is executing steps, when any is — and replace it;
        its pid, the kill's time and the tenants whose steps it was executing."""
        running: dict[tuple[int, str, str, int], str | None] = {}
        for x in read_executions(self.log):
            running[(x.pid, x.run, x.step, x.attempt)] = x.tenant if x.kind == "S" else None
        live = [w for w in self.workers if w.alive()]
        busy = [w for w in live if any(k[0] == w.pid and t for k, t in running.items())]
        victim = (busy or live)[pick % len(busy or live)]
        when = victim.kill()
        self.kills.append((victim.pid, when))
        self.workers.remove(victim)
        self.start_worker()
        cut = {t for k, t in running.items() if k[0] == victim.pid and t is not None}
        return victim.pid, when, cut

    async def resumed(self, pid: int, when: float, tenants: set[str], timeout_s: float) -> None:
        """Until every one of ``tenants`` had a step started by another process after ``when``,
        and the replacement worker is up (the next kill then measures a recovery of its own,
        not the tail of this one)."""
        deadline = time.monotonic() + timeout_s
        joined = f":{self.workers[-1].pid}:"
        output = self.dir / "workers.out"
        while time.monotonic() < deadline:
            tenants = tenants - {
                x.tenant
                for x in read_executions(self.log)
                if x.kind == "S" and x.pid != pid and x.at >= when
            }
            text = output.read_text(errors="replace") if output.exists() else ""
            if not tenants and any(joined in ln and "started" in ln for ln in text.splitlines()):
                return
            await asyncio.sleep(0.05)

    def kill_front(self) -> None:
        assert self.front is not None
        self.front.kill()
        self.start_front()

    def stop(self) -> list[int]:
        codes = [w.stop() for w in self.workers]
        if self.front is not None:
            codes.append(self.front.stop())
        self.workers = []
        return codes


def executing_at_once(executions: list[Execution], killed: dict[int, float]) -> dict[str, int]:
    """Per tenant, the most step bodies executing at once across every worker process."""
    open_: dict[tuple[int, str, str, int], tuple[str, float]] = {}
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for x in executions:
        key = (x.pid, x.run, x.step, x.attempt)
        if x.kind == "S":
            open_[key] = (x.tenant, x.at)
        elif key in open_:  # done (E) or cancelled (X)
            tenant, began = open_.pop(key)
            spans[tenant].append((began, x.at))
    for (pid, *_), (tenant, began) in open_.items():  # cut short by a kill, or still running
        spans[tenant].append((began, killed.get(pid, math.inf)))
    most: dict[str, int] = {}
    for tenant, intervals in spans.items():
        edges = sorted([(b, 1) for b, _ in intervals] + [(e, -1) for _, e in intervals])
        level = peak = 0
        for _, delta in edges:  # an end at the same instant as a start comes first
            level += delta
            peak = max(peak, level)
        most[tenant] = peak
    return most


def _counts(total: int) -> dict[str, int]:
    """Runs per tenant: the first is the bulk tenant (80%), the others share the rest."""
    bulk = total * 4 // 5
    rest = total - bulk
    quiet = [rest // (len(TENANTS) - 1)] * (len(TENANTS) - 1)
    quiet[0] += rest - sum(quiet)
    return dict(zip(TENANTS, [bulk, *quiet], strict=True))


def run_crash_postgres(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring)."""
    with scratch_schema(ctx.postgres(), "cluster") as url:
        cluster = Cluster(url, directory, ctx.profile.cluster_lease_s, ctx.profile.cluster_step_ms)
        admin = admin_key(cluster.env, url)
        cluster.start_front()
        try:
            asyncio.run(_drive(ctx, row, cluster, admin))
        finally:
            codes = cluster.stop()
        row.check(codes == [0] * len(codes), f"processes exited {codes} when stopped")


async def _drive(ctx: Context, row: Row, cluster: Cluster, admin: str) -> None:
    rng = ctx.rng("crash-postgres")
    profile = ctx.profile
    assert cluster.front is not None
    await asyncio.to_thread(wait_ready, cluster.base, cluster.front)
    for _ in range(WORKERS):
        cluster.start_worker()
    counts = _counts(profile.cluster_runs)
    bulk_tenant = TENANTS[0]
    bulk = list(range(counts[bulk_tenant]))
    quiet = {t: n for t, n in counts.items() if t != bulk_tenant}
    submitted: list[Expected] = []
    enough = asyncio.Event()  # set once the kills are done: the quiet tenants stop submitting
    async with httpx.AsyncClient(base_url=cluster.base, timeout=30) as http:
        keys = await _tenants(http, admin)
        front_kills = {1, 3}  # during submission: its clients retry with the same key
        queue = iter(enumerate(bulk))
        begin = time.monotonic()
        reader = Engine.open(cluster.url, execute=False)

        async def bulk_submitter() -> None:  # paced, open loop: SUBMIT_S for all of them
            for k, i in queue:
                await asyncio.sleep(max(0.0, begin + k * SUBMIT_S / len(bulk) - time.monotonic()))
                run_id = await _submit(http, keys[bulk_tenant], i)
                submitted.append(Expected(bulk_tenant, i, run_id))

        async def quiet_submitter(tenant: str, share: int) -> None:
            # Closed loop: the next run once the last one ended (and not before its pace), so a
            # quiet tenant never has more than one run in flight, however slow the machine;
            # past its share it goes on until the kills are done, so that every kill lands
            # while runs are in flight.
            for i in itertools.count():
                if i >= share and enough.is_set():
                    return
                await asyncio.sleep(max(0.0, begin + i * SUBMIT_S / share - time.monotonic()))
                run_id = await _submit(http, keys[tenant], i)
                submitted.append(Expected(tenant, i, run_id))
                await _until_ended(reader, tenant, run_id)

        async with reader:
            submitting = asyncio.gather(
                *(bulk_submitter() for _ in range(8)),
                *(quiet_submitter(t, share) for t, share in quiet.items()),
            )
            started = last = time.monotonic()
            kills = 0
            stuck = False
            while True:
                # A kill at a random moment once the last one was recovered from, while runs
                # are in flight, until enough have landed (or the generous KILL_DEADLINE_S).
                pause = rng.uniform(*KILL_PAUSE_S) if kills < profile.cluster_kills else 0.2
                await asyncio.sleep(pause)
                if submitting.done() and submitting.exception() is not None:
                    await submitting  # a submission refused or never answered: its error
                ended = await _ended(reader)
                if submitting.done() and ended == len(submitted):
                    break
                if time.monotonic() - last > DEADLINE_S:
                    row.check(
                        False,
                        f"only {ended} of {len(submitted)} runs ended {DEADLINE_S:g}s after the"
                        " last kill",
                    )
                    submitting.cancel()  # a quiet tenant may wait for a run that never ends
                    stuck = True
                    break
                if kills >= profile.cluster_kills:
                    enough.set()
                    continue
                if time.monotonic() - started > KILL_DEADLINE_S:
                    enough.set()  # the check below reports it
                    continue
                if ended >= len(submitted):
                    continue  # nothing in flight at this moment: a kill now would test nothing
                if kills in front_kills and not submitting.done():
                    cluster.kill_front()
                    row.fault(KILLED_FRONT)
                else:
                    pid, when, cut = cluster.kill_worker(rng.randrange(1 << 30))
                    row.fault(KILLED_WORKER)
                    await cluster.resumed(pid, when, cut, timeout_s=10 * profile.cluster_lease_s)
                kills += 1
                last = time.monotonic()
            enough.set()
            await asyncio.gather(submitting, return_exceptions=stuck)
            await asyncio.sleep(1.0)  # the newest workers are past their start-up
            executions = read_executions(cluster.log)
            outcome = await verify_runs(reader.store, submitted, executions)
            latency = await _latencies(reader, submitted)
    outcome.into(row)
    worker_kills = row.faults.get(KILLED_WORKER, 0)
    row.duplicate_bound = worker_kills * 2 * CAP * len(TENANTS)
    row.recovery_bound_s = 3 * profile.cluster_lease_s
    recoveries = recovery_after_kills(executions, cluster.kills)
    row.recovery_s.extend(recoveries)
    (cluster.dir / "kills.txt").write_text(  # for a look at a failure
        "".join(f"{pid} {at:.6f}\n" for pid, at in cluster.kills), encoding="utf-8"
    )
    row.check(
        kills >= profile.cluster_kills,
        f"only {kills} kills landed while runs were in flight in {KILL_DEADLINE_S:g}s"
        f" (≥ {profile.cluster_kills} wanted)",
    )
    peaks = executing_at_once(executions, dict(cluster.kills))
    row.check(max(peaks.values(), default=0) <= CAP, f"a tenant's cap was exceeded: {peaks}")
    quiet_p99 = percentile(latency["quiet"], 0.99) or 0.0
    bulk_p50 = percentile(latency["bulk"], 0.5) or 0.0
    row.check(
        quiet_p99 < bulk_p50,
        f"quiet tenants' p99 {quiet_p99:.1f}s is not below the bulk tenant's median"
        f" {bulk_p50:.1f}s",
    )
    row.note(
        f"PostgreSQL; front + {WORKERS} workers; lease {profile.cluster_lease_s:g}s;"
        f" cap {CAP} steps per tenant (peak seen {max(peaks.values(), default=0)});"
        f" quiet p99 {quiet_p99:.1f}s < bulk p50 {bulk_p50:.1f}s"
    )


async def _tenants(http: httpx.AsyncClient, admin: str) -> dict[str, str]:
    keys = {}
    headers = {"Authorization": f"Bearer {admin}"}
    for tenant in TENANTS:
        policy = {"max_running_steps": CAP, "max_active_runs": 20, "burst_slots": 0}
        body = {"id": tenant, "tier": "standard", "policy": policy}
        r = await http.post("/v1/tenants", json=body, headers=headers)
        if r.status_code != 201:
            raise RuntimeError(f"creating tenant {tenant}: {r.status_code} {r.text[:200]}")
        r = await http.post(f"/v1/tenants/{tenant}/keys", headers=headers)
        if r.status_code != 201:
            raise RuntimeError(f"creating a key of {tenant}: {r.status_code} {r.text[:200]}")
        keys[tenant] = str(r.json()["secret"])
    return keys


async def _submit(http: httpx.AsyncClient, key: str, i: int) -> str:
    """Submit run ``i``; again, with the same key, until the front answers (it may be down)."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"run-{i}"}
    body: dict[str, Any] = {"workflow": WORKFLOW, "input": {"i": i}}
    deadline = time.monotonic() + 120
    while True:
        try:
            r = await http.post("/v1/runs", json=body, headers=headers)
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code in (200, 201):
            return str(r.json()["id"])
        if r is not None and r.status_code < 500 and r.status_code != 429:
            raise RuntimeError(f"submission {i} refused: {r.status_code} {r.text[:200]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"submission {i} was not answered in 120s")
        await asyncio.sleep(0.1)


async def _until_ended(reader: Engine, tenant: str, run_id: str) -> None:
    while True:
        if (await reader.get_run(tenant, run_id)).status in TERMINAL_RUN:
            return
        await asyncio.sleep(0.05)


async def _ended(reader: Engine) -> int:
    rows = await reader.store.execute_sql(  # type: ignore[attr-defined]
        "SELECT count(*) FROM runs WHERE status IN ("
        + ",".join(f"'{s.value}'" for s in TERMINAL_RUN)
        + ")"
    )
    return int(rows[0][0])


async def _latencies(reader: Engine, runs: list[Expected]) -> dict[str, list[float]]:
    latency: dict[str, list[float]] = defaultdict(list)
    for exp in runs:
        record = await reader.get_run(exp.tenant, exp.run_id)
        if record.finished_at is not None:
            kind = "bulk" if exp.tenant == TENANTS[0] else "quiet"
            latency[kind].append(record.finished_at - record.created_at)
    return latency
