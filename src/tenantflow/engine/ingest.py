"""Fair ingestion: one tenant's burst of submissions cannot monopolise the engine's event loop.

Recording a submission costs the event loop CPU (input contract, plan, admission) before the
group-commit writer sees it, and again when its commit returns. A tenant that sends 5,000
submissions at once would otherwise put them all on the loop's ready queue together: each loop
turn then runs thousands of submissions' work before it runs the next step of another tenant's
run, and every hop of an in-flight run (step ends -> its commit -> next step starts) waits for a
whole turn. The writer's round-robin over tenants (:mod:`tenantflow.engine.writer`) protects the
commit path; this gate protects the loop.

:class:`IngestGate` lets at most ``per_tenant`` submissions of one tenant be in progress at
once; the rest wait, in order, on a future each (they cost nothing while waiting). A tenant
that sends one submission at a time never waits. When one of a tenant's submissions ends, the
next one waiting gets its place, so a burst is recorded at the writer's pace, as fast as
before, but each loop turn carries at most ``per_tenant`` of its submissions. Child runs
started by a running step do not pass the gate: they belong to work already in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["IngestGate"]


class IngestGate:
    """At most ``per_tenant`` submissions per tenant in progress; the rest wait in FIFO order."""

    def __init__(self, per_tenant: int) -> None:
        if per_tenant < 1:
            raise ValueError(f"per_tenant must be at least 1, got {per_tenant}")
        self.per_tenant = per_tenant
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def in_progress(self, tenant: str) -> int:
        return self._busy.get(tenant, 0)

    def waiting(self, tenant: str) -> int:
        return sum(1 for fut in self._waiting.get(tenant, ()) if not fut.done())

    @asynccontextmanager
    async def enter(self, tenant: str) -> AsyncIterator[None]:
        """Hold one of ``tenant``'s places for the body of the ``async with``."""
        await self._acquire(tenant)
        try:
            yield
        finally:
            self._release(tenant)

    async def _acquire(self, tenant: str) -> None:
        busy = self._busy.get(tenant, 0)
        if busy < self.per_tenant and not self._waiting.get(tenant):
            self._busy[tenant] = busy + 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(fut)
        try:
            await fut  # _release handed its place over: _busy already counts this one
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed over just as it was cancelled
                self._release(tenant)
            raise

    def _release(self, tenant: str) -> None:
        queue = self._waiting.get(tenant)
        while queue:
            fut = queue.popleft()
            if not fut.done():  # a waiter cancelled meanwhile is skipped
                fut.set_result(None)  # the place passes to it; the count is unchanged
                if not queue:
                    del self._waiting[tenant]
                return
        self._waiting.pop(tenant, None)
        busy = self._busy[tenant] - 1
        if busy:
            self._busy[tenant] = busy
        else:
            del self._busy[tenant]
