"""The loan-approval workflow every institution on the platform runs (seed 001).

verify identity → pull credit → compliance check → fraud screen (optional) → human review (only
when the risk is high) → decide, with two side effects off that path: the credit pull is
recorded in the institution's CRM, and the applicant is notified of the decision
(:mod:`.effects`; nothing reads them, so they never change a decision). Every boundary has a
contract: an identity below 0.7 confidence is refused, a credit score outside 300–850 is
refused, the model's verdict must be one of three risk levels. Pulling credit places a hold at
the bureau; if a later step fails for good, the compensation releases it.

The steps do no work of their own: the identity service and the credit bureau are tools
(registered by :mod:`.platform`, with per-tenant rate limits and prices), and the
compliance check and fraud screen are model calls routed by the tenant's policy.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field

import tenantflow as tf
from tenantflow.examples.loan_platform.effects import EffectContext, deliver

__all__ = [
    "Application",
    "Compliance",
    "CreditReport",
    "Decision",
    "FraudScreen",
    "Identity",
    "loan",
]


class Application(BaseModel):
    """A loan application as the institution's backend submits it."""

    application_id: str
    applicant: str
    amount: float = Field(gt=0)
    income: float = Field(gt=0)


class Identity(BaseModel):
    verified: bool
    confidence: float = Field(ge=0.7)  # the contract: a weaker match never reaches the bureau


class CreditReport(BaseModel):
    score: int = Field(ge=300, le=850)
    hold_id: str


class Compliance(BaseModel):
    risk: Literal["low", "medium", "high"]
    model: str
    rationale: str


class FraudScreen(BaseModel):
    flags: int = Field(ge=0)
    model: str


class Decision(BaseModel):
    approved: bool
    reason: str


loan = tf.Workflow("loan-approval", input=Application)


@loan.step(retry=tf.Retry(max_attempts=3), timeout=timedelta(minutes=2))
async def verify_identity(ctx: tf.StepContext, application: Application) -> Identity:
    return Identity.model_validate(
        await ctx.tool("identity_service", applicant=application.applicant)
    )


async def release_credit_hold(ctx: tf.StepContext, pull_credit: CreditReport) -> None:
    """The compensation: a run that fails after pulling credit releases the bureau's hold."""
    await ctx.tool("credit_bureau_release", hold_id=pull_credit.hold_id)


@loan.step(
    retry=tf.Retry(max_attempts=4, initial=timedelta(seconds=2)),
    timeout=timedelta(minutes=2),
    compensate=release_credit_hold,
    circuit="credit_bureau",
)
async def pull_credit(
    ctx: tf.StepContext, application: Application, verify_identity: Identity
) -> CreditReport:
    return CreditReport.model_validate(
        await ctx.tool("credit_bureau", applicant=application.applicant, amount=application.amount)
    )


@loan.step(side_effect=True, timeout=timedelta(minutes=1))
async def record_pull(
    ctx: EffectContext, application: Application, pull_credit: CreditReport
) -> None:
    """A side effect: the institution's CRM records that credit was pulled."""
    await deliver(ctx, "crm", application=application.application_id, score=pull_credit.score)


def _risk(application: Application, credit: CreditReport) -> Literal["low", "medium", "high"]:
    burden = application.amount / application.income
    if credit.score < 580 or burden > 4.0:
        return "high"
    if credit.score < 680 or burden > 2.0:
        return "medium"
    return "low"


@loan.step(retry=tf.Retry(max_attempts=3), timeout=timedelta(minutes=2))
async def compliance_check(
    ctx: tf.StepContext, application: Application, pull_credit: CreditReport
) -> Compliance:
    # The model is chosen by the tenant's policy: its model tier, allowed models, residency
    # region, endpoint health and what is left of the run's budget.
    reply = await ctx.model(
        f"Assess lending compliance for application {application.application_id}: amount"
        f" {application.amount:.0f}, income {application.income:.0f}, credit score"
        f" {pull_credit.score}. Answer with a short rationale.",
        system="You are a lending compliance analyst.",
        max_tokens=200,
    )
    return Compliance(
        risk=_risk(application, pull_credit), model=reply.model, rationale=reply.text[:200]
    )


@loan.step(optional=True, timeout=timedelta(minutes=2))
async def fraud_screen(
    ctx: tf.StepContext, application: Application, compliance_check: Compliance
) -> FraudScreen:
    """Nice to have: when the run's budget runs low, the budget ladder skips it."""
    reply = await ctx.model(
        f"Screen application {application.application_id} of {application.applicant} for fraud"
        " signals. List any.",
        max_tokens=300,
    )
    return FraudScreen(flags=reply.text.count(","), model=reply.model)


@loan.review(when=lambda compliance_check: compliance_check.risk == "high")
async def human_review(
    ctx: tf.StepContext, application: Application, compliance_check: Compliance
) -> dict[str, object]:
    """What the reviewer sees; the run waits (holding no slot) until someone decides."""
    return {
        "application": application.application_id,
        "amount": application.amount,
        "risk": compliance_check.risk,
        "rationale": compliance_check.rationale,
    }


@loan.step
async def decide(
    ctx: tf.StepContext,
    compliance_check: Compliance,
    fraud_screen: FraudScreen | None = None,
    human_review: tf.ReviewDecision | None = None,
) -> Decision:
    if human_review is not None:
        verdict = "approved" if human_review.approved else "declined"
        return Decision(approved=human_review.approved, reason=f"{verdict} in review")
    if fraud_screen is not None and fraud_screen.flags > 6:
        return Decision(approved=False, reason=f"{fraud_screen.flags} fraud flags")
    return Decision(
        approved=compliance_check.risk != "high", reason=f"{compliance_check.risk} risk"
    )


@loan.step(side_effect=True, timeout=timedelta(minutes=1))
async def notify_applicant(ctx: EffectContext, application: Application, decide: Decision) -> None:
    """A side effect: the applicant hears the decision."""
    await deliver(
        ctx,
        "notify",
        application=application.application_id,
        applicant=application.applicant,
        approved=decide.approved,
    )
