"""``/mcp``: tenantflow as an MCP server, when the ``mcp`` extra is installed (see
:mod:`tenantflow.integrations.mcp_server`); and ``/v1/admin/tenants/{tenant}/mcp-servers``: the
admin registers, lists and removes one tenant's own MCP servers (see
:mod:`tenantflow.integrations.mcp_tenants`).

The MCP SDK is imported, and its session manager started, on the first request to ``/mcp``:
an API that no MCP client uses pays nothing for it (start-up time, memory).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Path

from tenantflow.api.auth import Admin, EngineDep, actor_of
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from tenantflow.integrations.mcp_server import MCPEndpoint
    from tenantflow.placement import ControlPlane

__all__ = ["LazyMCPEndpoint", "mcp_endpoint", "servers_router"]


class LazyMCPEndpoint:
    """The ``/mcp`` ASGI endpoint, built on its first request; run :meth:`lifespan` while
    serving (it stops the endpoint if one was built)."""

    def __init__(self, engine: ControlPlane) -> None:
        self._engine = engine
        self._endpoint: MCPEndpoint | None = None
        self._building: asyncio.Lock | None = None

    async def _built(self) -> MCPEndpoint:
        if self._building is None:
            self._building = asyncio.Lock()
        async with self._building:
            if self._endpoint is None:
                # Imported off the event loop: other requests go on meanwhile.
                module = await asyncio.to_thread(
                    importlib.import_module, "tenantflow.integrations.mcp_server"
                )
                endpoint: MCPEndpoint = module.MCPEndpoint(self._engine)
                await endpoint.start()
                self._endpoint = endpoint
            return self._endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request on ``/mcp``."""
        endpoint = self._endpoint or await self._built()
        await endpoint(scope, receive, send)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """For the app's lifetime; stops the MCP session manager at the end."""
        try:
            yield
        finally:
            if self._endpoint is not None:
                await self._endpoint.stop()


def mcp_endpoint(engine: ControlPlane) -> LazyMCPEndpoint | None:
    """The ``/mcp`` endpoint for ``engine``, or None when the mcp extra is not installed.

    Also hooks the tenants' own MCP servers into the engine's gateway (when the engine runs
    steps here), so that their registrations are found from the first step on."""
    if importlib.util.find_spec("mcp") is None:
        return None
    if hasattr(engine, "tools") and hasattr(engine, "store_for_tenant"):
        registry(engine)
    return LazyMCPEndpoint(engine)


def registry(engine: ControlPlane) -> Any:
    """The engine's :class:`~tenantflow.integrations.mcp_tenants.TenantMCPServers`.

    Raises:
        ConfigurationError: this placement's API holds no engine of its own to register on.
    """
    from tenantflow.integrations.mcp_tenants import TenantMCPServers

    if not (hasattr(engine, "tools") and hasattr(engine, "store_for_tenant")):
        raise ConfigurationError(
            "this server cannot register MCP servers: register them on an engine's process"
        )
    return TenantMCPServers.of(engine)  # type: ignore[arg-type]


servers_router = APIRouter(
    prefix="/v1/admin/tenants/{tenant_id}/mcp-servers", tags=["admin"], responses=ERROR_RESPONSES
)
TenantPath = Annotated[str, Path(min_length=1, max_length=64, description="The tenant's id.")]
ServerPath = Annotated[str, Path(min_length=1, max_length=64, description="The server's name.")]


@servers_router.post("", status_code=201, summary="Register an MCP server for one tenant")
async def register_server(
    tenant_id: TenantPath,
    engine: EngineDep,
    admin: Admin,
    body: Annotated[dict[str, Any], Body()],
) -> dict[str, Any]:
    """Register (or replace) the tenant's server: ``command`` + ``args`` (+ ``env``) for
    stdio, or ``url`` (+ ``headers``) for streamable HTTP; ``cost_usd``/``costs_usd``,
    ``timeout_s``, ``pool_size``; ``expose``: which of its tools the tenant gets (default all).
    For example ``{"name": "crm", "url": "https://crm.internal/mcp", "headers":
    {"Authorization": "Bearer …"}, "cost_usd": 0.001, "expose": ["lookup"]}``.
    The server is listed now: one that cannot be reached is refused (422) and nothing is
    written. Its tools exist for this tenant only, and only those its policy's
    ``allowed_tools`` names can be called. Audited as ``mcp_server.registered``."""
    from tenantflow.integrations.mcp_tenants import spec_from_json

    fields = dict(body)
    expose = fields.pop("expose", None)
    if expose is not None and not (
        isinstance(expose, list) and all(isinstance(t, str) for t in expose)
    ):
        raise ConfigurationError("expose must be a list of tool names", field="body.expose")
    try:
        spec = spec_from_json(fields)
    except ConfigurationError as exc:
        exc.fields["field"] = f"body.{exc.fields.get('field', '')}"
        raise
    try:
        tools = await registry(engine).register(
            tenant_id, spec, expose=expose, actor=actor_of(admin)
        )
    except ConfigurationError as exc:
        if exc.fields.get("field") in ("expose", "name"):
            exc.fields["field"] = f"body.{exc.fields['field']}"
        raise
    return {"tenant": tenant_id, "name": spec.name, "tools": tools}


@servers_router.get("", summary="List one tenant's MCP servers")
async def list_servers(tenant_id: TenantPath, engine: EngineDep, admin: Admin) -> dict[str, Any]:
    """The tenant's servers and their tools; the values of ``env`` and ``headers`` are never
    shown."""
    return {"servers": await registry(engine).list_servers(tenant_id)}


@servers_router.delete("/{server}", summary="Remove one tenant's MCP server")
async def remove_server(
    tenant_id: TenantPath, server: ServerPath, engine: EngineDep, admin: Admin
) -> dict[str, Any]:
    """Remove the server (its sessions are closed); audited as ``mcp_server.removed``."""
    await registry(engine).remove(tenant_id, server, actor=actor_of(admin))
    return {"tenant": tenant_id, "removed": server}
