"""Execute one attempt of a step: bind its arguments, check their contracts, guard it with its
circuit breaker and timeout, run it (or one iteration of an agent loop), check its output.

:meth:`StepExecutor.execute` takes a frozen :class:`AttemptInput` and returns an
:class:`~tenantflow.engine.execution.outcomes.AttemptOutcome`; it claims nothing and writes
nothing but what the step's own calls write through its scope. Cancellation is not an outcome
here: it propagates, and the driver decides whether it stops the process or the attempt.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenantflow.domain.agent import Agent, Turn
from tenantflow.domain.breaker import CircuitBreaker, record_outcome
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.progress import RunView
from tenantflow.domain.run import MISSING, bind
from tenantflow.domain.spec import StepSpec, child_key
from tenantflow.engine.agent import run_iteration
from tenantflow.engine.context import StepContext
from tenantflow.engine.execution.outcomes import (
    AttemptOutcome,
    ReviewRequested,
    Succeeded,
    classify,
)
from tenantflow.engine.execution.scope import AttemptScope
from tenantflow.engine.signals import Signal
from tenantflow.errors import CircuitOpenError, StepTimeoutError, TenantflowError
from tenantflow.ports import Clock

__all__ = ["AttemptInput", "StepExecutor"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptInput:
    """One attempt to execute: the run as the decider sees it, the step and its element index
    (a fan-out element or an agent iteration), and the attempt's context and scope."""

    run: RunView
    step: StepSpec
    key: str
    index: int | None
    ctx: StepContext
    scope: AttemptScope


class StepExecutor:
    """Runs attempts (see the module doc)."""

    def __init__(self, clock: Clock, breaker: Callable[[str], CircuitBreaker]) -> None:
        self.clock = clock
        self.breaker = breaker

    async def execute(self, inp: AttemptInput) -> AttemptOutcome:
        """Run the attempt; an error or a control signal it raises becomes its outcome."""
        try:
            value, output_json = await self._execute(inp)
        except (Exception, Signal) as exc:
            return classify(exc, element=inp.index is not None)
        if inp.step.kind == "review":
            return ReviewRequested(value)
        return Succeeded(value, output_json)

    async def _execute(self, inp: AttemptInput) -> tuple[Any, bytes]:
        run, step, index, ctx = inp.run, inp.step, inp.index, inp.ctx
        item = MISSING
        if index is not None and step.fan_out is not None:
            item = _fan_out_items(run, step)[index]
        impl = step  # what runs: the step, or the standby a revision put in its place
        if index is None and inp.key in run.replaced:
            impl = run.spec.step(run.replaced[inp.key])
        args = bind(impl.params, run.input, run.outputs, item, step.fan_out)
        if args is None:  # cannot happen for a step made ready by advance(); guard anyway
            raise TenantflowError(f"step {step.name!r} is missing an upstream output")
        for p in impl.params:
            if p.source == "step" and p.step is not None and p.name in args:
                upstream = run.spec.step(p.step).output_type
                annotation = p.annotation
                is_item = p.name == step.fan_out and index is not None
                narrower = annotation is not Any and annotation != upstream
                if is_item or (narrower and args[p.name] is not None):
                    args[p.name], _ = contract_for(annotation).check(
                        args[p.name], step=inp.key, direction=f"input {p.name!r}"
                    )
        if step.kind == "agent" and index is not None:
            return await self._iteration(inp, index, args)
        breaker = self.breaker(impl.circuit) if impl.circuit else None
        if breaker is not None and not breaker.allow(self.clock.now()):
            raise CircuitOpenError(
                f"circuit {impl.circuit!r} is open",
                dependency=impl.circuit,
                retry_after_s=breaker.retry_after_s(self.clock.now()),
            )
        try:
            if impl.timeout_s is not None:
                try:
                    async with self.clock.timeout(impl.timeout_s):
                        raw = await impl.fn(ctx, **args)
                except TimeoutError:
                    raise StepTimeoutError(
                        f"step {inp.key!r} timed out after {impl.timeout_s:g}s",
                        step=inp.key,
                        timeout_s=impl.timeout_s,
                    ) from None
            else:
                raw = await impl.fn(ctx, **args)
        except BaseException as exc:
            if breaker is not None:
                record_outcome(breaker, exc, self.clock.now())
            raise
        if breaker is not None:
            breaker.record_success(self.clock.now())
        if step.kind == "review":  # the function describes the request; a human decides
            payload = raw.model_dump(mode="json") if hasattr(raw, "model_dump") else raw
            return payload, json.dumps(payload, default=str).encode()
        return contract_for(step.output_type).check(raw, step=inp.key, direction="output")

    async def _iteration(
        self, inp: AttemptInput, index: int, args: dict[str, Any]
    ) -> tuple[Any, bytes]:
        """Iteration ``index`` of an agent loop; its first one asks the step function for the
        task. A step timeout bounds each iteration."""
        step, ctx = inp.step, inp.ctx
        agent: Agent = step.options["agent"]
        turns = [inp.run.outputs[child_key(step.name, j)] for j in range(index)]

        async def body() -> Turn:
            task = await step.fn(ctx, **args) if index == 0 else None
            return await run_iteration(ctx, inp.scope, agent, turns, index, task)

        if step.timeout_s is None:
            turn = await body()
        else:
            try:
                async with self.clock.timeout(step.timeout_s):
                    turn = await body()
            except TimeoutError:
                raise StepTimeoutError(
                    f"iteration {inp.key!r} timed out after {step.timeout_s:g}s",
                    step=inp.key,
                    timeout_s=step.timeout_s,
                ) from None
        return turn, turn.model_dump_json().encode()


def _fan_out_items(run: RunView, step: StepSpec) -> list[Any]:
    args = bind(step.params, run.input, run.outputs) or {}
    return list(args[step.fan_out or ""])
