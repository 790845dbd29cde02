"""Global quotas across cells: leases the plane grants, and what a cell may use without one.

A global limit (a vendor's requests per minute shared by every tenant, say) is split between
the cells as **leases**: each cell gets a rate and a burst of its own and enforces them locally
(its gateway's platform bucket), so the hot path never calls the plane. The allocator keeps one
invariant, whatever order heartbeats arrive in:

    the sum of the leases held by the cells never exceeds the global limit.

A lease is *held* from the moment it is granted until the plane grants that cell another one
(or the cell is deleted): a cell that stops heartbeating keeps counting with its last lease,
because it may still be using it. A cell's new lease is therefore at most the global limit
minus what every other cell holds; shares are sized by demand (``1 + backlog``: queued and
running steps) so that a busy cell grows as quiet ones shrink on their next heartbeat.

A cell that cannot reach the plane keeps its lease until it expires, then uses
:func:`decayed`: the smaller of its last lease and an even share of the limit among the cells
it last heard of. That is never above the last lease, so the sum stays within the limit.

Pure: no I/O, no clock reads (time comes in as arguments).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Allocator", "GlobalLimit", "Lease", "decayed"]


@dataclass(frozen=True, slots=True)
class GlobalLimit:
    """A limit shared by every cell: ``rate_per_s`` steady, ``burst`` at once."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError("a global limit's rate must be a positive finite number")
        if self.burst < 1:
            raise ValueError("a global limit's burst must be at least 1")


@dataclass(frozen=True, slots=True)
class Lease:
    """A cell's share of one global limit, valid until ``expires_at`` (then :func:`decayed`)."""

    resource: str
    rate_per_s: float
    burst: int
    expires_at: float
    cells: int  # how many cells shared the limit when this was granted (for the decay)
    limit_rate_per_s: float
    limit_burst: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "resource": self.resource,
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
            "expires_at": self.expires_at,
            "cells": self.cells,
            "limit_rate_per_s": self.limit_rate_per_s,
            "limit_burst": self.limit_burst,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Lease:
        return cls(
            str(data["resource"]),
            float(data["rate_per_s"]),  # type: ignore[arg-type]
            int(data["burst"]),  # type: ignore[call-overload]
            float(data["expires_at"]),  # type: ignore[arg-type]
            int(data["cells"]),  # type: ignore[call-overload]
            float(data["limit_rate_per_s"]),  # type: ignore[arg-type]
            int(data["limit_burst"]),  # type: ignore[call-overload]
        )


def decayed(last: Lease, now: float) -> tuple[float, int]:
    """What a cell may use of ``last`` at ``now``: the lease itself until it expires, then the
    smaller of it and an even share of the limit (never above the last lease)."""
    if now < last.expires_at:
        return last.rate_per_s, last.burst
    cells = max(1, last.cells)
    share_rate = last.limit_rate_per_s / cells
    share_burst = max(0, last.limit_burst // cells)
    return min(last.rate_per_s, share_rate), min(last.burst, share_burst)


class Allocator:
    """The plane's side: grants leases on heartbeats, keeping the sum within each limit.

    Args:
        ttl_s: how long a lease is valid without a renewal (the cell then decays it).
    """

    def __init__(self, ttl_s: float = 10.0) -> None:
        if not ttl_s > 0:
            raise ValueError("ttl_s must be positive")
        self.ttl_s = ttl_s
        self.limits: dict[str, GlobalLimit] = {}
        self.held: dict[str, dict[str, tuple[float, int]]] = {}  # resource -> cell -> lease
        self.demand: dict[str, float] = {}  # cell -> 1 + backlog

    def set_limit(self, resource: str, limit: GlobalLimit | None) -> None:
        """Set (or with None remove) a global limit. Lowering one takes effect as cells renew:
        until then the held leases may exceed the new limit, never the old one."""
        if limit is None:
            self.limits.pop(resource, None)
            self.held.pop(resource, None)
        else:
            self.limits[resource] = limit
            self.held.setdefault(resource, {})

    def forget(self, cell: str) -> None:
        """The cell is gone for good (deleted and stopped): its leases are free."""
        self.demand.pop(cell, None)
        for holders in self.held.values():
            holders.pop(cell, None)

    def held_total(self, resource: str) -> tuple[float, int]:
        holders = self.held.get(resource, {})
        return sum(r for r, _ in holders.values()), sum(b for _, b in holders.values())

    def grant(self, cell: str, backlog: int, now: float) -> dict[str, Lease]:
        """The leases for ``cell``, whose backlog (queued + running steps) is ``backlog``."""
        self.demand[cell] = 1.0 + max(0, backlog)
        total_demand = sum(self.demand.values())
        cells = len(self.demand)
        out: dict[str, Lease] = {}
        for resource, limit in self.limits.items():
            holders = self.held.setdefault(resource, {})
            share = self.demand[cell] / total_demand
            others_rate = sum(r for c, (r, _) in holders.items() if c != cell)
            others_burst = sum(b for c, (_, b) in holders.items() if c != cell)
            rate = max(0.0, min(limit.rate_per_s * share, limit.rate_per_s - others_rate))
            burst = max(0, min(math.floor(limit.burst * share), limit.burst - others_burst))
            holders[cell] = (rate, burst)
            out[resource] = Lease(
                resource,
                rate,
                burst,
                now + self.ttl_s,
                cells,
                limit.rate_per_s,
                limit.burst,
            )
        return out
