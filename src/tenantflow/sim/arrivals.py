"""Arrival streams: when each run is submitted, by which tenant, with which random seed.

A stream yields one submission at a time, so the event heap holds one pending arrival per
stream however long the scenario is. Every stream has its own generator seeded from the
scenario seed and the stream's position, so the arrivals — and the per-run seeds drawn with
them, from which every later draw of that run comes — are the same whether tenant controls
are on or off: the two variants see exactly the same workload.

* A steady stream is the superposition of a group's per-tenant Poisson processes (rate
  ``count * rate``, each arrival assigned to a tenant uniformly). A diurnal shape is applied
  by thinning: candidates arrive at the peak rate and are kept with probability
  ``weight(hour) / peak weight``.
* A burst stream submits ``count`` runs evenly over ``spread`` seconds, round-robin over the
  group's tenants.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from tenantflow.domain.policy import Lane
from tenantflow.sim.scenario import Scenario, TenantGroup
from tenantflow.sim.spec import BurstSpec

__all__ = ["Arrival", "ArrivalStream", "BurstStream", "SteadyStream", "streams_for"]


@dataclass(frozen=True, slots=True)
class Arrival:
    """One submission.

    Attributes:
        at_s: Scenario seconds.
        tenant_id: The submitting tenant.
        lane: The run's lane.
        run_seed: Seed of the run's own random generator.
    """

    at_s: float
    tenant_id: str
    lane: Lane
    run_seed: int


class ArrivalStream(Protocol):
    """A source of arrivals in time order; :meth:`next` returns None when it is exhausted."""

    def next(self) -> Arrival | None:
        """The next arrival, or None."""
        ...


class SteadyStream:
    """Poisson arrivals of one tenant group until ``end_s``, optionally diurnal."""

    def __init__(self, group: TenantGroup, seed: int, end_s: float, day_offset_s: float) -> None:
        self._group = group
        self._rng = random.Random(seed)
        self._end_s = end_s
        self._day_offset_s = day_offset_s
        self._t = 0.0
        peak = max(group.diurnal) if group.diurnal else 1.0
        self._peak = peak
        self._rate = group.rate_per_s * len(group.tenant_ids) * peak

    def next(self) -> Arrival | None:
        if self._rate <= 0.0:
            return None
        rng, diurnal = self._rng, self._group.diurnal
        while True:
            self._t += rng.expovariate(self._rate)
            if self._t >= self._end_s:
                return None
            if diurnal is None:
                break
            hour = int(((self._day_offset_s + self._t) % 86400.0) // 3600.0)
            if rng.random() * self._peak < diurnal[hour]:
                break
        ids = self._group.tenant_ids
        tenant = ids[rng.randrange(len(ids))] if len(ids) > 1 else ids[0]
        return Arrival(self._t, tenant, self._group.lane, rng.getrandbits(63))


class BurstStream:
    """``count`` runs from a group, evenly spread from ``at``."""

    def __init__(self, burst: BurstSpec, group: TenantGroup, seed: int) -> None:
        self._burst = burst
        self._group = group
        self._rng = random.Random(seed)
        self._n = 0
        self._lane: Lane = burst.lane or group.policy.default_lane

    def next(self) -> Arrival | None:
        burst = self._burst
        if self._n >= burst.count:
            return None
        at_s = burst.at + burst.spread * self._n / burst.count
        ids = self._group.tenant_ids
        tenant = ids[self._n % len(ids)]
        self._n += 1
        return Arrival(at_s, tenant, self._lane, self._rng.getrandbits(63))


def streams_for(scenario: Scenario, seed: int) -> list[ArrivalStream]:
    """Every arrival stream of the scenario, each with its own derived seed."""
    spec = scenario.spec
    day_offset_s = (
        spec.start.hour * 3600.0 + spec.start.minute * 60.0 + spec.start.second
    ) % 86400.0
    by_name = {g.name: g for g in scenario.groups}
    streams: list[ArrivalStream] = []
    for index, group in enumerate(scenario.groups):
        if group.rate_per_s > 0.0 and math.isfinite(group.rate_per_s):
            streams.append(
                SteadyStream(group, _derive(seed, 1, index), spec.duration, day_offset_s)
            )
    for index, burst in enumerate(spec.bursts):
        streams.append(BurstStream(burst, by_name[burst.group], _derive(seed, 2, index)))
    return streams


def _derive(seed: int, kind: int, index: int) -> int:
    """A distinct, reproducible seed per stream (string seeds hash with SHA-512 in CPython)."""
    return random.Random(f"{seed}:{kind}:{index}").getrandbits(63)
