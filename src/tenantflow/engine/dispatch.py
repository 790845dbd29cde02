"""Compute isolation: slots handed out by the weighted fair scheduler.

Every ready step of every run (whatever its region store) is pushed here; when a slot is free
the :class:`~tenantflow.domain.scheduler.FairScheduler` picks the next one by tenant weight,
running-step cap, lane and aging, and the dispatcher starts it. A step gives its slot back as
soon as its code returns or starts waiting (review, rate limit, backoff), charged by the
service time it actually used.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from tenantflow.domain.scheduler import FairScheduler, Lane, ReadyItem
from tenantflow.ports import Clock

__all__ = ["SHARED", "Dispatcher", "Slot"]

SHARED = "*"

log = logging.getLogger("tenantflow.dispatch")

Starter = Callable[["Slot"], Coroutine[Any, Any, None]]


@dataclass(slots=True, eq=False)
class Slot:
    """A granted slot: release it exactly once."""

    tenant_id: str
    key: tuple[str, str]
    started_s: float
    dispatcher: Dispatcher
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.dispatcher.release(self)


class Dispatcher:
    """Starts queued steps as slots free up, fairly across tenants."""

    def __init__(
        self, clock: Clock, *, slots: int, aging_s: float = 30.0, shared: bool = False
    ) -> None:
        self.clock = clock
        # shared: tenant controls off — every step waits in one FIFO queue, no caps (baseline).
        self.shared = shared
        self.scheduler = FairScheduler(slots=slots, aging_s=aging_s)
        self._starters: dict[tuple[str, str], Starter] = {}
        self._owners: dict[tuple[str, str], str] = {}  # the real tenant of each queued step
        self._hints: dict[str, float] = {}
        self.closing = False
        self.service_s: dict[str, float] = {}  # slot-seconds per tenant, for attribution
        # Steps per real tenant (also when shared): for sampling and per-tenant metrics.
        self.running_by: Counter[str] = Counter()
        self.queued_by: Counter[str] = Counter()
        self._running: dict[tuple[str, str], str] = {}
        self.on_notice: Callable[[Any], None] | None = None

    def configure(self, tenant_id: str, **policy: Any) -> None:
        if self.shared:
            self.scheduler.configure_tenant(SHARED, now_s=self.clock.now())
            return
        self.scheduler.configure_tenant(tenant_id, now_s=self.clock.now(), **policy)

    def push(
        self,
        tenant_id: str,
        key: tuple[str, str],
        lane: Lane,
        starter: Starter,
        *,
        in_flight: bool = True,
        hint_name: str = "",
    ) -> bool:
        """Queue a ready step; ``starter(slot)`` runs it once the scheduler grants a slot.
        False if it was queued or running already (a duplicate wake-up: nothing changes)."""
        if key in self._starters:
            return False
        self._starters[key] = starter
        self._owners[key] = tenant_id
        self.queued_by[tenant_id] += 1
        if self.shared:  # one FIFO for everyone: no weights, caps or lanes
            tenant_id, lane, in_flight = SHARED, "normal", True
        item = ReadyItem(tenant_id, key, lane, in_flight, self._hints.get(hint_name, 0.01), None)
        self.scheduler.push(item, self.clock.now())
        self.pump()
        return True

    def remove(self, key: tuple[str, str]) -> None:
        if self.scheduler.remove(key):
            self._starters.pop(key, None)
            owner = self._owners.pop(key, None)
            if owner is not None:
                _decrement(self.queued_by, owner)

    def pump(self) -> None:
        if self.closing:
            return
        now = self.clock.now()
        while True:
            item = self.scheduler.pop(now)
            if item is None:
                break
            key = item.key
            assert isinstance(key, tuple)
            starter = self._starters.get(key)
            slot = Slot(item.tenant_id, key, now, self)
            if starter is None:  # withdrawn while queued
                slot.release()
                continue
            owner = self._owners.get(key, item.tenant_id)
            _decrement(self.queued_by, owner)
            self.running_by[owner] += 1
            self._running[key] = owner
            task = asyncio.get_running_loop().create_task(starter(slot), name=f"{key[0]}:{key[1]}")
            task.add_done_callback(_ended)
        if self.on_notice is not None:
            for notice in self.scheduler.drain_notices():
                self.on_notice(notice)

    def release(self, slot: Slot) -> None:
        now = self.clock.now()
        service = max(0.0, now - slot.started_s)
        self._starters.pop(slot.key, None)
        owner = self._owners.pop(slot.key, slot.tenant_id)
        if self._running.pop(slot.key, None) is not None:
            _decrement(self.running_by, owner)
        self.scheduler.done(slot.tenant_id, slot.key, service, now)
        self.service_s[owner] = self.service_s.get(owner, 0.0) + service
        self.pump()

    def urgent(self, tenant_id: str) -> bool:
        """Whether ``tenant_id``'s transitions go in the writer's urgent lane: while another
        tenant borrows idle slots past its cap, those of the tenants within theirs do."""
        scheduler = self.scheduler
        return bool(scheduler.borrowers) and not self.shared and not scheduler.borrowing(tenant_id)

    def learn(self, hint_name: str, service_s: float) -> None:
        """Keep a moving average of a step's service time: the scheduler's cost hint."""
        old = self._hints.get(hint_name)
        value = max(service_s, 1e-4)
        self._hints[hint_name] = value if old is None else 0.8 * old + 0.2 * value


def _ended(task: asyncio.Task[None]) -> None:
    """An attempt that ended by an error it could not commit (the store failed: the engine
    reloads its run, see :mod:`~tenantflow.engine.resync`) is logged here, not lost."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("step attempt %s ended by %s: %s", task.get_name(), type(exc).__name__, exc)


def _decrement(counter: Counter[str], key: str) -> None:
    if counter[key] <= 1:
        counter.pop(key, None)
    else:
        counter[key] -= 1
