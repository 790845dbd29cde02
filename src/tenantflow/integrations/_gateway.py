"""What the agent-SDK integrations (``openai_agents``, ``pydantic_ai``) share: the message of
their import guard, a gateway model call streamed, an agent's saved state recorded, and an
agent's tool registered as a gateway tool. Nothing here imports an SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from tenantflow.domain.policy import usd_to_micros
from tenantflow.domain.records import RecordCall
from tenantflow.engine.context import attempt_scope
from tenantflow.engine.gateway import Tool, Tools
from tenantflow.errors import ConfigurationError, NotFoundError
from tenantflow.ports import STREAM_DELTAS

if TYPE_CHECKING:
    from tenantflow.domain.models import ModelResponse
    from tenantflow.engine.context import StepContext

__all__ = ["missing_extra", "record_state", "register_tool", "streamed_call"]


def missing_extra(module: str, extra: str, exc: ImportError) -> ImportError:
    """The error an integration module raises when its SDK (the ``extra``) is not installed."""
    return ImportError(
        f"tenantflow.integrations.{module} needs the {extra} extra:"
        f" pip install 'tenantflow[{extra}]' ({exc})"
    )


@asynccontextmanager
async def streamed_call(
    send: Callable[[], Awaitable[ModelResponse]],
) -> AsyncIterator[tuple[asyncio.Queue[str | None], asyncio.Task[ModelResponse]]]:
    """Start a streamed gateway model call (``send``, which calls ``ctx.model(stream=True)``):
    the queue gets its text deltas as the provider receives them, then None once the call
    ended (its response, or its error, is the task's). A call still going when the block is
    left (the consumer stopped) is cancelled, its hold freed."""
    deltas: asyncio.Queue[str | None] = asyncio.Queue()
    token = STREAM_DELTAS.set(deltas.put_nowait)
    try:  # the task copies the context: its provider streams into this queue
        task = asyncio.ensure_future(send())
    finally:
        STREAM_DELTAS.reset(token)
    task.add_done_callback(lambda _: deltas.put_nowait(None))
    try:
        yield deltas, task
    finally:
        if not task.done():  # the consumer stopped: the call is cancelled, its hold freed
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def record_state(ctx: StepContext, index: int, saved: str) -> None:
    """Record an agent run's saved state (paused for reviews) as the step's call ``index``."""
    scope = attempt_scope(ctx)
    await scope.write(
        RecordCall(
            ctx.tenant_id,
            ctx.run_id,
            ctx.step,
            index,
            "agent",
            "state",
            saved,
            scope.now_s(),
        )
    )


def register_tool(
    tools: Tools,
    name: str,
    *,
    make_fn: Callable[[], Any],
    marker: str,
    clash: str,
    description: str,
    parameters: dict[str, Any] | None,
    cost_usd: float,
) -> None:
    """Register an agent's tool as the gateway tool ``name`` (price, rate-limit resource
    ``tool:<name>``) running ``make_fn()``; nothing when the tool registered under that name
    is one of the integration's (its function carries ``marker``).

    Raises:
        ConfigurationError: ``clash``: the name is taken by another tool.
    """
    try:
        existing = tools.get(name)
    except NotFoundError:  # not registered yet
        existing = None
    if existing is not None:
        if not getattr(existing.fn, marker, False):
            raise ConfigurationError(clash, tool=name)
        return
    tools.add(
        Tool(
            name=name,
            fn=make_fn(),
            resource=f"tool:{name}",
            cost_micros=usd_to_micros(cost_usd),
            description=description,
            parameters=parameters,
        )
    )
