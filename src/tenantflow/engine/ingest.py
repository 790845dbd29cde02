"""Fair ingestion: one tenant's burst of submissions cannot crowd out other tenants' runs.

Recording a submission costs the event loop CPU (input contract, plan, admission) before the
group-commit writer sees it and again when its commit returns, and each insert lengthens the
commit it rides in. A tenant that sends 5,000 submissions at once would otherwise put them all
on the loop's ready queue together and keep the writer's batches full of its inserts: every hop
of another tenant's in-flight run (step ends -> its commit -> next step starts) then waits for
whole loop turns and longer commits. The writer's round-robin over tenants
(:mod:`tenantflow.engine.writer`) orders the inserts (but those of a tenant within its share
while another borrows, which go in its urgent lane); this gate bounds how many there are.

:class:`IngestGate` lets at most ``per_tenant`` submissions of one tenant be in progress (from
the call to its commit) while other tenants have steps running, and ``alone`` while none do: it
is work-conserving, a tenant with the engine to itself records at full speed. The rest wait, in
order, on a future each (they cost nothing while waiting); when one of the tenant's
submissions ends, the next one waiting takes its place. A tenant that sends one submission at a
time never waits. Child runs started by a running step do not pass the gate: they belong to work
already in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

__all__ = ["IngestGate"]


class IngestGate:
    """At most ``per_tenant`` submissions per tenant in progress while ``others_busy(tenant)``,
    else at most ``alone``; the rest wait in FIFO order."""

    def __init__(
        self,
        per_tenant: int,
        *,
        alone: int | None = None,
        others_busy: Callable[[str], bool] | None = None,
    ) -> None:
        if per_tenant < 1:
            raise ValueError(f"per_tenant must be at least 1, got {per_tenant}")
        self.per_tenant = per_tenant
        self.alone = max(per_tenant, alone if alone is not None else per_tenant)
        self._others_busy = others_busy
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def limit(self, tenant: str) -> int:
        """How many of ``tenant``'s submissions may be in progress now."""
        if self._others_busy is None or self._others_busy(tenant):
            return self.per_tenant
        return self.alone

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
        if busy < self.limit(tenant) and not self._waiting.get(tenant):
            self._busy[tenant] = busy + 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(fut)
        try:
            await fut  # _release handed a place over: _busy already counts this one
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed over just as it was cancelled
                self._release(tenant)
            raise

    def _release(self, tenant: str) -> None:
        """Give a place back; hand places to the first waiters while under the limit (more
        than one when the limit has grown: the other tenants went idle)."""
        busy = self._busy[tenant] - 1
        queue = self._waiting.get(tenant)
        if queue:
            limit = self.limit(tenant)
            while queue and busy < limit:
                fut = queue.popleft()
                if not fut.done():  # a waiter cancelled meanwhile is skipped
                    fut.set_result(None)  # the place passes to it
                    busy += 1
            if not queue:
                del self._waiting[tenant]
        if busy:
            self._busy[tenant] = busy
        else:
            del self._busy[tenant]
