"""Waiting for a run that another process of a cluster drives (:class:`RunEnds`).

A process that drives a run is told of its end in memory. A front (or a worker waiting on a
run of a tenant it does not drive) is not: it used to read the run every ``POLL_S`` until it
ended, a store read per waiter every tenth of a second, and a run awaited through a front came
back up to ``POLL_S`` after its end (about 100 ms, one read late, for a short run).

Instead, the worker that ends a run announces it on the coordinator's channel of ends (batched
with other announcements, after the end has committed: see
:meth:`~tenantflow.engine.hooks.RuntimeHooks.on_finish`; a mesh's agent does the same for the
runs it ends, see :mod:`tenantflow.engine.execution.broker`), and a waiter reads the run when
woken.
An announcement is a hint, never the only way to learn of an end: one can be lost (its batch
failed, or the worker died between its commit and its announcement), so a waiter still reads
the run every :data:`FALLBACK_S` while the listener is connected, every ``POLL_S`` while it is
not, and every waiter is woken when the listener (re)connects, since ends announced meanwhile
were missed. A waiter registers (:meth:`RunEnds.expect`) before it reads the run, so an end
announced between its read and its wait wakes it too.

The listening connection is opened on the first wait, not before: an engine that never waits on
another process's runs (a worker awaiting only its own) never holds one. It stays open until
the engine closes; a wait after that reads its run every ``POLL_S`` until the engine starts
again.
"""

from __future__ import annotations

import asyncio
import logging

from tenantflow.domain.cluster import ENDED
from tenantflow.errors import StoreUnavailableError
from tenantflow.ports import Clock, Coordinator

__all__ = ["FALLBACK_S", "RunEnds"]

log = logging.getLogger("tenantflow.cluster")

FALLBACK_S = 2.0
"""How often a waiter reads its run while the listener is connected (engine time)."""


class RunEnds:
    """Wake-ups of waiters on runs that end in other processes (see the module doc).

    Args:
        coordinator: the cluster's coordination (its channel of ends).
        clock: the engine's clock.
        poll_s: how often a waiter reads its run while nothing listens.
    """

    def __init__(self, coordinator: Coordinator, clock: Clock, *, poll_s: float) -> None:
        self._coordinator = coordinator
        self._clock = clock
        self._poll_s = poll_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def open(self) -> None:
        """Listen again from the next wait on (after :meth:`close`: an engine started anew)."""
        self._closed = False

    @property
    def listening(self) -> bool:
        """Whether announcements of ends are being received now."""
        return self._listening

    def waiting(self, run_id: str) -> bool:
        """Whether a waiter is registered on ``run_id``."""
        return run_id in self._waiters

    def expect(self, run_id: str) -> asyncio.Event:
        """Register a waiter on ``run_id`` (before reading the run): the event is set when an
        end of the run is announced, or when the listener (re)connects."""
        woken = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(woken)
        return woken

    def forget(self, run_id: str, woken: asyncio.Event) -> None:
        """The waiter is done (its run ended, or it gave up)."""
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(woken)
            if not waiters:
                del self._waiters[run_id]

    async def wait(self, woken: asyncio.Event) -> None:
        """Until ``woken`` is set, or the time to read the run again has come (listening from
        now on: connecting wakes every waiter, so nothing announced before is missed)."""
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._listen(), name="tenantflow-run-ends")
        period = FALLBACK_S if self._listening else self._poll_s
        if not woken.is_set():
            # Two tasks raced rather than a timeout inside the caller's: a clock's timeouts
            # need not nest (the caller may be inside one of its own).
            ended = asyncio.ensure_future(woken.wait())
            timer = asyncio.ensure_future(self._clock.sleep(period))
            try:
                await asyncio.wait((ended, timer), return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                timer.cancel()
        woken.clear()

    def ended(self, run_id: str) -> None:
        """An end of ``run_id`` was announced: wake its waiters."""
        for woken in self._waiters.get(run_id, ()):
            woken.set()

    def _connected(self) -> None:
        # Ends announced before the listener (re)connected were missed: every waiter reads.
        self._listening = True
        for waiters in self._waiters.values():
            for woken in waiters:
                woken.set()

    async def _listen(self) -> None:
        while True:
            try:
                async for notice in self._coordinator.listen_ends(self._connected):
                    if notice.kind == ENDED:
                        self.ended(notice.target)
            except StoreUnavailableError as exc:
                log.warning("wake-ups of run ends interrupted (%s); waiters read runs", exc)
            except Exception:  # a defect: logged, and listened again, never silently gone
                log.exception("wake-ups of run ends failed; waiters read runs")
            finally:
                self._listening = False
            await self._clock.sleep(FALLBACK_S)

    async def close(self) -> None:
        """Stop listening: until :meth:`open`, waits read their runs every ``poll_s``."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._listening = False
