"""The loan platform with side effects, for the hybrid placement's end-to-end test.

``loan-approval`` is :mod:`tenantflow.examples.loan_platform`'s workflow (the same steps, with
their retries, timeouts, compensation and review gate) plus two side effects: ``record_pull``
(a CRM write once credit is pulled) and ``notify_applicant`` (a webhook once the decision is
made). Each posts to ``$TF_FX_RECEIVER`` with its idempotency key.

The platform's tools and models are registered as in ``loan_platform.service:setup`` with two
differences a test needs: their latencies run on a clock compressed ``SPEED`` times, and a
model's reply depends on the request's content only (not on the call's idempotency key, which
names the run), so one application gets the same decision under every placement.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import httpx

import tenantflow as tf
from tenantflow.adapters.clock import ScaledClock
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.domain.models import ModelRequest, ModelResponse
from tenantflow.examples.loan_platform.platform import ENDPOINTS, register_tools
from tenantflow.examples.loan_platform.workflow import Application, CreditReport, Decision, loan

SPEED = 200.0
SEED = 0

loan_fx = tf.Workflow("loan-approval", input=Application)
loan_fx._steps = list(loan._steps)  # the platform's steps, unchanged
loan_fx._names = dict(loan._names)


async def _post(ctx: Any, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(verify=False) as client:  # plain HTTP on loopback: no TLS
        reply = await client.post(
            os.environ["TF_FX_RECEIVER"],
            json={"key": ctx.idempotency_key, "tenant": ctx.tenant_id, **body},
            timeout=5,
        )
        reply.raise_for_status()


@loan_fx.step(side_effect=True)
async def record_pull(ctx: Any, application: Application, pull_credit: CreditReport) -> None:
    await _post(ctx, {"what": "crm", "application": application.application_id})


@loan_fx.step(side_effect=True)
async def notify_applicant(ctx: Any, application: Application, decide: Decision) -> None:
    await _post(
        ctx,
        {
            "what": "notify",
            "application": application.application_id,
            "approved": decide.approved,
        },
    )


def setup(engine: tf.Engine) -> None:
    engine.register(loan_fx)
    clock = ScaledClock(SPEED)
    register_tools(engine, clock, SEED)
    for endpoint, latency in ENDPOINTS:
        content = SimulatedProvider(endpoint.name, clock=clock, seed=SEED, out_tokens=(40, 160))

        def respond(request: ModelRequest, of: SimulatedProvider = content) -> ModelResponse:
            return of.reply(dataclasses.replace(request, idempotency_key=None))

        engine.models.add(
            endpoint,
            SimulatedProvider(
                endpoint.name,
                clock=clock,
                seed=SEED,
                latency_ms=latency,
                out_tokens=(40, 160),
                respond=respond,
            ),
        )
