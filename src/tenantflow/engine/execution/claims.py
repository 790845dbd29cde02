"""A broker driver's claims, and giving back the claim of a delivery that failed.

A :class:`~tenantflow.engine.execution.broker.BrokerDriver` claims a step in the store
(``StartAttempt``: a lease and a fence) before it runs it. The lease keeper renews every lease of
the driver's owner, whether an attempt still runs behind it or not: a claim left behind by a
delivery that failed after it (the store that stayed busy, a broker request that timed out)
would be renewed for as long as the process lives, and every redelivery of the step would find
it held. :class:`Claims` counts the deliveries of each step in flight here and, when the last one
failed, parks the step back to ready (fenced: a claim that already lapsed, or settled, is left
alone) before the delivery is nak'ed; the redelivery then runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from tenantflow.domain.records import ParkAttempt, StepStatus, Transition
from tenantflow.engine.writer import Writer
from tenantflow.ports import Clock, Store

__all__ = ["Claim", "Claims"]

log = logging.getLogger("tenantflow.engine")

Claim = tuple[str, str, str]
"""A delivery's step: (tenant, run id, step key)."""


class Claims:
    """The steps whose deliveries are in flight in one driver, and the release of their claims.

    Args:
        owner: the driver's owner (the holder of its leases).
        clock: the driver's clock.
        where: a tenant's store and writer.
        spawn: runs a background task of the driver (cancelled when it closes).
    """

    def __init__(
        self,
        owner: str,
        clock: Clock,
        where: Callable[[str], Awaitable[tuple[Store, Writer]]],
        spawn: Callable[[Coroutine[Any, Any, None]], Any],
    ) -> None:
        self.owner = owner
        self.clock = clock
        self._where = where
        self._spawn = spawn
        self._in_flight: dict[Claim, int] = {}
        self.released = 0
        """Claims given back after their delivery failed (see :meth:`release`)."""

    @property
    def in_flight(self) -> int:
        """Deliveries running here now, over every claimed step."""
        return sum(self._in_flight.values())

    def enter(self, claim: Claim) -> None:
        """A delivery of the step starts here."""
        self._in_flight[claim] = self._in_flight.get(claim, 0) + 1

    def leave(self, claim: Claim) -> int:
        """A delivery of the step ended here; how many others of it are still in flight."""
        left = self._in_flight.pop(claim) - 1
        if left:
            self._in_flight[claim] = left
        return left

    async def release(self, tenant: str, run_id: str, key: str) -> None:
        """Give up this driver's claim on a step whose delivery failed after the claim: the
        claim is parked back to ready. When the store refuses now, a task tries again until
        the claim is gone."""
        try:
            if await self._release_once(tenant, run_id, key):
                return
        except Exception as exc:
            log.warning("releasing %s/%s failed: %s; again", run_id, key, exc)
        self._spawn(self._release_later(tenant, run_id, key))

    async def _release_later(self, tenant: str, run_id: str, key: str) -> None:
        delay = 0.1
        while True:
            await self.clock.sleep(delay)
            delay = min(2.0, delay * 2)
            if self._in_flight.get((tenant, run_id, key)):
                return  # claimed again here: that attempt settles it
            try:
                if await self._release_once(tenant, run_id, key):
                    return
            except Exception as exc:
                log.warning("releasing %s/%s failed: %s; again", run_id, key, exc)

    async def _release_once(self, tenant: str, run_id: str, key: str) -> bool:
        """Park the step back to ready if this driver's owner holds it; True when no claim
        of ours is left on it."""
        store, writer = await self._where(tenant)
        now = self.clock.now()
        for step in await store.get_steps(tenant, run_id):
            if step.key != key:
                continue
            if step.status != StepStatus.RUNNING or step.owner != self.owner:
                return True
            if (step.lease_expires_at or 0.0) < now:
                return True  # lapsed: no renewal revives it, a delivery or the sweep claims it
            op = ParkAttempt(
                tenant,
                run_id,
                key,
                step.fence,
                now,
                StepStatus.READY,
                now,
                "the delivery failed after its claim; released",
                Transition(tenant, run_id, now),
            )
            await writer.write(op)
            self.released += 1
            return True
        return True
