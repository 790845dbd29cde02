"""The app the federated scenario and benchmark load in every cell: the selftest's five-step
workload, and ``quota-call``, one step calling the tool ``bureau`` — whose resource
``tool:bureau`` the plane puts under a global limit — logging each call's time to
``$TF_FED_TOOL_LOG`` (one ``write`` per line, ``O_APPEND``: lines from several cells never mix),
and ``money-call``, one step calling ``priced`` (a tool costing ``PRICE_USD`` a call, under the
plane's money caps), logging each execution to ``$TF_FED_PRICED_LOG`` the same way.
"""

from __future__ import annotations

import os
import time

import tenantflow as tf
from tenantflow.selftest import workload

__all__ = ["MONEY_WORKFLOW", "PRICE_USD", "QUOTA_WORKFLOW", "read_tool_calls", "setup"]

QUOTA_WORKFLOW = "quota-call"
MONEY_WORKFLOW = "money-call"
PRICE_USD = 0.01  # 10_000 micros a call of ``priced``


def _log_line(path: str | None) -> None:
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{time.time():.6f} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def setup(engine: tf.Engine) -> None:
    workload.setup(engine)
    log = os.environ.get("TF_FED_TOOL_LOG")
    priced_log = os.environ.get("TF_FED_PRICED_LOG")

    @engine.tools.register(name="bureau")
    async def bureau(i: int) -> int:
        _log_line(log)
        return i * 2

    @engine.tools.register(name="priced", cost_usd=PRICE_USD)
    async def priced(i: int) -> int:
        _log_line(priced_log)
        return i + 1

    money = tf.Workflow(MONEY_WORKFLOW, input=workload.Job)

    @money.step()
    async def pay(ctx: tf.StepContext, input: workload.Job) -> int:
        result: int = await ctx.tool("priced", i=input.i)
        return result

    engine.register(money)

    wf = tf.Workflow(QUOTA_WORKFLOW, input=workload.Job)

    @wf.step(retry=tf.Retry(max_attempts=200, initial=0.05, max_interval=0.5))
    async def call(ctx: tf.StepContext, input: workload.Job) -> int:
        result: int = await ctx.tool("bureau", i=input.i)
        return result

    engine.register(wf)


def read_tool_calls(path: str | os.PathLike[str]) -> list[float]:
    """The times of the tool calls logged, sorted."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")[:-1]
    except FileNotFoundError:
        return []
    return sorted(float(line.split()[0]) for line in lines)
