"""A worker process for the paused-worker fencing test (``test_fencing.py``); run it as a script.

    python pause_worker.py --db DB --log LOG [--lease 1.0] [--step-s 3.0] [--timeout 20]

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
from typing import IO

from pydantic import BaseModel

import tenantflow as tf


class Item(BaseModel):
    n: int


class Log:
    def __init__(self, path: str) -> None:
        self._fh: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the process

    def line(self, text: str) -> None:
        self._fh.write(text + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class ToLog(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log.line("W " + record.getMessage().replace("\n", " "))


def build(log: Log, step_s: float) -> tf.Workflow:
    wf = tf.Workflow("pause", input=Item)

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


async def main(args: argparse.Namespace, log: Log) -> int:
    engine = tf.Engine.open(
        f"sqlite:///{args.db}", lease=timedelta(seconds=args.lease), auto_tenant="enterprise"
    )
    engine.register(build(log, args.step_s))
    async with engine:
        handle = await engine.submit("pause", tenant="t1", input={"n": 4}, idempotency_key="p-1")
        try:
            record = await handle.wait(timedelta(seconds=args.timeout))
        except TimeoutError:
            log.line("done timeout")
            return 3
        log.line(f"done {record.status.value}")
        return 0 if record.status == tf.RunStatus.COMPLETED else 2


def cli() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--step-s", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    log = Log(args.log)
    logging.getLogger("tenantflow").addHandler(ToLog(log))
    try:
        return asyncio.run(main(args, log))
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(cli())
