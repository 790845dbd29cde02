"""The workflow of the multi-process cluster test (loaded by ``tenantflow worker --app``).

Three steps, each a short sleep standing in for work. Every step body appends ``start`` and
``end`` lines (pid, tenant, run, step, monotonic-free wall time) to the file named by
``$TF_CLUSTER_LOG`` (O_APPEND: lines from several processes never interleave), so the test
can count executions and check the tenants' step caps across all workers.
"""

from __future__ import annotations

import asyncio
import os
import time

import tenantflow as tf

STEP_S = 0.01


def _log(kind: str, ctx: tf.StepContext) -> None:
    path = os.environ.get("TF_CLUSTER_LOG")
    if path is None:
        return
    line = f"{kind} {os.getpid()} {ctx.tenant_id} {ctx.run_id} {ctx.step} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def _work(ctx: tf.StepContext) -> None:
    _log("start", ctx)
    try:
        await asyncio.sleep(STEP_S)
    finally:  # also when cancelled (the tenant handed to another worker): only a kill skips it
        _log("end", ctx)


def workflow() -> tf.Workflow:
    wf = tf.Workflow("cluster", input=int)

    @wf.step
    async def a(ctx: tf.StepContext, input: int) -> int:
        await _work(ctx)
        return input + 1

    @wf.step
    async def b(ctx: tf.StepContext, a: int) -> int:
        await _work(ctx)
        return a * 2

    @wf.step
    async def c(ctx: tf.StepContext, b: int) -> int:
        await _work(ctx)
        return b + 1

    return wf


def setup(engine: tf.Engine) -> None:
    engine.register(workflow())
