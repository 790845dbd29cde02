"""The engine the pause scenario freezes; run as a process of its own::

    python -m tenantflow.selftest.pause_worker --db DB --log LOG [--lease 1.0] [--step-s 3.0]

It opens ``sqlite:///DB`` with a short lease and runs one run of ``pause``: ``slow`` (which sleeps
``--step-s`` seconds of wall time) then ``after``. The log gets ``S <step> <attempt> <time>`` when
an attempt starts, ``E <step> <attempt> <time>`` when its work is done, ``W <message>`` for every
engine warning, and a final ``done <status>``. Exit status: 0 when the run completed, 2 when it
ended otherwise, 3 when it did not end within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from datetime import timedelta

from pydantic import BaseModel

import tenantflow as tf
from tenantflow.selftest.procs import LineLog

__all__ = ["RUN_KEY", "TENANT", "WORKFLOW", "main"]

WORKFLOW = "pause"
TENANT = "t1"
RUN_KEY = "p-1"


class Item(BaseModel):
    n: int


class _ToLog(logging.Handler):
    def __init__(self, log: LineLog) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log.line("W " + record.getMessage().replace("\n", " "))


def build(log: LineLog, step_s: float) -> tf.Workflow:
    wf = tf.Workflow(WORKFLOW, input=Item)

    @wf.step
    async def slow(ctx: tf.StepContext, input: Item) -> int:
        log.line(f"S {ctx.step} {ctx.attempt} {time.time():.3f}")
        await asyncio.sleep(step_s)
        log.line(f"E {ctx.step} {ctx.attempt} {time.time():.3f}")
        return input.n + 1

    @wf.step
    async def after(ctx: tf.StepContext, slow: int) -> int:
        log.line(f"S {ctx.step} {ctx.attempt} {time.time():.3f}")
        log.line(f"E {ctx.step} {ctx.attempt} {time.time():.3f}")
        return slow * 10

    return wf


async def run(args: argparse.Namespace, log: LineLog) -> int:
    engine = tf.Engine.open(
        f"sqlite:///{args.db}", lease=timedelta(seconds=args.lease), auto_tenant="enterprise"
    )
    engine.register(build(log, args.step_s))
    async with engine:
        handle = await engine.submit(
            WORKFLOW, tenant=TENANT, input={"n": 4}, idempotency_key=RUN_KEY
        )
        try:
            record = await handle.wait(timedelta(seconds=args.timeout))
        except TimeoutError:
            log.line("done timeout")
            return 3
        log.line(f"done {record.status.value}")
        return 0 if record.status == tf.RunStatus.COMPLETED else 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--step-s", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    log = LineLog(args.log)
    logging.getLogger("tenantflow").addHandler(_ToLog(log))
    try:
        return asyncio.run(run(args, log))
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
