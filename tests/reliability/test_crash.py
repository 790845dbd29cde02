"""Crash test: SIGKILL a worker again and again; every run still completes exactly once.

A worker process (``crash_worker.py``) runs 200 five-step runs across three tenants on a SQLite
file. The test kills it with SIGKILL at seeded random moments, aimed at startup/recovery, at
submission and at execution (where group commits run all the time), restarts it each time, and
finally lets it finish. After every kill the database must be consistent; at the end every run
must have completed with each step committed exactly once, contiguous state versions and a valid
hash chain. Duplicate *executions* are allowed (at-least-once) and are counted from the
executions log the worker appends to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tenantflow import Engine, RunStatus
from tenantflow.domain.records import next_state_hash

WORKER = Path(__file__).with_name("crash_worker.py")
RUNS = 200
STEPS = ("a", "b", "c", "d", "e")
TENANTS = ("t0", "t1", "t2")
SEED = 20_240_611
# The kill plan: what each kill aims at. Submission kills come first (while runs remain to be
# created); the others are mixed in a seeded order.
KILL_PLAN = ["submit"] * 4 + ["startup"] * 3 + ["ready"] * 2 + ["execute"] * 15
MIN_KILLS = 20
FINAL_TIMEOUT_S = 60.0
WAIT_S = 20.0  # bound on waiting for any one milestone of a worker


def expected_outputs(i: int) -> dict[str, int]:
    """Mirror of ``crash_worker.expected_outputs``: a -> (b, c) -> d -> e."""
    a = i + 1
    b = a * 2
    c = a + 10
    d = b + c
    return {"a": a, "b": b, "c": c, "d": d, "e": d + 1}


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    started: float
    seen_ready: float | None = None


@dataclass
class Figures:
    kills: list[str] = field(default_factory=list)  # the phase each kill landed in
    orphans: list[int] = field(default_factory=list)  # RUNNING attempts each kill left behind
    ready_s: list[float] = field(default_factory=list)  # engine open + recovery, in the worker


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "crash.db"
        self.exec_log = tmp / "executions.log"
        self.progress = tmp / "progress.log"
        self.output: IO[bytes] = open(tmp / "worker.out", "ab")  # noqa: SIM115
        self.workers: list[Worker] = []

    def spawn(self, seed: int, timeout_s: float = 60.0) -> Worker:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--db",
                str(self.db),
                "--exec-log",
                str(self.exec_log),
                "--progress",
                str(self.progress),
                "--runs",
                str(RUNS),
                "--seed",
                str(seed),
                "--timeout",
                str(timeout_s),
            ],
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches it and nothing else
        )
        worker = Worker(proc, time.monotonic())
        self.workers.append(worker)
        return worker

    def lines(self, worker: Worker) -> list[list[str]]:
        if not self.progress.exists():
            return []
        prefix = f"{worker.proc.pid} "
        text = self.progress.read_text(encoding="utf-8")
        # A line is complete only once its newline is written.
        return [ln.split()[1:] for ln in text.split("\n")[:-1] if ln.startswith(prefix)]

    def wait_for(self, worker: Worker, done: Callable[[list[list[str]]], bool]) -> bool:
        """Poll the worker's progress until ``done``; False if the worker exited first."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            lines = self.lines(worker)
            if done(lines):
                return True
            if worker.proc.poll() is not None:
                return False
            time.sleep(0.001)
        raise AssertionError(
            f"worker {worker.proc.pid} made no progress in {WAIT_S}s: {self.tail()}"
        )

    def kill(self, worker: Worker) -> None:
        if worker.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)

    def cleanup(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                self.kill(worker)
            else:
                worker.proc.wait(timeout=10)
        self.output.close()

    def tail(self) -> str:
        out = (self.tmp / "worker.out").read_bytes().decode(errors="replace")
        return out[-3000:]


def created_so_far(h: Harness) -> int:
    """How many runs are in the database (the worker is dead when this is called)."""
    if not h.db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(h.db)) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:  # killed before the schema was created
            return 0


def check_consistent(db: Path, *, final: bool) -> dict[str, int]:
    """Invariants that must hold after any crash; with ``final`` also that all work is done."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        runs = conn.execute(
            "SELECT id, tenant_id, status, input, state_version, state_hash, idempotency_key,"
            " result FROM runs"
        ).fetchall()
        keys = Counter(r[6] for r in runs)
        assert all(n == 1 for n in keys.values()), "an idempotency key was used twice"
        assert len(runs) <= RUNS
        steps: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
        for run_id, key, status, attempt in conn.execute(
            "SELECT run_id, key, status, attempt FROM steps"
        ):
            steps[run_id][key] = (status, attempt)
        versions: dict[str, list[tuple[int, int | None, str | None, bytes, str]]] = defaultdict(
            list
        )
        for run_id, version, parent, step, delta, h in conn.execute(
            "SELECT run_id, version, parent, step, delta, hash FROM state_versions"
            " ORDER BY run_id, version"
        ):
            versions[run_id].append((version, parent, step, delta, h))
        succeeded: Counter[tuple[str, str]] = Counter()
        succeeded_attempt: dict[tuple[str, str], int] = {}
        per_run_kind: Counter[tuple[str, str]] = Counter()
        for run_id, kind, step, attempt in conn.execute(
            "SELECT run_id, kind, step, attempt FROM events"
        ):
            per_run_kind[(run_id, kind)] += 1
            if kind == "step.succeeded":
                succeeded[(run_id, step)] += 1
                succeeded_attempt[(run_id, step)] = attempt
        orphans = 0
        for run_id, tenant, status, input_json, state_version, state_hash, key, result in runs:
            i = int(key.removeprefix("run-"))
            assert tenant == TENANTS[i % len(TENANTS)]
            assert json.loads(input_json) == {"i": i}
            assert per_run_kind[(run_id, "run.submitted")] == 1
            rows = steps[run_id]
            assert sorted(rows) == sorted(STEPS), f"{run_id}: step rows {sorted(rows)}"
            done = {k for k, (s, _) in rows.items() if s == "succeeded"}
            orphans += sum(1 for s, _ in rows.values() if s == "running")
            for k in STEPS:
                n = succeeded[(run_id, k)]
                assert n == (1 if k in done else 0), f"{run_id}/{k}: {n} step.succeeded events"
                if k in done:
                    assert succeeded_attempt[(run_id, k)] == rows[k][1]
            # State: versions 0..n contiguous, one per succeeded step, hash-chained.
            vs = versions[run_id]
            assert [v[0] for v in vs] == list(range(len(vs))), f"{run_id}: versions {vs}"
            assert vs[0][1] is None and vs[0][2] is None
            assert all(v[1] == v[0] - 1 for v in vs[1:]), f"{run_id}: parents"
            made = [v[2] for v in vs[1:]]
            assert len(made) == len(set(made)), f"{run_id}: a step made two versions: {made}"
            assert set(made) == done, f"{run_id}: versions by {made}, succeeded {done}"
            h = ""
            for version, _parent, step, delta, stored in vs:
                h = next_state_hash(h, version, step, delta)
                assert stored == h, f"{run_id}: hash chain broken at version {version}"
            assert state_version == len(vs) - 1
            assert state_hash == h
            assert vs[0][3] == input_json
            want = expected_outputs(i)
            for _version, _parent, step, delta, _h in vs[1:]:
                assert json.loads(delta) == {step: want[step]}
            completed = per_run_kind[(run_id, "run.completed")]
            if status == "completed":
                assert completed == 1
                assert done == set(STEPS)
                assert json.loads(result) == want["e"]
            else:
                assert status in ("running", "queued"), f"{run_id} is {status}"
                assert completed == 0
            if final:
                assert status == "completed", f"{run_id} ended {status}"
                assert len(vs) == len(STEPS) + 1
        if final:
            assert len(runs) == RUNS
            assert Counter(r[1] for r in runs) == Counter(TENANTS[i % 3] for i in range(RUNS))
            assert sorted(keys) == sorted(f"run-{i}" for i in range(RUNS))
        return {
            "runs": len(runs),
            "completed": sum(1 for r in runs if r[2] == "completed"),
            "orphans": orphans,
        }
    finally:
        conn.close()


def check_executions(exec_log: Path, db: Path) -> dict[str, int]:
    """At-least-once: every committed result came from a logged execution of that very attempt."""
    starts: Counter[tuple[str, str, int]] = Counter()
    ends: Counter[tuple[str, str, int]] = Counter()
    for line in exec_log.read_text(encoding="utf-8").splitlines():
        phase, run_id, step, attempt = line.split()
        (starts if phase == "S" else ends)[(run_id, step, int(attempt))] += 1
    # One attempt number is claimed once: no attempt ever executed twice.
    assert all(n == 1 for n in starts.values()), [k for k, n in starts.items() if n > 1][:5]
    assert set(ends) <= set(starts)
    conn = sqlite3.connect(db)
    try:
        committed = conn.execute(
            "SELECT run_id, step, attempt FROM events WHERE kind = 'step.succeeded'"
        ).fetchall()
        claimed = {
            (r, s, a)
            for r, s, a in conn.execute(
                "SELECT run_id, step, attempt FROM events WHERE kind = 'step.started'"
            )
        }
    finally:
        conn.close()
    assert len(committed) == RUNS * len(STEPS)
    for key in committed:
        assert key in ends, f"committed result of {key} was never produced by an execution"
    # Nothing executed without a committed claim (StartAttempt) first.
    assert set(starts) <= claimed
    pairs = {(r, s) for r, s, _ in starts}
    assert len(pairs) == RUNS * len(STEPS)
    return {
        "executions": sum(starts.values()),
        "duplicate_executions": sum(starts.values()) - len(pairs),
        "completed_executions": sum(ends.values()),
        "wasted_completions": sum(ends.values()) - len(committed),
    }


async def check_through_engine(url: str) -> None:
    """The public read API agrees: each run's state and result, version by version."""
    async with Engine.open(url, execute=False) as engine:
        seen = 0
        for tenant in TENANTS:
            runs = await engine.list_runs(tenant, limit=1000)
            for run in runs:
                assert run.status == RunStatus.COMPLETED
                i = json.loads(run.input_json)["i"]
                want = expected_outputs(i)
                history = await engine.versions(tenant, run.id)
                assert [v.version for v in history] == list(range(len(STEPS) + 1))
                assert history[-1].state == {"input": {"i": i}, **want}
                timeline = await engine.timeline(tenant, run.id)
                kinds = Counter(e.kind for e in timeline)
                assert kinds["step.succeeded"] == len(STEPS)
                assert kinds["run.completed"] == 1
                seen += 1
        assert seen == RUNS


def test_sigkill_storm_every_run_completes_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    plan = KILL_PLAN[:4] + rng.sample(KILL_PLAN[4:], len(KILL_PLAN) - 4)
    h = Harness(tmp_path)
    figures = Figures()
    t_start = time.monotonic()
    try:
        for n, aim in enumerate(plan):
            created = created_so_far(h)
            if aim == "submit" and created >= RUNS - 10:
                aim = "execute"
            w = h.spawn(seed=SEED + n)
            if aim == "startup":  # during interpreter start, store open or recovery
                time.sleep(rng.uniform(0.0, 0.5))
            elif aim == "ready":  # just after recovery: resubmission and the first attempts
                h.wait_for(w, lambda ls: any(x[0] == "ready" for x in ls))
                time.sleep(rng.uniform(0.0, 0.05))
            elif aim == "submit":  # in the middle of creating new runs
                target = rng.randint(created + 1, RUNS - 5)
                h.wait_for(w, lambda ls, t=target: any(x[:2] == ["submit", str(t)] for x in ls))
            else:  # execution: steps running, group commits in flight
                h.wait_for(w, lambda ls: any(x[0] == "submitted" for x in ls))
                time.sleep(rng.uniform(0.02, 0.35))
            lines = h.lines(w)
            h.kill(w)
            assert w.proc.returncode in (-signal.SIGKILL, 0), h.tail()
            phases = [x[0] for x in lines]
            if "done" in phases:
                phase = "finished"
            elif "submitted" in phases:
                phase = "execute"
            elif "ready" in phases:
                phase = "submit"
            else:
                phase = "startup"
            if w.proc.returncode == -signal.SIGKILL:
                figures.kills.append(phase)
            for x in lines:
                if x[0] == "ready":
                    figures.ready_s.append(float(x[1]))
            state = check_consistent(h.db, final=False)
            figures.orphans.append(state["orphans"])

        # Let it finish.
        w = h.spawn(seed=SEED + len(plan), timeout_s=FINAL_TIMEOUT_S)
        t_final = time.monotonic()
        try:
            rc = w.proc.wait(timeout=FINAL_TIMEOUT_S + 15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the final worker did not finish: {h.tail()}") from None
        final_s = time.monotonic() - t_final
        assert rc == 0, f"final worker exited {rc}: {h.tail()}"
        assert any(x[0] == "done" for x in h.lines(w))
    finally:
        h.cleanup()

    state = check_consistent(h.db, final=True)
    assert state == {"runs": RUNS, "completed": RUNS, "orphans": 0}
    execs = check_executions(h.exec_log, h.db)
    asyncio.run(check_through_engine(f"sqlite:///{h.db}"))

    phases = Counter(figures.kills)
    assert len(figures.kills) >= MIN_KILLS, phases
    assert phases["submit"] >= 3, phases
    assert phases["execute"] >= 10, phases
    assert sum(1 for o in figures.orphans if o > 0) >= 5, figures.orphans
    assert execs["duplicate_executions"] > 0  # kills mid-step did force re-executions
    print(
        f"\ncrash test: {len(figures.kills)} SIGKILLs {dict(phases)};"
        f" kills leaving orphaned attempts: {sum(1 for o in figures.orphans if o)}"
        f" (max {max(figures.orphans)});"
        f" executions {execs['executions']} for {RUNS * len(STEPS)} steps:"
        f" {execs['duplicate_executions']} duplicate executions,"
        f" {execs['wasted_completions']} finished executions whose result was lost;"
        f" engine open+recovery median {1000 * statistics.median(figures.ready_s):.1f} ms,"
        f" max {1000 * max(figures.ready_s):.1f} ms;"
        f" final worker {final_s:.1f} s; total {time.monotonic() - t_start:.1f} s"
    )
