"""A worker process for the crash test (``test_crash.py``); run it as a script.

    python crash_worker.py --db DB --exec-log LOG --progress PROGRESS [--runs 200] [--seed N]

It opens ``sqlite:///DB``, registers the five-step ``crash`` workflow (a DAG with a parallel
branch: ``a -> (b, c) -> d -> e``), submits ``--runs`` runs across three tenants with idempotency
keys (every start resubmits all of them: the keys make that safe after a kill mid-submission),
waits until every run has ended and exits 0 if they all completed.

Every step execution appends ``S <run_id> <step> <attempt>`` to the executions log when it starts
and ``E <run_id> <step> <attempt>`` when its work is done, flushed at once, so that a SIGKILL
loses nothing already written: the test counts executions (at-least-once) from it.

The progress file gets one line per milestone (``<pid> <event> ...``) so that the test can aim
its kills at startup, submission or execution.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from typing import IO

from pydantic import BaseModel

import tenantflow as tf

WORKFLOW = "crash"
STEPS = ("a", "b", "c", "d", "e")
TENANTS = ("t0", "t1", "t2")


class Job(BaseModel):
    i: int


def expected_outputs(i: int) -> dict[str, int]:
    """What each step of run ``i`` must output (the test checks the stored state against it)."""
    a = i + 1
    b = a * 2
    c = a + 10
    d = b + c
    return {"a": a, "b": b, "c": c, "d": d, "e": d + 1}


class Log:
    """Append-only line log, flushed at every line (survives SIGKILL of this process)."""

    def __init__(self, path: str) -> None:
        self._fh: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the process

    def line(self, text: str) -> None:
        self._fh.write(text + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


_executions: Log | None = None
_rng = random.Random()
_min_s = 0.01
_max_s = 0.08


async def _work(ctx: tf.StepContext) -> None:
    assert _executions is not None
    _executions.line(f"S {ctx.run_id} {ctx.step} {ctx.attempt}")
    await asyncio.sleep(_rng.uniform(_min_s, _max_s))
    _executions.line(f"E {ctx.run_id} {ctx.step} {ctx.attempt}")


wf = tf.Workflow(WORKFLOW, input=Job)


@wf.step
async def a(ctx: tf.StepContext, input: Job) -> int:
    await _work(ctx)
    return input.i + 1


@wf.step
async def b(ctx: tf.StepContext, a: int) -> int:
    await _work(ctx)
    return a * 2


@wf.step
async def c(ctx: tf.StepContext, a: int) -> int:
    await _work(ctx)
    return a + 10


@wf.step
async def d(ctx: tf.StepContext, b: int, c: int) -> int:
    await _work(ctx)
    return b + c


@wf.step
async def e(ctx: tf.StepContext, d: int) -> int:
    await _work(ctx)
    return d + 1


async def main(args: argparse.Namespace, progress: Log) -> int:
    pid = os.getpid()
    t0 = time.monotonic()
    engine = tf.Engine.open(
        f"sqlite:///{args.db}", slots=args.slots, seed=args.seed, auto_tenant="enterprise"
    )
    engine.register(wf)  # before start: recovery resumes the unfinished runs at once
    async with engine:
        progress.line(f"{pid} ready {time.monotonic() - t0:.4f} {len(engine.runtime.active)}")
        handles = []
        for i in range(args.runs):
            handle = await engine.submit(
                WORKFLOW,
                tenant=TENANTS[i % len(TENANTS)],
                input={"i": i},
                idempotency_key=f"run-{i}",
            )
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


def cli() -> int:
    global _executions, _rng, _min_s, _max_s
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--exec-log", required=True)
    parser.add_argument("--progress", required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-step-s", type=float, default=0.01)
    parser.add_argument("--max-step-s", type=float, default=0.08)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    _rng = random.Random(args.seed)
    _min_s, _max_s = args.min_step_s, args.max_step_s
    _executions = Log(args.exec_log)
    progress = Log(args.progress)
    progress.line(f"{os.getpid()} start")
    try:
        return asyncio.run(main(args, progress))
    finally:
        progress.close()
        _executions.close()


if __name__ == "__main__":
    sys.exit(cli())
