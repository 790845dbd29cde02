"""An MCP server's tools as gateway tools (``tenantflow[mcp]``).

The platform's admin registers MCP servers when the engine is set up (an ``--app`` function of
``tenantflow serve`` or ``tenantflow worker``)::

    from tenantflow.integrations.mcp_tools import MCPServerSpec, register_mcp_server

    async def setup(engine):
        await register_mcp_server(
            engine.tools, MCPServerSpec("files", command="python", args=["files_server.py"])
        )

Each tool the server lists becomes the gateway tool ``files__<tool>``: called with ``ctx.tool``
(or offered to an agent) it passes the same gates as any tool — the tenant's allow list, its rate
limit (``tool:files__<tool>``), the price, the circuit breaker — and its result is recorded, so a
re-executed attempt replays it. MCP tools fail closed: a tenant sees and calls one only if its
policy's ``allowed_tools`` names it (``allowed_tools: null``, which allows every Python tool, is
not enough); a refused call is audited (``tool.denied``).

Each call opens its own connection (a stdio server is started for it and stopped after it), so
no session, process or credential is shared between tenants' calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenantflow.domain.policy import usd_to_micros
from tenantflow.engine.gateway import Tool, Tools
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult

    from tenantflow.domain.policy import Policy

__all__ = ["SEPARATOR", "MCPServerSpec", "mcp_tool_names", "register_mcp_server", "visible_tools"]

SEPARATOR = "__"
"""Between a server's name and its tool's in a gateway tool name: ``files__read``."""


@dataclass(frozen=True, slots=True)
class MCPServerSpec:
    """How to reach one MCP server: a command (stdio) or a URL (streamable HTTP).

    Attributes:
        name: the prefix of its tools' names (letters, digits, ``-``; no ``__``).
        command: the program to start, speaking MCP on stdin/stdout.
        args: its arguments.
        env: its environment (the server sees only this, plus what the MCP SDK passes on).
        url: the streamable HTTP endpoint (``http://host:port/mcp``) instead of a command.
        headers: HTTP headers for every request (e.g. ``Authorization``).
        cost_usd: the price of one call of any of its tools, reserved and settled per call.
        costs_usd: per-tool prices (the tool's name on the server), over ``cost_usd``.
        timeout_s: how long one call may wait for the server's answer.
    """

    name: str
    command: str | None = None
    args: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    cost_usd: float = 0.0
    costs_usd: Mapping[str, float] = field(default_factory=dict)
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.name or SEPARATOR in self.name or not self.name.replace("-", "").isalnum():
            raise ConfigurationError(
                f"MCP server name {self.name!r}: use letters, digits and '-' only",
                field="name",
                value=self.name,
            )
        if (self.command is None) == (self.url is None):
            raise ConfigurationError(
                f"MCP server {self.name!r}: give exactly one of command (stdio) or url (HTTP)",
                field="command",
            )

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Client]:
        """A new MCP session with this server, closed (with its HTTP client) on leaving."""
        try:
            from mcp import Client, StdioServerParameters
        except ImportError as exc:  # pragma: no cover - the extra is part of dev
            raise ConfigurationError(
                f"MCP tools need the mcp extra: pip install 'tenantflow[mcp]' ({exc})"
            ) from None
        if self.command is not None:
            params = StdioServerParameters(
                command=self.command,
                args=list(self.args),
                env=dict(self.env) if self.env is not None else None,
            )
            async with Client(params, read_timeout_seconds=self.timeout_s, cache=None) as client:
                yield client
            return
        assert self.url is not None
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        async with httpx2.AsyncClient(headers=dict(self.headers), timeout=self.timeout_s) as http:
            transport = streamable_http_client(self.url, http_client=http)
            async with Client(transport, read_timeout_seconds=self.timeout_s, cache=None) as client:
                yield client


async def register_mcp_server(tools: Tools, spec: MCPServerSpec) -> list[str]:
    """List ``spec``'s tools and register each on ``tools`` as ``<server>__<tool>``.

    Returns:
        The gateway names registered, sorted.

    Raises:
        ConfigurationError: a name is already registered, or the server cannot be reached.
    """
    try:
        async with spec.connect() as client:
            listed = await client.list_tools()
            found = list(listed.tools)
            while listed.next_cursor is not None:
                listed = await client.list_tools(cursor=listed.next_cursor)
                found.extend(listed.tools)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"MCP server {spec.name!r} could not be listed: {exc}", field="mcp_server"
        ) from exc
    names = []
    for listed_tool in found:
        name = f"{spec.name}{SEPARATOR}{listed_tool.name}"
        tools.add(
            Tool(
                name=name,
                fn=_caller(spec, listed_tool.name),
                resource=f"tool:{name}",
                cost_micros=usd_to_micros(spec.costs_usd.get(listed_tool.name, spec.cost_usd)),
                description=listed_tool.description or "",
                parameters=dict(listed_tool.input_schema),
                explicit=True,
            )
        )
        names.append(name)
    return sorted(names)


def _caller(spec: MCPServerSpec, tool: str) -> Any:
    async def call(**arguments: Any) -> Any:
        async with spec.connect() as client:
            result = await client.call_tool(tool, arguments)
        return tool_result(result)

    call.__name__ = f"{spec.name}{SEPARATOR}{tool}"
    return call


def tool_result(result: CallToolResult) -> Any:
    """What a call answers: its structured content if any (a plain value the server wrapped as
    ``{"result": value}`` unwrapped), else its text; an error the server reports is a result too
    (``error: …``), for the model to read, as MCP intends."""
    text = "\n".join(getattr(block, "text", "") for block in result.content).strip()
    if result.is_error:
        return f"error: {text or 'the tool failed'}"
    value = result.structured_content
    if value is None:
        return text
    if isinstance(value, dict) and list(value) == ["result"]:
        value = value["result"]
    return json.loads(json.dumps(value, default=str))


def mcp_tool_names(tools: Tools, server: str | None = None) -> list[str]:
    """The registered MCP tools' gateway names (of one server, or all), sorted."""
    prefix = f"{server}{SEPARATOR}" if server is not None else ""
    return sorted(
        t.name for t in tools if t.explicit and SEPARATOR in t.name and t.name.startswith(prefix)
    )


def visible_tools(tools: Tools, policy: Policy, names: Sequence[str] | None = None) -> list[str]:
    """The tools (of ``names``, or all registered) the tenant of ``policy`` may see and call:
    what an agent is offered, so a tool the tenant may not call is never even listed."""
    wanted = [t.name for t in tools] if names is None else list(names)
    return [n for n in wanted if tools.get(n).allowed_for(policy)]
