"""The caller's own tenant: its policy, usage, budget ledgers and audit log."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.api.schemas import (
    AuditOut,
    AuditPage,
    BudgetOut,
    LedgerOut,
    TenantOut,
    UsageOut,
    UsageRow,
    VerifyOut,
)
from tenantflow.domain.limits import INT64_MAX
from tenantflow.errors import ConfigurationError

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["tenant"], responses=ERROR_RESPONSES)


@router.get("/tenant", response_model=TenantOut, summary="The caller's tenant and its policy")
async def own_tenant(engine: EngineDep, tenant: TenantId) -> TenantOut:
    return TenantOut.of(await engine.tenants.get(tenant))


@router.get("/usage", response_model=UsageOut, summary="Usage counters per day")
async def usage(
    engine: EngineDep,
    tenant: TenantId,
    since: Annotated[date | None, Query(description="First day (YYYY-MM-DD), UTC.")] = None,
    until: Annotated[date | None, Query(description="Last day (YYYY-MM-DD), UTC.")] = None,
) -> UsageOut:
    """Steps, slot seconds, tokens, cost, tool and model calls, rate-limit waits, degradations
    and reviews, per day; ``dim`` names the tool, model or step."""
    if since is not None and until is not None and since > until:
        raise ConfigurationError(
            "since is after until", field="query.since", value=since.isoformat()
        )
    rows = await engine.usage(
        tenant,
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
    )
    return UsageOut(
        items=[
            UsageRow(day=r["day"], metric=r["metric"], dim=r["dim"], value=r["value"]) for r in rows
        ]
    )


@router.get("/budget", response_model=BudgetOut, summary="Budget ledgers")
async def budget(engine: EngineDep, tenant: TenantId) -> BudgetOut:
    """Limit, spent, reserved and overrun per scope (period, run) and unit."""
    ledgers = await engine.budget(tenant)
    return BudgetOut(
        items=[
            LedgerOut(
                scope=str(row["scope"]),
                unit=str(row["unit"]),
                period=row.get("period"),
                limit=row.get("limit"),
                spent=int(row.get("spent") or 0),
                reserved=int(row.get("reserved") or 0),
                overrun=int(row.get("overrun") or 0),
                period_start=(
                    None
                    if row.get("period_start") is None
                    else datetime.fromtimestamp(float(row["period_start"]), UTC)
                ),
            )
            for row in ledgers
        ]
    )


@router.get("/audit", response_model=AuditPage, summary="The audit log, oldest first")
async def audit(
    engine: EngineDep,
    tenant: TenantId,
    after: Annotated[int, Query(ge=0, le=INT64_MAX, description="Only rows with seq > after.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    rows = [r for r in await engine.audit_log(tenant) if r.seq > after]
    page = rows[:limit]
    more = len(rows) > limit
    return AuditPage(items=[AuditOut.of(r) for r in page], next=page[-1].seq if more else None)


@router.get("/audit/verify", response_model=VerifyOut, summary="Verify the audit hash chain")
async def audit_verify(engine: EngineDep, tenant: TenantId) -> VerifyOut:
    return VerifyOut.of(await engine.audit_verify(tenant))
