"""A workflow whose runs wait at a gate the test opens (a file), for the live move through the
plane: ``start`` → ``hold`` (fails, retried with a backoff that holds no attempt, until the gate
file exists) → ``done``. Every body that completes appends ``E tenant run step`` to the log."""

from __future__ import annotations

import os

from pydantic import BaseModel

import tenantflow as tf

WORKFLOW = "gated-move"


class Job(BaseModel):
    i: int


def _log(ctx: tf.StepContext) -> None:
    path = os.environ["TF_MOVE_EXEC_LOG"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"E {ctx.tenant_id} {ctx.run_id} {ctx.step} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def setup(engine: tf.Engine) -> None:
    gate = os.environ["TF_MOVE_GATE"]
    wf = tf.Workflow(WORKFLOW, input=Job)

    @wf.step
    async def start(ctx: tf.StepContext, input: Job) -> int:
        _log(ctx)
        return input.i

    @wf.step(retry=tf.Retry(max_attempts=100_000, initial=2.0, max_interval=3.0, jitter=0.2))
    async def hold(ctx: tf.StepContext, start: int) -> int:
        if not os.path.exists(gate):  # noqa: ASYNC240 - one stat, the test's gate
            raise RuntimeError("the gate is closed")
        _log(ctx)
        return start

    @wf.step
    async def done(ctx: tf.StepContext, hold: int) -> int:
        _log(ctx)
        return hold * 2

    engine.register(wf)
