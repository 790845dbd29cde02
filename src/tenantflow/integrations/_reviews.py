"""An SDK agent's approvals and deferred calls as review tasks in the tenant's reviewer pool.

A call that needs a human is keyed by its tool-call id (from the recorded model response, so the
same on every re-execution). The first time it is reached the step raises
:class:`~tenantflow.engine.signals.Escalate`: the engine opens a review task and parks the step
holding no slot. An approval records the reviewer's answer under the call's key and runs the
step again, which now finds the record and goes on. A rejection fails the step (the decider's
rule for every rejected escalation): the call is never made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tenantflow.engine.context import attempt_scope
from tenantflow.engine.gateway import response_from_json
from tenantflow.engine.signals import Escalate

if TYPE_CHECKING:
    from tenantflow.engine.context import StepContext

__all__ = ["answered", "approved"]

PROMPT_LIMIT = 4000


async def approved(ctx: StepContext, framework: str, call_id: str, name: str, args: str) -> None:
    """Return once a reviewer approved calling ``name`` with ``args``; until then, open a review
    (the step waits for it)."""
    async with ctx.call_identity(f"{framework}-approval:{call_id}:{name}:{args}") as index:
        if await attempt_scope(ctx).recorded_call(index) is not None:
            return  # approved: a rejection fails the step before it runs again
        raise Escalate(
            f"tool {name!r} needs approval",
            index,
            f"The agent asks to call {name} with {args[:PROMPT_LIMIT]}. Approve to let it run;"
            " reject to fail the step without calling it.",
        )


async def answered(ctx: StepContext, framework: str, call_id: str, name: str, args: str) -> str:
    """The reviewer's answer to a deferred call (the comment of the approval; ``approved`` if
    none); until there is one, open a review (the step waits for it)."""
    async with ctx.call_identity(f"{framework}-deferred:{call_id}:{name}:{args}") as index:
        recorded = await attempt_scope(ctx).recorded_call(index)
        if recorded is not None:
            return response_from_json(recorded).text
        raise Escalate(
            f"tool {name!r} is answered by a person",
            index,
            f"The agent called {name} with {args[:PROMPT_LIMIT]}, which a person answers."
            " Approve with the answer as the comment; reject to fail the step.",
        )
