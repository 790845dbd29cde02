"""The fair dispatcher: which ready step runs next when a worker slot frees.

Algorithm — start-time fair queuing (SFQ) across tenants
---------------------------------------------------------
Each tenant has a *virtual time* ``vtime``: the service it has received divided by its weight.
The scheduler keeps a global virtual clock ``V`` (the start tag of the latest fair-share pick)
and always serves the eligible tenant with the smallest ``vtime``. Serving an item charges the
tenant ``cost_hint_s / weight`` at once, and :meth:`FairScheduler.done` replaces the hint with
the *actual* service time, so a tenant whose steps take 10x longer gets 10x fewer of them.
Whenever a tenant (re)enters the eligible set — it had no queued work, or it was held at its
cap — its ``vtime`` becomes ``max(vtime, V)``: an idle or capped tenant cannot bank credit and
then flood the slots.

Why SFQ and not the alternatives:

* WFQ / WF2Q order by *finish* tags, which need the cost up front; our costs are only known
  after the step ran. SFQ orders by *start* tags, so a wrong hint only shifts the tenant's own
  next turn, and the correction at ``done`` keeps long-run shares exact.
* Deficit round robin is O(1) but serves tenants in ring order: with 10^5 tenants a newly
  backlogged tenant waits a whole round, and a quantum large enough for O(1) service makes
  short-term shares coarse. SFQ's delay bound does not grow with the number of tenants.
* Stride scheduling is the same idea (``pass`` = ``vtime``); SFQ names the global clock that
  stride needs anyway for tenants that come and go.

Fairness is keyed by tenant only: how a tenant spreads its work over workflows, runs or keys
changes nothing, because every charge lands on the tenant's single ``vtime``.

Other rules, in the order :meth:`FairScheduler.pop` applies them:

1. The global ``slots`` limit always holds; nothing is preempted when it is lowered.
2. A tenant below its ``guaranteed_slots`` is served first (a second heap, also by ``vtime``).
   Guaranteed service is charged like any other, so a tenant receives
   ``max(guarantee, fair share)``, not the sum. Once its ``vtime`` is more than one round of
   its guarantee ahead of every fair-share charge (it wins no fair-share pick either way),
   further guaranteed service is not recorded as debt: it would only hold the tenant back
   after contention eases, punishing it for using what it was promised.
3. Otherwise the eligible tenant with the smallest ``vtime`` is served. A tenant is eligible
   while it has queued work and ``running < running_cap`` (plus ``burst_slots`` while it has
   burst credit), so the per-tenant cap holds whatever the lane.
4. Inside the tenant, the item with the best ``(effective rank, in-flight first, oldest)`` is
   taken. Ranks are urgent 0, normal 1, background 2; every full ``aging_s`` waited lowers an
   item's rank by one (without a floor), so an item eventually beats everything enqueued more
   than ``(rank + 1) * aging_s`` after it: no lane starves.

Burst credit (documented scheme): a tenant may run up to ``burst_slots`` items above its cap.
Its *burst debt* is the integral of ``running - running_cap`` over time while above the cap
(slot-seconds) and is repaid at 1 slot-second per second while at or below the cap. A burst pop
is granted only if the debt plus the new excess times the item's cost hint fits in
``burst_window_s`` (so the window is overrun only by as much as running items overrun their
hints). When it does not fit, or the debt reaches the window, the tenant is *exhausted*: held at
its cap until the debt is fully repaid, then *restored* — at the exact moment, even with no
other event, because repaid tenants wait in a small timer heap that ``pop`` consults. (An item
too big for the whole window just waits for the tenant's next ``done`` and runs within the
cap.) Every burst pop, exhaustion and restoration is reported as a :class:`BurstNotice` that
the engine collects with :meth:`FairScheduler.drain_notices`.

Complexity (T tenants, N queued items)
-------------------------------------
``pop`` and ``done`` are O(log T) amortised: a binary heap of eligible tenants with lazy
invalidation (stale entries are skipped, and the heap is rebuilt when more than half is stale).
Tenants at their cap leave the heap and rejoin from ``done``; nothing ever scans all tenants.
``push`` is O(1), plus O(log T) when the tenant becomes eligible. ``remove`` is O(1): the item
is forgotten at once and its queue cell is skipped when it reaches the head. Per queued item
the scheduler holds the item (a slotted dataclass), one list cell and one dict entry — about
200 bytes; per tenant a slotted record plus one small list-based FIFO per non-empty (lane,
in-flight) class (``collections.deque`` preallocates 760 bytes, too much for 10^6 tenants).

Nothing here does I/O or reads a clock: every call takes ``now_s``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final, Literal

from tenantflow.errors import ConfigurationError, ConflictError, ContractError, NotFoundError

__all__ = [
    "LANES",
    "BurstNotice",
    "BurstNoticeKind",
    "FairScheduler",
    "Lane",
    "ReadyItem",
    "effective_rank",
    "lane_rank",
]

Lane = Literal["urgent", "normal", "background"]
"""A priority class inside a tenant: urgent > normal > background, with aging."""

LANES: Final[tuple[Lane, ...]] = ("urgent", "normal", "background")
_LANE_RANK: Final[dict[str, int]] = {lane: rank for rank, lane in enumerate(LANES)}

BurstNoticeKind = Literal["burst_used", "burst_exhausted", "burst_restored"]

# A heap entry is ``(vtime_or_due_s, seq, tenant)``: tuples compare in C with one indirection
# fewer than lists, and the unique ``seq`` breaks ties before a tenant is ever compared. An
# entry is live only while the tenant still points at it (``t.entry is entry``); stale ones are
# skipped when they surface, and the heap is rebuilt when they are the majority.
_Entry = tuple[float, int, "_Tenant"]

_NO_CAP: Final = sys.maxsize
# A millisecond of slot-time: far above float rounding of epoch-scale times (~2.4e-7 s), so a
# repayment timer set for ``now + debt`` always finds the debt repaid when it fires.
_DEBT_EPSILON_S: Final = 1e-3
_MIN_BURST_WINDOW_S: Final = 0.01  # well above _DEBT_EPSILON_S, so exhaustion takes time
_COMPACT_MIN: Final = 64


def lane_rank(lane: str) -> int:
    """The rank of a lane: urgent 0, normal 1, background 2.

    Raises:
        ContractError: ``lane`` is not one of :data:`LANES`.
    """
    rank = _LANE_RANK.get(lane)
    if rank is None:
        raise ContractError(f"unknown lane {lane!r}; use one of {LANES}", field="lane")
    return rank


def effective_rank(rank: int, waited_s: float, aging_s: float) -> int:
    """The rank an item is served at after waiting ``waited_s``.

    Each full ``aging_s`` waited promotes the item by one lane. There is deliberately no floor
    at urgent: an item that has waited long enough outranks fresh urgent work, which is what
    bounds the wait of every lane.
    """
    if waited_s <= 0.0:
        return rank
    return rank - int(waited_s // aging_s)


@dataclass(slots=True)
class ReadyItem:
    """A ready step attempt waiting for a slot.

    The scheduler reads only these fields; the engine keeps everything else.

    Attributes:
        tenant_id: The tenant the step belongs to; fairness is keyed by this alone.
        key: A unique id of the step attempt (unique among queued and running items).
        lane: The run's priority lane.
        in_flight: True for a step of an already-admitted, started run; these go before the
            first steps of new runs within a lane.
        cost_hint_s: Estimated service time (> 0), charged at ``pop`` and corrected at ``done``.
        enqueued_s: When the item became ready; ``push`` stamps ``now_s`` when None. Pass the
            original time when re-queuing so aging keeps counting.
    """

    tenant_id: str
    key: Hashable
    lane: Lane = "normal"
    in_flight: bool = True
    cost_hint_s: float = 1.0
    enqueued_s: float | None = None


@dataclass(frozen=True, slots=True)
class BurstNotice:
    """A use or state change of a tenant's burst credit, to be logged by the engine.

    Attributes:
        tenant_id: The tenant.
        kind: ``burst_used`` (an item was started above the cap), ``burst_exhausted`` (held at
            the cap until the debt is repaid) or ``burst_restored`` (debt repaid).
        at_s: The ``now_s`` of the decision.
        running: The tenant's running items after the decision.
        running_cap: The tenant's cap.
        burst_debt_s: Accumulated excess, in slot-seconds, at the decision.
        burst_window_s: The most excess the tenant may accumulate.
    """

    tenant_id: str
    kind: BurstNoticeKind
    at_s: float
    running: int
    running_cap: int
    burst_debt_s: float
    burst_window_s: float


class _Fifo(list[Any]):
    """A FIFO of ready items: a list plus a head index (cells before ``head`` are None)."""

    __slots__ = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.head = 0


class _Tenant:
    """Per-tenant scheduling state (slotted: there may be a million of these)."""

    __slots__ = (
        "burst_slots",
        "burst_window_s",
        "cap",
        "debt_at_s",
        "debt_s",
        "deferred",
        "entry",
        "g_entry",
        "guaranteed",
        "lanes",
        "limit",
        "locked",
        "queued",
        "running",
        "tenant_id",
        "vtime",
        "wake_entry",
        "weight",
    )

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.weight = 1.0
        self.cap = _NO_CAP
        self.guaranteed = 0
        self.burst_slots = 0
        self.burst_window_s = 0.0
        self.limit = _NO_CAP  # cap, plus burst_slots while burst credit is available
        self.vtime = 0.0
        self.running = 0
        self.queued = 0
        # Six FIFOs indexed by ``rank * 2 + (0 if in_flight else 1)``, created on demand and
        # dropped when empty so idle tenants cost no queue memory.
        self.lanes: list[_Fifo | None] | None = None
        self.entry: _Entry | None = None  # in the eligible heap
        self.g_entry: _Entry | None = None  # in the guaranteed heap
        self.wake_entry: _Entry | None = None  # waiting for burst debt to be repaid
        self.debt_s = 0.0
        self.debt_at_s = -math.inf
        self.locked = False  # burst credit exhausted: held at cap until the debt is repaid
        self.deferred = False  # the head item cannot fit the burst window: wait for a done


class FairScheduler:
    """Weighted fair dispatch of ready items across tenants (see the module docstring).

    Typical engine loop: ``push`` each ready step; whenever a slot may be free, ``pop`` until it
    returns None and start what it returns; when a step finishes, fails or starts waiting
    (review, rate limit, timer, backoff), call ``done`` with the time it held the slot; log
    ``drain_notices()`` after popping.

    Args:
        slots: Global worker slots (>= 1).
        aging_s: Wait after which an item is served one lane higher (> 0; ``math.inf``
            disables aging).

    Raises:
        ConfigurationError: ``slots < 1`` or ``aging_s <= 0``.
    """

    def __init__(self, *, slots: int, aging_s: float = 30.0) -> None:
        _check_slots(slots)
        if not aging_s > 0.0:
            raise ConfigurationError("aging_s must be > 0", field="aging_s", value=aging_s)
        self._slots = slots
        self._aging_s = aging_s
        self._tenants: dict[str, _Tenant] = {}
        self._queued: dict[Hashable, ReadyItem] = {}
        self._running: dict[Hashable, tuple[ReadyItem, bool]] = {}  # key -> (item, guaranteed)
        self._heap: list[_Entry] = []
        self._g_heap: list[_Entry] = []
        self._wake: list[_Entry] = []
        self._stale = 0
        self._g_stale = 0
        self._seq = itertools.count()
        self._vclock = 0.0
        self._vmax = 0.0  # the highest virtual time a fair-share charge has produced
        self._with_work = 0
        self._notices: list[BurstNotice] = []
        self._now_s = 0.0  # the latest now_s seen, for calls that do not pass one
        self._over: set[str] = set()  # tenants running more items than their cap

    # -- configuration ---------------------------------------------------------------------

    def configure_tenant(
        self,
        tenant_id: str,
        *,
        weight: float = 1.0,
        running_cap: int | None = None,
        guaranteed_slots: int = 0,
        burst_slots: int = 0,
        burst_window_s: float = 0.0,
        now_s: float | None = None,
    ) -> None:
        """Create or update a tenant's scheduling policy. Idempotent; safe at runtime.

        A lowered cap applies to new picks; running items are never preempted.

        Args:
            tenant_id: The tenant.
            weight: Share of contended capacity (> 0), relative to other tenants.
            running_cap: Most items running at once (>= 0), or None for no cap.
            guaranteed_slots: Slots served before fair-share picks while the tenant has work
                (>= 0, <= ``running_cap``).
            burst_slots: How far above ``running_cap`` the tenant may go on burst credit.
            burst_window_s: Burst credit, in slot-seconds of accumulated excess.
            now_s: Current time, to settle burst debt before the change; defaults to the
                latest ``now_s`` given to ``push``, ``pop`` or ``done``.

        Raises:
            ConfigurationError: A value is out of range.
        """
        if not (weight > 0.0 and math.isfinite(weight)):
            raise ConfigurationError("weight must be a finite number > 0", field="weight")
        if running_cap is not None and running_cap < 0:
            raise ConfigurationError("running_cap must be >= 0 or None", field="running_cap")
        if guaranteed_slots < 0 or (running_cap is not None and guaranteed_slots > running_cap):
            raise ConfigurationError(
                "guaranteed_slots must be between 0 and running_cap", field="guaranteed_slots"
            )
        if burst_slots < 0 or not (burst_window_s >= 0.0 and math.isfinite(burst_window_s)):
            raise ConfigurationError(
                "burst_slots and burst_window_s must be >= 0", field="burst_slots"
            )
        if burst_slots and (running_cap is None or burst_window_s < _MIN_BURST_WINDOW_S):
            raise ConfigurationError(
                f"burst credit needs a running_cap and a burst_window_s >= {_MIN_BURST_WINDOW_S}",
                field="burst_slots",
            )
        if now_s is None:
            now_s = self._now_s
        t = self._tenants.get(tenant_id)
        if t is None:
            t = self._tenants[tenant_id] = _Tenant(tenant_id)
        if t.burst_slots:
            self._accrue(t, now_s)  # settle the excess under the old cap first
        else:
            t.debt_at_s = now_s
        t.weight = float(weight)
        t.cap = _NO_CAP if running_cap is None else running_cap
        self._mark_over(t)
        t.guaranteed = guaranteed_slots
        t.burst_slots = burst_slots
        t.burst_window_s = float(burst_window_s)
        t.deferred = False
        if burst_slots:
            self._settle_burst(t, now_s)
        else:
            t.locked = False
            t.debt_s = 0.0
            self._cancel_wake(t)
            t.limit = t.cap
        self._refresh(t, rejoin=True)

    def set_slots(self, slots: int) -> None:
        """Change the global slot count; running items above a lowered count finish normally.

        Raises:
            ConfigurationError: ``slots < 1``.
        """
        _check_slots(slots)
        self._slots = slots

    # -- the decisions ---------------------------------------------------------------------

    def push(self, item: ReadyItem, now_s: float) -> None:
        """Queue a ready item. O(1), plus O(log T) if its tenant becomes eligible.

        Raises:
            NotFoundError: The tenant was never configured.
            ConflictError: An item with this key is already queued or running.
            ContractError: ``cost_hint_s`` is not a finite number > 0, or the lane is unknown.
        """
        self._now_s = now_s
        t = self._tenants.get(item.tenant_id)
        if t is None:
            raise NotFoundError(
                f"tenant {item.tenant_id!r} is not configured; call configure_tenant first",
                tenant_id=item.tenant_id,
            )
        key = item.key
        if key in self._queued or key in self._running:
            raise ConflictError(
                f"an item with key {key!r} is already queued or running; keys must be unique",
                key=key,
            )
        if not 0.0 < item.cost_hint_s < math.inf:  # also refuses NaN
            raise ContractError("cost_hint_s must be a finite number > 0", field="cost_hint_s")
        rank = _LANE_RANK.get(item.lane)
        if rank is None:
            rank = lane_rank(item.lane)  # raises the explanatory error
        idx = rank * 2 + (0 if item.in_flight else 1)
        if item.enqueued_s is None:
            item.enqueued_s = now_s
        lanes = t.lanes
        if lanes is None:
            lanes = t.lanes = [None, None, None, None, None, None]
        fifo = lanes[idx]
        if fifo is None:
            fifo = lanes[idx] = _Fifo()
        fifo.append(item)
        self._queued[key] = item
        t.queued += 1
        if t.queued == 1:
            self._with_work += 1
            self._refresh(t, rejoin=True)

    def pop(self, now_s: float) -> ReadyItem | None:
        """Take the next item to run, or None if no slot is free or nothing is eligible.

        O(log T) amortised. Burst decisions are recorded for :meth:`drain_notices`.
        """
        self._now_s = now_s
        if self._wake and self._wake[0][0] <= now_s:
            self._wake_due(now_s)
        if len(self._running) >= self._slots:
            return None
        while True:
            t, guaranteed = self._next_tenant()
            if t is None:
                return None
            if t.running >= t.limit:  # defensive: membership is kept exact by _refresh
                self._refresh(t, rejoin=False)
                continue
            idx, item = self._best_head(t, now_s)
            burst = t.running >= t.cap
            if burst and not self._grant_burst(t, item, now_s):
                continue  # exhausted: t is held at its cap and has left the heap
            if t.burst_slots:
                self._accrue(t, now_s)  # settle the old excess before ``running`` changes
            self._take(t, idx, item)
            t.running += 1
            self._mark_over(t)
            t.vtime = self._charged(t, item.cost_hint_s / t.weight, guaranteed)
            self._running[item.key] = (item, guaranteed)
            self._refresh(t, rejoin=False)
            if burst:
                self._notify(t, "burst_used", now_s)
            return item

    def done(self, tenant_id: str, key: Hashable, service_s: float, now_s: float) -> None:
        """Release a running item's slot and charge its tenant the actual service time.

        Call it when the step finishes, fails, is cancelled, or starts waiting (review, rate
        limit, timer, backoff): waiting must never hold a slot. O(log T).

        Args:
            tenant_id: The item's tenant (checked against the item).
            key: The item's key.
            service_s: How long the item held the slot (>= 0).
            now_s: Current time.

        Raises:
            NotFoundError: No running item of this tenant has this key.
            ContractError: ``service_s`` is negative or not finite.
        """
        grant = self._running.get(key)
        if grant is None or grant[0].tenant_id != tenant_id:
            raise NotFoundError(
                f"no running item {key!r} for tenant {tenant_id!r}", tenant_id=tenant_id, key=key
            )
        if not (service_s >= 0.0 and math.isfinite(service_s)):
            raise ContractError("service_s must be a finite number >= 0", field="service_s")
        self._now_s = now_s
        item, guaranteed = grant
        del self._running[key]
        t = self._tenants[tenant_id]
        if t.burst_slots:
            self._accrue(t, now_s)
        t.running -= 1
        self._mark_over(t)
        t.vtime = self._charged(t, (service_s - item.cost_hint_s) / t.weight, guaranteed)
        if t.burst_slots:
            t.deferred = False
            self._settle_burst(t, now_s)
        self._refresh(t, rejoin=True)

    def remove(self, key: Hashable) -> bool:
        """Withdraw a queued item (its run was cancelled). O(1).

        Returns:
            True if the item was queued; False if it is unknown or already running (a running
            item is released with :meth:`done`).
        """
        item = self._queued.pop(key, None)
        if item is None:
            return False
        t = self._tenants[item.tenant_id]
        t.queued -= 1
        if t.queued == 0:
            t.lanes = None  # also frees the withdrawn items still in its FIFOs
            self._with_work -= 1
            self._refresh(t, rejoin=False)
        return True

    def drain_notices(self) -> list[BurstNotice]:
        """Return and clear the burst notices recorded since the last call.

        The engine must drain them (e.g. after each round of ``pop``) and log them: burst
        credit is never used silently.
        """
        notices, self._notices = self._notices, []
        return notices

    # -- introspection ---------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """The global slot count."""
        return self._slots

    def running(self, tenant_id: str) -> int:
        """Items of ``tenant_id`` currently running (0 for an unknown tenant)."""
        t = self._tenants.get(tenant_id)
        return 0 if t is None else t.running

    def borrowing(self, tenant_id: str) -> bool:
        """Whether ``tenant_id`` runs more items than its cap (on burst slots)."""
        return tenant_id in self._over

    @property
    def borrowers(self) -> int:
        """How many tenants run more items than their cap."""
        return len(self._over)

    def queued(self, tenant_id: str) -> int:
        """Items of ``tenant_id`` currently queued (0 for an unknown tenant)."""
        t = self._tenants.get(tenant_id)
        return 0 if t is None else t.queued

    @property
    def total_running(self) -> int:
        """Items running across all tenants."""
        return len(self._running)

    @property
    def total_queued(self) -> int:
        """Items queued across all tenants."""
        return len(self._queued)

    @property
    def tenants_with_work(self) -> int:
        """Tenants with at least one queued item."""
        return self._with_work

    @property
    def next_wake_s(self) -> float | None:
        """When the earliest burst-exhausted tenant has repaid its debt, or None.

        :meth:`pop` restores such a tenant at that moment; a loop that calls ``pop`` only on
        events (a discrete-event simulation) should call it then too, or the restored tenant
        waits for the next unrelated event. Stale timer entries are dropped on the way.
        """
        wake = self._wake
        while wake and wake[0][2].wake_entry is not wake[0]:
            heapq.heappop(wake)
        return wake[0][0] if wake else None

    # -- internals -------------------------------------------------------------------------

    def _next_tenant(self) -> tuple[_Tenant | None, bool]:
        g_heap = self._g_heap
        while g_heap:
            entry = heapq.heappop(g_heap)
            t = entry[2]
            if t.g_entry is not entry:
                self._g_stale -= 1
                continue
            t.g_entry = None
            return t, True
        heap = self._heap
        while heap:
            entry = heapq.heappop(heap)
            t = entry[2]
            if t.entry is not entry:
                self._stale -= 1
                continue
            t.entry = None
            if entry[0] > self._vclock:
                self._vclock = entry[0]  # V = start tag of the latest fair-share pick
            return t, False
        return None, False

    def _charged(self, t: _Tenant, charge: float, guaranteed: bool) -> float:
        """``t``'s virtual time after a charge (a pick's hint, or a correction at ``done``)."""
        vtime = t.vtime + charge
        if not guaranteed:
            if vtime > self._vmax:
                self._vmax = vtime
            return vtime
        # Guaranteed service counts, but once the tenant is well ahead of every fair-share
        # tenant (it wins no fair-share pick either way) further debt would only hold it back
        # after contention eases, so it is not recorded. The margin of a round of its own
        # guarantee keeps ordinary jitter from being forgiven, which would bias it upwards.
        ceiling = self._vmax + (t.guaranteed + 1) * abs(charge)
        return max(t.vtime, ceiling) if vtime > ceiling else vtime

    def _best_head(self, t: _Tenant, now_s: float) -> tuple[int, ReadyItem]:
        lanes = t.lanes
        assert lanes is not None  # the tenant is eligible, so it has queued work
        queued = self._queued
        aging_s = self._aging_s
        best_idx = -1
        best_item: ReadyItem | None = None
        best_order = _NO_CAP
        best_enq = 0.0
        for idx in range(6):
            fifo = lanes[idx]
            if fifo is None:
                continue
            head = fifo.head
            item: ReadyItem = fifo[head]
            while queued.get(item.key) is not item:  # skip withdrawn items
                fifo[head] = None
                head += 1
                if head == len(fifo):
                    break
                item = fifo[head]
            fifo.head = head
            if head == len(fifo):
                lanes[idx] = None
                continue
            enq = now_s if item.enqueued_s is None else item.enqueued_s
            # ``order`` is ``effective rank * 2 + (0 if in-flight else 1)``: each aging period
            # promotes by one lane, i.e. by two positions. Ties go to the oldest. Each FIFO is
            # in push order, so its head is its best item and six comparisons decide.
            order = idx
            waited_s = now_s - enq
            if waited_s >= aging_s:
                order -= 2 * int(waited_s // aging_s)
            if order < best_order or (order == best_order and enq < best_enq):
                best_idx, best_item, best_order, best_enq = idx, item, order, enq
        assert best_item is not None
        return best_idx, best_item

    def _take(self, t: _Tenant, idx: int, item: ReadyItem) -> None:
        lanes = t.lanes
        assert lanes is not None
        fifo = lanes[idx]
        assert fifo is not None
        fifo[fifo.head] = None  # release the item as soon as it leaves the queue
        fifo.head += 1
        if fifo.head == len(fifo):
            lanes[idx] = None
        elif fifo.head >= 32 and fifo.head * 2 >= len(fifo):
            del fifo[: fifo.head]  # amortised O(1): each cell is moved at most once per halving
            fifo.head = 0
        del self._queued[item.key]
        t.queued -= 1
        if t.queued == 0:
            t.lanes = None
            self._with_work -= 1

    def _refresh(self, t: _Tenant, *, rejoin: bool) -> None:
        """Make ``t``'s heap membership match its state (eligible, below guarantee)."""
        has_work = t.queued > 0
        entry = t.entry
        if has_work and t.running < t.limit:
            if entry is None:
                if rejoin and t.vtime < self._vclock:
                    t.vtime = self._vclock  # no credit is banked while idle or capped
                t.entry = self._push_entry(self._heap, t.vtime, t)
            elif entry[0] != t.vtime:
                self._stale += 1
                t.entry = self._push_entry(self._heap, t.vtime, t)
        elif entry is not None:
            self._stale += 1
            t.entry = None
        g_entry = t.g_entry
        if has_work and t.running < t.guaranteed:
            if g_entry is None or g_entry[0] != t.vtime:
                if g_entry is not None:
                    self._g_stale += 1
                t.g_entry = self._push_entry(self._g_heap, t.vtime, t)
        elif g_entry is not None:
            self._g_stale += 1
            t.g_entry = None
        if self._stale > _COMPACT_MIN and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2].entry is e]
            heapq.heapify(self._heap)
            self._stale = 0
        if self._g_stale > _COMPACT_MIN and self._g_stale * 2 > len(self._g_heap):
            self._g_heap = [e for e in self._g_heap if e[2].g_entry is e]
            heapq.heapify(self._g_heap)
            self._g_stale = 0

    def _push_entry(self, heap: list[_Entry], key: float, t: _Tenant) -> _Entry:
        entry: _Entry = (key, next(self._seq), t)
        heapq.heappush(heap, entry)
        return entry

    # -- burst credit ------------------------------------------------------------------------

    def _accrue(self, t: _Tenant, now_s: float) -> None:
        """Integrate the excess (or repayment) since the last change of ``running``."""
        dt = now_s - t.debt_at_s
        if dt > 0.0:
            excess = t.running - t.cap
            if excess > 0:
                t.debt_s += excess * dt
            elif t.debt_s > 0.0:
                t.debt_s = max(0.0, t.debt_s - dt)
            t.debt_at_s = now_s

    def _grant_burst(self, t: _Tenant, item: ReadyItem, now_s: float) -> bool:
        """Whether ``item`` may start above ``t``'s cap; if not, hold ``t`` at its cap."""
        self._accrue(t, now_s)
        excess_after = t.running + 1 - t.cap
        # Project as if every excess item runs one more hint: bounds the overshoot of the
        # window to what running items overrun their hints.
        if t.debt_s + excess_after * item.cost_hint_s <= t.burst_window_s:
            return True
        if t.debt_s > _DEBT_EPSILON_S:
            self._lock(t, now_s)  # credit used up: repay it all before bursting again
        else:
            t.deferred = True  # this item is too big for the whole window; retry after a done
        self._settle_burst(t, now_s)
        self._refresh(t, rejoin=False)
        return False

    def _lock(self, t: _Tenant, now_s: float) -> None:
        t.locked = True
        t.limit = t.cap
        self._notify(t, "burst_exhausted", now_s)

    def _settle_burst(self, t: _Tenant, now_s: float) -> None:
        """After an accrual: exhaust, restore, or schedule the moment the debt is repaid."""
        if not t.burst_slots:
            return
        if not t.locked and t.debt_s >= t.burst_window_s:
            self._lock(t, now_s)
        if t.locked and t.debt_s <= _DEBT_EPSILON_S:
            t.debt_s = 0.0
            t.locked = False
            self._notify(t, "burst_restored", now_s)
        self._cancel_wake(t)
        if t.locked and t.running <= t.cap:
            # Repayment runs at 1 s/s from now on: while locked, running cannot exceed cap.
            t.wake_entry = self._push_entry(self._wake, now_s + t.debt_s, t)
        t.limit = t.cap if (t.locked or t.deferred) else t.cap + t.burst_slots

    def _mark_over(self, t: _Tenant) -> None:
        if t.running > t.cap:
            self._over.add(t.tenant_id)
        else:
            self._over.discard(t.tenant_id)

    def _cancel_wake(self, t: _Tenant) -> None:
        # The wake heap only ever holds exhausted tenants, so it is small: no compaction.
        t.wake_entry = None

    def _wake_due(self, now_s: float) -> None:
        wake = self._wake
        while wake and wake[0][0] <= now_s:
            entry = heapq.heappop(wake)
            t = entry[2]
            if t.wake_entry is not entry:
                continue
            t.wake_entry = None
            self._accrue(t, now_s)
            self._settle_burst(t, now_s)
            self._refresh(t, rejoin=True)

    def _notify(self, t: _Tenant, kind: BurstNoticeKind, now_s: float) -> None:
        self._notices.append(
            BurstNotice(
                tenant_id=t.tenant_id,
                kind=kind,
                at_s=now_s,
                running=t.running,
                running_cap=t.cap,
                burst_debt_s=t.debt_s,
                burst_window_s=t.burst_window_s,
            )
        )


def _check_slots(slots: int) -> None:
    if slots < 1:
        raise ConfigurationError("slots must be >= 1", field="slots", value=slots)
