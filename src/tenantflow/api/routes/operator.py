"""``GET /v1/operator/overview``: an operator's view across tenants (admin key): runs by status,
the top tenants by queue depth, today's spend and rate-limit waits, and stuck runs with what
holds them. Ids, counts and times only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tenantflow.api.auth import Admin, EngineDep
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.api.routes.runs import ReasonOut
from tenantflow.placement import Overview

__all__ = ["OverviewOut", "router"]

router = APIRouter(prefix="/v1/operator", tags=["operator"], responses=ERROR_RESPONSES)


class TenantLoadOut(BaseModel):
    tenant_id: str
    runs: dict[str, int] = Field(description="Unfinished runs by status, and failed_24h.")
    spend_micros: int = Field(description="Spent today (UTC), in micro-dollars.")
    rate_limit_waits: int = Field(description="Rate-limit waits of its steps today.")


class StuckRunOut(BaseModel):
    tenant_id: str
    run_id: str
    workflow: str
    status: str
    updated_at: datetime = Field(description="Its last transition.")
    idle_s: float
    reasons: list[ReasonOut] = Field(description="What holds it (as GET /v1/runs/{id}/why).")


class OverviewOut(BaseModel):
    at: datetime
    by_status: dict[str, int] = Field(description="Over every tenant.")
    capped: bool = Field(description="A count stopped at 1,000 runs of one status per tenant.")
    top_queued: list[str] = Field(description="Tenants by queue depth, deepest first.")
    top_spend: list[str] = Field(description="Tenants by today's spend, most first.")
    top_rate_limited: list[str] = Field(description="Tenants by today's rate-limit waits.")
    tenants: list[TenantLoadOut]
    stuck_after_s: float
    stuck: list[StuckRunOut] = Field(description="Idle the longest first (at most 50).")

    @classmethod
    def of(cls, view: Overview) -> OverviewOut:
        def at(ts: float) -> datetime:
            return datetime.fromtimestamp(ts, UTC)

        fields: dict[str, Any] = {
            "at": at(view.at),
            "by_status": view.by_status,
            "capped": view.capped,
            "top_queued": view.top_queued,
            "top_spend": view.top_spend,
            "top_rate_limited": view.top_rate_limited,
            "stuck_after_s": view.stuck_after_s,
        }
        return cls(
            **fields,
            tenants=[
                TenantLoadOut(
                    tenant_id=t.tenant_id,
                    runs=t.runs,
                    spend_micros=t.spend_micros,
                    rate_limit_waits=t.rate_limit_waits,
                )
                for t in view.tenants
            ],
            stuck=[
                StuckRunOut(
                    tenant_id=s.tenant_id,
                    run_id=s.run_id,
                    workflow=s.workflow,
                    status=s.status,
                    updated_at=at(s.updated_at),
                    idle_s=round(s.idle_s, 3),
                    reasons=[ReasonOut.of(r) for r in s.reasons],
                )
                for s in view.stuck
            ],
        )


@router.get(
    "/overview", response_model=OverviewOut, summary="Runs and load across tenants (admin key)"
)
async def overview(
    engine: EngineDep,
    admin: Admin,
    stuck_after_s: Annotated[
        float, Query(gt=0, le=365 * 86_400, description="A run idle this long is stuck.")
    ] = 3600.0,
    top: Annotated[int, Query(ge=1, le=100, description="Tenants per ranking.")] = 10,
) -> OverviewOut:
    """Runs by status over every tenant, the tenants with the deepest queues, the most spend
    and the most rate-limit waits today, and unfinished runs with no transition for
    ``stuck_after_s`` seconds, each with what holds it."""
    view = await engine.overview(stuck_after=timedelta(seconds=stuck_after_s), top=top)
    return OverviewOut.of(view)
