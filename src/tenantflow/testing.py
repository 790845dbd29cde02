"""Testing support, public: a fake clock, the in-memory store and an in-memory message bus.

``FakeClock`` never sleeps: time moves only when a test calls :meth:`FakeClock.advance`, and
every sleeper and timeout due by then fires. The store contract suite that every Store must
pass lives in ``tests/contract`` and runs against these same classes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from tenantflow.adapters.memory import MemoryStore
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.ports import Clock

__all__ = ["FakeClock", "LoopbackBus", "MemoryStore"]

T = TypeVar("T")
S = TypeVar("S", bound=SqliteStore)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._holds: list[Callable[[], bool]] = []

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

    def hold_while(self, busy: Callable[[], bool]) -> None:
        """Let :meth:`settle` wait while ``busy()`` is true: work in flight outside the event
        loop (a store's thread, e.g. ``clock.hold_while(lambda: store.busy)``) then finishes
        before fake time moves on, however slow the machine is."""
        self._holds.append(busy)

    def watch(self, store: S) -> S:
        """Hold fake time while ``store`` has a call in flight (see :meth:`hold_while`);
        returns ``store``, e.g. ``Engine(clock.watch(MemoryStore()), clock=clock)``."""
        self.hold_while(lambda: store.busy)
        return store

    async def settle(self) -> None:
        """Wait (in real time) until no :meth:`hold_while` probe says busy."""
        while any(busy() for busy in self._holds):  # noqa: ASYNC110 (a probe, not an event)
            await asyncio.sleep(0.0005)

    async def run_for(self, seconds: float, step: float = 0.05) -> None:
        """Advance in small steps, letting the event loop run between them."""
        elapsed = 0.0
        while elapsed < seconds:
            await self.settle()
            self.advance(step)
            elapsed += step
            for _ in range(5):
                await asyncio.sleep(0)

    async def drive(self, aw: Awaitable[T], *, step_s: float = 0.05, limit_s: float = 600.0) -> T:
        """Await ``aw`` while moving this clock forward ``step_s`` at a time.

        Before each step the clock settles (see :meth:`hold_while`), so fake time never runs
        ahead of a write in flight on a busy machine (a lease would lapse that never could);
        between steps the event loop runs. Fails with ``AssertionError`` past ``limit_s`` of
        fake time."""
        task = asyncio.ensure_future(aw)
        start = self.now()
        while not task.done():
            if self.now() - start > limit_s:
                task.cancel()
                raise AssertionError(f"not done within {limit_s} s of fake time")
            await self.settle()
            self.advance(step_s)
            await asyncio.sleep(0.001)
        return task.result()

    @property
    def pending_timers(self) -> int:
        return len(self._timers)

    def next_due(self) -> float | None:
        """When the earliest timer fires (None: no timer is set); a cancelled sleeper's timer
        stays until then and fires into nothing."""
        return self._timers[0][0] if self._timers else None

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


@dataclass(slots=True, eq=False)
class _Message:
    data: dict[str, Any]
    deliveries: int = 0
    settled: bool = True  # not out for delivery
    generation: int = 0  # bumped by every delivery, settlement and in_progress


class LoopbackDelivery:
    """One delivery of a :class:`LoopbackBus` message (a :class:`~tenantflow.ports.Delivery`)."""

    __slots__ = ("_bus", "_message", "deliveries")

    def __init__(self, bus: LoopbackBus, message: _Message) -> None:
        self._bus = bus
        self._message = message
        self.deliveries = message.deliveries

    @property
    def data(self) -> dict[str, Any]:
        return self._message.data

    @property
    def current(self) -> bool:
        """Not settled, and not superseded by a redelivery after its ack timeout."""
        return not self._message.settled and self._message.deliveries == self.deliveries

    def ack(self) -> None:
        """Done with: never delivered again."""
        if self.current:
            self._settle()
            self._bus.acked += 1

    def nak(self, delay_s: float = 0.0) -> None:
        """Deliver again, after ``delay_s``."""
        if self.current:
            self._settle()
            self._bus.naked += 1
            self._bus._later(delay_s, self._message)

    def in_progress(self) -> None:
        """Still being worked on: the ack timeout starts again."""
        if self.current:
            self._message.generation += 1
            self._bus._arm(self._message)

    def _settle(self) -> None:
        self._message.settled = True
        self._message.generation += 1


class LoopbackBus:
    """An in-memory work queue shaped like a JetStream consumer (a
    :class:`~tenantflow.ports.DeliveryQueue`): messages are published (now, or after a delay),
    delivered one at a time to whoever awaits :meth:`next`, and must be settled: acked, nak'ed
    (delivered again after a delay), or marked in progress. A delivery neither acked nor nak'ed
    within ``ack_wait_s`` of the clock (from its delivery or its last ``in_progress``) is
    delivered again, as a broker redelivers after a consumer died. Delays and timeouts run on
    the given clock, so a :class:`FakeClock` drives them.
    """

    def __init__(self, clock: Clock, *, ack_wait_s: float = 30.0) -> None:
        self.clock = clock
        self.ack_wait_s = ack_wait_s
        self._ready: deque[_Message] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timers: set[asyncio.Task[None]] = set()
        self.closed = False
        self.published = self.delivered = self.redelivered = self.acked = self.naked = 0

    def publish(self, data: dict[str, Any], *, delay_s: float = 0.0) -> None:
        """Queue a message (a copy of ``data``), deliverable after ``delay_s``."""
        if self.closed:
            return
        self.published += 1
        self._later(delay_s, _Message(dict(data)))

    async def next(self) -> LoopbackDelivery | None:
        """The next delivery, waiting for one; None once the bus is closed."""
        while not self._ready:
            if self.closed:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        message = self._ready.popleft()
        message.deliveries += 1
        message.settled = False
        message.generation += 1
        self.delivered += 1
        if message.deliveries > 1:
            self.redelivered += 1
        self._arm(message)
        return LoopbackDelivery(self, message)

    @property
    def pending(self) -> int:
        """Messages waiting to be delivered now."""
        return len(self._ready)

    async def close(self) -> None:
        """Stop delivering: every waiter gets None, pending timers are dropped."""
        self.closed = True
        self._wake()
        for task in list(self._timers):
            task.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)

    def _later(self, delay_s: float, message: _Message) -> None:
        if delay_s <= 0:
            self._push(message)
        else:
            self._at(self.clock.now() + delay_s, lambda: self._push(message))

    def _arm(self, message: _Message) -> None:
        """Redeliver ``message`` if it is still out, unchanged, after the ack timeout."""
        generation = message.generation

        def deadline() -> None:
            if not message.settled and message.generation == generation:
                message.settled = True
                self._push(message)

        self._at(self.clock.now() + self.ack_wait_s, deadline)

    def _at(self, due: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the clock reaches ``due`` (fixed now, not when the timer's
        task first runs)."""

        async def wait() -> None:
            await self.clock.sleep(max(0.0, due - self.clock.now()))
            callback()

        task = asyncio.get_running_loop().create_task(wait())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def _push(self, message: _Message) -> None:
        if not self.closed:
            self._ready.append(message)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not self.closed:
                    break
