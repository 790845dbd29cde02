"""``GET /v1/schedules``: the caller's schedules (registered in code with the workflows), when
each fires next and what it submitted last."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import ERROR_RESPONSES

__all__ = ["ScheduleOut", "SchedulesOut", "router"]

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=ERROR_RESPONSES)


class ScheduleOut(BaseModel):
    name: str
    workflow: str
    every_s: float | None = Field(description="The interval, in seconds (or null: cron).")
    cron: str | None = Field(description="Five fields, UTC (or null: every_s).")
    overlap: str = Field(description="skip, queue or cancel (while the previous run goes on).")
    catchup: int = Field(description="Missed times fired after downtime, at most.")
    next_at: datetime | None
    last_at: datetime | None = Field(description="The last time it fired, since this start.")
    last_run_id: str | None


class SchedulesOut(BaseModel):
    items: list[ScheduleOut]


def _at(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@router.get("", response_model=SchedulesOut, summary="The caller's schedules")
async def schedules(engine: EngineDep, tenant: TenantId) -> SchedulesOut:
    found = engine.schedules
    items: list[ScheduleOut] = []
    for s in found.all(tenant):
        last = found.last(s)
        items.append(
            ScheduleOut(
                name=s.name,
                workflow=s.workflow,
                every_s=None if s.every is None else s.every.total_seconds(),
                cron=s.cron,
                overlap=s.overlap,
                catchup=s.catchup,
                next_at=_at(found.next_time(s)),
                last_at=_at(last[0] if last else None),
                last_run_id=last[1] if last else None,
            )
        )
    return SchedulesOut(items=items)
