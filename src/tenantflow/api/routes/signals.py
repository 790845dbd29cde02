"""Signals into the caller's runs: ``POST /v1/runs/{run_id}/signals/{name}``.

The step waiting for the signal (``ctx.wait_for_signal``) resumes with its payload; a signal
sent before any step waits is kept until one does. The tenant is the caller's key's: another
tenant's run answers 404 like a run that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.api.routes.runs import RunPath
from tenantflow.engine.run_signals import SignalReceipt

__all__ = ["SignalIn", "SignalOut", "router"]

router = APIRouter(prefix="/v1/runs", tags=["signals"], responses=ERROR_RESPONSES)

SignalName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        description="The signal's name: letters, digits, '_', '.', ':' or '-'.",
    ),
]


class SignalIn(BaseModel):
    """A signal's payload (plain JSON, at most 64 KiB) and an optional idempotency key."""

    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(default=None, description="Delivered to the waiting step as is.")
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Sending the same key again records nothing new and answers the first.",
    )


class SignalOut(BaseModel):
    """A signal as recorded."""

    run_id: str
    name: str
    signal_id: str
    duplicate: bool = Field(description="True: an earlier send with this key was the signal.")
    woke: list[str] = Field(description="The steps it woke in the process that answered.")

    @classmethod
    def of(cls, receipt: SignalReceipt) -> SignalOut:
        return cls(
            run_id=receipt.run_id,
            name=receipt.name,
            signal_id=receipt.signal_id,
            duplicate=receipt.duplicate,
            woke=list(receipt.woke),
        )


@router.post(
    "/{run_id}/signals/{name}",
    response_model=SignalOut,
    status_code=202,
    summary="Send a signal into a run",
    responses={409: ERROR_RESPONSES[404] | {"description": "The run already ended."}},
)
async def send(
    run_id: RunPath,
    name: SignalName,
    engine: EngineDep,
    tenant: TenantId,
    body: SignalIn | None = None,
) -> SignalOut:
    """Record signal ``name`` for the run and wake its step waiting for it."""
    body = body or SignalIn()
    receipt = await engine.signal(
        tenant, run_id, name, body.payload, idempotency_key=body.idempotency_key
    )
    return SignalOut.of(receipt)
