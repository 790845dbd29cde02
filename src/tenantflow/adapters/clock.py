"""The system clock: wall time for ``now`` and asyncio for sleeping and timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["ScaledClock", "SystemClock"]


class SystemClock:
    """Wall-clock time (``time.time``) with asyncio sleeps and timeouts."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    @asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        async with asyncio.timeout(seconds):
            yield


class ScaledClock:
    """Time compressed ``speed`` times: one real second is ``speed`` seconds of this clock.

    For demos and load rehearsals on the real engine: with ``speed=300`` a 45 s workflow takes
    0.15 s, an hourly rate limit refills in 12 s, and every timer the engine keeps (leases,
    backoffs, review SLAs, rate-limit waits) runs compressed alike, so the scenario plays out as
    it would in real time, only sooner. ``now`` starts at ``start`` (default: the wall clock at
    construction) and is monotonic.
    """

    def __init__(self, speed: float, *, start: float | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self._origin = time.time() if start is None else float(start)
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self._origin + (time.monotonic() - self._t0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    @asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        async with asyncio.timeout(max(0.0, seconds) / self.speed):
            yield
