"""Workers sharing one database: which worker drives which tenant, and what they tell each other.

A tenant is driven by exactly one worker at a time (its *owner*, holding a lease on the tenant):
all of its runs — admission against its active-run cap, fair dispatch against its running-step
cap, its review timers — live in that one process, so the single-process guarantees hold for
every tenant with any number of workers. Tenants are spread over the live workers by rendezvous
(highest random weight) hashing with bounded loads: each (tenant, worker) pair has a
pseudo-random score, and each tenant goes to the worker it scores highest that still has room,
a worker's room being an equal share of the tenants (some workers one more, when they do not
divide evenly). Plain rendezvous hashing moves the fewest tenants when a worker joins or leaves,
but its shares are uneven with few tenants per worker (30 tenants on 3 workers: 13/12/5 is
common), and the worker with the most tenants sets the pace of all. The bound keeps the shares
within one tenant of each other, at the price of a few more moves: tenants are placed in a fixed
order (the most decided first: highest top score), so a change moves the tenants whose first
choice changed and, when shares shrink, the least decided tenants of a full worker. Every
worker computes the same assignment from the same lists of tenants and live workers, with no
coordinator (while the lists differ for a moment, the tenant leases in the store keep each
tenant with one worker).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ENDED", "Command", "Notice", "assign", "owners"]


@dataclass(frozen=True, slots=True)
class Command:
    """A run command (cancel a run, decide a review) waiting for the worker that drives it."""

    id: int
    tenant_id: str
    kind: str
    target: str
    payload: dict[str, Any]


ENDED = "ended"
"""The kind of a run's end announced (its target: the run's id; see
:mod:`tenantflow.engine.ends`)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A wake-up between processes: ``kind`` (``run``, ``command``, ``tenant``, or
    :data:`ENDED`) about ``target`` of tenant ``tenant_id``. A hint only: what it announces is
    in the store."""

    kind: str
    tenant_id: str
    target: str


def _score(tenant: str, worker: str) -> int:
    digest = hashlib.blake2b(f"{tenant}\x00{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(tenants: Iterable[str], workers: Iterable[str]) -> dict[str, str]:
    """The worker that should drive each of ``tenants`` (none when no worker is alive)."""
    live = sorted(set(workers))
    names = sorted(set(tenants))
    if not live:
        return {}
    # An equal share each: ``base`` tenants, and one more for the first ``extra`` to fill up.
    base, extra = divmod(len(names), len(live))
    ranked = {t: sorted(((_score(t, w), w) for w in live), reverse=True) for t in names}
    load = dict.fromkeys(live, 0)
    owner: dict[str, str] = {}
    for tenant in sorted(names, key=lambda t: (ranked[t][0], t), reverse=True):
        worker = next(
            w for _, w in ranked[tenant] if load[w] < base or (load[w] == base and extra > 0)
        )
        if load[worker] == base:
            extra -= 1
        load[worker] += 1
        owner[tenant] = worker
    return owner


def assign(tenants: Iterable[str], workers: Sequence[str], me: str) -> list[str]:
    """The tenants ``me`` should drive, in the order given."""
    given = list(tenants)
    owner = owners(given, workers)
    return [t for t in given if owner.get(t) == me]
