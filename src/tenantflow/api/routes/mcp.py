"""``/mcp``: tenantflow as an MCP server, when the ``mcp`` extra is installed (see
:mod:`tenantflow.integrations.mcp_server`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenantflow.engine.engine import Engine
    from tenantflow.integrations.mcp_server import MCPEndpoint

__all__ = ["mcp_endpoint"]


def mcp_endpoint(engine: Engine) -> MCPEndpoint | None:
    """The ``/mcp`` endpoint for ``engine``, or None when the mcp extra is not installed."""
    try:
        from tenantflow.integrations.mcp_server import MCPEndpoint
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "mcp":
            return None
        raise
    return MCPEndpoint(engine)
