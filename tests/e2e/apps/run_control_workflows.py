"""A workflow whose middle step fails while a flag file exists (``--app
run_control_workflows:setup``).

``flaky`` (input: ``{"flag": PATH, "n": INT}``): ``load`` returns ``n``, ``score`` fails while the
file at ``flag`` exists (one attempt), ``report`` formats the score. Removing the file is how a
test "fixes the outage" before retrying.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

import tenantflow as tf
from tenantflow.engine.schedules import Schedule

__all__ = ["FlakyInput", "flaky", "setup"]


class FlakyInput(BaseModel):
    flag: str
    n: int


flaky = tf.Workflow("flaky", input=FlakyInput)
ONCE = tf.Retry(max_attempts=1)


@flaky.step(retry=ONCE)
async def load(ctx: tf.StepContext, input: FlakyInput) -> int:
    return input.n


@flaky.step(retry=ONCE)
async def score(ctx: tf.StepContext, input: FlakyInput, load: int) -> int:
    if Path(input.flag).exists():  # noqa: ASYNC240 (a test switch, not I/O to wait on)
        raise RuntimeError("the scoring service is down")
    return load * 10


@flaky.step(retry=ONCE)
async def report(ctx: tf.StepContext, score: int) -> str:
    return f"score {score}"


def setup(engine: tf.Engine) -> None:
    """Register ``flaky``, and a schedule of it for bank-a that fires only on February 29."""
    engine.register(flaky)
    engine.schedules.add(
        Schedule(
            "leap-day",
            tenant="bank-a",
            workflow="flaky",
            input={"flag": "", "n": 0},
            cron="0 0 29 2 *",
        )
    )
