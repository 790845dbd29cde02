"""Waiters on runs another process drives (tenantflow.engine.ends and RunControl's waits),
against a coordinator whose channel of ends is a queue the test feeds and can break, and a
clock whose timers expire only when the test says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from tenantflow.domain.cluster import ENDED, Notice
from tenantflow.domain.records import RunStatus
from tenantflow.engine import ends as ends_module
from tenantflow.engine.ends import RunEnds
from tenantflow.engine.runs import RunControl
from tenantflow.errors import StoreUnavailableError


class Channel:
    """The coordinator's side of ``listen_ends``: connections counted, notices queued, and a
    connection that can be lost (or fail as no connection should)."""

    def __init__(self) -> None:
        self.notices: asyncio.Queue[Notice | BaseException] = asyncio.Queue()
        self.connections = 0

    async def listen_ends(self, ready: Callable[[], None]) -> AsyncIterator[Notice]:
        self.connections += 1
        ready()
        while True:
            notice = await self.notices.get()
            if isinstance(notice, BaseException):
                raise notice
            yield notice

    def lose(self, error: BaseException | None = None) -> None:
        self.notices.put_nowait(error or StoreUnavailableError("lost the wake-up connection"))


class Clock:
    """Sleeps and timeouts that record their length and end only once ``expire`` is set."""

    def __init__(self) -> None:
        self.periods: list[float] = []
        self.expire = asyncio.Event()

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        self.periods.append(seconds)
        await self.expire.wait()

    @asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        async with asyncio.timeout(0 if self.expire.is_set() else None):
            yield


def run_ends(channel: Channel, clock: Clock) -> RunEnds:
    return RunEnds(channel, clock, poll_s=0.1)  # type: ignore[arg-type]


async def woken_now(ends: RunEnds, woken: asyncio.Event) -> None:
    """The wait returns because the waiter was woken (the test's timers never expire)."""
    await asyncio.wait_for(ends.wait(woken), 5)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_an_announced_end_wakes_the_waiters_of_that_run_only() -> None:
    channel, clock = Channel(), Clock()
    ends = run_ends(channel, clock)
    a1, a2, b = ends.expect("run-a"), ends.expect("run-a"), ends.expect("run-b")
    await settle()
    assert channel.connections == 0  # registering is not listening: the first wait is
    await woken_now(ends, a1)  # connecting wakes every waiter: ends before it were missed
    assert ends.listening and channel.connections == 1
    for woken in (a2, b):
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


async def test_waiters_read_on_a_timer_only_as_a_fallback_and_often_while_not_listening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ends_module, "FALLBACK_S", 7.0)
    channel, clock = Channel(), Clock()
    ends = run_ends(channel, clock)
    woken = ends.expect("run-a")
    clock.expire.set()
    await ends.wait(woken)  # not listening yet: read again after poll_s
    await settle()
    assert ends.listening
    await ends.wait(woken)  # (connecting woke it, or the timer expired)
    await ends.wait(woken)  # expired: after the fallback period now
    assert clock.periods[0] == 0.1 and clock.periods[-1] == 7.0
    await ends.close()


async def test_a_lost_listener_reconnects_and_wakes_every_waiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel, clock = Channel(), Clock()
    ends = run_ends(channel, clock)
    woken = ends.expect("run-a")
    await woken_now(ends, woken)
    clock.expire.set()  # the pause before reconnecting ends at once
    for lost in (StoreUnavailableError("connection lost"), RuntimeError("a defect")):
        assert not woken.is_set()
        channel.lose(lost)
        await settle()
        assert ends.listening  # listening again, not silently gone
        assert woken.is_set()  # ends announced while it was away would be missed: read
        woken.clear()
    assert channel.connections == 3
    assert "wake-ups of run ends failed" in caplog.text  # the defect is logged, with its trace
    await ends.close()  # and closing does not raise it


async def test_after_close_waits_read_on_the_timer_and_open_no_connection() -> None:
    channel, clock = Channel(), Clock()
    ends = run_ends(channel, clock)
    woken = ends.expect("run-a")
    await woken_now(ends, woken)
    await ends.close()
    clock.expire.set()
    await ends.wait(woken)
    await settle()
    assert channel.connections == 1 and not ends.listening and clock.periods[-1] == 0.1
    ends.open()  # the engine started again
    await ends.wait(woken)
    await settle()
    assert channel.connections == 2 and ends.listening
    await ends.close()


class Runs:
    """The parts of a RunControl's world a wait touches: the run is driven elsewhere, and its
    reads are scripted."""

    def __init__(self, on_read: Callable[[int], RunStatus]) -> None:
        self.reads = 0
        self._on_read = on_read

    async def get_run(self, tenant: str, run_id: str) -> Any:
        self.reads += 1
        return SimpleNamespace(status=self._on_read(self.reads))

    def active_run(self, tenant: str, run_id: str) -> None:
        return None


def control(runs: Runs, channel: Channel, clock: Clock) -> RunControl:
    async def command(*args: Any) -> None:
        raise AssertionError("no command in a wait")

    return RunControl(
        runs,  # type: ignore[arg-type]
        runs,  # type: ignore[arg-type]
        clock,  # type: ignore[arg-type]
        execute=False,
        command=command,
        decode=lambda record: None,
        coordinator=channel,  # type: ignore[arg-type]
    )


async def test_an_end_announced_while_the_waiter_reads_the_run_is_not_missed() -> None:
    channel, clock = Channel(), Clock()  # timers that never expire: only a wake-up helps
    ends: RunEnds | None = None

    def on_read(n: int) -> RunStatus:
        if n == 1:  # the run ends, and is announced, while its first read is on its way
            assert ends is not None
            ends.ended("run-a")
            return RunStatus.RUNNING
        return RunStatus.COMPLETED

    runs = Runs(on_read)
    control_ = control(runs, channel, clock)
    ends = control_.ends
    assert ends is not None
    other = ends.expect("run-b")  # another wait has the listener connected already
    await woken_now(ends, other)
    assert ends.listening
    record = await asyncio.wait_for(control_.wait("t", "run-a", None), 5)
    assert record.status == RunStatus.COMPLETED and runs.reads == 2
    assert not ends.waiting("run-a")
    await control_.close()


async def test_a_wait_that_times_out_leaves_no_waiter_behind() -> None:
    channel, clock = Channel(), Clock()
    runs = Runs(lambda n: RunStatus.RUNNING)
    control_ = control(runs, channel, clock)
    clock.expire.set()  # the wait's timeout expires, and with it every timer
    with pytest.raises(TimeoutError):
        await control_.wait("t", "run-a", timedelta(seconds=1))
    assert control_.ends is not None and not control_.ends.waiting("run-a")
    await control_.close()
