"""The saga: cancel a run, or compensate a failed one.

A run being cancelled, or whose required step failed for good, stops its other attempts and
child runs, marks its unsettled steps cancelled, undoes its recorded tool effects (most recent
first, each once), then runs its succeeded steps' compensations in reverse order of completion,
and ends CANCELLED, COMPENSATED or FAILED. Every step of it is committed before it is acted on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from tenantflow.domain.progress import describe
from tenantflow.domain.records import (
    TERMINAL_STEP,
    NewEvent,
    RunStatus,
    RunUpdate,
    StepStatus,
    StepUpdate,
    Transition,
)
from tenantflow.domain.run import compensation_order
from tenantflow.domain.spec import StepSpec
from tenantflow.engine.context import StepContext
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.gateway import Tools
from tenantflow.errors import NotFoundError
from tenantflow.ports import Clock, OpSink, Store

__all__ = ["Saga"]


class Saga:
    """Cancels and compensates the runs of one driver."""

    def __init__(
        self,
        *,
        sink: OpSink,
        clock: Clock,
        store: Store,
        tools: Tools,
        rng: random.Random,
        active: dict[str, ActiveRun],
        spawn: Callable[[Any, str], None],
        finish: Callable[[ActiveRun, RunStatus, Any], None],
        context_for: Callable[[ActiveRun, str, int, str], StepContext],
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.store = store
        self.tools = tools
        self.rng = rng
        self.active = active
        self.spawn = spawn
        self.finish = finish
        self.context_for = context_for

    def start_unwind(self, run: ActiveRun) -> None:
        """A required step failed for good: compensate the run (see :meth:`unwind`)."""
        run.status = RunStatus.COMPENSATING
        self.spawn(self.unwind(run, cancel=False), f"unwind:{run.id}")

    async def cancel(self, run: ActiveRun, reason: str) -> None:
        async with run.lock:
            if run.status != RunStatus.RUNNING:
                return
            run.status = RunStatus.CANCELLING
            run.error = reason
            await self.sink.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    run=RunUpdate(RunStatus.CANCELLING, error=reason),
                    events=[NewEvent("run.cancelling", None, None, {"reason": reason})],
                )
            )
        self.spawn(self.unwind(run, cancel=True), f"unwind:{run.id}")

    async def unwind(self, run: ActiveRun, *, cancel: bool) -> None:
        """Stop the run's other steps, then compensate its completed steps in reverse order."""
        if run.released:
            return  # handed to another worker, which unwinds it
        for child in [r for r in self.active.values() if r.parent_id == run.id]:
            await self.cancel(child, f"its parent run {run.id} is {run.status.value}")
        for key in list(run.executing):
            task = run.tasks.get(key)
            if task is not None:
                task.cancel()
        pending = [t for t in run.tasks.values() if t is not asyncio.current_task()]
        await asyncio.gather(*pending, return_exceptions=True)
        async with run.lock:
            now = self.clock.now()
            leftover = [
                k
                for k, s in run.statuses.items()
                if s not in TERMINAL_STEP and s != StepStatus.MAPPED
            ]
            mapped = [k for k, s in run.statuses.items() if s == StepStatus.MAPPED]
            if leftover or mapped:
                await self.sink.write(
                    Transition(
                        run.tenant_id,
                        run.id,
                        now,
                        steps=[StepUpdate(k, StepStatus.CANCELLED) for k in leftover + mapped],
                        events=[NewEvent("step.cancelled", k) for k in leftover + mapped],
                    )
                )
                for k in leftover + mapped:
                    run.statuses[k] = StepStatus.CANCELLED
        order = compensation_order(run.spec, run.statuses, run.versions)
        all_ok, undone = await self._compensate_tools(run)
        for name in order:
            ok = await self._compensate(run, run.spec.step(name))
            all_ok = all_ok and ok
        if cancel:
            final = RunStatus.CANCELLED
        elif (order or undone) and all_ok:
            final = RunStatus.COMPENSATED
        else:
            final = RunStatus.FAILED
        error = run.error
        if not all_ok:
            error = f"{run.error}; a compensation failed"
        await self.sink.write(
            Transition(
                run.tenant_id,
                run.id,
                self.clock.now(),
                run=RunUpdate(final, error=error),
                events=[NewEvent(f"run.{final.value}", None, None, {"error": error})],
                release_prefix=f"{run.id}:",
            )
        )
        run.status = final
        run.error = error
        self.finish(run, final, None)

    async def _compensate_tools(self, run: ActiveRun) -> tuple[bool, int]:
        """Undo the run's recorded tool effects, most recent first, once each (a call made
        again after a crash is undone once). Returns (all undone, how many were undone)."""
        if not any(tool.compensate is not None for tool in self.tools):
            return True, 0
        events = await self.store.events(run.tenant_id, run.id)
        done = {
            (e.step, e.data.get("index"))
            for e in events
            if e.kind in ("tool.compensated", "tool.compensation_failed")
        }
        ok, undone = True, 0
        for event in reversed([e for e in events if e.kind == "tool.effect"]):
            mark = (event.step, event.data.get("index"))
            if mark in done:
                continue
            done.add(mark)
            name = str(event.data["tool"])
            try:
                tool = self.tools.get(name)
            except NotFoundError:
                tool = None
            if tool is None or tool.compensate is None:
                continue
            kind, data = "tool.compensated", {"tool": name, "index": mark[1]}
            try:
                await tool.compensate(event.data.get("result"), **dict(event.data["arguments"]))
            except Exception as exc:
                ok = False
                kind, data = "tool.compensation_failed", {**data, "error": describe(exc)}
            else:
                undone += 1
            await self.sink.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    events=[NewEvent(kind, event.step, event.attempt, data)],
                )
            )
        return ok, undone

    async def _compensate(self, run: ActiveRun, step: StepSpec) -> bool:
        assert step.compensate is not None
        notes: list[NewEvent] = []  # ctx.log of every attempt, committed with the outcome
        for attempt in range(1, step.retry.max_attempts + 1):
            ctx = self.context_for(run, step.name, attempt, f"{run.id}:{step.name}:compensate")
            try:
                await step.compensate(ctx, run.outputs.get(step.name))
            except Exception as exc:
                notes.extend(ctx._pending_notes())
                error = describe(exc)
                if attempt < step.retry.max_attempts:
                    await self.clock.sleep(step.retry.delay_s(attempt, self.rng.random()))
                    continue
                status, kind, data = (
                    StepStatus.COMPENSATION_FAILED,
                    "step.compensation_failed",
                    {"error": error},
                )
            else:
                notes.extend(ctx._pending_notes())
                status, kind, data = StepStatus.COMPENSATED, "step.compensated", {}
            await self.sink.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    steps=[StepUpdate(step.name, status)],
                    events=[*notes, NewEvent(kind, step.name, attempt, data)],
                )
            )
            run.statuses[step.name] = status
            return status == StepStatus.COMPENSATED
        return False
