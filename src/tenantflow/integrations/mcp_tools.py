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

Calls reuse connections: each registered server has a pool of open sessions in the process
(``pool_size``, default 4; a stdio server is started once per session, not once per call), and
concurrent calls share them (MCP multiplexes requests on a session). The pool is closed with the
engine. A server registered by the platform's admin serves every tenant allowed its tools with
the platform's credentials, so its tools must not keep per-caller state between calls; for a
server that does, ``pool_size=0`` opens a new connection for every call, as before.
"""

from __future__ import annotations

import asyncio
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
    from mcp.types import Tool as MCPTool

    from tenantflow.domain.policy import Policy

__all__ = [
    "SEPARATOR",
    "MCPPool",
    "MCPServerSpec",
    "list_tools",
    "mcp_tool_names",
    "pool_of",
    "register_mcp_server",
    "visible_tools",
]

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
        pool_size: at most this many open sessions with the server in this process, shared by
            every call of its tools; 0: a new connection for every call.
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
    pool_size: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.pool_size, bool) or not 0 <= self.pool_size <= 64:
            raise ConfigurationError(
                f"MCP server {self.name!r}: pool_size must be 0 to 64",
                field="pool_size",
                value=self.pool_size,
            )
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


class _Session:
    """One open session with a server, held open by a task of its own (the MCP client's
    transport must be entered and left by the same task)."""

    def __init__(self, spec: MCPServerSpec) -> None:
        self.spec = spec
        self.client: Client | None = None
        self.error: BaseException | None = None
        self.in_flight = 0
        self.broken = False
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold(), name=f"mcp-session:{spec.name}")

    async def _hold(self) -> None:
        try:
            async with self.spec.connect() as client:
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # could not connect, or the server went away
            self.error = exc
        finally:
            self.broken = True
            self._ready.set()

    async def ready(self) -> Client:
        await self._ready.wait()
        if self.client is None or self.broken:
            raise ConfigurationError(
                f"MCP server {self.spec.name!r} could not be reached: {self.error}",
                field="mcp_server",
            )
        return self.client

    async def close(self) -> None:
        self.broken = True
        self._stop.set()
        await asyncio.gather(self._task, return_exceptions=True)


class MCPPool:
    """Open sessions with one MCP server, shared by every call of its tools in this process.

    A call takes an idle session, or opens a new one while there are fewer than ``pool_size``,
    or else shares the least busy one (MCP multiplexes requests on a session). A session that
    fails (the server exited, the connection broke) is dropped and the call fails like any
    failing tool; the next call opens a new one.
    """

    def __init__(self, spec: MCPServerSpec) -> None:
        self.spec = spec
        self._sessions: list[_Session] = []
        self.opened = 0
        """Sessions opened so far (for tests and benchmarks)."""

    def _take(self) -> _Session:
        self._sessions = [s for s in self._sessions if not s.broken]
        idle = [s for s in self._sessions if s.in_flight == 0]
        if idle:
            return idle[0]
        if len(self._sessions) < self.spec.pool_size:
            session = _Session(self.spec)
            self._sessions.append(session)
            self.opened += 1
            return session
        return min(self._sessions, key=lambda s: s.in_flight)

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        """Call ``tool`` on a pooled session (a new connection if ``pool_size`` is 0)."""
        if self.spec.pool_size == 0:
            self.opened += 1
            async with self.spec.connect() as client:
                return await client.call_tool(tool, arguments)
        session = self._take()
        session.in_flight += 1
        try:
            client = await session.ready()
            return await client.call_tool(tool, arguments)
        except Exception as exc:
            if not _answered(exc):  # the session may be unusable: drop it
                await session.close()
            raise
        finally:
            session.in_flight -= 1

    def caller(self, tool: str) -> Any:
        """The function a gateway :class:`Tool` calls for the server's tool ``tool``."""

        async def call(**arguments: Any) -> Any:
            return tool_result(await self.call(tool, arguments))

        call.__name__ = f"{self.spec.name}{SEPARATOR}{tool}"
        call.pool = self  # type: ignore[attr-defined]
        return call

    async def close(self) -> None:
        """Close every session (stdio servers are stopped)."""
        sessions, self._sessions = self._sessions, []
        await asyncio.gather(*(s.close() for s in sessions))


def _answered(exc: Exception) -> bool:
    """Whether the server answered the request with an error (the session is still good), as
    opposed to a closed connection, a timeout or a transport failure (drop the session)."""
    try:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
    except ImportError:  # pragma: no cover - the extra is part of dev
        return False
    return isinstance(exc, MCPError) and exc.code not in (CONNECTION_CLOSED, REQUEST_TIMEOUT)


async def list_tools(spec: MCPServerSpec) -> list[MCPTool]:
    """Every tool ``spec``'s server lists (following its pages).

    Raises:
        ConfigurationError: the server cannot be reached or listed.
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
    return found


async def register_mcp_server(tools: Tools, spec: MCPServerSpec) -> list[str]:
    """List ``spec``'s tools and register each on ``tools`` as ``<server>__<tool>``; their
    calls share one :class:`MCPPool`, closed when the engine closes.

    Returns:
        The gateway names registered, sorted.

    Raises:
        ConfigurationError: a name is already registered, or the server cannot be reached.
    """
    found = await list_tools(spec)
    taken = sorted(
        t.name for t in tools if t.name.startswith(f"{spec.name}{SEPARATOR}") or t.name == spec.name
    )
    if taken:  # all or nothing: no server's tools are half registered
        raise ConfigurationError(
            f"MCP server {spec.name!r} is already registered (tools {taken[:3]})",
            field="name",
            value=spec.name,
        )
    pool = MCPPool(spec)
    names = []
    for listed_tool in found:
        name = f"{spec.name}{SEPARATOR}{listed_tool.name}"
        tools.add(
            Tool(
                name=name,
                fn=pool.caller(listed_tool.name),
                resource=f"tool:{name}",
                cost_micros=usd_to_micros(spec.costs_usd.get(listed_tool.name, spec.cost_usd)),
                description=listed_tool.description or "",
                parameters=dict(listed_tool.input_schema),
                explicit=True,
            )
        )
        names.append(name)
    tools.on_close(pool.close)
    return sorted(names)


def pool_of(tools: Tools, name: str) -> MCPPool:
    """The pool behind the registered MCP tool ``name`` (for tests and benchmarks)."""
    pool = getattr(tools.get(name).fn, "pool", None)
    if not isinstance(pool, MCPPool):
        raise ConfigurationError(f"tool {name!r} is not an MCP server's tool", tool=name)
    return pool


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
