"""What an operator and a tenant's dashboard read of an engine, as public values.

The :class:`~tenantflow.placement.control.ControlPlane` methods ``load``, ``tenant_load``,
``placement``, ``health``, ``breakers``, ``latency``, ``run_costs`` and ``version_list`` return
these values; :class:`PlaneReads` computes them for an :class:`~tenantflow.engine.engine.Engine`
(embedded, a cluster's front or a worker) from its dispatcher, admission, breakers and stores, so
that a reader (the dashboard) never reaches into those parts and works on any placement that
implements the protocol.

Latency against a no-burst baseline (:class:`LatencyTracker`): per tenant, the submit-to-finish
time of each run this process finished. A run is a *no-burst* sample when, at its submission and
at its finish, no other tenant had a step waiting for a slot in this process; the baseline is the
p99 of a tenant's last no-burst samples, compared with the p99 of its runs that finished in the
last :data:`RECENT_S` seconds. Both are nearest-rank p99 over bounded rings.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenantflow.domain.breaker import BreakerState, CircuitBreaker
from tenantflow.domain.fairness import jain_index, max_min_shares
from tenantflow.observability.events import Observer, RunFinished, RunSubmitted

if TYPE_CHECKING:
    from tenantflow.domain.admission import AdmissionController
    from tenantflow.engine.cluster import Membership
    from tenantflow.engine.dispatch import Dispatcher
    from tenantflow.engine.regions import RegionRouter
    from tenantflow.engine.tenants import TenantInfo
    from tenantflow.ports import Clock, Coordinator

__all__ = [
    "RECENT_S",
    "BreakerView",
    "LatencyTracker",
    "MemberHealth",
    "PlacementInfo",
    "PlaneLoad",
    "PlaneReads",
    "RunCost",
    "TenantLatency",
    "TenantLoad",
    "VersionInfo",
    "p99",
]

RECENT_S = 300.0
"""The window of "now" for a tenant's latency: runs that finished this recently."""

_RING = 500  # samples kept per tenant and kind


@dataclass(frozen=True, slots=True)
class TenantLoad:
    """One tenant's work in this process now, with its policy's weight and cap and its weighted
    max-min fair share of the slots (the share :func:`jain_index` compares against);
    ``active_runs`` and ``queued_runs`` are None where runs are not admitted by caps (tenant
    controls off)."""

    tenant: str
    running: int
    queued: int
    active_runs: int | None
    queued_runs: int | None
    weight: float
    cap: float
    share: float


@dataclass(frozen=True, slots=True)
class PlaneLoad:
    """Who holds the slots now: Jain's index, slots, and each busy tenant's load."""

    at_s: float
    jain: float
    slots: int
    used: int
    queued: int
    runs_active: int
    runs_queued: int
    tenants: list[TenantLoad]


@dataclass(frozen=True, slots=True)
class PlacementInfo:
    """How this control plane is placed: ``mode`` (embedded, front, worker, or another
    placement's name), this process's id, the stores (regions) it reads, and what else the
    placement says of itself (``detail``: a federated cell names itself and its plane)."""

    mode: str
    process: str
    stores: list[str]
    executes: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """One member of the placement, of any ``kind``: a ``process`` (this one), a cluster
    ``worker``, a federated ``cell`` or its ``plane``, a mesh ``agent``; ``state`` is ``up``,
    ``late`` (its lease or beat is overdue) or ``down``; ``detail`` holds what the kind reports
    (tenants, slots, URL...) as short values."""

    kind: str
    id: str
    state: str
    last_seen_s: float | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BreakerView:
    """A dependency's circuit breaker now."""

    name: str
    state: str
    failures: int
    threshold: int
    cooldown_s: float
    retry_after_s: float
    last_change_s: float | None
    changes: int


@dataclass(frozen=True, slots=True)
class TenantLatency:
    """A tenant's run latency (submit to finish): p99 of the last :data:`RECENT_S` seconds
    against the p99 of its no-burst samples; ``ratio`` is now over baseline."""

    tenant: str
    recent: int
    p99_s: float | None
    baseline_samples: int
    baseline_p99_s: float | None

    @property
    def ratio(self) -> float | None:
        if self.p99_s is None or not self.baseline_p99_s:
            return None
        return self.p99_s / self.baseline_p99_s


@dataclass(frozen=True, slots=True)
class RunCost:
    """What a run spent (its ``run:<id>`` ledgers): micro-dollars and tokens, and the limits."""

    micros: int = 0
    tokens: int = 0
    limit_micros: int | None = None
    limit_tokens: int | None = None
    ledgers: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A state version without its state (the list a page shows; the state loads on demand)."""

    version: int
    parent: int | None
    step: str | None
    hash: str
    created_at: float


def p99(values: Iterable[float]) -> float | None:
    """The nearest-rank 99th percentile (None for no values)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class LatencyTracker(Observer):
    """Per tenant: recent run latencies and no-burst ones (see the module's docstring).

    Args:
        clock: the engine's clock.
        others_queued: steps of tenants other than the given one waiting for a slot now.
    """

    def __init__(self, clock: Clock, others_queued: Callable[[str], int]) -> None:
        self._clock = clock
        self._others = others_queued
        self._contended: dict[tuple[str, str], bool] = {}
        self.recent: dict[str, deque[tuple[float, float]]] = {}
        self.baseline: dict[str, deque[float]] = {}

    def on_run_submitted(self, event: RunSubmitted) -> None:
        if len(self._contended) > 20_000:  # runs finished elsewhere: forget the oldest
            del self._contended[next(iter(self._contended))]
        self._contended[(event.tenant_id, event.run_id)] = self._others(event.tenant_id) > 0

    def on_run_finished(self, event: RunFinished) -> None:
        tenant = event.tenant_id
        latency = max(0.0, event.at_s - event.submitted_at_s)
        contended = self._contended.pop((tenant, event.run_id), None)
        self.recent.setdefault(tenant, deque(maxlen=_RING)).append((event.at_s, latency))
        if contended is False and self._others(tenant) == 0:
            self.baseline.setdefault(tenant, deque(maxlen=_RING)).append(latency)

    def of(self, tenant: str) -> TenantLatency:
        since = self._clock.now() - RECENT_S
        recent = [v for at, v in self.recent.get(tenant, ()) if at >= since]
        base = self.baseline.get(tenant, ())
        return TenantLatency(tenant, len(recent), p99(recent), len(base), p99(base))

    def tenants(self) -> list[str]:
        return sorted(self.recent.keys() | self.baseline.keys())


class PlaneReads:
    """The engine's answers to the reads above, from its parts (nothing here writes)."""

    def __init__(
        self,
        *,
        clock: Clock,
        dispatcher: Dispatcher,
        admission: AdmissionController,
        breakers: Mapping[str, CircuitBreaker],
        router: RegionRouter,
        policy_of: Callable[[str], TenantInfo | None],
        controls: bool,
        mode: str,
        process: str,
        executes: bool,
        membership: Callable[[], Membership | None],
        coordinator: Coordinator | None = None,
        lease_s: float = 30.0,
    ) -> None:
        self._clock = clock
        self._dispatcher = dispatcher
        self._admission = admission
        self._breakers = breakers
        self._router = router
        self._policy_of = policy_of
        self._controls = controls
        self._mode = mode
        self._process = process
        self._executes = executes
        self._membership = membership
        self._coordinator = coordinator
        self._lease_s = lease_s
        self._describe: Callable[[], dict[str, Any]] | None = None
        self._more: Callable[[], Awaitable[list[MemberHealth]]] | None = None
        self.latencies = LatencyTracker(clock, self._others_queued)

    def extend(
        self,
        *,
        mode: str,
        describe: Callable[[], dict[str, Any]],
        members: Callable[[], Awaitable[list[MemberHealth]]],
    ) -> None:
        """Let a placement built around this engine (a federated cell) say what it is:
        ``mode`` names it, ``describe()`` is :attr:`PlacementInfo.detail`, and ``members()``
        adds its members (the cells the plane knows, the plane) to :meth:`health`."""
        self._mode = mode
        self._describe = describe
        self._more = members

    def _others_queued(self, tenant: str) -> int:
        d = self._dispatcher
        return d.scheduler.total_queued - d.queued_by.get(tenant, 0)

    def _policy(self, tenant: str) -> tuple[float, float]:
        info = self._policy_of(tenant)
        if info is None:
            return 1.0, math.inf
        return info.policy.weight, float(info.policy.max_running_steps)

    def load(self) -> PlaneLoad:
        """Every busy tenant's running and queued steps against its fair share, and Jain's
        index of running over share (as ``tenantflow_fairness_index`` computes it)."""
        d = self._dispatcher
        running, queued = dict(d.running_by), dict(d.queued_by)
        demand: dict[str, float] = {}
        weight: dict[str, float] = {}
        cap: dict[str, float] = {}
        for tenant in running.keys() | queued.keys():
            total = running.get(tenant, 0) + queued.get(tenant, 0)
            if total == 0:
                continue
            demand[tenant] = float(total)
            weight[tenant], cap[tenant] = self._policy(tenant)
        slots = d.scheduler.slots
        shares = max_min_shares(demand, weight, cap, float(slots)) if demand else {}
        ratios = [running.get(t, 0) / s for t, s in shares.items() if s > 1e-9]
        rows = [
            TenantLoad(
                t,
                running.get(t, 0),
                queued.get(t, 0),
                self._admission.active(t) if self._controls else None,
                self._admission.queued(t) if self._controls else None,
                weight[t],
                cap[t],
                shares.get(t, 0.0),
            )
            for t in sorted(demand, key=lambda t: (-running.get(t, 0), t))
        ]
        return PlaneLoad(
            self._clock.now(),
            jain_index(ratios) if ratios else 1.0,
            slots,
            d.scheduler.total_running,
            d.scheduler.total_queued,
            self._admission.total_active,
            self._admission.total_queued,
            rows,
        )

    def tenant_load(self, tenant: str) -> TenantLoad:
        """One tenant's load (what its own usage page shows: nothing of other tenants)."""
        d = self._dispatcher
        weight, cap = self._policy(tenant)
        return TenantLoad(
            tenant,
            d.running_by.get(tenant, 0),
            d.queued_by.get(tenant, 0),
            self._admission.active(tenant) if self._controls else None,
            self._admission.queued(tenant) if self._controls else None,
            weight,
            cap,
            0.0,
        )

    def placement(self) -> PlacementInfo:
        detail = self._describe() if self._describe is not None else {}
        return PlacementInfo(
            self._mode, self._process, sorted(self._router.stores), self._executes, detail
        )

    async def health(self) -> list[MemberHealth]:
        """This process and, in a cluster, every worker with a heartbeat in the database
        (``late`` once its last beat is older than a lease)."""
        now = self._clock.now()
        d = self._dispatcher
        me: dict[str, Any] = {
            "mode": self._mode,
            "slots": d.scheduler.slots,
            "running": d.scheduler.total_running,
            "queued": d.scheduler.total_queued,
        }
        membership = self._membership()
        members: list[MemberHealth] = []
        state = "up"
        if membership is not None:
            held_until = membership._held_until
            me["tenants"] = len(membership.owned)
            me["beats"] = membership.beats
            state = "up" if held_until >= now else "late"
        members.append(MemberHealth("process", self._process, state, now, me))
        if self._coordinator is not None:
            for row in await self._coordinator.members():
                if row["id"] == self._process:
                    continue
                info = row.get("info")
                if isinstance(info, str):
                    info = json.loads(info)
                held = [t for t in row.get("tenants") or () if float(t["expires_at"]) >= now]
                detail = {"tenants": len(held), **(info if isinstance(info, dict) else {})}
                beat = row.get("beat_at")
                if beat is None:  # it left; its leases remain until they expire
                    state = "down"
                else:
                    state = "late" if float(beat) < now - self._lease_s else "up"
                last = None if beat is None else float(beat)
                members.append(MemberHealth("worker", str(row["id"]), state, last, detail))
        if self._more is not None:
            members.extend(await self._more())
        return members

    def breakers(self) -> list[BreakerView]:
        now = self._clock.now()
        out = []
        for name, b in sorted(self._breakers.items()):
            state = b.state
            if state == BreakerState.OPEN and b.retry_after_s(now) == 0.0:
                state = BreakerState.HALF_OPEN  # its next call is the trial
            out.append(
                BreakerView(
                    name,
                    state.value,
                    b.failures,
                    b.failure_threshold,
                    b.cooldown_s,
                    b.retry_after_s(now),
                    b.transitions[-1][0] if b.transitions else None,
                    len(b.transitions),
                )
            )
        return out

    def latency(self, tenants: Sequence[str] | None = None) -> list[TenantLatency]:
        wanted = self.latencies.tenants() if tenants is None else list(tenants)
        return [self.latencies.of(t) for t in wanted]

    async def run_costs(self, tenant: str, run_ids: Sequence[str]) -> dict[str, RunCost]:
        """Each run's spend from its ``run:<id>`` ledgers (runs without one cost nothing)."""
        store = self._router.store_for_tenant(tenant)
        out: dict[str, RunCost] = {}
        for run_id in dict.fromkeys(run_ids):
            rows = await store.ledgers(tenant, f"run:{run_id}")
            micros = [r for r in rows if r["unit"] == "micros"]
            tokens = [r for r in rows if r["unit"] == "tokens"]
            out[run_id] = RunCost(
                sum(int(r.get("spent") or 0) for r in micros),
                sum(int(r.get("spent") or 0) for r in tokens),
                _limit(micros),
                _limit(tokens),
                tuple(rows),
            )
        return out

    async def version_list(self, tenant: str, run_id: str, upto: int) -> list[VersionInfo]:
        rows = await self._router.store_for_tenant(tenant).state_versions(tenant, run_id, upto=upto)
        return [VersionInfo(v.version, v.parent, v.step, v.hash, v.created_at) for v in rows]


def _limit(rows: list[dict[str, Any]]) -> int | None:
    limits = [int(r["limit"]) for r in rows if r.get("limit") is not None]
    return min(limits) if limits else None
