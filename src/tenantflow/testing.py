"""Testing support, public: a fake clock and the in-memory store.

``FakeClock`` never sleeps: time moves only when a test calls :meth:`FakeClock.advance`, and
every sleeper and timeout due by then fires. The store contract suite that every Store must
pass lives in ``tests/contract`` and runs against these same classes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from types import TracebackType
from typing import Any

from tenantflow.adapters.memory import MemoryStore

__all__ = ["FakeClock", "MemoryStore"]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), callback))

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.call_at(self._now + seconds, wake)
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and fire every timer due by then (in order)."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, callback = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            callback()
        self._now = target

    async def run_for(self, seconds: float, step: float = 0.05) -> None:
        """Advance in small steps, letting the event loop run between them."""
        elapsed = 0.0
        while elapsed < seconds:
            self.advance(step)
            elapsed += step
            for _ in range(5):
                await asyncio.sleep(0)

    @property
    def pending_timers(self) -> int:
        return len(self._timers)

    def timeout(self, seconds: float) -> _FakeTimeout:
        return _FakeTimeout(self, seconds)


class _FakeTimeout:
    """``async with clock.timeout(s)``: cancels the block when fake time passes the deadline."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._fired = False
        self._done = False
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()

        def fire() -> None:
            if not self._done and self._task is not None:
                self._fired = True
                self._task.cancel()

        self._clock.call_at(self._clock.now() + self._seconds, fire)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._done = True
        if self._fired and exc_type is asyncio.CancelledError and self._task is not None:
            self._task.uncancel()
            raise TimeoutError
        return False
