"""Pause: SIGSTOP a worker past its lease, resume it; its late result must be refused.

The process (:mod:`tenantflow.selftest.pause_worker`) runs one run whose first step sleeps
longer than the lease. Once that step's attempt has started and renewed its lease a few times,
the scenario freezes the process (SIGSTOP) well past the lease, until the step's own sleep is
over, and resumes it (SIGCONT): the attempt finishes at once and tries to commit with a lease
that lapsed while it was frozen. The store must refuse that late result (fencing); the engine
must claim the step again as a new attempt, and the run complete with each step's completion
recorded once. Recovery: from the resume to the start of the new attempt.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from tenantflow.domain.records import StepRecord, StepStatus
from tenantflow.engine.engine import Engine
from tenantflow.selftest.core import Context, Row
from tenantflow.selftest.pause_worker import TENANT
from tenantflow.selftest.procs import Process

__all__ = ["run_pause"]

LEASE_S = 1.0
STEP_S = 3.0


def _log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [ln.split() for ln in path.read_text(encoding="utf-8").split("\n")[:-1]]


def _once(directory: Path, row: Row) -> None:
    db, log = directory / "pause.db", directory / "pause.log"
    args = [sys.executable, "-m", "tenantflow.selftest.pause_worker", "--db", str(db)]
    args += ["--log", str(log), "--lease", str(LEASE_S), "--step-s", str(STEP_S)]
    worker = Process([*args, "--timeout", "15"], output=directory / "worker.out")
    stopped = False
    try:
        deadline = time.monotonic() + 30
        started_at: float | None = None
        while started_at is None:
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"attempt 1 never started (exit {worker.proc.poll()})")
            started_at = next((float(x[3]) for x in _log(log) if x[:3] == ["S", "slow", "1"]), None)
            time.sleep(0.01)
        time.sleep(0.3)  # a few heartbeats renew the lease first
        worker.signal(signal.SIGSTOP)
        stopped = True
        paused_at = time.time()
        # Paused well past the lease, and until the step's own sleep is over: on resume the
        # attempt finishes at once and tries to commit with a lease that has lapsed.
        time.sleep(max(3 * LEASE_S, started_at + STEP_S + 0.5 - paused_at))
        resumed_at = time.time()
        worker.signal(signal.SIGCONT)
        stopped = False
        rc = worker.wait(30.0)
    finally:
        if stopped:
            worker.signal(signal.SIGCONT)
        if worker.alive():
            worker.kill()
    row.fault("SIGSTOP")
    lines = _log(log)
    steps, timeline, versions = asyncio.run(_read(f"sqlite:///{db}"))
    succeeded = [(s, a) for k, s, a in timeline if k == "step.succeeded"]
    late = ["E", "slow", "1"] in [x[:3] for x in lines]
    row.check(late, "attempt 1 never finished its work: there was no late result to refuse")
    row.check(("slow", 1) not in succeeded, "the late result of attempt 1 was committed")
    row.check(rc == 0, f"the run did not complete after the pause (exit {rc})")
    slow = steps.get("slow")
    final = slow.attempt if slow is not None else 0
    row.check(
        slow is not None and slow.status == StepStatus.SUCCEEDED and final >= 2,
        f"step 'slow' ended {slow} (expected succeeded by attempt ≥ 2)",
    )
    row.check(versions == [0, 1, 2], f"state versions {versions}")
    counts = Counter(s for s, _ in succeeded)
    row.runs = (row.runs or 0) + 1
    row.duplicate_completions = (row.duplicate_completions or 0) + sum(
        max(0, n - 1) for n in counts.values()
    )
    row.lost = (row.lost or 0) + int(rc != 0 or counts != {"slow": 1, "after": 1})
    reruns = [float(x[3]) for x in lines if x[:2] == ["S", "slow"] and x[2] != "1"]
    if reruns:
        row.recovery_s.append(max(0.0, min(reruns) - resumed_at))
    row.duplicate_executions = (row.duplicate_executions or 0) + len(reruns)
    refused = [" ".join(x[1:]) for x in lines if x[0] == "W" and "refused" in " ".join(x)]
    said = f"the worker logged: {refused[0]}" if refused else "the worker logged no refusal"
    row.note(f"paused {resumed_at - paused_at:.1f}s with a {LEASE_S:g}s lease; {said}")


async def _read(
    url: str,
) -> tuple[dict[str, StepRecord], list[tuple[str, str | None, int | None]], list[int]]:
    async with Engine.open(url, execute=False) as engine:
        [run] = await engine.list_runs(TENANT)
        steps = {s.key: s for s in await engine.steps(TENANT, run.id)}
        timeline = [(e.kind, e.step, e.attempt) for e in await engine.timeline(TENANT, run.id)]
        versions = [v.version for v in await engine.versions(TENANT, run.id)]
        return steps, timeline, versions


def run_pause(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring), ``profile.pause_repeats`` times."""
    row.recovery_bound_s = 3 * LEASE_S
    for repeat in range(ctx.profile.pause_repeats):
        work = directory / f"repeat-{repeat}"
        work.mkdir()
        _once(work, row)
    row.duplicate_bound = row.runs
