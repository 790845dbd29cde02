"""Small workflows the API tests serve: ``tenantflow serve --app api_workflows:setup``.

* ``tally`` (input: an int) doubles it and adds one: two quick steps.
* ``approval`` (input: an application) assesses it; at or over 1,000 a human review decides,
  else it is approved at once. Its review task waits in the tenant's reviewer pool.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

import tenantflow as tf

__all__ = ["Application", "approval", "setup", "tally"]

tally = tf.Workflow("tally", input=int, on_event="tally.requested")


@tally.step
async def double(ctx: tf.StepContext, input: int) -> int:
    return input * 2


@tally.step
async def total(ctx: tf.StepContext, double: int) -> int:
    return double + 1


class Application(BaseModel):
    applicant: str = Field(min_length=1)
    amount: int = Field(gt=0)


approval = tf.Workflow("approval", input=Application)


@approval.step
async def assess(ctx: tf.StepContext, application: Application) -> dict[str, object]:
    return {"risk": "high" if application.amount >= 1000 else "low"}


@approval.review(when=lambda assess: assess["risk"] == "high")
async def review(ctx: tf.StepContext, application: Application) -> dict[str, object]:
    return {"applicant": application.applicant, "amount": application.amount}


@approval.step
async def decide(
    ctx: tf.StepContext, assess: dict[str, object], review: tf.ReviewDecision | None = None
) -> str:
    if review is not None:
        return "approved" if review.approved else "declined"
    return "approved"


def setup(engine: tf.Engine) -> None:
    """Register both workflows."""
    engine.register(tally)
    engine.register(approval)
