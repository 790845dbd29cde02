"""The plane's HTTP API (``tenantflow plane``).

* ``/v1/tenants`` (admin key of the plane): the ordinary admin API — create (provisioning:
  a cell started and ready), list, show, change the policy (a new policy version pushed to the
  cell), delete (drained, purged, proof) — and the tenants' keys (made in the tenant's cell;
  the plane keeps only their ids, to route);
* every other ``/v1/...`` path and ``/mcp``: ``307`` to the cell of the key's tenant;
* ``/plane/v1/...`` (admin key): cells and their health, policy versions and lag, global
  quotas and leases, ``route`` (where a key's tenant lives); ``/plane/v1/heartbeat`` is for
  cells (their own key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantflow import __version__
from tenantflow.api.errors import error_response, install_error_handlers
from tenantflow.api.schemas import KeyIn, TenantCreate, TenantPatch
from tenantflow.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
    TenantflowError,
)
from tenantflow.placement.federated.plane import Plane

__all__ = ["build_plane_app"]

_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _plane(request: Request) -> Plane:
    plane: Plane = request.app.state.plane
    return plane


async def _admin(request: Request, credentials: Credentials) -> str:
    if credentials is None:
        raise AuthenticationError(
            "this operation needs an API key: send Authorization: Bearer <key>"
        )
    principal = await _plane(request).engine.keys.authenticate(credentials.credentials)
    if not principal.is_admin:
        raise PermissionDeniedError("this operation needs an admin key of the plane")
    return f"api:{principal.key_id}"


Admin = Annotated[str, Depends(_admin)]
PlaneDep = Annotated[Plane, Depends(_plane)]


def _is_plane_path(path: str) -> bool:
    return path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/v1/tenants",
    ) or path.startswith(("/v1/tenants/", "/plane/"))


class RouteByKey:
    """Tenant requests reaching the plane are sent to the tenant's cell (307, method and body
    kept); the tenant is found from the key's id, its secret is checked by the cell."""

    def __init__(self, app: ASGIApp, *, plane: Callable[[], Plane]) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or _is_plane_path(path):
            await self.app(scope, receive, send)
            return
        if not (path.startswith("/v1/") or path == "/mcp"):
            await self.app(scope, receive, send)
            return
        auth = Headers(scope=scope).get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        plane = self.plane()
        try:
            if not key:
                raise AuthenticationError(
                    "this operation needs an API key: send Authorization: Bearer <key>"
                )
            try:
                tenant, url = plane.route(key)
            except AuthenticationError:
                # A plane admin key on a tenant route: refused as the API refuses it.
                try:
                    principal = await plane.engine.keys.authenticate(key)
                except TenantflowError:
                    raise AuthenticationError("invalid API key") from None
                raise PermissionDeniedError(
                    "this operation acts on one tenant's data: use that tenant's API key,"
                    " not an admin key",
                    key_id=principal.key_id,
                ) from None
        except TenantflowError as exc:
            status = 401 if isinstance(exc, AuthenticationError) else 403
            if isinstance(exc, NotFoundError):
                status = 401
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            response = error_response(status, exc.code, str(exc), headers=headers)
            await response(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        location = url + path + (f"?{query}" if query else "")
        response = error_response(
            307,
            "redirect",
            f"tenant {tenant!r} is served by its cell at {url}",
            headers={"Location": location},
            location=location,
        )
        await response(scope, receive, send)


class QuotaIn(BaseModel):
    rate: str = Field(description="A global rate: '600/minute', '10/second'.")
    burst: int | None = Field(default=None, ge=1)


class MoveBody(BaseModel):
    to: str = Field(pattern="^(cell|shared)$")
    drain_timeout_s: float = Field(default=30.0, gt=0, le=3600)


class BroadcastIn(BaseModel):
    policy: dict[str, Any]
    tenants: list[str] | None = None


def _router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(plane: PlaneDep) -> dict[str, str]:
        await plane.engine.ready(2.0)
        return {"status": "ok"}

    # -- tenants (the ordinary admin API) -----------------------------------------------------

    @router.post("/v1/tenants", status_code=201)
    async def create_tenant(body: TenantCreate, plane: PlaneDep, actor: Admin) -> Any:
        return await plane.provision(
            body.id, tier=body.tier, org_id=body.org_id, fields=body.policy
        )

    @router.get("/v1/tenants")
    async def list_tenants(
        plane: PlaneDep,
        actor: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        rows = sorted(
            (t for t in plane.registry.tenants.values() if t.status == "active" and t.info),
            key=lambda t: t.id,
        )
        if cursor is not None:
            rows = [t for t in rows if t.id > cursor]
        page = rows[:limit]
        return {
            "items": [t.info for t in page],
            "next": page[-1].id if len(rows) > limit else None,
        }

    @router.get("/v1/tenants/{tenant_id}")
    async def get_tenant(tenant_id: str, plane: PlaneDep, actor: Admin) -> Any:
        plane.cell_of(tenant_id)
        return plane.registry.tenants[tenant_id].info

    @router.patch("/v1/tenants/{tenant_id}")
    async def update_tenant(
        tenant_id: str, body: TenantPatch, plane: PlaneDep, actor: Admin
    ) -> Any:
        answer = await plane.change_policy(tenant_id, body.policy)
        if answer.get("pending"):
            # Published, not applied: the cell will get it when it answers again (503, so
            # that a client expecting the tenant's new policy is not told it is in force).
            raise StoreUnavailableError(
                f"policy version {answer['version']} of {tenant_id!r} is published; its cell"
                " is not answering and will apply it when it is back",
                tenant=tenant_id,
                version=answer["version"],
                pending=True,
            )
        return answer["tenant_info"]

    @router.delete("/v1/tenants/{tenant_id}")
    async def delete_tenant(
        tenant_id: str,
        plane: PlaneDep,
        actor: Admin,
        purge_audit: bool = False,
    ) -> dict[str, Any]:
        proof = await plane.deprovision(tenant_id, purge_audit=purge_audit)
        return {"tenant_id": tenant_id, **proof}

    @router.post("/plane/v1/tenants/{tenant_id}/move")
    async def move_tenant(
        tenant_id: str, body: MoveBody, plane: PlaneDep, actor: Admin
    ) -> dict[str, Any]:
        """Move the tenant, live, to a dedicated cell or the shared pool (a durable run of
        the plane's engine); the move's report."""
        return await plane.move(tenant_id, body.to, drain_timeout_s=body.drain_timeout_s)

    @router.post("/v1/tenants/{tenant_id}/keys", status_code=201)
    async def create_key(
        tenant_id: str, plane: PlaneDep, actor: Admin, body: KeyIn | None = None
    ) -> Any:
        cell = plane.cell_of(tenant_id)
        answer = await plane.call_cell(
            cell, "POST", f"/v1/tenants/{tenant_id}/keys", json=(body or KeyIn()).model_dump()
        )
        plane.registry.put_key(answer["key"]["id"], tenant_id)
        return answer

    @router.get("/v1/tenants/{tenant_id}/keys")
    async def list_keys(tenant_id: str, plane: PlaneDep, actor: Admin) -> Any:
        return await plane.call_cell(
            plane.cell_of(tenant_id), "GET", f"/v1/tenants/{tenant_id}/keys"
        )

    @router.post("/v1/tenants/{tenant_id}/keys/{key_id}/rotate")
    async def rotate_key(tenant_id: str, key_id: str, plane: PlaneDep, actor: Admin) -> Any:
        answer = await plane.call_cell(
            plane.cell_of(tenant_id), "POST", f"/v1/tenants/{tenant_id}/keys/{key_id}/rotate"
        )
        plane.registry.put_key(answer["key"]["id"], tenant_id)
        return answer

    @router.delete("/v1/tenants/{tenant_id}/keys/{key_id}")
    async def revoke_key(tenant_id: str, key_id: str, plane: PlaneDep, actor: Admin) -> Any:
        return await plane.call_cell(
            plane.cell_of(tenant_id), "DELETE", f"/v1/tenants/{tenant_id}/keys/{key_id}"
        )

    # -- the plane's own ----------------------------------------------------------------------

    @router.post("/plane/v1/heartbeat")
    async def heartbeat(request: Request, plane: PlaneDep, credentials: Credentials) -> Any:
        if credentials is None:
            raise AuthenticationError("a cell's heartbeat needs its key")
        return plane.heartbeat(credentials.credentials, await request.json())

    @router.get("/plane/v1/cells")
    async def cells(plane: PlaneDep, actor: Admin) -> Any:
        return {
            "items": plane.cells_status(),
            "restarts": plane.supervisor.restarts,
            "hung_kills": plane.supervisor.hung_kills,
        }

    @router.get("/plane/v1/policies")
    async def policies(plane: PlaneDep, actor: Admin) -> Any:
        return {"items": plane.policy_status()}

    @router.post("/plane/v1/policies")
    async def broadcast(body: BroadcastIn, plane: PlaneDep, actor: Admin) -> Any:
        """Change the same policy fields of many tenants (all by default): one new version
        each, pushed to their cells."""
        tenants = body.tenants or sorted(
            t.id for t in plane.registry.tenants.values() if t.status == "active"
        )
        out = []
        for tenant in tenants:
            answer = await plane.change_policy(tenant, body.policy)
            out.append(
                {
                    "tenant": tenant,
                    "version": answer["version"],
                    "pending": bool(answer.get("pending")),
                }
            )
        return {"items": out}

    @router.get("/plane/v1/quotas")
    async def quotas(plane: PlaneDep, actor: Admin) -> Any:
        return {"items": plane.quota_status()}

    @router.put("/plane/v1/quotas/{resource}")
    async def put_quota(resource: str, body: QuotaIn, plane: PlaneDep, actor: Admin) -> Any:
        return plane.set_quota(resource, body.rate, body.burst)

    @router.delete("/plane/v1/quotas/{resource}")
    async def delete_quota(resource: str, plane: PlaneDep, actor: Admin) -> Any:
        return plane.set_quota(resource, None, None)

    @router.get("/plane/v1/route")
    async def route(plane: PlaneDep, credentials: Credentials) -> Any:
        if credentials is None:
            raise AuthenticationError("send the tenant's key")
        tenant, url = plane.route(credentials.credentials)
        return {"tenant": tenant, "url": url}

    return router


def build_plane_app(plane: Plane, *, started: Callable[[Plane], Any] | None = None) -> FastAPI:
    """The plane's ASGI app; its lifespan starts and closes ``plane``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await plane.start()
        if started is not None:
            result = started(plane)
            if hasattr(result, "__await__"):
                await result
        try:
            yield
        finally:
            await plane.close()

    app = FastAPI(title="tenantflow plane", version=__version__, lifespan=lifespan)
    app.state.plane = plane
    install_error_handlers(app)
    app.include_router(_router())
    app.add_middleware(RouteByKey, plane=lambda: plane)
    return app
