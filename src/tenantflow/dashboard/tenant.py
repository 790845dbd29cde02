"""The tenant's review inbox, usage and budget, audit log and agent memory."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tenantflow.dashboard.web import (
    TenantSession,
    engine_of,
    read_form,
    redirect,
    render,
    tenant_of,
)
from tenantflow.domain.memory import DEFAULT_NAMESPACE, MAX_KEY_CHARS, MAX_QUERY_CHARS
from tenantflow.errors import ConfigurationError

__all__ = ["AUDIT_PAGE", "MEMORY_PAGE", "router"]

router = APIRouter()

AUDIT_PAGE = 100


@router.get("/reviews", response_class=HTMLResponse)
async def reviews(request: Request, session: TenantSession) -> HTMLResponse:
    """Open review tasks in queue order (urgent lane first, then by SLA); overdue ones marked."""
    engine = engine_of(request)
    found = await engine.reviews.list(tenant_of(session), limit=200)
    return render(
        request, "reviews.html", reviews=found, now=engine.now(), reviewer=session.key_name
    )


@router.post("/reviews/{review_id}/claim")
async def claim(request: Request, session: TenantSession, review_id: str) -> RedirectResponse:
    await read_form(request, session)
    # The reviewer is the signed-in key (its name), never a name sent in the form.
    await engine_of(request).reviews.claim(tenant_of(session), review_id, reviewer=session.key_name)
    return redirect(f"/ui/reviews#{review_id}")


@router.post("/reviews/{review_id}/decide")
async def decide(request: Request, session: TenantSession, review_id: str) -> RedirectResponse:
    """Approve or reject; the waiting step goes on (the run resumes) in the same transaction."""
    form = await read_form(request, session)
    decision = form.get("decision")
    if decision not in ("approve", "reject"):
        raise ConfigurationError("decision must be approve or reject", field="decision")
    comment = (form.get("comment") or "").strip() or None
    if comment is not None and len(comment) > 2000:
        raise ConfigurationError("the comment is longer than 2000 characters", field="comment")
    review = await engine_of(request).reviews.decide(
        tenant_of(session),
        review_id,
        reviewer=session.key_name,
        approve=decision == "approve",
        comment=comment,
    )
    return redirect(f"/ui/runs/{review.run_id}")


@router.get("/usage", response_class=HTMLResponse)
async def usage(request: Request, session: TenantSession) -> HTMLResponse:
    """Per day tokens, cost, calls and waits; the period ledgers and holds; queue against caps."""
    engine = engine_of(request)
    tenant = tenant_of(session)
    rows = await engine.usage(tenant)
    days: dict[str, dict[str, float]] = {}
    saturation: dict[tuple[str, str], float] = {}
    for row in rows:
        totals = days.setdefault(str(row["day"]), {})
        metric = str(row["metric"])
        totals[metric] = totals.get(metric, 0) + float(row["value"])
        if metric.startswith("rate_limit_wait"):
            key = (metric, str(row["dim"]))
            saturation[key] = saturation.get(key, 0) + float(row["value"])
    ledgers = [r for r in await engine.budget(tenant) if not str(r["scope"]).startswith("run:")]
    info = await engine.tenants.get(tenant)
    load = engine.tenant_load(tenant)
    return render(
        request,
        "usage.html",
        days=sorted(days.items(), reverse=True)[:60],
        saturation=sorted(saturation.items()),
        ledgers=ledgers,
        policy=info.policy,
        running=load.running,
        queued=load.queued,
        active_runs=load.active_runs,
        queued_runs=load.queued_runs,
    )


@router.get("/audit", response_class=HTMLResponse)
async def audit(
    request: Request,
    session: TenantSession,
    after: Annotated[int, Query(ge=0)] = 0,
    verify: Annotated[bool, Query()] = False,
) -> HTMLResponse:
    """The hash-chained audit log, oldest first, and the result of verifying it on request."""
    engine = engine_of(request)
    tenant = tenant_of(session)
    rows = [r for r in await engine.audit_log(tenant) if r.seq > after]
    page = rows[:AUDIT_PAGE]
    result = await engine.audit_verify(tenant) if verify else None
    return render(
        request,
        "audit.html",
        rows=page,
        next_after=page[-1].seq if len(rows) > AUDIT_PAGE else None,
        result=result,
    )


MEMORY_PAGE = 100
"""Memory entries per page."""


@router.get("/memory", response_class=HTMLResponse)
async def memory(
    request: Request,
    session: TenantSession,
    namespace: Annotated[str, Query(max_length=200)] = DEFAULT_NAMESPACE,
    prefix: Annotated[str, Query(max_length=200)] = "",
    cursor: Annotated[str, Query(max_length=MAX_KEY_CHARS)] = "",
    q: Annotated[str, Query(max_length=MAX_QUERY_CHARS)] = "",
) -> HTMLResponse:
    """The tenant's agent memory in one namespace: entries by key, a page at a time, and a
    search of its documents (the same calls as GET /v1/memory/...)."""
    engine = engine_of(request)
    tenant = tenant_of(session)
    namespace = namespace.strip() or DEFAULT_NAMESPACE
    found = await engine.memory.list(
        tenant,
        namespace=namespace,
        prefix=prefix or None,
        after=cursor or None,
        limit=MEMORY_PAGE + 1,
    )
    page = found[:MEMORY_PAGE]
    hits = await engine.memory.search(tenant, q, namespace=namespace, limit=20) if q else None
    return render(
        request,
        "memory.html",
        namespace=namespace,
        prefix=prefix,
        q=q,
        cursor=cursor,
        entries=[(e, _short(e.value)) for e in page],
        next_cursor=page[-1].key if len(found) > MEMORY_PAGE else None,
        hits=hits,
    )


def _short(value: object, limit: int = 2000) -> str:
    text = json.dumps(value, indent=1, sort_keys=True, default=str)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"
