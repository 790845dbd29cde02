"""A loan-approval workflow on the embedded engine (SQLite), for two tenants.

    python examples/quickstart.py [--db sqlite:///quickstart.db]

Shows contracts on every boundary, a retried flaky dependency, a conditional review step, a
compensation, and the execution log and state history each run leaves behind.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, Field

import tenantflow as tf


class Application(BaseModel):
    applicant: str
    amount: float = Field(gt=0)


class Identity(BaseModel):
    verified: bool
    confidence: float = Field(ge=0.7)  # a data contract, checked at the boundary


class Credit(BaseModel):
    score: int = Field(ge=300, le=850)
    hold_id: str


class Decision(BaseModel):
    approved: bool
    reason: str


loan = tf.Workflow("loan-approval", input=Application)
_flaky = random.Random(1)


async def release_hold(ctx: tf.StepContext, credit: Credit) -> None:
    ctx.log("released credit hold", hold_id=credit.hold_id)


@loan.step(retry=tf.Retry(max_attempts=3), timeout=timedelta(seconds=30))
async def verify(ctx: tf.StepContext, application: Application) -> Identity:
    return Identity(verified=True, confidence=0.92)


@loan.step(
    retry=tf.Retry(max_attempts=5, initial=timedelta(milliseconds=20)),
    compensate=release_hold,
    circuit="credit_bureau",
)
async def pull_credit(ctx: tf.StepContext, application: Application, verify: Identity) -> Credit:
    if _flaky.random() < 0.3:  # the bureau is flaky; the engine retries with backoff
        raise ConnectionError("credit bureau timed out")
    # ctx.idempotency_key is stable across attempts: the bureau can deduplicate re-sent calls
    score = 560 + (sum(map(ord, application.applicant)) * 7 + int(application.amount)) % 250
    return Credit(score=score, hold_id=ctx.idempotency_key)


@loan.step(when=lambda application: application.amount > 20_000)
async def human_review(ctx: tf.StepContext, application: Application) -> bool:
    return application.amount < 50_000


@loan.step
async def decide(
    ctx: tf.StepContext, pull_credit: Credit, human_review: bool | None = None
) -> Decision:
    if human_review is False:
        return Decision(approved=False, reason="declined in review")
    approved = pull_credit.score >= 650
    return Decision(approved=approved, reason=f"credit score {pull_credit.score}")


async def main(url: str) -> None:
    async with tf.Engine.open(url) as engine:
        engine.register(loan)
        # Tenants come from the caller (an API key in service mode), each with a policy.
        await engine.tenants.create("regional-bank", tier="enterprise")
        await engine.tenants.create("credit-union", tier="standard")
        submitted = [
            (tenant, await engine.submit("loan-approval", tenant=tenant, input=application))
            for tenant, application in [
                ("regional-bank", {"applicant": "ada", "amount": 5_000}),
                ("regional-bank", {"applicant": "bob", "amount": 35_000}),
                ("credit-union", {"applicant": "cy", "amount": 80_000}),
            ]
        ]
        for tenant, run in submitted:
            decision = await run.result()
            print(f"{tenant:14} {run.id}  approved={decision.approved!s:5}  {decision.reason}")

        tenant, run = submitted[1]
        print(f"\nexecution log of {run.id} ({tenant}):")
        for event in await engine.timeline(tenant, run.id):
            detail = f" {event.data}" if event.data else ""
            attempt = f" #{event.attempt}" if event.attempt else ""
            print(f"  {event.kind:16} {event.step or '':13}{attempt}{detail}")
        history = await engine.versions(tenant, run.id)
        print(f"\nstate versions: {[v.version for v in history]}; latest: {history[-1].state}")
        try:
            await engine.submit(
                "loan-approval", tenant=tenant, input={"applicant": "x", "amount": -1}
            )
        except tf.ContractError as exc:
            print(f"\nrefused bad input: {exc}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="store URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    if args.db:
        asyncio.run(main(args.db))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(f"sqlite:///{Path(tmp) / 'quickstart.db'}"))
