"""The platform's side effects: what an institution's own systems hear of an application.

Two steps of the loan workflow are side effects (``side_effect=True``): ``record_pull`` writes
the credit pull to the institution's CRM, ``notify_applicant`` tells the applicant the decision.
Nothing downstream reads them, so they never change a decision or a run's result; under the
hybrid placement the run ends without waiting for them and ``tenantflow hybrid agent`` runs
them from the outbox, elsewhere the engine runs them like any optional step.

Where they go: when ``$TENANTFLOW_LOAN_WEBHOOK`` is set (in the process that runs the step: the
engine, a worker or a hybrid agent), each is POSTed there as JSON with the step's idempotency
key (``key``) and the run's tenant, so the receiver can apply it once however often it is
delivered; a reply other than 2xx fails the attempt and the step is retried. Unset (the demo),
the platform has no CRM or mail gateway to reach: the effect is written to the run's log.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import httpx

__all__ = ["WEBHOOK_ENV", "EffectContext", "deliver"]

WEBHOOK_ENV = "TENANTFLOW_LOAN_WEBHOOK"
"""The environment variable naming the URL the side effects are POSTed to."""

TIMEOUT_S = 5.0


class EffectContext(Protocol):
    """What a side effect needs of its context: a
    :class:`~tenantflow.engine.context.StepContext`, or the hybrid agent's
    :class:`~tenantflow.placement.hybrid.agent.SideEffectContext`."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def idempotency_key(self) -> str: ...

    def log(self, message: str, **data: Any) -> None: ...


async def deliver(ctx: EffectContext, what: str, **body: Any) -> None:
    """Deliver one side effect (``what``: ``crm`` or ``notify``) with ``body``.

    Raises:
        httpx.HTTPError: the receiver could not be reached or did not accept it (the attempt
            fails; the step's retries or the outbox's redelivery try again with the same key).
    """
    url = os.environ.get(WEBHOOK_ENV)
    if not url:
        ctx.log(f"{what} delivered", **body)
        return
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            url,
            json={"key": ctx.idempotency_key, "tenant": ctx.tenant_id, "what": what, **body},
            timeout=TIMEOUT_S,
        )
        reply.raise_for_status()
