"""Waiters on runs another process drives (tenantflow.engine.ends), against a coordinator
whose channel of ends is a queue the test feeds and can break."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tenantflow.domain.cluster import ENDED, Notice
from tenantflow.engine import ends as ends_module
from tenantflow.engine.ends import RunEnds
from tenantflow.errors import StoreUnavailableError


class Channel:
    """The coordinator's side of ``listen_ends``: connections counted, notices queued, and a
    connection that can be lost."""

    def __init__(self) -> None:
        self.notices: asyncio.Queue[Notice | None] = asyncio.Queue()
        self.connections = 0

    async def listen_ends(self, ready: Callable[[], None]) -> AsyncIterator[Notice]:
        self.connections += 1
        ready()
        while (notice := await self.notices.get()) is not None:
            yield notice
        raise StoreUnavailableError("lost the wake-up connection")

    def lose(self) -> None:
        self.notices.put_nowait(None)


class Clock:
    """Timeouts that record their length and expire only when the test says."""

    def __init__(self) -> None:
        self.periods: list[float] = []
        self.expire = asyncio.Event()

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    @asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        self.periods.append(seconds)
        inner = asyncio.current_task()
        assert inner is not None

        async def expire() -> None:
            await self.expire.wait()
            inner.cancel()

        timer = asyncio.create_task(expire())
        try:
            yield
        except asyncio.CancelledError:
            if not self.expire.is_set():
                raise
            raise TimeoutError from None
        finally:
            timer.cancel()


async def woken_now(ends: RunEnds, woken: asyncio.Event) -> None:
    """The wait returns because the waiter was woken (the test's timers never expire)."""
    await asyncio.wait_for(ends.wait(woken), 5)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_an_announced_end_wakes_the_waiters_of_that_run_only() -> None:
    channel, clock = Channel(), Clock()
    ends = RunEnds(channel, clock, poll_s=0.1)  # type: ignore[arg-type]
    a1, a2, b = ends.expect("run-a"), ends.expect("run-a"), ends.expect("run-b")
    await settle()
    assert ends.listening and channel.connections == 1
    for woken in (a1, a2, b):  # connecting wakes everyone: ends before it were missed
        await woken_now(ends, woken)
    assert not (a1.is_set() or a2.is_set() or b.is_set())
    channel.notices.put_nowait(Notice(ENDED, "t", "run-a"))
    channel.notices.put_nowait(Notice("run", "t", "run-b"))  # another kind: not an end
    await settle()
    assert a1.is_set() and a2.is_set() and not b.is_set()
    ends.forget("run-a", a1)
    assert ends.waiting("run-a")
    ends.forget("run-a", a2)
    assert not ends.waiting("run-a") and ends.waiting("run-b")
    await ends.close()
    assert not ends.listening


async def test_an_end_announced_between_the_read_and_the_wait_is_not_missed() -> None:
    channel, clock = Channel(), Clock()
    ends = RunEnds(channel, clock, poll_s=0.1)  # type: ignore[arg-type]
    woken = ends.expect("run-a")  # registered before the run is read
    await settle()
    await woken_now(ends, woken)  # the wake-up of connecting
    channel.notices.put_nowait(Notice(ENDED, "t", "run-a"))  # while the waiter reads
    await settle()
    await woken_now(ends, woken)
    await ends.close()


async def test_waiters_read_on_a_timer_only_as_a_fallback_and_often_while_not_listening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ends_module, "FALLBACK_S", 7.0)
    channel, clock = Channel(), Clock()
    ends = RunEnds(channel, clock, poll_s=0.1)  # type: ignore[arg-type]
    woken = ends.expect("run-a")
    assert not ends.listening  # the listener has not connected yet
    clock.expire.set()
    await ends.wait(woken)  # expired: the waiter reads the run again
    await settle()
    assert ends.listening
    await ends.wait(woken)  # (connecting woke it)
    await ends.wait(woken)  # expired again, now after the fallback period
    assert clock.periods == [0.1, 7.0, 7.0]
    await ends.close()


async def test_a_lost_listener_reconnects_and_wakes_every_waiter() -> None:
    channel, clock = Channel(), Clock()
    ends = RunEnds(channel, clock, poll_s=0.1)  # type: ignore[arg-type]
    woken = ends.expect("run-a")
    await settle()
    await woken_now(ends, woken)
    assert not woken.is_set()
    channel.lose()
    await settle()
    assert channel.connections == 2 and ends.listening
    assert woken.is_set()  # ends announced while it was away would be missed: read again
    await ends.close()
