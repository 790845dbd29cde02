"""The caller's human review queue: list, show, claim and decide review tasks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.api.schemas import ClaimIn, DecideIn, ReviewOut, ReviewsOut
from tenantflow.domain.tenancy import ReviewStatus

__all__ = ["router"]

router = APIRouter(prefix="/v1/reviews", tags=["reviews"], responses=ERROR_RESPONSES)

ReviewPath = Annotated[str, Path(min_length=1, max_length=100, description="The review's id.")]
_CONFLICT = ERROR_RESPONSES[404] | {"description": "Decided already, or claimed by another."}


@router.get("", response_model=ReviewsOut, summary="List review tasks in queue order")
async def list_reviews(
    engine: EngineDep,
    tenant: TenantId,
    pool: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Only this reviewer pool.")
    ] = None,
    status: Annotated[
        list[ReviewStatus] | None,
        Query(description="Only these statuses (repeatable); default: pending and claimed."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ReviewsOut:
    """Urgent lane first, then by SLA due time."""
    statuses = (
        (ReviewStatus.PENDING.value, ReviewStatus.CLAIMED.value)
        if not status
        else tuple(dict.fromkeys(s.value for s in status))
    )
    found = await engine.reviews.list(tenant, pool=pool, status=statuses, limit=limit)
    return ReviewsOut(items=[ReviewOut.of(r) for r in found])


@router.get("/{review_id}", response_model=ReviewOut, summary="Show a review task")
async def get_review(review_id: ReviewPath, engine: EngineDep, tenant: TenantId) -> ReviewOut:
    return ReviewOut.of(await engine.reviews.get(tenant, review_id))


@router.post(
    "/{review_id}/claim",
    response_model=ReviewOut,
    summary="Claim a review task",
    responses={409: _CONFLICT},
)
async def claim(
    review_id: ReviewPath, body: ClaimIn, engine: EngineDep, tenant: TenantId
) -> ReviewOut:
    """Take a task so other reviewers see it is being handled."""
    return ReviewOut.of(
        await engine.reviews.claim(tenant, review_id, reviewer=body.reviewer.strip())
    )


@router.post(
    "/{review_id}/decide",
    response_model=ReviewOut,
    summary="Approve or reject a review task",
    responses={409: _CONFLICT},
)
async def decide(
    review_id: ReviewPath, body: DecideIn, engine: EngineDep, tenant: TenantId
) -> ReviewOut:
    """Record the decision; the waiting step goes on in the same transaction."""
    return ReviewOut.of(
        await engine.reviews.decide(
            tenant,
            review_id,
            reviewer=body.reviewer.strip(),
            approve=body.approve,
            comment=body.comment,
            fail_step=body.fail_step,
        )
    )
