"""``/mcp``: tenantflow as an MCP server, when the ``mcp`` extra is installed (see
:mod:`tenantflow.integrations.mcp_server`).

The MCP SDK is imported, and its session manager started, on the first request to ``/mcp``:
an API that no MCP client uses pays nothing for it (start-up time, memory).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from tenantflow.integrations.mcp_server import MCPEndpoint
    from tenantflow.placement import ControlPlane

__all__ = ["LazyMCPEndpoint", "mcp_endpoint"]


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
    """The ``/mcp`` endpoint for ``engine``, or None when the mcp extra is not installed."""
    if importlib.util.find_spec("mcp") is None:
        return None
    return LazyMCPEndpoint(engine)
