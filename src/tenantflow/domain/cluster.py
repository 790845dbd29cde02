"""Workers sharing one database: which worker drives which tenant, and what they tell each other.

A tenant is driven by exactly one worker at a time (its *owner*, holding a lease on the tenant):
all of its runs — admission against its active-run cap, fair dispatch against its running-step
cap, its review timers — live in that one process, so the single-process guarantees hold for
every tenant with any number of workers. Tenants are spread over the live workers by rendezvous
(highest random weight) hashing: each (tenant, worker) pair has a pseudo-random score and the
tenant goes to the worker with the highest. When a worker joins or leaves, only the tenants whose
best worker changed move (about 1/n of them), and every worker computes the same assignment from
the same list of live workers, with no coordinator.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Command", "Notice", "assign", "owner_of"]


@dataclass(frozen=True, slots=True)
class Command:
    """A run command (cancel a run, decide a review) waiting for the worker that drives it."""

    id: int
    tenant_id: str
    kind: str
    target: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notice:
    """A wake-up between processes: ``kind`` (``run``, ``command``, ``tenant``) about ``target``
    of tenant ``tenant_id``. A hint only: what it announces is in the store."""

    kind: str
    tenant_id: str
    target: str


def _score(tenant: str, worker: str) -> int:
    digest = hashlib.blake2b(f"{tenant}\x00{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(tenant: str, workers: Sequence[str]) -> str | None:
    """The worker that should drive ``tenant`` (None when no worker is alive)."""
    if not workers:
        return None
    return max(workers, key=lambda w: (_score(tenant, w), w))


def assign(tenants: Iterable[str], workers: Sequence[str], me: str) -> list[str]:
    """The tenants ``me`` should drive, in the order given."""
    return [t for t in tenants if owner_of(t, workers) == me]
