"""The workload the fault scenarios run: a five-step DAG with a parallel branch, across three
tenants, whose every step execution is logged outside the engine.

``a -> (b, c) -> d -> e``: each step sleeps a random while (standing in for work) and outputs a
number computed from its inputs, so that the stored state of run ``i`` can be checked against
:func:`expected_outputs`. Each execution appends ``S`` when its body starts, then ``E`` when its
work is done or ``X`` when it was cancelled, to an executions log —
``<S|E|X> <pid> <tenant> <run> <step> <attempt> <time>`` —
written with ``O_APPEND`` in one ``write`` per line, so that lines from several processes never
interleave and a SIGKILL loses nothing already written. The scenarios count executions
(at-least-once: a killed attempt runs again), measure recovery and check the step order from it.

``tenantflow worker --app tenantflow.selftest.workload:setup`` serves it; the log's path comes
from ``$TF_SELFTEST_EXEC_LOG`` and the step durations from ``$TF_SELFTEST_STEP_MS``
(``"min,max"``), since a worker started by the command line has no other channel.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

import tenantflow as tf

__all__ = [
    "DEPENDS",
    "STEPS",
    "TENANTS",
    "WORKFLOW",
    "ExecLog",
    "Execution",
    "Job",
    "build",
    "expected_outputs",
    "read_executions",
    "setup",
    "tenant_of",
]

WORKFLOW = "selftest-dag"
STEPS = ("a", "b", "c", "d", "e")
DEPENDS: Mapping[str, tuple[str, ...]] = {
    "a": (),
    "b": ("a",),
    "c": ("a",),
    "d": ("b", "c"),
    "e": ("d",),
}
TENANTS = ("t0", "t1", "t2")


class Job(BaseModel):
    i: int


def tenant_of(i: int) -> str:
    return TENANTS[i % len(TENANTS)]


def expected_outputs(i: int) -> dict[str, int]:
    """What each step of run ``i`` outputs."""
    a = i + 1
    b = a * 2
    c = a + 10
    d = b + c
    return {"a": a, "b": b, "c": c, "d": d, "e": d + 1}


class ExecLog:
    """The executions log (see the module docstring); safe to share between processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def line(self, kind: str, ctx: tf.StepContext) -> None:
        text = (
            f"{kind} {os.getpid()} {ctx.tenant_id} {ctx.run_id} {ctx.step} {ctx.attempt}"
            f" {time.time():.6f}\n"
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class Execution:
    """One line of the executions log."""

    kind: str  # "S": the body started; "E": its work was done
    pid: int
    tenant: str
    run: str
    step: str
    attempt: int
    at: float


def read_executions(path: str | os.PathLike[str]) -> list[Execution]:
    """Every complete line of the executions log, in the order written."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.split("\n")[:-1]:  # a line counts once its newline is written
        kind, pid, tenant, run, step, attempt, at = line.split()
        out.append(Execution(kind, int(pid), tenant, run, step, int(attempt), float(at)))
    return out


def build(
    log: ExecLog | None, *, min_s: float = 0.01, max_s: float = 0.08, seed: int = 0
) -> tf.Workflow:
    """The workflow, logging each execution to ``log``."""
    rng = random.Random(seed)
    wf = tf.Workflow(WORKFLOW, input=Job)

    async def work(ctx: tf.StepContext) -> None:
        if log is None:
            await asyncio.sleep(rng.uniform(min_s, max_s))
            return
        log.line("S", ctx)
        try:
            await asyncio.sleep(rng.uniform(min_s, max_s))
        except BaseException:
            log.line("X", ctx)  # cancelled (its run was handed over or reloaded): no result
            raise
        log.line("E", ctx)

    @wf.step
    async def a(ctx: tf.StepContext, input: Job) -> int:
        await work(ctx)
        return input.i + 1

    @wf.step
    async def b(ctx: tf.StepContext, a: int) -> int:
        await work(ctx)
        return a * 2

    @wf.step
    async def c(ctx: tf.StepContext, a: int) -> int:
        await work(ctx)
        return a + 10

    @wf.step
    async def d(ctx: tf.StepContext, b: int, c: int) -> int:
        await work(ctx)
        return b + c

    @wf.step
    async def e(ctx: tf.StepContext, d: int) -> int:
        await work(ctx)
        return d + 1

    return wf


def setup(engine: tf.Engine) -> None:
    """``tenantflow worker --app tenantflow.selftest.workload:setup`` (see the module doc)."""
    path = os.environ.get("TF_SELFTEST_EXEC_LOG")
    low, high = (float(x) / 1000 for x in os.environ.get("TF_SELFTEST_STEP_MS", "10,80").split(","))
    engine.register(build(ExecLog(path) if path else None, min_s=low, max_s=high, seed=os.getpid()))
