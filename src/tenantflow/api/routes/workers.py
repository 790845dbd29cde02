"""``GET /v1/workers``: the cluster's workers, their heartbeats and the tenants they drive (an
admin key; an operator's view across tenants, ids and times only)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tenantflow.api.auth import Admin, EngineDep
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.api.schemas import utc
from tenantflow.placement import WorkerInfo

__all__ = ["WorkerOut", "WorkersOut", "router"]

router = APIRouter(prefix="/v1/workers", tags=["workers"], responses=ERROR_RESPONSES)


class LeaseOut(BaseModel):
    tenant_id: str
    expires_at: datetime


class WorkerOut(BaseModel):
    id: str = Field(description="host:pid:token, as on its step leases and in its logs.")
    live: bool = Field(description="Its last beat is within the liveness window.")
    started_at: datetime | None = Field(description="Null: it has left; its leases remain.")
    beat_at: datetime | None
    slots: int | None = Field(description="Step attempts it executes at once.")
    tenants: list[LeaseOut] = Field(description="The tenants it drives, each until its lease ends.")

    @classmethod
    def of(cls, worker: WorkerInfo) -> WorkerOut:
        return cls(
            id=worker.id,
            live=worker.live,
            started_at=utc(worker.started_at),
            beat_at=utc(worker.beat_at),
            slots=worker.slots,
            tenants=[
                LeaseOut(
                    tenant_id=t.tenant_id, expires_at=datetime.fromtimestamp(t.expires_at, UTC)
                )
                for t in worker.tenants
            ],
        )


class WorkersOut(BaseModel):
    items: list[WorkerOut]


@router.get(
    "", response_model=WorkersOut, summary="The cluster's workers and their tenants (admin key)"
)
async def workers(engine: EngineDep, admin: Admin) -> WorkersOut:
    """Every worker sharing the database (live, or silent and not yet forgotten), its last
    heartbeat, slots, and the tenants it holds leases on; 422 on an embedded store, which has
    no workers."""
    return WorkersOut(items=[WorkerOut.of(w) for w in await engine.workers()])
