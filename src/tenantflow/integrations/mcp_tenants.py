"""MCP servers registered for one tenant, at run time (``tenantflow[mcp]``).

:func:`~tenantflow.integrations.mcp_tools.register_mcp_server` gives every allowed tenant a
server when the engine is set up. This module lets the platform's admin add a server for *one*
tenant while the platform runs — over the API (``POST /v1/admin/tenants/{tenant}/mcp-servers``),
the CLI (``tenantflow mcp-servers add``) or the library::

    servers = TenantMCPServers.of(engine)
    await servers.register("acme", MCPServerSpec("crm", url="https://crm.acme/mcp"),
                           expose=["lookup"], actor="admin:ops")

- **Tenant-scoped**: the server's tools (``crm__lookup``) exist for that tenant only; another
  tenant's call of the same name finds nothing of it (``NotFoundError``), and two tenants may
  each register a ``crm`` of their own. Each tenant's server has its own pool of sessions, so
  no session, process or credential is shared between tenants.
- **Allow-listed twice, failing closed**: ``expose`` picks which of the server's tools the
  tenant gets at all (default: every tool it lists), and the tenant's policy must still name
  each in ``allowed_tools`` before it is listed to a model or called (``allowed_tools: null``
  is not enough). A refused call is audited (``tool.denied``) like any.
- **Durable and audited**: the registration is stored in the tenant's own data (a reserved
  namespace of its store, ``platform:mcp``, which step code, the memory API and the CLI's
  memory commands cannot name) together with an audit row ``mcp_server.registered`` (or
  ``mcp_server.removed``) in the same transaction; it goes with the tenant when the tenant is
  deleted. Every process that executes steps reads the tenant's registrations from the store
  (cached for ``refresh_s``), so a worker sees a server registered through the API.
- The server is listed when it is registered: one that cannot be reached, or that lists none of
  the ``expose``d tools, is refused and nothing is written. Its tools' schemas are stored with
  it; a call goes through the gateway (allow list, rate limit ``tool:<server>__<tool>``, price,
  breaker, recorded) like any tool.

Processes that execute steps call :meth:`TenantMCPServers.of` once (``tenantflow serve`` does
when the API is built; a separate worker does it in its ``--app`` setup function).
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from tenantflow.domain.ids import check_tenant
from tenantflow.domain.memory import DeleteMemory, PutMemory
from tenantflow.domain.policy import usd_to_micros
from tenantflow.domain.tenancy import AppendAudit, AuditEntry
from tenantflow.engine.gateway import Tool, Tools
from tenantflow.errors import ConfigurationError, NotFoundError, TenantflowError
from tenantflow.integrations.mcp_tools import SEPARATOR, MCPPool, MCPServerSpec, list_tools

if TYPE_CHECKING:
    from tenantflow.ports import Clock, Store

__all__ = ["NAMESPACE", "TenantMCPServers", "spec_from_json"]

NAMESPACE = "platform:mcp"
"""Where a tenant's registrations are stored in its memory: a namespace that
:func:`~tenantflow.domain.memory.check_namespace` refuses, so only the platform reaches it."""

_SECRET = "***"
_FIELDS = (
    "name",
    "command",
    "args",
    "env",
    "url",
    "headers",
    "cost_usd",
    "costs_usd",
    "timeout_s",
    "pool_size",
)


class _Engine(Protocol):
    """What the registry needs of an engine."""

    @property
    def tools(self) -> Tools: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def tenants(self) -> Any: ...

    def store_for_tenant(self, tenant: str) -> Store: ...


def spec_from_json(data: Mapping[str, Any]) -> MCPServerSpec:
    """An :class:`MCPServerSpec` from its JSON form (what the API takes and the store holds).

    Raises:
        ConfigurationError: an unknown field or a bad value (``field`` names it).
    """
    if not isinstance(data, Mapping):
        raise ConfigurationError("an MCP server is a JSON object", field="body")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigurationError(f"unknown MCP server field {unknown[0]!r}", field=unknown[0])
    fields: dict[str, Any] = {k: data[k] for k in _FIELDS if data.get(k) is not None}
    _check(fields, "name", str)
    for key in ("command", "url"):
        if key in fields:
            _check(fields, key, str)
    for key in ("env", "headers", "costs_usd"):
        if key in fields and not isinstance(fields[key], Mapping):
            raise ConfigurationError(f"{key} must be an object", field=key)
    for key in ("env", "headers"):
        if key in fields and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields[key].items()
        ):
            raise ConfigurationError(f"{key} must map strings to strings", field=key)
    if "args" in fields and not (
        isinstance(fields["args"], list) and all(isinstance(a, str) for a in fields["args"])
    ):
        raise ConfigurationError("args must be a list of strings", field="args")
    for key in ("cost_usd", "timeout_s"):
        if key in fields:
            value = fields[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{key} must be a number", field=key)
            if not 0 <= value <= 1e6 or value != value:
                raise ConfigurationError(f"{key} must be 0 to 1000000", field=key)
    if "timeout_s" in fields and fields["timeout_s"] <= 0:
        raise ConfigurationError("timeout_s must be positive", field="timeout_s")
    for tool, price in dict(fields.get("costs_usd", {})).items():
        if isinstance(price, bool) or not isinstance(price, int | float) or not 0 <= price <= 1e6:
            raise ConfigurationError(f"costs_usd[{tool!r}] must be 0 to 1000000", field="costs_usd")
    if "pool_size" in fields and (
        isinstance(fields["pool_size"], bool) or not isinstance(fields["pool_size"], int)
    ):
        raise ConfigurationError("pool_size must be an integer", field="pool_size")
    if "args" in fields:
        fields["args"] = tuple(fields["args"])
    return MCPServerSpec(**fields)


def _check(fields: Mapping[str, Any], key: str, kind: type) -> None:
    if not isinstance(fields.get(key), kind) or not fields[key]:
        raise ConfigurationError(f"{key} must be a non-empty {kind.__name__}", field=key)


def _spec_json(spec: MCPServerSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["args"] = list(spec.args)
    data["env"] = dict(spec.env) if spec.env is not None else None
    data["headers"] = dict(spec.headers)
    data["costs_usd"] = dict(spec.costs_usd)
    return data


@dataclass(frozen=True, slots=True)
class _Registered:
    """One tenant's server as this process uses it: its tools and its pool."""

    spec: MCPServerSpec
    tools: Mapping[str, Tool]
    pool: MCPPool
    stored: str  # the stored JSON: a change means a new pool


class TenantMCPServers:
    """The MCP servers registered for single tenants, on one engine (see the module doc).

    Args:
        engine: the engine whose tenants they serve (its gateway finds their tools).
        refresh_s: how long a tenant's registrations read from the store are used before they
            are read again (a registration made by another process shows within this time).
    """

    _registries: ClassVar[weakref.WeakKeyDictionary[Tools, TenantMCPServers]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, engine: _Engine, *, refresh_s: float = 5.0) -> None:
        self._engine = engine
        self.refresh_s = refresh_s
        self._loaded: dict[str, tuple[float, dict[str, _Registered]]] = {}
        self._lock = asyncio.Lock()
        engine.tools.tenant_resolver = self.resolve
        engine.tools.on_close(self.close)
        TenantMCPServers._registries[engine.tools] = self

    @classmethod
    def for_tools(cls, tools: Tools) -> TenantMCPServers | None:
        """The registry hooked into the gateway of ``tools``, if any."""
        return cls._registries.get(tools)

    @classmethod
    def of(cls, engine: _Engine) -> TenantMCPServers:
        """The engine's registry (made, and hooked into its gateway, on the first call)."""
        found = cls._registries.get(engine.tools)
        return found if found is not None else cls(engine)

    # -- admin ----------------------------------------------------------------------------------

    async def register(
        self,
        tenant: str,
        spec: MCPServerSpec,
        *,
        expose: Sequence[str] | None = None,
        actor: str = "admin",
    ) -> list[str]:
        """Register ``spec`` for ``tenant`` alone (replacing its server of that name); returns
        the gateway names of the tools it gets, sorted.

        Raises:
            NotFoundError: no such tenant.
            ConfigurationError: the server cannot be listed, ``expose`` names a tool it does
                not list (or nothing is left), or the name is one of the engine's own
                servers'. Nothing is written then.
        """
        tenant = check_tenant(tenant)
        await self._engine.tenants.get(tenant)  # NotFoundError for an unknown tenant
        prefix = f"{spec.name}{SEPARATOR}"
        if any(t.name.startswith(prefix) for t in self._engine.tools):
            raise ConfigurationError(
                f"MCP server {spec.name!r} is one of the platform's: choose another name",
                field="name",
                value=spec.name,
            )
        listed = await list_tools(spec)
        names = [t.name for t in listed]
        chosen = list(dict.fromkeys(expose)) if expose is not None else names
        missing = sorted(set(chosen) - set(names))
        if missing or not chosen:
            raise ConfigurationError(
                f"MCP server {spec.name!r} lists no tool {missing[0]!r}"
                if missing
                else f"MCP server {spec.name!r}: nothing to expose",
                field="expose",
            )
        stored = json.dumps(
            {
                "spec": _spec_json(spec),
                "tools": [
                    {
                        "name": t.name,
                        "description": t.description or "",
                        "input_schema": dict(t.input_schema),
                    }
                    for t in listed
                    if t.name in chosen
                ],
            },
            sort_keys=True,
        )
        now = self._engine.clock.now()
        gateway_names = sorted(f"{prefix}{n}" for n in chosen)
        audit = AuditEntry(
            actor,
            "mcp_server.registered",
            f"mcp_server:{spec.name}",
            {
                "transport": "stdio" if spec.command is not None else "http",
                "tools": gateway_names,
            },
        )
        store = self._engine.store_for_tenant(tenant)
        results = await store.apply(
            [
                PutMemory(tenant, NAMESPACE, spec.name, stored, now, None),
                AppendAudit(tenant, now, [audit]),
            ]
        )
        for result in results:
            if isinstance(result, TenantflowError):
                raise result
        await self._forget(tenant)
        return gateway_names

    async def remove(self, tenant: str, name: str, *, actor: str = "admin") -> None:
        """Remove ``tenant``'s server ``name`` (its sessions are closed).

        Raises:
            NotFoundError: no such tenant, or it has no server of that name.
        """
        tenant = check_tenant(tenant)
        await self._engine.tenants.get(tenant)
        now = self._engine.clock.now()
        audit = AuditEntry(actor, "mcp_server.removed", f"mcp_server:{name}", {})
        store = self._engine.store_for_tenant(tenant)
        if name not in {e.key for e in await self._entries(tenant)}:
            raise NotFoundError(
                f"tenant {tenant!r} has no MCP server {name!r}", kind="mcp_server", id=name
            )
        results = await store.apply(
            [DeleteMemory(tenant, NAMESPACE, name, now), AppendAudit(tenant, now, [audit])]
        )
        for result in results:
            if isinstance(result, TenantflowError):
                raise result
        await self._forget(tenant)

    async def list_servers(self, tenant: str) -> list[dict[str, Any]]:
        """``tenant``'s servers: name, transport, command/args or URL, prices and tools; the
        values of ``env`` and ``headers`` are never shown (their names are)."""
        tenant = check_tenant(tenant)
        await self._engine.tenants.get(tenant)
        out = []
        for entry in await self._entries(tenant):
            data = entry.value
            spec = dict(data["spec"])
            for secret in ("env", "headers"):
                if spec.get(secret):
                    spec[secret] = dict.fromkeys(spec[secret], _SECRET)
            spec["tools"] = sorted(f"{entry.key}{SEPARATOR}{t['name']}" for t in data["tools"])
            out.append(spec)
        return sorted(out, key=lambda s: str(s["name"]))

    async def tools(self, tenant: str) -> list[Tool]:
        """``tenant``'s own MCP tools (all of them: filter with ``Tool.allowed_for``)."""
        servers = await self._servers(tenant)
        return [tool for server in servers.values() for tool in server.tools.values()]

    # -- the gateway's resolver -----------------------------------------------------------------

    async def resolve(self, tenant: str, name: str) -> Tool | None:
        """The tenant's own tool ``name`` (``server__tool``), or None."""
        if SEPARATOR not in name:
            return None
        server = (await self._servers(tenant)).get(name.split(SEPARATOR, 1)[0])
        return None if server is None else server.tools.get(name)

    async def close(self) -> None:
        """Close every tenant's sessions (the engine does, when it closes)."""
        loaded, self._loaded = self._loaded, {}
        for _, servers in loaded.values():
            for server in servers.values():
                await server.pool.close()

    # -- reading the store ----------------------------------------------------------------------

    async def _entries(self, tenant: str) -> list[Any]:
        store = self._engine.store_for_tenant(tenant)
        return await store.list_memory(tenant, NAMESPACE, now=self._engine.clock.now(), limit=1000)

    async def _forget(self, tenant: str) -> None:
        async with self._lock:
            _, servers = self._loaded.pop(tenant, (0.0, {}))
        for server in servers.values():
            await server.pool.close()

    async def _servers(self, tenant: str) -> dict[str, _Registered]:
        cached = self._loaded.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < self.refresh_s:
            return cached[1]
        async with self._lock:
            cached = self._loaded.get(tenant)
            if cached is not None and time.monotonic() - cached[0] < self.refresh_s:
                return cached[1]
            old = cached[1] if cached is not None else {}
            fresh: dict[str, _Registered] = {}
            for entry in await self._entries(tenant):
                stored = json.dumps(entry.value, sort_keys=True)
                kept = old.get(entry.key)
                if kept is not None and kept.stored == stored:
                    fresh[entry.key] = kept
                    continue
                fresh[entry.key] = _load(entry.key, stored)
            self._loaded[tenant] = (time.monotonic(), fresh)
        for key, server in old.items():  # removed or changed: its sessions go
            if fresh.get(key) is not server:
                await server.pool.close()
        return fresh


def _load(name: str, stored: str) -> _Registered:
    data = json.loads(stored)
    spec = spec_from_json(data["spec"])
    pool = MCPPool(spec)
    tools: dict[str, Tool] = {}
    for listed in data["tools"]:
        gateway_name = f"{name}{SEPARATOR}{listed['name']}"
        tools[gateway_name] = Tool(
            name=gateway_name,
            fn=pool.caller(listed["name"]),
            resource=f"tool:{gateway_name}",
            cost_micros=usd_to_micros(spec.costs_usd.get(listed["name"], spec.cost_usd)),
            description=listed["description"],
            parameters=dict(listed["input_schema"]),
            explicit=True,
        )
    return _Registered(spec=spec, tools=tools, pool=pool, stored=stored)
