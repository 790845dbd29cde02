"""The embedded engine the SQLite crash scenario kills; run as a process of its own::

    python -m tenantflow.selftest.crash_worker --db DB --exec-log LOG --progress PROGRESS \\
        [--runs 300] [--seed N] [--lease 2] [--commit-faults 0.02]

It opens ``sqlite:///DB`` — one process that is both the scheduler and the executor —
registers the workload (:mod:`tenantflow.selftest.workload`), submits ``--runs`` runs across the
three tenants with idempotency keys (every start resubmits all of them: the keys make that safe
after a kill mid-submission, and a submission whose commit raised is retried with the same
key), waits until every run has ended and exits 0 if they all completed.

Once the engine has started, ``--commit-faults`` of its commits land and then raise
(:mod:`tenantflow.selftest.faults`). The progress file gets one line per milestone
(``<pid> <event> ...``) — ``ready``, ``submit <i>``, ``submitted``, ``fault``, ``done`` — so that
the scenario aims its kills and counts the faults injected, killed processes included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import timedelta

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.errors import StoreError
from tenantflow.selftest.faults import LostAcks
from tenantflow.selftest.procs import LineLog
from tenantflow.selftest.workload import WORKFLOW, ExecLog, build, tenant_of

__all__ = ["main"]


async def _submit(engine: tf.Engine, i: int) -> tf.RunHandle:
    """Submit run ``i``, again with the same key while the store fails (a lost ack)."""
    delay_s = 0.01
    while True:
        try:
            return await engine.submit(
                WORKFLOW, tenant=tenant_of(i), input={"i": i}, idempotency_key=f"run-{i}"
            )
        except StoreError:
            await asyncio.sleep(delay_s)
            delay_s = min(0.5, delay_s * 2)


async def run(args: argparse.Namespace, progress: LineLog) -> int:
    pid = os.getpid()
    t0 = time.monotonic()
    faults = LostAcks(
        SqliteStore(args.db),
        0.0,
        seed=args.seed,
        on_fault=lambda ops: progress.line(f"{pid} fault {ops}"),
    )
    engine = tf.Engine(
        faults,  # type: ignore[arg-type]  # a Store by delegation
        tf.EngineConfig(
            slots=args.slots,
            seed=args.seed,
            lease=timedelta(seconds=args.lease),
            auto_tenant="enterprise",
        ),
    )
    log = ExecLog(args.exec_log)
    engine.register(build(log, min_s=args.min_step_s, max_s=args.max_step_s, seed=args.seed))
    async with engine:  # registered before start: recovery resumes the unfinished runs at once
        faults.share = args.commit_faults
        progress.line(f"{pid} ready {time.monotonic() - t0:.4f} {len(engine.runtime.active)}")
        handles = []
        for i in range(args.runs):
            handle = await _submit(engine, i)
            handles.append(handle)
            progress.line(f"{pid} submit {i} {int(handle.created)}")
        progress.line(f"{pid} submitted")
        records = await asyncio.wait_for(
            asyncio.gather(*(h.wait() for h in handles)), timeout=args.timeout
        )
        bad = [(r.id, r.status.value) for r in records if r.status != tf.RunStatus.COMPLETED]
        if bad:
            progress.line(f"{pid} failed {bad[:5]}")
            return 2
        progress.line(f"{pid} done {time.monotonic() - t0:.4f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--exec-log", required=True)
    parser.add_argument("--progress", required=True)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--commit-faults", type=float, default=0.0)
    parser.add_argument("--min-step-s", type=float, default=0.01)
    parser.add_argument("--max-step-s", type=float, default=0.08)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    progress = LineLog(args.progress)
    progress.line(f"{os.getpid()} start")
    try:
        return asyncio.run(run(args, progress))
    finally:
        progress.close()


if __name__ == "__main__":
    sys.exit(main())
