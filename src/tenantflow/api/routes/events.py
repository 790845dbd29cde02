"""A run's execution log as it is written: Server-Sent Events.

``GET /v1/runs/{run_id}/events`` sends every event already recorded, then each new one as it
commits, and ends after the run's terminal event. Each SSE message has ``id:`` = the event's id
and ``event:`` = its kind, and its data is the event as JSON; a client that reconnects with
``Last-Event-ID`` (or ``?after=``) gets only the events after that one. The stream polls the
tenant-scoped store, so it works whichever process executes the run; a client that goes away
ends it (the server cancels the stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import STREAM_ERROR_RESPONSES
from tenantflow.api.routes.runs import RunPath
from tenantflow.api.schemas import EventOut
from tenantflow.domain.records import TERMINAL_RUN, RunRecord
from tenantflow.placement import ControlPlane

__all__ = ["POLL_S", "router"]

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=STREAM_ERROR_RESPONSES)

POLL_S = 0.2
"""How often an open stream looks for new events."""


async def _run(run_id: RunPath, engine: EngineDep, tenant: TenantId) -> RunRecord:
    # Resolved before the stream starts, so that an unknown run is a plain 404.
    return await engine.get_run(tenant, run_id)


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    summary="Stream a run's execution log (Server-Sent Events)",
    responses={200: {"description": "`text/event-stream`: one message per event."}},
)
async def events(
    engine: EngineDep,
    tenant: TenantId,
    run: Annotated[RunRecord, Depends(_run)],
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, description="Resume after this event id."),
    ] = None,
    after: Annotated[
        int, Query(ge=0, description="Only events after this id (Last-Event-ID wins).")
    ] = 0,
) -> AsyncIterator[ServerSentEvent]:
    cursor = last_event_id if last_event_id is not None else after
    async for event in _follow(engine, tenant, run.id, cursor):
        yield ServerSentEvent(data=event, event=event.kind, id=str(event.id))


async def _follow(
    engine: ControlPlane, tenant: str, run_id: str, cursor: int
) -> AsyncIterator[EventOut]:
    while True:
        # The status first: once it is terminal, every event of the run is already committed.
        ended = (await engine.get_run(tenant, run_id)).status in TERMINAL_RUN
        for event in await engine.events_after(tenant, run_id, cursor):
            cursor = event.id
            yield EventOut.of(event)
        if ended:
            return
        await asyncio.sleep(POLL_S)
