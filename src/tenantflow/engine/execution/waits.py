"""Waits: an attempt that ends without an outcome, holding no slot.

A rate-limited step is parked until its bucket has a cell; a step waiting for a child run is
parked and woken when the child ends (with a slow timer as the safety net); a step waiting for
a signal likewise, when a signal of its name is sent to its run; a queued run is
admitted, and a paused one resumed, by :meth:`Parking.set_running`. The budget ladder's skip and
pause are plain decisions (:func:`~tenantflow.domain.progress.on_skipped`, ``on_paused``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tenantflow.domain.progress import (
    Attempt,
    Decision,
    RunView,
    on_awaiting_child,
    on_awaiting_signal,
    on_rate_limited,
)
from tenantflow.domain.records import STALE, NewEvent, RunStatus, RunUpdate, StepStatus, Transition
from tenantflow.domain.signals import pending
from tenantflow.engine.execution.active import ActiveRun, RunEvents
from tenantflow.engine.execution.outcomes import AwaitingChild, AwaitingSignal, RateLimited
from tenantflow.observability.events import RateLimitWait, RunAdmitted
from tenantflow.ports import Clock, OpSink, Store

__all__ = ["CHILD_FALLBACK_S", "SIGNAL_RECHECK_S", "Parking"]


@dataclass(slots=True, eq=False)
class _ChildWait:
    """A step waiting for a child run: parked yet or not, and whether the child ended."""

    run: ActiveRun
    key: str
    parked: bool = False
    done: bool = False


CHILD_FALLBACK_S = 30.0
"""A step waiting for a child run is woken when the child ends; this is the safety net."""

SIGNAL_RECHECK_S = 30.0
"""A step waiting for a signal is woken when it arrives here; it looks again after at most this
long (a signal sent through another process of a cluster)."""


class Parking:
    """Parks and wakes the steps and runs of one driver (see the module doc)."""

    def __init__(
        self,
        *,
        sink: OpSink,
        clock: Clock,
        hooks: RunEvents,
        commit: Callable[[ActiveRun, Decision], Awaitable[Any]],
        enqueue: Callable[[ActiveRun, Iterable[str]], None],
        enqueue_later: Callable[[ActiveRun, str, float], None],
        requeue: Callable[[ActiveRun, str], None],
        store: Store | None = None,
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.hooks = hooks
        self.commit = commit
        self.enqueue = enqueue
        self.enqueue_later = enqueue_later
        self.requeue = requeue
        self._child_waits: dict[str, _ChildWait] = {}
        self.store = store
        self._signal_waits: dict[str, dict[str, str]] = {}
        """Run id → the steps parked waiting for a signal → the signal's name."""

    async def rate_limited(
        self, run: ActiveRun, view: RunView, att: Attempt, outcome: RateLimited
    ) -> None:
        """Park the step until the refusing bucket has a cell; it counts as no failure."""
        wait, resource = outcome.wait_s, outcome.resource
        run.deferrals[att.key] = run.deferrals.get(att.key, 0) + 1
        result = await self.commit(run, on_rate_limited(view, att, resource, wait))
        if result is not STALE and self.hooks.observers:
            self.hooks.observers.emit(
                RateLimitWait(
                    tenant_id=run.tenant_id,
                    run_id=run.id,
                    at_s=view.now,
                    step=att.key,
                    attempt=att.attempt,
                    resource=resource,
                    wait_s=wait,
                )
            )

    def expect_child(self, child_id: str, run: ActiveRun, key: str) -> None:
        """Step ``key`` of ``run`` is about to wait for child run ``child_id``: registered
        before the attempt ends, so a child ending meanwhile still wakes it."""
        self._child_waits[child_id] = _ChildWait(run, key)

    def child_ended(self, child_id: str) -> None:
        wait = self._child_waits.get(child_id)
        if wait is None:
            return
        if wait.parked:
            del self._child_waits[child_id]
            self.enqueue(wait.run, [wait.key])
        else:
            wait.done = True

    async def await_child(
        self, run: ActiveRun, view: RunView, att: Attempt, outcome: AwaitingChild
    ) -> None:
        """Park the step until its child run ends (see :meth:`expect_child`)."""
        signal = outcome.error
        run.deferrals[att.key] = run.deferrals.get(att.key, 0) + 1
        # In this process the child's end wakes the step (see expect_child).
        decision = on_awaiting_child(view, att, signal.run_id, signal.reason)
        parked = await self.commit(run, decision) is not STALE
        wait = self._child_waits.get(signal.run_id)
        if not parked:
            self._child_waits.pop(signal.run_id, None)
        elif wait is None or wait.done:  # the child ended meanwhile
            self._child_waits.pop(signal.run_id, None)
            self.requeue(run, att.key)
        else:
            wait.parked = True
            self.enqueue_later(run, att.key, CHILD_FALLBACK_S)

    async def await_signal(
        self, run: ActiveRun, view: RunView, att: Attempt, outcome: AwaitingSignal
    ) -> None:
        """Park the step until a signal of its name is sent to its run (see
        :meth:`signal_sent`), its deadline, or :data:`SIGNAL_RECHECK_S` (run lock held)."""
        signal = outcome.error
        run.deferrals[att.key] = run.deferrals.get(att.key, 0) + 1
        decision = on_awaiting_signal(view, att, signal.name, signal.deadline, SIGNAL_RECHECK_S)
        if await self.commit(run, decision) is STALE:
            return
        # A signal sent between the step's look and this park found no parked step: look again
        # (sending holds the run lock too, so it came before this park or sees it).
        if self.store is not None and pending(
            await self.store.events(run.tenant_id, run.id), signal.name
        ):
            self.requeue(run, att.key)
            return
        self._signal_waits.setdefault(run.id, {})[att.key] = signal.name

    def signal_sent(self, run: ActiveRun, name: str) -> list[str]:
        """A signal ``name`` was recorded for ``run`` (run lock held): wake the steps parked
        waiting for it; returns their keys."""
        waits = self._signal_waits.get(run.id)
        if not waits:
            return []
        keys = [key for key, wanted in waits.items() if wanted == name]
        for key in keys:
            del waits[key]
        if not waits:
            del self._signal_waits[run.id]
        self.enqueue(run, keys)
        return keys

    def forget(self, run_id: str) -> None:
        """``run_id`` ended or left this process: drop its signal waits."""
        self._signal_waits.pop(run_id, None)

    async def set_running(
        self, run: ActiveRun, event: str, data: dict[str, Any] | None = None
    ) -> None:
        """Admit a queued run or resume a paused one: it runs its ready steps again."""
        async with run.lock:
            if run.status not in (RunStatus.QUEUED, RunStatus.PAUSED) or run.released:
                return
            await self.sink.write(
                Transition(
                    run.tenant_id,
                    run.id,
                    self.clock.now(),
                    run=RunUpdate(RunStatus.RUNNING),
                    events=[NewEvent(event, None, None, data or {})],
                )
            )
            run.status = RunStatus.RUNNING
            self.enqueue(run, [k for k, s in run.statuses.items() if s == StepStatus.READY])
        if event == "run.admitted" and self.hooks.observers:
            self.hooks.observers.emit(
                RunAdmitted(
                    tenant_id=run.tenant_id,
                    run_id=run.id,
                    at_s=self.clock.now(),
                    workflow=run.spec.name,
                    submitted_at_s=run.submitted_at_s,
                )
            )
