"""Admission: whether a submitted run may start now or must wait in its tenant's queue.

Every tenant has an active-run cap and its own queue; runs never wait behind another tenant's
runs, so admission needs no cross-tenant ordering and every operation is O(1). (Fair sharing
of worker slots between admitted runs is the dispatcher's job: see
:mod:`tenantflow.domain.scheduler`.) Budget checks happen in the engine before ``submit``.

Queue order inside a tenant is lane, then FIFO, with the same aging rule as the dispatcher
(:func:`~tenantflow.domain.scheduler.effective_rank`): each full ``aging_s`` waited promotes a
run one lane, so background runs are not starved by a steady stream of urgent ones.

Backpressure: a run that has to wait is refused with :class:`~tenantflow.errors.BackpressureError`
when the global queue already holds ``max_queued`` runs, or its tenant's queue holds its own
``max_queued``. A run that can start at once is never refused: it adds nothing to any queue,
and refusing it would let one tenant's flood block everyone else's admissions. Nothing is
ever dropped silently: ``submit`` either admits, queues, or raises.

``retry_after_s`` is the time the relevant queue needs, at its recent drain rate, to fall back
to 90 % of its limit (so refused clients do not all return for a single free place), clamped to
``[min_retry_after_s, max_retry_after_s]``. The drain rate counts runs admitted from the queue,
as an exponentially decayed count with half-life ``drain_half_life_s``; before any run has
drained, ``max_retry_after_s`` is returned.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, Final

from tenantflow.domain.scheduler import Lane, effective_rank, lane_rank
from tenantflow.errors import BackpressureError, ConfigurationError, ConflictError, NotFoundError

__all__ = ["AdmissionController"]

_NO_CAP: Final = 1 << 62
_RESUME_FRACTION: Final = 0.9
_LN2: Final = math.log(2.0)


class _DrainRate:
    """Runs leaving a queue per second: an exponentially decayed event count."""

    __slots__ = ("count", "first_s", "last_s")

    def __init__(self) -> None:
        self.count = 0.0
        self.last_s = 0.0
        self.first_s: float | None = None

    def record(self, now_s: float, half_life_s: float) -> None:
        if self.first_s is None:
            self.first_s = now_s
        elif now_s > self.last_s:
            self.count *= math.exp(-(now_s - self.last_s) * _LN2 / half_life_s)
        self.count += 1.0
        self.last_s = max(self.last_s, now_s)

    def per_s(self, now_s: float, half_life_s: float) -> float:
        if self.first_s is None:
            return 0.0
        count = self.count * math.exp(-max(0.0, now_s - self.last_s) * _LN2 / half_life_s)
        # Divide by the decay kernel's integral over the history we have: half_life/ln 2 for a
        # long history, less for a young one, so a steady rate reads the same from the start.
        age_s = max(0.0, now_s - self.first_s)
        span_s = half_life_s / _LN2 * -math.expm1(-age_s * _LN2 / half_life_s)
        return count / max(1.0, span_s)


class _Waiting:
    __slots__ = ("enqueued_s", "run_key")

    def __init__(self, run_key: Hashable, enqueued_s: float) -> None:
        self.run_key = run_key
        self.enqueued_s = enqueued_s


class _Fifo(list[Any]):
    """Waiting runs of one lane in arrival order: a list plus a head index.

    ``collections.deque`` preallocates 760 bytes, too much for 10^6 tenants.
    """

    __slots__ = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.head = 0

    def peek(self, waiting: dict[Hashable, _Waiting]) -> _Waiting | None:
        """The first run still waiting, dropping withdrawn ones; None when empty."""
        head = self.head
        while head < len(self):
            run: _Waiting = self[head]
            if waiting.get(run.run_key) is run:
                self.head = head
                return run
            self[head] = None
            head += 1
        self.head = head
        return None

    def popleft(self) -> None:
        self[self.head] = None
        self.head += 1
        if self.head >= 32 and self.head * 2 >= len(self):
            del self[: self.head]  # amortised O(1)
            self.head = 0


class _TenantQueue:
    __slots__ = ("active", "cap", "drain", "lanes", "max_queued", "waiting")

    def __init__(self) -> None:
        self.cap = _NO_CAP
        self.max_queued: int | None = None
        # Created on first use and dropped when empty: there may be a million tenants.
        self.active: set[Hashable] | None = None
        self.waiting: dict[Hashable, _Waiting] | None = None
        self.lanes: list[_Fifo | None] | None = None
        self.drain = _DrainRate()

    @property
    def n_active(self) -> int:
        return 0 if self.active is None else len(self.active)

    @property
    def n_waiting(self) -> int:
        return 0 if self.waiting is None else len(self.waiting)


class AdmissionController:
    """Per-tenant active-run caps with per-tenant queues and a global backpressure threshold.

    Args:
        max_queued: Global limit on waiting runs (>= 1).
        aging_s: Wait after which a queued run is served one lane higher (> 0).
        drain_half_life_s: Half-life of the drain-rate estimate used for ``retry_after_s``.
        min_retry_after_s: Smallest retry-after handed out.
        max_retry_after_s: Largest retry-after handed out (also used with no drain history).

    Raises:
        ConfigurationError: A value is out of range.
    """

    def __init__(
        self,
        *,
        max_queued: int,
        aging_s: float = 300.0,
        drain_half_life_s: float = 60.0,
        min_retry_after_s: float = 1.0,
        max_retry_after_s: float = 300.0,
    ) -> None:
        if max_queued < 1:
            raise ConfigurationError("max_queued must be >= 1", field="max_queued")
        if not (aging_s > 0.0 and drain_half_life_s > 0.0):
            raise ConfigurationError("aging_s and drain_half_life_s must be > 0", field="aging_s")
        if not 0.0 < min_retry_after_s <= max_retry_after_s:
            raise ConfigurationError(
                "need 0 < min_retry_after_s <= max_retry_after_s", field="min_retry_after_s"
            )
        self._max_queued = max_queued
        self._aging_s = aging_s
        self._half_life_s = drain_half_life_s
        self._min_retry_s = min_retry_after_s
        self._max_retry_s = max_retry_after_s
        self._tenants: dict[str, _TenantQueue] = {}
        self._total_queued = 0
        self._total_active = 0
        self._drain = _DrainRate()

    def configure_tenant(
        self,
        tenant_id: str,
        *,
        active_cap: int | None = None,
        max_queued: int | None = None,
        now_s: float,
    ) -> list[Hashable]:
        """Create or update a tenant's caps; safe at runtime.

        A lowered cap applies to new admissions; active runs are not stopped.

        Args:
            tenant_id: The tenant.
            active_cap: Most runs active at once (>= 0), or None for no cap.
            max_queued: Most runs waiting in this tenant's queue (>= 1), or None for no
                per-tenant limit (the global limit still applies).
            now_s: Current time.

        Returns:
            Run keys admitted because the cap was raised, in queue order; start them.

        Raises:
            ConfigurationError: A value is out of range.
        """
        if active_cap is not None and active_cap < 0:
            raise ConfigurationError("active_cap must be >= 0 or None", field="active_cap")
        if max_queued is not None and max_queued < 1:
            raise ConfigurationError("max_queued must be >= 1 or None", field="max_queued")
        t = self._tenants.get(tenant_id)
        if t is None:
            t = self._tenants[tenant_id] = _TenantQueue()
        t.cap = _NO_CAP if active_cap is None else active_cap
        t.max_queued = max_queued
        return self._admit_waiting(t, now_s)

    def submit(self, tenant_id: str, run_key: Hashable, lane: Lane, now_s: float) -> bool:
        """Admit a run now, or queue it behind its tenant's cap.

        Args:
            tenant_id: The tenant.
            run_key: The run's id, unique within the tenant.
            lane: The run's priority lane.
            now_s: Current time.

        Returns:
            True if the run is admitted and may start; False if it waits in the queue (it is
            returned later by :meth:`finished` or :meth:`configure_tenant`).

        Raises:
            NotFoundError: The tenant was never configured.
            ConflictError: The run is already active or queued.
            BackpressureError: The run would have to wait and the global or the tenant's queue
                is full; ``retry_after_s`` says when to try again.
            ContractError: The lane is unknown.
        """
        t = self._tenant(tenant_id)
        if (t.active is not None and run_key in t.active) or (
            t.waiting is not None and run_key in t.waiting
        ):
            raise ConflictError(
                f"run {run_key!r} is already admitted or queued", tenant_id=tenant_id
            )
        rank = lane_rank(lane)
        if t.n_waiting == 0 and t.n_active < t.cap:
            self._activate(t, run_key)
            return True
        if self._total_queued >= self._max_queued:
            raise BackpressureError(
                "the platform's run queue is full; retry later",
                scope="global",
                queued=self._total_queued,
                max_queued=self._max_queued,
                retry_after_s=self._retry_after(
                    self._drain, self._total_queued, self._max_queued, now_s
                ),
            )
        if t.max_queued is not None and t.n_waiting >= t.max_queued:
            raise BackpressureError(
                f"tenant {tenant_id!r}'s run queue is full; retry later",
                scope="tenant",
                tenant_id=tenant_id,
                queued=t.n_waiting,
                max_queued=t.max_queued,
                retry_after_s=self._retry_after(t.drain, t.n_waiting, t.max_queued, now_s),
            )
        waiting = _Waiting(run_key, now_s)
        if t.waiting is None:
            t.waiting = {}
        if t.lanes is None:
            t.lanes = [None, None, None]
        fifo = t.lanes[rank]
        if fifo is None:
            fifo = t.lanes[rank] = _Fifo()
        fifo.append(waiting)
        t.waiting[run_key] = waiting
        self._total_queued += 1
        return False

    def finished(self, tenant_id: str, run_key: Hashable, now_s: float) -> list[Hashable]:
        """Release an active run's place (it completed, failed or was cancelled).

        Returns:
            Run keys of the same tenant admitted now, in queue order; start them.

        Raises:
            NotFoundError: The run is not active for this tenant.
        """
        t = self._tenant(tenant_id)
        if t.active is None or run_key not in t.active:
            raise NotFoundError(f"run {run_key!r} is not active", tenant_id=tenant_id)
        t.active.discard(run_key)
        if not t.active:
            t.active = None
        self._total_active -= 1
        return self._admit_waiting(t, now_s)

    def withdraw(self, tenant_id: str, run_key: Hashable) -> bool:
        """Remove a queued run (cancelled before it was admitted). O(1).

        Returns:
            True if the run was queued; False otherwise (an active run ends with ``finished``).
        """
        t = self._tenants.get(tenant_id)
        if t is None or t.waiting is None or t.waiting.pop(run_key, None) is None:
            return False
        self._total_queued -= 1
        if not t.waiting:
            t.waiting = None
            t.lanes = None  # frees the withdrawn entries too
        return True

    # -- introspection ---------------------------------------------------------------------

    def active(self, tenant_id: str) -> int:
        """Active (admitted, unfinished) runs of the tenant."""
        t = self._tenants.get(tenant_id)
        return 0 if t is None else t.n_active

    def queued(self, tenant_id: str) -> int:
        """Runs waiting in the tenant's queue."""
        t = self._tenants.get(tenant_id)
        return 0 if t is None else t.n_waiting

    @property
    def total_queued(self) -> int:
        """Runs waiting across all tenants."""
        return self._total_queued

    @property
    def total_active(self) -> int:
        """Active runs across all tenants."""
        return self._total_active

    # -- internals -------------------------------------------------------------------------

    def _tenant(self, tenant_id: str) -> _TenantQueue:
        t = self._tenants.get(tenant_id)
        if t is None:
            raise NotFoundError(
                f"tenant {tenant_id!r} is not configured; call configure_tenant first",
                tenant_id=tenant_id,
            )
        return t

    def _activate(self, t: _TenantQueue, run_key: Hashable) -> None:
        if t.active is None:
            t.active = set()
        t.active.add(run_key)
        self._total_active += 1

    def _admit_waiting(self, t: _TenantQueue, now_s: float) -> list[Hashable]:
        admitted: list[Hashable] = []
        while t.waiting and t.n_active < t.cap:
            waiting = self._pop_best(t, now_s)
            admitted.append(waiting.run_key)
            self._activate(t, waiting.run_key)
            self._total_queued -= 1
            t.drain.record(now_s, self._half_life_s)
            self._drain.record(now_s, self._half_life_s)
        return admitted

    def _pop_best(self, t: _TenantQueue, now_s: float) -> _Waiting:
        lanes, waiting = t.lanes, t.waiting
        assert lanes is not None and waiting is not None
        best_rank, best_enq, best_idx = 0, 0.0, -1
        for idx in range(3):
            fifo = lanes[idx]
            head = None if fifo is None else fifo.peek(waiting)
            if head is None:
                lanes[idx] = None
                continue
            rank = effective_rank(idx, now_s - head.enqueued_s, self._aging_s)
            if (
                best_idx < 0
                or rank < best_rank
                or (rank == best_rank and head.enqueued_s < best_enq)
            ):
                best_rank, best_enq, best_idx = rank, head.enqueued_s, idx
        fifo = lanes[best_idx]
        assert fifo is not None
        chosen: _Waiting = fifo[fifo.head]
        fifo.popleft()
        del waiting[chosen.run_key]
        if not waiting:
            t.waiting = None
            t.lanes = None
        return chosen

    def _retry_after(self, rate: _DrainRate, queued: int, limit: int, now_s: float) -> float:
        to_drain = queued - math.floor(limit * _RESUME_FRACTION)
        per_s = rate.per_s(now_s, self._half_life_s)
        if per_s <= 0.0:
            return self._max_retry_s
        return min(self._max_retry_s, max(self._min_retry_s, max(1, to_drain) / per_s))
