"""Crash, embedded on SQLite: SIGKILL the engine again and again while runs are in flight.

The process under test (:mod:`tenantflow.selftest.crash_worker`) is the whole embedded engine —
scheduler, dispatcher and executor in one — on a SQLite file, with a share of its commits
landing and then raising. The scenario kills it with SIGKILL at seeded random moments, aimed at
start-up and recovery, at submission and at execution (where group commits run all the time),
starts it again each time, and finally lets it finish. After every kill the database must be
intact (``PRAGMA integrity_check``, each idempotency key used once, no step completed twice); at
the end every run must have completed with each step's completion recorded exactly once, in DAG
order, with contiguous hash-chained state versions. Executions may repeat (at-least-once) and
are counted against their bound: each kill or failed commit can cut short at most the attempts
the process was running (its slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
from pathlib import Path

from tenantflow.engine.engine import Engine
from tenantflow.selftest.core import Context, Row
from tenantflow.selftest.faults import LOST_ACKS
from tenantflow.selftest.procs import Process, progress_lines
from tenantflow.selftest.verify import Expected, Outcome, recovery_after_kills, verify_runs
from tenantflow.selftest.workload import TENANTS, Execution, read_executions, tenant_of

__all__ = ["kill_plan", "run_crash_sqlite"]

KILLED = "SIGKILL"
SLOTS = 8
WAIT_S = 30.0  # bound on waiting for any one milestone of a worker


def kill_plan(kills: int) -> list[str]:
    """What each kill aims at: submission first (while runs remain to be created), then
    start-up, just after recovery, and execution, mixed by the caller."""
    submit = max(3, kills // 6)
    startup = max(2, kills // 8)
    ready = max(2, kills // 10)
    return (
        ["submit"] * submit
        + ["startup"] * startup
        + ["ready"] * ready
        + ["execute"] * (kills - submit - startup - ready)
    )


class _Harness:
    def __init__(self, directory: Path, ctx: Context, runs: int, seed: int) -> None:
        self.dir = directory
        self.ctx = ctx
        self.runs = runs
        self.seed = seed
        self.db = directory / "crash.db"
        self.exec_log = directory / "executions.log"
        self.progress = directory / "progress.log"
        self.workers: list[Process] = []
        self.kills: list[tuple[int, float]] = []

    def spawn(self, n: int, timeout_s: float = 120.0) -> Process:
        profile = self.ctx.profile
        options = {
            "--db": self.db,
            "--exec-log": self.exec_log,
            "--progress": self.progress,
            "--runs": self.runs,
            "--seed": self.seed + n,
            "--slots": SLOTS,
            "--lease": profile.lease_s,
            "--commit-faults": profile.commit_fault_share,
            "--min-step-s": profile.crash_step_ms[0] / 1000,
            "--max-step-s": profile.crash_step_ms[1] / 1000,
            "--timeout": timeout_s,
        }
        args = [sys.executable, "-m", "tenantflow.selftest.crash_worker"]
        for flag, value in options.items():
            args += [flag, str(value)]
        worker = Process(args, output=self.dir / "worker.out")
        self.workers.append(worker)
        return worker

    def lines(self, worker: Process) -> list[list[str]]:
        return progress_lines(self.progress, worker.pid)

    def wait_for(self, worker: Process, event: str, value: str | None = None) -> bool:
        """Until the worker's progress shows ``event`` (``value``); False if it exited first."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            lines = self.lines(worker)
            if any(x[0] == event and (value in (None, *x[1:2])) for x in lines):
                return True
            if not worker.alive():
                return False
            time.sleep(0.002)
        raise RuntimeError(f"worker {worker.pid} made no progress in {WAIT_S:g}s: {self.tail()}")

    def created(self) -> int:
        """How many runs are stored (the worker is dead when this is called)."""
        if not self.db.exists():
            return 0
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            try:
                return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
            except sqlite3.OperationalError:  # killed before the schema was created
                return 0

    def damage(self) -> tuple[list[str], int]:
        """What is wrong with the database right after a kill, and the attempts left running."""
        if not self.db.exists():
            return [], 0
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            try:
                checks = {
                    "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok",
                    "idempotency key used twice": conn.execute(
                        "SELECT COUNT(*) FROM (SELECT 1 FROM runs GROUP BY tenant_id,"
                        " idempotency_key HAVING COUNT(*) > 1)"
                    ).fetchone()[0],
                    "step completed twice": conn.execute(
                        "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE kind = 'step.succeeded'"
                        " GROUP BY run_id, step HAVING COUNT(*) > 1)"
                    ).fetchone()[0],
                }
                running = conn.execute(
                    "SELECT COUNT(*) FROM steps WHERE status = 'running'"
                ).fetchone()[0]
            except sqlite3.OperationalError:  # killed before the schema was created
                return [], 0
        return [what for what, bad in checks.items() if bad], running

    def faults(self) -> int:
        try:
            text = self.progress.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        return sum(1 for ln in text.split("\n")[:-1] if ln.split()[1:2] == ["fault"])

    def cleanup(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.kill()

    def tail(self) -> str:
        out = (self.dir / "worker.out").read_bytes().decode(errors="replace")
        return out[-1500:]


def _storm(h: _Harness, row: Row, kills: int, rng_seed: int) -> None:
    rng = h.ctx.rng("crash-sqlite", rng_seed)
    plan = kill_plan(kills)
    head = [a for a in plan if a == "submit"]
    rest = [a for a in plan if a != "submit"]
    plan = head + rng.sample(rest, len(rest))
    orphaned = 0
    for n, aim in enumerate(plan):
        created = h.created()
        if aim == "submit" and created >= h.runs - 10:
            aim = "execute"
        w = h.spawn(n)
        if aim == "startup":  # interpreter start, store open or recovery
            time.sleep(rng.uniform(0.0, 0.5))
        elif aim == "ready":  # just after recovery: resubmission and the first attempts
            h.wait_for(w, "ready")
            time.sleep(rng.uniform(0.0, 0.05))
        elif aim == "submit":  # in the middle of creating new runs
            h.wait_for(w, "submit", str(rng.randint(created + 1, h.runs - 5)))
        else:  # execution: steps running, group commits in flight
            h.wait_for(w, "submitted")
            time.sleep(rng.uniform(0.02, 0.35))
        if w.alive():
            h.kills.append((w.pid, w.kill()))
            row.fault(KILLED)
        elif w.proc.returncode != 0:
            raise RuntimeError(f"worker exited {w.proc.returncode}: {h.tail()}")
        else:  # it finished every run first: no work is left to kill
            break
        broken, running = h.damage()
        row.check(not broken, f"after kill {n + 1}: {', '.join(broken)}")
        orphaned += running > 0
    row.note(f"{orphaned} of {len(h.kills)} kills left attempts running in the store")


def run_crash_sqlite(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring); ``profile.crash_repeats`` seeded repeats."""
    profile = ctx.profile
    runs, kills = profile.crash_runs, profile.crash_kills
    row.recovery_bound_s = 3 * profile.lease_s
    lost_acks = 0
    for repeat in range(profile.crash_repeats):
        work = directory / f"repeat-{repeat}"
        work.mkdir()
        h = _Harness(work, ctx, runs, seed=ctx.seed * 1000 + repeat * 100)
        try:
            ctx.say(f"  repeat {repeat + 1}: {runs} runs, {kills} kills")
            _storm(h, row, kills, repeat)
            final = h.spawn(len(h.workers), timeout_s=120.0)
            rc = final.wait(150.0)
            row.check(rc == 0, f"the last worker did not finish its runs (exit {rc}): {h.tail()}")
        finally:
            h.cleanup()
        lost_acks += h.faults()
        (work / "kills.txt").write_text(  # for a look at a failure
            "".join(f"{pid} {at:.6f}\n" for pid, at in h.kills), encoding="utf-8"
        )
        executions = read_executions(h.exec_log)
        outcome = asyncio.run(_verify(h.db, runs, executions))
        outcome.into(row)
        row.recovery_s.extend(recovery_after_kills(executions, h.kills))
    row.fault(LOST_ACKS, lost_acks)
    row.duplicate_bound = (row.faults.get(KILLED, 0) + lost_acks) * SLOTS
    row.note(
        f"SQLite; lease {profile.lease_s:g}s; {SLOTS} slots; {profile.crash_repeats} × {runs}"
        f" runs of 5 steps, 3 tenants"
    )
    row.check(
        row.faults.get(KILLED, 0) >= kills * profile.crash_repeats,
        f"only {row.faults.get(KILLED, 0)} kills landed while runs were in flight (≥ {kills}"
        " per repeat wanted)",
    )


async def _verify(db: Path, runs: int, executions: list[Execution]) -> Outcome:
    async with Engine.open(f"sqlite:///{db}", execute=False) as reader:
        ids: dict[str, str] = {}
        for tenant in TENANTS:
            before = None
            while True:
                page = await reader.list_runs(tenant, limit=1000, before=before)
                ids.update({r.idempotency_key or "": r.id for r in page})
                if len(page) < 1000:
                    break
                before = page[-1].id
        expected = [
            Expected(tenant_of(i), i, ids.get(f"run-{i}", f"missing-run-{i}")) for i in range(runs)
        ]
        return await verify_runs(reader.store, expected, executions)
