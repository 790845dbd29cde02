"""The caller's schedules: list them (those registered in code with the workflows, and the
durable ones made over the API), create, pause, resume and delete the durable ones. Another
tenant's schedule is not found (404)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field, field_validator

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.api.schemas import Lane, _In
from tenantflow.engine.schedules import Schedule, Schedules
from tenantflow.errors import ConfigurationError

__all__ = ["ScheduleIn", "ScheduleOut", "SchedulesOut", "router"]

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=ERROR_RESPONSES)

NamePath = Annotated[
    str, Path(min_length=1, max_length=63, description="The schedule's name (unique per tenant).")
]


class ScheduleIn(_In):
    """A durable schedule: exactly one of ``every_s``, ``cron`` and ``at``."""

    name: str = Field(min_length=1, max_length=63, description="Lower-case letters, digits, _.-")
    workflow: str = Field(min_length=1, max_length=200)
    input: Any = Field(default=None, description="Every run's input.")
    every_s: float | None = Field(
        default=None,
        gt=0,
        le=10 * 366 * 86400,
        allow_inf_nan=False,
        description="An interval, in seconds (1 s to ten years).",
    )
    cron: str | None = Field(default=None, max_length=200, description="Five fields, UTC.")
    at: datetime | None = Field(default=None, description="Once, at this time (ISO-8601).")
    overlap: Literal["skip", "queue", "cancel"] = "skip"
    catchup: int = Field(default=1, ge=0, le=100)
    lane: Lane | None = None
    version: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-12-06T12:00:00Z)")
        return value


class ScheduleOut(BaseModel):
    name: str
    workflow: str
    every_s: float | None = Field(description="The interval, in seconds (or null).")
    cron: str | None = Field(description="Five fields, UTC (or null).")
    at: datetime | None = Field(default=None, description="A one-shot time (or null).")
    overlap: str = Field(description="skip, queue or cancel (while the previous run goes on).")
    catchup: int = Field(description="Missed times fired after downtime, at most.")
    paused: bool = False
    durable: bool = Field(
        default=False, description="Kept in the tenant's store (false: registered in code)."
    )
    next_at: datetime | None
    last_at: datetime | None = Field(description="The last time it fired, since this start.")
    last_run_id: str | None


class SchedulesOut(BaseModel):
    items: list[ScheduleOut]


def _out(found: Schedules, s: Schedule) -> ScheduleOut:
    return ScheduleOut.model_validate(found.describe(s))


@router.get("", response_model=SchedulesOut, summary="The caller's schedules")
async def schedules(engine: EngineDep, tenant: TenantId) -> SchedulesOut:
    found = engine.schedules
    return SchedulesOut(items=[_out(found, s) for s in await found.read(tenant)])


@router.post("", status_code=201, response_model=ScheduleOut, summary="Create a schedule")
async def create(body: ScheduleIn, engine: EngineDep, tenant: TenantId) -> ScheduleOut:
    """A durable schedule for the caller's tenant, kept in its store: it submits runs (through
    admission, like any other) every ``every_s``, on ``cron``, or once ``at``."""
    if body.every_s is not None and not math.isfinite(body.every_s):
        raise ConfigurationError("every_s must be finite", field="body.every_s")
    schedule = Schedule(
        name=body.name,
        tenant=tenant,
        workflow=body.workflow,
        input=body.input,
        every=None if body.every_s is None else timedelta(seconds=body.every_s),
        cron=body.cron,
        at=None if body.at is None else body.at.timestamp(),
        overlap=body.overlap,
        catchup=body.catchup,
        lane=body.lane,
        version=body.version,
    )
    made = await engine.schedules.create(schedule)
    return _out(engine.schedules, made)


@router.post("/{schedule}/pause", response_model=ScheduleOut, summary="Pause a schedule")
async def pause(schedule: NamePath, engine: EngineDep, tenant: TenantId) -> ScheduleOut:
    """It fires nothing until resumed (then it makes up what it missed, bounded by catchup)."""
    return _out(engine.schedules, await engine.schedules.pause(tenant, schedule))


@router.post("/{schedule}/resume", response_model=ScheduleOut, summary="Resume a schedule")
async def resume(schedule: NamePath, engine: EngineDep, tenant: TenantId) -> ScheduleOut:
    return _out(engine.schedules, await engine.schedules.resume(tenant, schedule))


class ScheduleDeletedOut(BaseModel):
    name: str
    deleted: bool = True


@router.delete("/{schedule}", response_model=ScheduleDeletedOut, summary="Delete a schedule")
async def delete(schedule: NamePath, engine: EngineDep, tenant: TenantId) -> ScheduleDeletedOut:
    """Its runs are left as they are."""
    await engine.schedules.delete(tenant, schedule)
    return ScheduleDeletedOut(name=schedule)
