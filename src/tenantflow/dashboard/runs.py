"""The tenant's runs: the filtered list (status, workflow, time, cost), bulk cancel and retry
with confirmation, a run's page, its state at a version, and its live event stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from tenantflow.api.routes.events import _follow as follow_events
from tenantflow.dashboard.sessions import Session
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
from tenantflow.engine.plane import RunCost
from tenantflow.errors import ConfigurationError, NotFoundError, TenantflowError
from tenantflow.placement.control import ControlPlane

__all__ = ["PAGE", "SCAN", "STEPS_PAGE", "WINDOWS", "router"]

router = APIRouter()

PAGE = 50
"""Runs per page of the list."""

STEPS_PAGE = 200
"""Steps per page of a run's timeline (a 5,000-step run is 25 pages, not one huge SVG)."""

WINDOWS = {"1h": 3600.0, "24h": 86_400.0, "7d": 604_800.0, "30d": 2_592_000.0}
"""The time filter: runs created within this long of now."""


SCAN = 2000
"""At most this many runs are read (without payloads) per page when a filter the store cannot
apply (a time bound, a cost) is set; the page then links on from where the scan stopped."""

_BATCH = 200

Outcome = tuple[str, str, str | None]
"""A bulk action's result for one run: its id, what happened, the run to link to (or None)."""


def _instant(name: str, raw: str) -> float | None:
    """A ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` (UTC) filter value as epoch seconds."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name} must be a date or date and time (YYYY-MM-DDTHH:MM, UTC)",
            field=name,
            value=raw[:50],
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _micros(name: str, raw: str) -> int | None:
    """A dollar amount filter value as micro-dollars."""
    raw = raw.strip().lstrip("$")
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigurationError(
            f"{name} must be an amount in dollars", field=name, value=raw[:50]
        ) from None
    if not value.is_finite() or value < 0 or value > 1_000_000_000:
        raise ConfigurationError(
            f"{name} must be between 0 and 1,000,000,000 dollars", field=name, value=raw[:50]
        )
    return int(value * 1_000_000)


@dataclass(frozen=True, slots=True)
class RunFilter:
    """The runs list's filters, as the URL carries them."""

    status: RunStatus | None
    workflow: str | None
    since: float | None
    until: float | None
    min_micros: int | None
    max_micros: int | None

    @property
    def scans(self) -> bool:
        """Whether the dashboard filters what the store returns (time bounds, cost)."""
        return any(
            v is not None for v in (self.since, self.until, self.min_micros, self.max_micros)
        )

    @property
    def priced(self) -> bool:
        """Whether a cost bound is set."""
        return self.min_micros is not None or self.max_micros is not None

    def in_time(self, run: RunRecord) -> bool:
        if self.since is not None and run.created_at < self.since:
            return False
        return self.until is None or run.created_at <= self.until

    def in_price(self, micros: int) -> bool:
        if self.min_micros is not None and micros < self.min_micros:
            return False
        return self.max_micros is None or micros <= self.max_micros


async def _scan(
    engine: ControlPlane, tenant: str, f: RunFilter, cursor: str | None
) -> tuple[list[RunRecord], dict[str, RunCost], str | None, int, bool]:
    """A page of runs passing ``f``, newest first; their costs; the cursor of the next page;
    how many runs were read; whether the scan stopped at :data:`SCAN` before the end."""
    page: list[RunRecord] = []
    scanned = 0
    before = cursor
    while scanned < SCAN:
        asked = min(_BATCH, SCAN - scanned) if f.scans else PAGE + 1
        batch = await engine.list_runs(
            tenant,
            status=f.status,
            workflow=f.workflow,
            limit=asked,
            before=before,
            payloads=False,
        )
        if not batch:
            return page, await _costs(engine, tenant, page, {}), None, scanned, False
        if not f.scans:  # the store applied every filter: one read, one more than a page
            shown = batch[:PAGE]
            costs = await engine.run_costs(tenant, [r.id for r in shown])
            more = shown[-1].id if len(batch) > PAGE else None
            return shown, costs, more, len(batch), False
        timely = [r for r in batch if f.in_time(r)]
        spent = await engine.run_costs(tenant, [r.id for r in timely]) if f.priced else {}
        for run in batch:
            scanned += 1
            before = run.id
            if not f.in_time(run) or (f.priced and not f.in_price(spent[run.id].micros)):
                continue
            page.append(run)
            if len(page) == PAGE:
                return page, await _costs(engine, tenant, page, spent), run.id, scanned, False
        ended = len(batch) < asked
        if f.since is not None and batch[-1].created_at < f.since:
            ended = True  # newest first: nothing older matches
        if ended:
            return page, await _costs(engine, tenant, page, spent), None, scanned, False
    return page, await _costs(engine, tenant, page, {}), before, scanned, True


async def _costs(
    engine: ControlPlane, tenant: str, page: list[RunRecord], known: dict[str, RunCost]
) -> dict[str, RunCost]:
    missing = [r.id for r in page if r.id not in known]
    found = await engine.run_costs(tenant, missing) if missing else {}
    return {r.id: known.get(r.id) or found[r.id] for r in page}


@router.get("/runs", response_class=HTMLResponse)
async def runs(
    request: Request,
    session: TenantSession,
    status: Annotated[str, Query(max_length=20)] = "",
    workflow: Annotated[str, Query(max_length=200)] = "",
    window: Annotated[str, Query(max_length=8)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    min_cost: Annotated[str, Query(max_length=20)] = "",
    max_cost: Annotated[str, Query(max_length=20)] = "",
    cursor: Annotated[str, Query(max_length=100)] = "",
) -> HTMLResponse:
    """Newest first, filtered by status, workflow, creation time (a window, or from and
    until) and cost (all kept in the URL), with each run's cost."""
    engine = engine_of(request)
    tenant = tenant_of(session)
    wanted = RunStatus(status) if status in set(RunStatus) else None
    start = _instant("since", since)
    if window in WINDOWS:
        recent = engine.now() - WINDOWS[window]
        start = recent if start is None else max(start, recent)
    f = RunFilter(
        wanted,
        workflow or None,
        start,
        _instant("until", until),
        _micros("min_cost", min_cost),
        _micros("max_cost", max_cost),
    )
    # The same engine call as GET /v1/runs, reading no input or result; the filters the store
    # cannot apply are applied here, on at most SCAN runs a page.
    page, costs, next_cursor, scanned, stopped = await _scan(engine, tenant, f, cursor or None)
    return render(
        request,
        "runs.html",
        runs=page,
        costs=costs,
        next_cursor=next_cursor,
        scanned=scanned if stopped else None,
        statuses=[s.value for s in RunStatus],
        windows=list(WINDOWS),
        filters={
            "status": wanted.value if wanted else "",
            "workflow": workflow,
            "window": window,
            "since": since,
            "until": until,
            "min_cost": min_cost,
            "max_cost": max_cost,
        },
        cursor=cursor,
    )


_EXPLAIN = {
    "cancel": "Their running steps stop and completed steps are compensated.",
    "retry": "Each failed, cancelled or compensated run goes on from the step that failed"
    " (its completed steps keep their outputs; a cancelled run goes back to where it stopped);"
    " other runs are refused, and the outcome says why.",
}


async def _bulk(
    request: Request, session: Session, verb: str, act: Callable[[str], Awaitable[Outcome]]
) -> HTMLResponse:
    """First post: a confirmation page listing the runs; the confirmed post acts on each."""
    form = await read_form(request, session)
    ids = list(dict.fromkeys(form.all("run")))[:PAGE]
    context: dict[str, Any] = {"verb": verb, "explain": _EXPLAIN[verb], "ids": ids}
    if not ids:
        return render(request, "bulk.html", 400, results=None, error="no run selected", **context)
    if form.get("confirm") != "yes":
        return render(request, "bulk.html", results=None, error=None, **context)
    results: list[Outcome] = []
    for run_id in ids:
        try:
            results.append(await act(run_id))
        except NotFoundError:
            results.append((run_id, "not found", None))
        except TenantflowError as exc:
            results.append((run_id, str(exc), None))
    return render(request, "bulk.html", results=results, error=None, **context)


@router.post("/runs/cancel", response_class=HTMLResponse)
async def bulk_cancel(request: Request, session: TenantSession) -> HTMLResponse:
    """Cancel the selected runs, after a confirmation."""
    engine = engine_of(request)
    tenant = tenant_of(session)

    async def cancel(run_id: str) -> Outcome:
        record = await engine.cancel(tenant, run_id, "cancelled from the dashboard")
        return run_id, record.status.value, None

    return await _bulk(request, session, "cancel", cancel)


@router.post("/runs/retry", response_class=HTMLResponse)
async def bulk_retry(request: Request, session: TenantSession) -> HTMLResponse:
    """Retry the selected runs from their failed step, after a confirmation (the engine's
    ``retry``: a failed, cancelled or compensated run goes on; another is refused, and said so)."""
    engine = engine_of(request)
    tenant = tenant_of(session)

    async def retry(run_id: str) -> Outcome:
        result = await engine.retry(
            tenant,
            run_id,
            actor=f"dashboard:{session.key_name}",
            reason="retried from the dashboard",
        )
        if not result.ok or result.run is None:
            return run_id, str((result.error or {}).get("message") or "not retried"), None
        return run_id, f"retried, now {result.run.status.value}", result.run.id

    return await _bulk(request, session, "retry", retry)


async def _run_page(request: Request, tenant: str, run_id: str, page: int) -> dict[str, Any]:
    engine = engine_of(request)
    record = await engine.get_run(tenant, run_id)  # 404 for another tenant's run
    steps = await engine.steps(tenant, run_id)
    steps.sort(key=lambda s: (s.started_at is None, s.started_at or 0.0, s.key))
    events = await engine.timeline(tenant, run_id)
    versions = await engine.version_list(tenant, run_id)
    spent = (await engine.run_costs(tenant, [run_id]))[run_id]
    info = await engine.tenants.get(tenant)
    by_name: dict[str, list[str]] = {}
    for s in steps:
        by_name.setdefault(parse_key(s.key)[0], []).append(s.status.value)
    try:
        spec = engine.workflow(record.workflow, record.workflow_version)
        shape = [(s.name, s.deps) for s in spec.steps if not s.standby or s.name in by_name]
    except TenantflowError:  # not registered here (a front): the steps it ran, unconnected
        shape = [(name, ()) for name in by_name]
    now = engine.now()
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
        "cost_micros": spent.micros,
        "tokens": spent.tokens,
        "ledgers": list(spent.ledgers),
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
