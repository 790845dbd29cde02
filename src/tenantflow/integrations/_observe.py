"""The ``invoke_agent`` event of an SDK agent's run in a step (see
:class:`~tenantflow.observability.events.AgentRunFinished`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from tenantflow.engine.context import attempt_scope
from tenantflow.observability.events import AgentRunFinished

if TYPE_CHECKING:
    from tenantflow.engine.context import StepContext

__all__ = ["agent_run"]


@asynccontextmanager
async def agent_run(ctx: StepContext, agent: str, framework: str) -> AsyncIterator[None]:
    """Emit :class:`AgentRunFinished` when the block ends (an ``invoke_agent`` span)."""
    scope = attempt_scope(ctx)
    observers = scope.observers
    started_s = scope.now_s()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        if observers:
            observers.emit(
                AgentRunFinished(
                    tenant_id=ctx.tenant_id,
                    run_id=ctx.run_id,
                    at_s=scope.now_s(),
                    step=ctx.step,
                    attempt=ctx.attempt,
                    agent=agent,
                    framework=framework,
                    started_at_s=started_s,
                    error_type=None if error is None else type(error).__name__,
                )
            )
