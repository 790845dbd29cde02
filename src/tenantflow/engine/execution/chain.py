"""Chained claims: a step readied by a completion claims its slot in the completion's commit.

:meth:`Chaining._queue_next` queues the steps a success readies before that success commits;
a step granted a slot at once writes its claim right behind the completion, so that both land
in one transaction (a batch applies its ops in order) and the step costs one commit, not two.
Its code waits for a gate that the deciding attempt resolves once its decision is written and
applied; when the completion was refused, a claim that found the step ready all the same is
given back (:meth:`Chaining._give_back`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from tenantflow.domain.progress import Decision, Enqueue
from tenantflow.domain.records import FinishAttempt, ParkAttempt, RunStatus, StepStatus, Transition
from tenantflow.domain.spec import parse_key
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.writer import Writer
from tenantflow.ports import Clock, WorkQueue

__all__ = ["Chaining"]


class Chaining:
    """The part of :class:`~tenantflow.engine.execution.driver.RunDriver` that chains claims."""

    clock: Clock
    writer: Writer
    dispatcher: WorkQueue
    closing: bool
    _attempt: Callable[..., Coroutine[Any, Any, None]]

    def _queue_next(
        self,
        run: ActiveRun,
        decision: Decision,
        urgent: bool,
        gates: dict[str, asyncio.Future[bool]],
    ) -> None:
        """Queue the steps a completion readies before it commits, each behind a gate (added
        to ``gates`` as it is queued, so that the caller resolves every one it made).

        A step granted a slot at once claims it in the same transaction as the completion (its
        claim is queued on the writer after it, and a batch applies its ops in order), instead of
        in a transaction of its own after it: one commit a step, not two. It competes for the
        finishing attempt's slot by the scheduler's rules, as it would after the commit. Its
        code runs only after the gate says the completion committed and its effects (the
        step's output in the mirror) are applied; the completion's own ``Enqueue`` of the same
        key is then a duplicate the queue ignores. The claim goes in the completion's writer
        lane (``urgent``), so that it cannot commit before it. A step already queued is left
        as it is.
        """
        if (
            len(decision.ops) != 1
            or not isinstance(decision.ops[0], FinishAttempt)
            or run.status != RunStatus.RUNNING
            or self.closing
            or run.released
        ):
            return
        loop = asyncio.get_running_loop()
        lane: Any = run.lane
        for effect in decision.effects:
            if not isinstance(effect, Enqueue):
                continue
            for key in effect.keys:
                if key in run.tasks or key in gates:
                    continue
                gate: asyncio.Future[bool] = loop.create_future()
                gates[key] = gate
                run.chained.add(key)
                if not self.dispatcher.push(
                    run.tenant_id,
                    (run.id, key),
                    lane,
                    functools.partial(self._attempt, run, key, after=gate, urgent=urgent),
                    in_flight=True,
                    hint_name=f"{run.spec.name}/{parse_key(key)[0]}",
                ):
                    del gates[key]  # queued already, by other means: not ours to withdraw
                    run.chained.discard(key)

    def _settle_chained(
        self, run: ActiveRun, gates: dict[str, asyncio.Future[bool]], committed: bool
    ) -> None:
        """The completion is decided: open the gates. If it did not commit, the steps still
        waiting for a slot are withdrawn (the store holds whatever is true now; a reload of
        the run queues its ready steps again, and must not find these in the way)."""
        for key, gate in gates.items():
            run.chained.discard(key)
            if not committed:
                self.dispatcher.remove((run.id, key))
            if not gate.done():  # a cancelled waiter cancels its gate
                gate.set_result(committed)

    async def _give_back(self, run: ActiveRun, key: str, fence: int) -> None:
        """Park a claimed step back to ready, unrun (its readying completion was refused)."""
        now = self.clock.now()
        reason = "claimed with a completion that was refused; given back"
        then = Transition(run.tenant_id, run.id, now)
        await self.writer.write(
            ParkAttempt(run.tenant_id, run.id, key, fence, now, StepStatus.READY, now, reason, then)
        )
