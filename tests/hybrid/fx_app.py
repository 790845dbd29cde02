"""A test app with a side effect: ``charge`` → (``ship``, and the side effect ``notify``).

``notify`` posts the run's order to ``$TF_FX_RECEIVER`` with its idempotency key; an input
with ``"fail": true`` makes it raise instead (a side effect that never succeeds).
"""

from __future__ import annotations

import os
from typing import Any

import httpx

import tenantflow as tf

orders = tf.Workflow("fx-order")


@orders.step
async def charge(ctx: tf.StepContext, input: dict[str, Any]) -> dict[str, Any]:
    return {"order": input["order"], "amount": 10}


@orders.step(side_effect=True)
async def notify(ctx: Any, charge: dict[str, Any], input: dict[str, Any]) -> None:
    if input.get("fail"):
        raise RuntimeError("the notification service refused")
    async with httpx.AsyncClient(verify=False) as client:  # plain HTTP on loopback: no TLS
        reply = await client.post(
            os.environ["TF_FX_RECEIVER"],
            json={"key": ctx.idempotency_key, "tenant": ctx.tenant_id, "order": charge["order"]},
            timeout=5,
        )
        reply.raise_for_status()


@orders.step
async def ship(ctx: tf.StepContext, charge: dict[str, Any]) -> str:
    return f"shipped {charge['order']}"


def setup(engine: Any) -> None:
    engine.register(orders)
