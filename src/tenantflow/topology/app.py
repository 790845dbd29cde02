"""The workload's workflow, tools and model endpoints, for the processes of every placement.

``tenantflow serve --app tenantflow.topology.app:setup`` (and ``tenantflow worker`` with the
same ``--app``) builds them from the workload file named by ``$TF_TOPOLOGY_WORKLOAD`` (profile
``$TF_TOPOLOGY_PROFILE``: ``quick`` or ``full``) and logs every step execution to the executions
log at ``$TF_TOPOLOGY_EXEC_LOG`` (:mod:`tenantflow.topology.execlog`): a process started by the
command line has no other channel.

Each step sleeps its drawn duration times the workload's ``time_scale`` (standing in for the
work, so that CPU measures orchestration), calls its tool and its model through the tenant's
policy (``ctx.tool``, ``ctx.model``: allow lists, limits, budgets, residency), and logs what the
provider answered.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

import tenantflow as tf
from tenantflow.adapters.providers import SimulatedProvider
from tenantflow.topology.execlog import ExecLog
from tenantflow.topology.workload import StepPlan, Workload, load_workload

__all__ = ["Job", "build", "setup"]

ENV_WORKLOAD = "TF_TOPOLOGY_WORKLOAD"
ENV_PROFILE = "TF_TOPOLOGY_PROFILE"
ENV_EXEC_LOG = "TF_TOPOLOGY_EXEC_LOG"
ENV_SIDE_EFFECT = "TF_TOPOLOGY_SIDE_EFFECT"
"""Set (to a step name) by the hybrid placement's runner: the workflow gains a last step of that
name, ``side_effect=True`` (a notification of the decision), which the hybrid placement hands
to its side-effect agents; the other placements never set it."""


class Job(BaseModel):
    """A run's input: its number in the tenant's sequence."""

    i: int


class ToolArgs(BaseModel):
    ref: str


def _step_body(
    plan: StepPlan, workload: Workload, log: ExecLog | None, rng: random.Random
) -> Callable[[tf.StepContext], Awaitable[dict[str, Any]]]:
    sampler = plan.duration.sampler()
    scale = workload.settings.time_scale

    async def body(ctx: tf.StepContext) -> dict[str, Any]:
        if log is not None:
            log.write("S", ctx.tenant_id, ctx.run_id, ctx.step, ctx.attempt)
        try:
            await asyncio.sleep(sampler.draw(rng) * scale)
            if plan.tool is not None:
                await ctx.tool(plan.tool, ref=ctx.run_id)
            model: str | None = None
            tokens_in = tokens_out = cost = 0
            if plan.calls_model:
                reply = await ctx.model(
                    "x" * (plan.prompt_tokens * 4),
                    max_tokens=plan.max_tokens,
                    tier=plan.model_tier,
                )
                model, tokens_in, tokens_out = reply.model, reply.tokens_in, reply.tokens_out
                endpoint = workload.endpoint_of_model(reply.model)
                if endpoint is not None:
                    cost = _cost(endpoint.price_in_per_1k_micros, tokens_in) + _cost(
                        endpoint.price_out_per_1k_micros, tokens_out
                    )
        except BaseException:
            if log is not None:
                log.write("X", ctx.tenant_id, ctx.run_id, ctx.step, ctx.attempt)
            raise
        if log is not None:
            log.write(
                "E",
                ctx.tenant_id,
                ctx.run_id,
                ctx.step,
                ctx.attempt,
                model=model,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                cost_micros=cost + plan.tool_cost_micros,
            )
        return {"step": ctx.step, "tokens": tokens_in + tokens_out}

    return body


def _cost(price_per_1k_micros: int, tokens: int) -> int:
    """What the provider's price list says ``tokens`` cost (micro-dollars, rounded up)."""
    return -(-price_per_1k_micros * tokens // 1000)


def build(
    workload: Workload, log: ExecLog | None, seed: int, side_effect: str | None = None
) -> tf.Workflow:
    """The workload's workflow: its steps one after another (and, when ``side_effect`` names
    one, a last ``side_effect=True`` step after them)."""
    rng = random.Random(seed)
    wf = tf.Workflow(workload.workflow, input=Job)
    previous: str | None = None
    for plan in workload.steps:
        body = _step_body(plan, workload, log, rng)
        wf.step(name=plan.name, after=[previous] if previous else [])(body)
        previous = plan.name
    if side_effect:
        scale = workload.settings.time_scale

        async def notify(ctx: Any) -> None:
            # Telling the applicant the decision: a 1 s call, scaled like every step.
            await asyncio.sleep(1.0 * scale)

        wf.step(name=side_effect, after=[previous] if previous else [], side_effect=True)(notify)
    return wf


def _tool(name: str) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def call(ref: str) -> dict[str, Any]:
        return {"tool": name, "ref": ref}

    call.__name__ = name
    return call


def setup(engine: tf.Engine) -> None:
    """Register the workflow, its tools and its endpoints (see the module docstring)."""
    path = os.environ.get(ENV_WORKLOAD)
    if not path:
        raise tf.ConfigurationError(
            f"tenantflow.topology.app needs ${ENV_WORKLOAD} (the workload file)", field="app"
        )
    workload = load_workload(path, quick=os.environ.get(ENV_PROFILE) == "quick")
    log_path = os.environ.get(ENV_EXEC_LOG)
    log = ExecLog(log_path) if log_path else None
    side_effect = os.environ.get(ENV_SIDE_EFFECT) or None
    engine.register(build(workload, log, seed=os.getpid(), side_effect=side_effect))
    costs = {s.tool: s.tool_cost_micros for s in workload.steps if s.tool is not None}
    for name, micros in costs.items():
        engine.tools.register(name=name, input=ToolArgs, cost_usd=micros / 1_000_000)(_tool(name))
    for i, e in enumerate(workload.endpoints):
        step_tokens = [s.completion_tokens for s in workload.steps if s.calls_model] or [100]
        mean_out = max(1, sum(step_tokens) // len(step_tokens))
        latency_ms = e.latency_s * workload.settings.time_scale * 1000
        engine.models.add(
            tf.Endpoint(
                name=e.name,
                provider=e.name,
                model=e.model,
                region=e.region,
                tier=e.tier,
                price_in_per_1k_micros=e.price_in_per_1k_micros,
                price_out_per_1k_micros=e.price_out_per_1k_micros,
                max_context=e.max_context,
            ),
            SimulatedProvider(
                e.name,
                clock=engine.clock,
                seed=workload.seed + i,
                latency_ms=(max(latency_ms, 0.01), max(latency_ms * 2, 0.02)),
                out_tokens=(max(1, mean_out // 2), max(1, mean_out * 3 // 2)),
            ),
        )
