"""The tenant's runs: the filtered list, bulk cancel with confirmation, a run's page, its state
at a version, and its live event stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from tenantflow.api.routes.events import _follow as follow_events
from tenantflow.dashboard.svg import StepTimes, layout_dag, layout_timeline
from tenantflow.dashboard.web import (
    TenantSession,
    engine_of,
    read_form,
    render,
    tenant_of,
)
from tenantflow.domain.records import TERMINAL_RUN, RunRecord, RunStatus
from tenantflow.domain.spec import parse_key
from tenantflow.errors import NotFoundError, TenantflowError

__all__ = ["PAGE", "STEPS_PAGE", "WINDOWS", "router"]

router = APIRouter()

PAGE = 50
"""Runs per page of the list."""

STEPS_PAGE = 200
"""Steps per page of a run's timeline (a 5,000-step run is 25 pages, not one huge SVG)."""

WINDOWS = {"1h": 3600.0, "24h": 86_400.0, "7d": 604_800.0, "30d": 2_592_000.0}
"""The time filter: runs created within this long of now."""


@router.get("/runs", response_class=HTMLResponse)
async def runs(
    request: Request,
    session: TenantSession,
    status: Annotated[str, Query(max_length=20)] = "",
    workflow: Annotated[str, Query(max_length=200)] = "",
    window: Annotated[str, Query(max_length=8)] = "",
    cursor: Annotated[str, Query(max_length=100)] = "",
) -> HTMLResponse:
    """Newest first, filtered by status, workflow and creation time (all kept in the URL)."""
    engine = engine_of(request)
    tenant = tenant_of(session)
    wanted = RunStatus(status) if status in set(RunStatus) else None
    # The same engine call as GET /v1/runs: one more than a page, to know if there is a next;
    # the list shows no input or result, so none is read.
    found = await engine.list_runs(
        tenant,
        status=wanted,
        workflow=workflow or None,
        limit=PAGE + 1,
        before=cursor or None,
        payloads=False,
    )
    page, more = found[:PAGE], len(found) > PAGE
    if window in WINDOWS:
        since = engine.clock.now() - WINDOWS[window]
        kept = [r for r in page if r.created_at >= since]
        more = more and len(kept) == len(page)  # newest first: past the window, nothing more
        page = kept
    return render(
        request,
        "runs.html",
        runs=page,
        next_cursor=page[-1].id if more and page else None,
        statuses=[s.value for s in RunStatus],
        windows=list(WINDOWS),
        filters={"status": wanted.value if wanted else "", "workflow": workflow, "window": window},
        cursor=cursor,
    )


@router.post("/runs/cancel", response_class=HTMLResponse)
async def bulk_cancel(request: Request, session: TenantSession) -> HTMLResponse:
    """First post: a confirmation page listing the runs; the confirmed post cancels them."""
    form = await read_form(request, session)
    ids = list(dict.fromkeys(form.all("run")))[:PAGE]
    engine = engine_of(request)
    tenant = tenant_of(session)
    if not ids:
        return render(request, "cancel.html", 400, ids=[], results=None, error="no run selected")
    if form.get("confirm") != "yes":
        return render(request, "cancel.html", ids=ids, results=None, error=None)
    results: list[tuple[str, str]] = []
    for run_id in ids:
        try:
            record = await engine.cancel(tenant, run_id, "cancelled from the dashboard")
            results.append((run_id, record.status.value))
        except NotFoundError:
            results.append((run_id, "not found"))
        except TenantflowError as exc:
            results.append((run_id, str(exc)))
    return render(request, "cancel.html", ids=ids, results=results, error=None)


async def _run_page(request: Request, tenant: str, run_id: str, page: int) -> dict[str, Any]:
    engine = engine_of(request)
    record = await engine.get_run(tenant, run_id)  # 404 for another tenant's run
    store = engine.store_for_tenant(tenant)
    steps = await engine.steps(tenant, run_id)
    steps.sort(key=lambda s: (s.started_at is None, s.started_at or 0.0, s.key))
    events = await engine.timeline(tenant, run_id)
    versions = await store.state_versions(tenant, run_id, upto=record.state_version)
    ledgers = await store.ledgers(tenant, f"run:{run_id}")
    info = await engine.tenants.get(tenant)
    by_name: dict[str, list[str]] = {}
    for s in steps:
        by_name.setdefault(parse_key(s.key)[0], []).append(s.status.value)
    try:
        spec = engine.workflow(record.workflow, record.workflow_version)
        shape = [(s.name, s.deps) for s in spec.steps if not s.standby or s.name in by_name]
    except TenantflowError:  # not registered here (a front): the steps it ran, unconnected
        shape = [(name, ()) for name in by_name]
    now = engine.clock.now()
    end = record.finished_at or now
    pages = max(1, -(-len(steps) // STEPS_PAGE))
    page = min(max(page, 1), pages)
    shown = steps[(page - 1) * STEPS_PAGE : page * STEPS_PAGE]
    timeline = layout_timeline(
        [
            StepTimes(
                s.key,
                s.status.value,
                s.attempt,
                s.available_at or None,
                s.started_at,
                s.finished_at,
            )
            for s in shown
        ],
        ((e.ts, e.kind, e.step, e.attempt) for e in events),
        start=record.created_at,
        end=end,
    )
    cost = sum(int(r.get("spent") or 0) for r in ledgers if r["unit"] == "micros")
    tokens = sum(int(r.get("spent") or 0) for r in ledgers if r["unit"] == "tokens")
    return {
        "run": record,
        "live": record.status not in TERMINAL_RUN,
        "dag": layout_dag(shape, by_name),
        "timeline": timeline,
        "steps": shown,
        "step_count": len(steps),
        "page": page,
        "pages": pages,
        "events": events[-50:],
        "event_count": len(events),
        "versions": versions[-50:],
        "version_count": len(versions),
        "cost_micros": cost,
        "tokens": tokens,
        "ledgers": ledgers,
        "budget": info.policy.budget,
        "region": record.meta.get("region") or info.policy.region or "default",
    }


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_detail(
    request: Request,
    session: TenantSession,
    run_id: str,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """Status, cost against budget, region, DAG, timeline, state versions; live while it runs."""
    context = await _run_page(request, tenant_of(session), run_id, page)
    return render(request, "run.html", **context)


@router.get("/runs/{run_id}/live", response_class=HTMLResponse)
async def run_live(
    request: Request,
    session: TenantSession,
    run_id: str,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """The live part of a run's page alone (htmx swaps it in on each event)."""
    context = await _run_page(request, tenant_of(session), run_id, page)
    return render(request, "run_live.html", **context)


@router.get("/runs/{run_id}/state", response_class=HTMLResponse)
async def run_state(
    request: Request,
    session: TenantSession,
    run_id: str,
    version: Annotated[int, Query(ge=0, le=2**31)],
) -> HTMLResponse:
    """The state at one version and what changed from its parent (loaded on demand)."""
    engine = engine_of(request)
    tenant = tenant_of(session)
    state = await engine.state(tenant, run_id, version)
    changes = await engine.diff(tenant, run_id, state.parent, version) if state.parent else []
    return render(
        request,
        "state.html",
        run_id=run_id,
        state=state,
        changes=changes,
        text=_pretty(state.state),
    )


@router.get("/runs/{run_id}/steps/{key}", response_class=HTMLResponse)
async def step_detail(
    request: Request, session: TenantSession, run_id: str, key: str
) -> HTMLResponse:
    """One step record: its output and error (loaded only here), and its events — every
    attempt, retry, wait, log line and degradation — in order."""
    engine = engine_of(request)
    tenant = tenant_of(session)
    steps = await engine.steps(tenant, run_id)  # 404 for another tenant's run
    step = next((s for s in steps if s.key == key), None)
    if step is None:
        raise NotFoundError(f"run {run_id} has no step {key!r}", kind="step", id=key)
    events = [e for e in await engine.timeline(tenant, run_id) if e.step == key]
    output = None if step.output_json is None else _pretty(json.loads(step.output_json))
    return render(
        request,
        "step.html",
        run_id=run_id,
        step=step,
        output=output,
        events=[(e, _pretty(e.data) if e.data else "") for e in events],
    )


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


async def _own_run(request: Request, session: TenantSession, run_id: str) -> RunRecord:
    # Resolved before the stream starts, so that another tenant's run is a plain 404.
    return await engine_of(request).get_run(tenant_of(session), run_id)


@router.get("/runs/{run_id}/events", response_class=EventSourceResponse)
async def run_events(
    request: Request,
    session: TenantSession,
    run: Annotated[RunRecord, Depends(_own_run)],
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """The run's events as GET /v1/runs/{id}/events streams them (the same generator), for
    the session's tenant. Each message's data is the event's kind; the page's script reloads
    the live part of the page on each."""
    engine = engine_of(request)
    async for event in follow_events(engine, tenant_of(session), run.id, last_event_id or 0):
        yield ServerSentEvent(data=event.kind, id=str(event.id))
