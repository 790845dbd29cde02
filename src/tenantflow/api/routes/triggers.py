"""Events that start workflows: ``POST /v1/events/{event}``.

Every workflow registered to the event's name (``Workflow(..., on_event=name)``) gets a run for
the caller's tenant (the key's, never the body's), with the event's ``data`` as its input. The
event's ``id`` makes it idempotent: the same id again starts nothing and answers the same runs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.engine.run_signals import EventReceipt

__all__ = ["EventIn", "EventReceived", "router"]

router = APIRouter(prefix="/v1/events", tags=["events"], responses=ERROR_RESPONSES)

EventName = Annotated[
    str,
    Path(min_length=1, max_length=128, description="The event's name, e.g. invoice.created."),
]


class EventIn(BaseModel):
    """An event: its id (the idempotency key) and its data (the runs' input)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="Unique per event and tenant.")
    data: Any = Field(default=None, description="Plain JSON, at most 64 KiB: the runs' input.")


class StartedOut(BaseModel):
    workflow: str
    run_id: str
    created: bool = Field(description="False: the event was received before; its run.")


class EventReceived(BaseModel):
    name: str
    id: str
    runs: list[StartedOut]

    @classmethod
    def of(cls, receipt: EventReceipt) -> EventReceived:
        return cls(
            name=receipt.name,
            id=receipt.event_id,
            runs=[
                StartedOut(workflow=r.workflow, run_id=r.run_id, created=r.created)
                for r in receipt.runs
            ],
        )


@router.post(
    "/{event}",
    response_model=EventReceived,
    status_code=202,
    summary="Send an event: start the workflows registered to it",
)
async def publish(
    event: EventName, body: EventIn, engine: EngineDep, tenant: TenantId
) -> EventReceived:
    """Start a run of every workflow registered to ``event``, for the caller's tenant."""
    return EventReceived.of(await engine.publish(tenant, event, body.id, body.data))
