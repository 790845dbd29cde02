"""The control plane, for admin keys: tenants and their policies, their keys, and fairness now.

An admin sees policies, keys (never their secrets, except a new one once) and counts; never a
tenant's runs, inputs, outputs or reviews: those pages need the tenant's own key.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tenantflow.api.auth import actor_of
from tenantflow.dashboard.web import AdminSession, Form, engine_of, read_form, redirect, render
from tenantflow.errors import ConfigurationError

__all__ = ["POLICY_FIELDS", "TENANTS_PAGE", "router"]

router = APIRouter(prefix="/admin")

POLICY_FIELDS: dict[str, type] = {
    "weight": float,
    "max_active_runs": int,
    "max_running_steps": int,
    "guaranteed_slots": int,
}
"""The policy fields the tenant form edits (the REST API and CLI change any)."""


def _policy_form(form: Form) -> dict[str, Any]:
    """The policy fields filled in on ``form``, converted (blank ones are left unchanged)."""
    out: dict[str, Any] = {}
    for name, kind in POLICY_FIELDS.items():
        raw = (form.get(name) or "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigurationError(
                f"{name} must be a number", field=name, value=raw[:50]
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigurationError(f"{name} must be finite", field=name, value=raw[:50])
        out[name] = value
    region = (form.get("region") or "").strip()
    if region:
        out["region"] = region
    return out


TENANTS_PAGE = 100


@router.get("/tenants", response_class=HTMLResponse)
async def tenants(
    request: Request,
    session: AdminSession,
    cursor: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    """Tenants by id, a page at a time (``cursor``: the last id of the previous page)."""
    found = engine_of(request).tenants.list()
    if cursor:
        found = [t for t in found if t.id > cursor]
    page = found[:TENANTS_PAGE]
    more = len(found) > TENANTS_PAGE
    return render(
        request,
        "admin_tenants.html",
        tenants=page,
        next_cursor=page[-1].id if more else None,
        cursor=cursor,
    )


@router.post("/tenants", response_model=None)
async def create_tenant(request: Request, session: AdminSession) -> RedirectResponse:
    form = await read_form(request, session)
    tenant_id = (form.get("id") or "").strip()
    tier = (form.get("tier") or "standard").strip()
    await engine_of(request).tenants.create(
        tenant_id, tier=tier, actor=actor_of(session.principal), **_policy_form(form)
    )
    return redirect(f"/ui/admin/tenants/{tenant_id}")


async def _tenant_page(
    request: Request, tenant_id: str, status_code: int = 200, **extra: Any
) -> HTMLResponse:
    engine = engine_of(request)
    info = await engine.tenants.get(tenant_id)
    keys = await engine.keys.list(tenant_id)
    return render(
        request,
        "admin_tenant.html",
        status_code,
        tenant=info,
        keys=keys,
        fields=list(POLICY_FIELDS),
        **{"secret": None, "confirm_delete": False, **extra},
    )


@router.get("/tenants/{tenant_id}", response_class=HTMLResponse)
async def tenant(request: Request, session: AdminSession, tenant_id: str) -> HTMLResponse:
    return await _tenant_page(request, tenant_id)


@router.post("/tenants/{tenant_id}", response_model=None)
async def update_tenant(
    request: Request, session: AdminSession, tenant_id: str
) -> RedirectResponse:
    form = await read_form(request, session)
    await engine_of(request).tenants.update(
        tenant_id, actor=actor_of(session.principal), **_policy_form(form)
    )
    return redirect(f"/ui/admin/tenants/{tenant_id}")


@router.post("/tenants/{tenant_id}/delete", response_model=None)
async def delete_tenant(
    request: Request, session: AdminSession, tenant_id: str
) -> HTMLResponse | RedirectResponse:
    """First post: asks for confirmation; the confirmed post deletes (409 while runs are open)."""
    form = await read_form(request, session)
    if form.get("confirm") != "yes":
        return await _tenant_page(request, tenant_id, confirm_delete=True)
    await engine_of(request).tenants.delete(tenant_id, actor=actor_of(session.principal))
    return redirect("/ui/admin/tenants")


@router.post("/tenants/{tenant_id}/keys", response_class=HTMLResponse)
async def create_key(request: Request, session: AdminSession, tenant_id: str) -> HTMLResponse:
    """A new key; its secret is on this answer only (never stored, never shown again)."""
    form = await read_form(request, session)
    engine = engine_of(request)
    await engine.tenants.get(tenant_id)
    name = (form.get("name") or "default").strip()
    _, secret = await engine.keys.create(tenant_id, name=name, actor=actor_of(session.principal))
    response = await _tenant_page(request, tenant_id, 201, secret=secret)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/tenants/{tenant_id}/keys/{key_id}/rotate", response_class=HTMLResponse)
async def rotate_key(
    request: Request, session: AdminSession, tenant_id: str, key_id: str
) -> HTMLResponse:
    """Revoke the key and create its successor; the new secret is on this answer only."""
    await read_form(request, session)
    engine = engine_of(request)
    await engine.tenants.get(tenant_id)
    _, secret = await engine.keys.rotate(tenant_id, key_id, actor=actor_of(session.principal))
    response = await _tenant_page(request, tenant_id, secret=secret)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/tenants/{tenant_id}/keys/{key_id}/revoke", response_model=None)
async def revoke_key(
    request: Request, session: AdminSession, tenant_id: str, key_id: str
) -> RedirectResponse:
    await read_form(request, session)
    engine = engine_of(request)
    await engine.tenants.get(tenant_id)
    await engine.keys.revoke(tenant_id, key_id, actor=actor_of(session.principal))
    return redirect(f"/ui/admin/tenants/{tenant_id}")


@router.get("/fairness", response_class=HTMLResponse)
async def fairness(request: Request, session: AdminSession) -> HTMLResponse:
    """Who holds the slots now, against each tenant's fair share, Jain's index, and each
    tenant's run latency p99 against its no-burst baseline."""
    engine = engine_of(request)
    load = engine.load()
    latency = {t.tenant: t for t in engine.latency()}
    return render(
        request,
        "admin_fairness.html",
        load=load,
        rows=load.tenants[:500],
        latency=sorted(latency.values(), key=lambda t: (-(t.ratio or 0.0), t.tenant))[:500],
        placement=engine.placement(),
    )


@router.get("/health", response_class=HTMLResponse)
async def health(request: Request, session: AdminSession) -> HTMLResponse:
    """The placement (and what it says of itself) and its members of every kind the control
    plane reports (processes, workers, cells, the plane, agents), counted by kind and state,
    circuit breakers and queues: counts and states only, nothing of any tenant's runs."""
    engine = engine_of(request)
    members = await engine.health()
    kinds: dict[str, dict[str, int]] = {}
    for m in members:
        states = kinds.setdefault(m.kind, {})
        states[m.state] = states.get(m.state, 0) + 1
    return render(
        request,
        "admin_health.html",
        placement=engine.placement(),
        members=members,
        kinds=[(k, sorted(v.items())) for k, v in kinds.items()],
        breakers=engine.breakers(),
        load=engine.load(),
        now=engine.now(),
    )
