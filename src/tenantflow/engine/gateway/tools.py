"""The tools registered on an engine: typed input and output, a rate-limit resource, a price,
and an optional compensation."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from tenantflow.domain.policy import Policy, usd_to_micros
from tenantflow.errors import ConfigurationError, NotFoundError

__all__ = ["Tool", "Tools"]

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


@dataclass(slots=True)
class Tool:
    """A tool steps may call: typed input and output, a rate-limit resource, a price."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    input_model: type[BaseModel] | None = None
    output_type: Any = Any
    resource: str = ""
    cost_micros: int = 0
    description: str = ""
    takes_key: bool = False
    compensate: Callable[..., Awaitable[Any]] | None = None
    """``async def (result, **arguments)``: undoes a call when its run fails or is cancelled."""
    parameters: dict[str, Any] | None = None
    """A JSON schema of the arguments, when there is no ``input_model`` (e.g. an MCP tool's)."""
    explicit: bool = False
    """Only tenants whose allow list names it may call it (``allowed_tools=None`` is not enough)."""

    def allowed_for(self, policy: Policy) -> bool:
        """Whether ``policy`` lets its tenant see and call this tool (fails closed if explicit)."""
        if not policy.allows_tool(self.name):
            return False
        return not self.explicit or self.name in (policy.allowed_tools or ())

    def schema(self) -> dict[str, Any]:
        """The OpenAI tool-calling schema the model sees."""
        params = (
            self.input_model.model_json_schema()
            if self.input_model is not None
            else self.parameters or {"type": "object", "properties": {}}
        )
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }


class Tools:
    """The tools registered on an engine."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.tenant_resolver: Callable[[str, str], Awaitable[Tool | None]] | None = None
        """Finds a tool of one tenant's own (``(tenant, name) -> Tool | None``), e.g. of an MCP
        server registered for that tenant alone; consulted before the engine's tools."""

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` when the engine closes (e.g. an MCP server's pool of sessions)."""
        self._closers.append(closer)

    async def close(self) -> None:
        """Run the closers registered with :meth:`on_close`, most recent first (they stay
        registered: an engine started again closes them again)."""
        for closer in reversed(self._closers):
            await closer()

    @overload
    def register(self, fn: _F, /) -> _F: ...

    @overload
    def register(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        input: type[BaseModel] | None = None,
        resource: str | None = None,
        cost_usd: float = 0.0,
        description: str | None = None,
        compensate: Callable[..., Awaitable[Any]] | None = None,
    ) -> Callable[[_F], _F]: ...

    def register(
        self,
        fn: _F | None = None,
        /,
        *,
        name: str | None = None,
        input: type[BaseModel] | None = None,
        resource: str | None = None,
        cost_usd: float = 0.0,
        description: str | None = None,
        compensate: Callable[..., Awaitable[Any]] | None = None,
    ) -> _F | Callable[[_F], _F]:
        """Register an async tool (usable as a decorator). Its parameters are its arguments;
        one named ``idempotency_key`` receives the call's stable key.

        Args:
            input: the arguments' pydantic model (validated before the call; also the schema
                the model sees).
            resource: the rate-limit resource (default ``tool:<name>``).
            cost_usd: the price of a call, reserved before and settled after it.
            compensate: ``async def (result, **arguments)`` undoing a completed call: when the
                run fails or is cancelled, the calls it made are compensated, most recent first,
                before the steps' own compensations (each recorded as ``tool.compensated`` or
                ``tool.compensation_failed``).
        """
        if compensate is not None and not inspect.iscoroutinefunction(compensate):
            raise ConfigurationError("a tool's compensation must be an async function")

        def add(func: _F) -> _F:
            registered = func  # keeps _F: the check below narrows ``func``
            if not inspect.iscoroutinefunction(func):
                raise ConfigurationError(f"tool {func.__name__!r} must be an async function")
            tool_name = name or func.__name__
            sig = inspect.signature(func)
            hints = getattr(func, "__annotations__", {})
            self._tools[tool_name] = Tool(
                name=tool_name,
                fn=func,
                input_model=input,
                output_type=hints.get("return", Any)
                if isinstance(hints.get("return"), type)
                else Any,
                resource=resource or f"tool:{tool_name}",
                cost_micros=usd_to_micros(cost_usd),
                description=description or (inspect.getdoc(func) or "").split("\n")[0],
                takes_key="idempotency_key" in sig.parameters,
                compensate=compensate,
            )
            return registered

        return add(fn) if fn is not None else add

    def add(self, tool: Tool) -> None:
        """Register a tool built elsewhere (e.g. one an MCP server provides)."""
        if tool.name in self._tools:
            raise ConfigurationError(f"tool {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    async def resolve(self, tenant: str, name: str) -> Tool:
        """The tool ``name`` as ``tenant`` calls it: the tenant's own (:attr:`tenant_resolver`),
        else the engine's. NotFoundError if neither has it."""
        if self.tenant_resolver is not None:
            own = await self.tenant_resolver(tenant, name)
            if own is not None:
                return own
        return self.get(name)

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            raise NotFoundError(f"no tool named {name!r} is registered", kind="tool", id=name)
        return tool

    def __iter__(self) -> Any:
        return iter(self._tools.values())
