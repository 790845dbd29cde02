"""Simulated human reviewers working the engine's review queues.

Each pool (:data:`.platform.REVIEWER_POOLS`) has a few people. A reviewer takes the
next open task of their pool, claims it, thinks for a while (exponential, ``mean_s`` of scenario
time on the engine's clock), and approves or declines through ``engine.reviews`` — the same calls
a reviewer UI makes. Tasks arrive through ``engine.reviews.subscribe``.

Which task is next is the platform's queue discipline:

* with tenant controls, the queue is isolated per tenant: lanes first (urgent > normal >
  background — the free tier's reviews are ``background``), then round-robin across the tenants
  with open tasks, oldest first within a tenant;
* without, one queue in arrival order.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, deque
from dataclasses import dataclass, field

import tenantflow as tf
from tenantflow.domain.tenancy import ReviewRecord
from tenantflow.errors import ConflictError, NotFoundError
from tenantflow.ports import Clock

__all__ = ["ReviewDesk"]

_LANE_RANK = {"urgent": 0, "normal": 1, "background": 2}


@dataclass
class _Pool:
    people: int
    fifo: deque[str] = field(default_factory=deque)
    by_tenant: dict[str, deque[str]] = field(default_factory=dict)
    turn: Counter[str] = field(default_factory=Counter)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ReviewDesk:
    """Reviewers for every pool; ``open_by_tenant`` is the live count of undecided tasks."""

    def __init__(
        self,
        engine: tf.Engine,
        clock: Clock,
        pools: dict[str, int],
        *,
        fair: bool,
        mean_s: float,
        approve_rate: float,
        seed: int,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.fair = fair
        self.mean_s = mean_s
        self.approve_rate = approve_rate
        self.rng = random.Random(seed)
        self.pools = {name: _Pool(people) for name, people in pools.items()}
        self.tasks: dict[str, ReviewRecord] = {}
        self.open_by_tenant: Counter[str] = Counter()
        self.decided = 0
        self._order = itertools.count()
        self._seq: dict[str, int] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._unsubscribe = engine.reviews.subscribe(self._opened)

    def start(self) -> None:
        for name, pool in self.pools.items():
            for i in range(pool.people):
                self._workers.append(
                    asyncio.get_running_loop().create_task(
                        self._work(name, f"{name}-{i + 1}"), name=f"reviewer {name} {i + 1}"
                    )
                )

    async def stop(self) -> None:
        self._unsubscribe()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def _opened(self, review: ReviewRecord) -> None:
        known = self.tasks.get(review.id)
        if known is None:
            self.open_by_tenant[review.tenant_id] += 1
            self._seq[review.id] = next(self._order)
        self.tasks[review.id] = review  # an escalation moves it to another pool
        pool = self.pools.get(review.pool) or self.pools["shared"]
        pool.fifo.append(review.id)
        pool.by_tenant.setdefault(review.tenant_id, deque()).append(review.id)
        pool.wake.set()

    def _next(self, pool: _Pool, name: str) -> ReviewRecord | None:
        if not self.fair:
            while pool.fifo:
                task = self._live(pool.fifo.popleft(), name)
                if task is not None:
                    return task
            return None
        best: tuple[int, int, int] | None = None
        chosen: str | None = None
        for tenant, queue in pool.by_tenant.items():
            while queue and self._live(queue[0], name) is None:
                queue.popleft()
            if queue:
                head = self.tasks[queue[0]]
                rank = (_LANE_RANK.get(head.lane, 1), pool.turn[tenant], self._seq[head.id])
                if best is None or rank < best:
                    best, chosen = rank, tenant
        if chosen is None:
            return None
        pool.turn[chosen] += 1
        return self.tasks[pool.by_tenant[chosen].popleft()]

    def _live(self, review_id: str, pool_name: str) -> ReviewRecord | None:
        """The task, if it is still open and (still) belongs to this pool."""
        task = self.tasks.get(review_id)
        if task is None:
            return None
        home = task.pool if task.pool in self.pools else "shared"
        return task if home == pool_name else None

    async def _work(self, pool_name: str, reviewer: str) -> None:
        pool = self.pools[pool_name]
        while True:
            task = self._next(pool, pool_name)
            if task is None:
                pool.wake.clear()
                await pool.wake.wait()
                continue
            try:
                await self.engine.reviews.claim(task.tenant_id, task.id, reviewer=reviewer)
                await self.clock.sleep(self.rng.expovariate(1.0 / self.mean_s))
                await self.engine.reviews.decide(
                    task.tenant_id,
                    task.id,
                    reviewer=reviewer,
                    approve=self.rng.random() < self.approve_rate,
                )
                self.decided += 1
            except (ConflictError, NotFoundError):
                pass  # decided meanwhile (an SLA breach), or its run is gone
            finally:
                if self.tasks.pop(task.id, None) is not None:
                    self.open_by_tenant[task.tenant_id] -= 1
