"""Rate limits on the fabric: token leases per agent process, moved by compare-and-set.

A tenant's rate limit for one resource (``"tool:credit_bureau"``, ``"model:gpt-4"``; the
platform's shared limits under the tenant ``*``) is one token bucket in KV ``LEDGER_<r>``, key
``<tenant>.rate.<resource>`` (three tokens: no budget ledger's key, which has two, can be one).
The entry holds the pool (``level`` tokens as of ``at``, refilled at ``rate_per_s``) and the
**leases**: per agent process, the tokens it took and when its lease expires.

* **Lease.** An agent that needs a token and holds none takes a batch (at most what the pool
  has) with one KV ``update`` at the revision it read; of two agents leasing at once one commits
  and the other reads again. It then spends the batch locally, one token per call, with no round
  trip, and never after its lease's expiry.
* **Return.** When it leases again, or closes, it gives back what it did not spend (only while
  its lease is still in the entry: a lapsed lease's tokens are gone).
* **Expiry.** A lease not renewed within its TTL lapses: whoever next reads the entry drops it.
  A dead agent's tokens therefore stop counting after the TTL.
* **Refill.** The pool grows at ``rate_per_s`` up to ``burst`` minus the tokens out on live
  leases, so ``level + leased <= burst`` always: at any instant no more than ``burst`` tokens
  can be spent across every agent, and over any span ``T`` no more than ``burst + rate * T``
  (a token is taken from the pool before it is spent, and the pool only grows by the refill).
  Tokens leased to an agent that died count against the burst until its lease lapses; then
  the refill makes them available to the others.

Times are wall-clock seconds from the ``clock`` given (the agents' clocks are assumed to agree
to well within a lease's TTL; an agent also stops spending a lease ``margin_s`` before its
expiry by its own clock).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region, token
from tenantflow.errors import ConflictError

__all__ = ["LeaseGrant", "RateBucket", "RateLeases", "bucket_key"]

MAX_TRIES = 256


def bucket_key(tenant: str, resource: str) -> str:
    """The KV key of ``tenant``'s bucket for ``resource`` (see the module doc)."""
    return f"{token(tenant)}.rate.{token(resource)}"


@dataclass(slots=True)
class RateBucket:
    """One token bucket with its leases (the KV entry's value)."""

    rate_per_s: float
    burst: int
    level: float
    at: float
    leases: dict[str, list[float]] = field(default_factory=dict)
    """holder -> [tokens leased, expires at]"""

    @property
    def leased(self) -> int:
        return sum(int(n) for n, _ in self.leases.values())

    def expire(self, now: float) -> None:
        """Drop the leases that lapsed by ``now``."""
        for holder in [h for h, (_, exp) in self.leases.items() if exp <= now]:
            del self.leases[holder]

    def refill(self, now: float, rate_per_s: float, burst: int) -> None:
        """Apply the (possibly changed) limit and refill up to ``burst`` minus the leased."""
        self.rate_per_s, self.burst = rate_per_s, burst
        if now > self.at:
            self.level += (now - self.at) * rate_per_s
            self.at = now
        self.level = max(0.0, min(self.level, float(burst - self.leased)))

    def retry_after(self) -> float:
        """Seconds until a token could be in the pool (at least the time to refill one)."""
        short = max(0.0, 1.0 - self.level)
        wait = short / self.rate_per_s if self.rate_per_s > 0 else math.inf
        if self.leased + 1 > self.burst and self.leases:
            wait = max(wait, min(exp for _, exp in self.leases.values()) - self.at)
        return max(0.001, wait)

    def dump(self) -> bytes:
        return json.dumps(
            {
                "rate_per_s": self.rate_per_s,
                "burst": self.burst,
                "level": self.level,
                "at": self.at,
                "leases": self.leases,
            }
        ).encode()

    @classmethod
    def load(cls, raw: bytes) -> RateBucket:
        body = json.loads(raw)
        return cls(
            float(body["rate_per_s"]),
            int(body["burst"]),
            float(body["level"]),
            float(body["at"]),
            {str(k): [float(v[0]), float(v[1])] for k, v in body.get("leases", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """What one lease call answered: ``tokens`` granted (0: refused) until ``expires_at``."""

    tokens: int
    expires_at: float
    retry_after_s: float = 0.0


@dataclass(slots=True)
class _Local:
    tokens: int = 0
    expires_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RateLeases:
    """One agent process's leases on one region's rate buckets (see the module doc).

    Args:
        fabric: the agent's connection.
        holder: this process's name in the leases (unique per process).
        ttl_s: how long a lease lives unless the agent leases again.
        batch: tokens asked for per lease (capped by the limit's burst, see :meth:`batch_for`).
        margin_s: a lease is not spent in its last ``margin_s`` by the agent's clock.
        clock: wall-clock seconds.
    """

    def __init__(
        self,
        fabric: Fabric,
        holder: str,
        *,
        ttl_s: float = 10.0,
        batch: int = 8,
        margin_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fabric = fabric
        self.holder = holder
        self.ttl_s = ttl_s
        self.batch = max(1, batch)
        self.margin_s = min(margin_s, ttl_s / 2)
        self.clock = clock
        self._kv: dict[str, Any] = {}
        self._local: dict[tuple[str, str, str], _Local] = {}
        self.conflicts = 0
        self.leases_taken = 0
        self.spent = 0

    async def _bucket(self, region: str) -> Any:
        kv = self._kv.get(region)
        if kv is None:
            kv = await self.fabric.js.key_value(Region(region).ledger_bucket)
            self._kv[region] = kv
        return kv

    def batch_for(self, burst: int) -> int:
        """Tokens asked per lease: the configured batch, at most a quarter of the burst (so a
        few agents can hold leases at once), at least one."""
        return max(1, min(self.batch, burst // 4))

    async def acquire(
        self, region: str, tenant: str, resource: str, rate_per_s: float, burst: int
    ) -> float:
        """Spend one token of ``tenant``'s ``resource`` bucket: 0.0 when spent, otherwise the
        seconds to wait before trying again (nothing spent)."""
        local = self._local.setdefault((region, tenant, resource), _Local())
        async with local.lock:
            if local.tokens > 0 and self.clock() < local.expires_at - self.margin_s:
                local.tokens -= 1
                self.spent += 1
                return 0.0
            grant = await self.lease(
                region, tenant, resource, rate_per_s, burst, unspent=local.tokens
            )
            local.tokens, local.expires_at = grant.tokens, grant.expires_at
            if grant.tokens <= 0:
                return grant.retry_after_s
            local.tokens -= 1
            self.spent += 1
            return 0.0

    async def lease(
        self,
        region: str,
        tenant: str,
        resource: str,
        rate_per_s: float,
        burst: int,
        *,
        unspent: int = 0,
        want: int | None = None,
    ) -> LeaseGrant:
        """Give back ``unspent`` tokens of this holder's lease (if it is still live) and take a
        new one of up to ``want`` tokens (default :meth:`batch_for`) from the pool."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = await self._bucket(region)
        key = bucket_key(tenant, resource)
        ask = self.batch_for(burst) if want is None else max(0, want)
        for _ in range(MAX_TRIES):
            now = self.clock()
            try:
                entry = await kv.get(key)
                state = RateBucket.load(entry.value)
                revision: int | None = entry.revision
            except KeyNotFoundError:
                state = RateBucket(rate_per_s, burst, float(burst), now)
                revision = None
            state.expire(now)
            mine = state.leases.pop(self.holder, None)
            if mine is not None:  # a live lease: its unspent tokens go back
                state.level += min(max(0, unspent), int(mine[0]))
            state.refill(now, rate_per_s, burst)
            granted = min(ask, math.floor(state.level + 1e-9))
            expires = now + self.ttl_s
            if granted > 0:
                state.level -= granted
                state.leases[self.holder] = [float(granted), expires]
            try:
                if revision is None:
                    await kv.create(key, state.dump())
                else:
                    await kv.update(key, state.dump(), last=revision)
            except KeyWrongLastSequenceError:
                self.conflicts += 1
                continue
            if granted > 0:
                self.leases_taken += 1
                return LeaseGrant(granted, expires)
            return LeaseGrant(0, now, state.retry_after())
        raise ConflictError(f"rate bucket {key!r} kept changing", id=key)

    async def state(self, region: str, tenant: str, resource: str) -> RateBucket | None:
        """The bucket as stored (None: no lease was ever taken on it)."""
        from nats.js.errors import KeyNotFoundError

        kv = await self._bucket(region)
        try:
            entry = await kv.get(bucket_key(tenant, resource))
        except KeyNotFoundError:
            return None
        return RateBucket.load(entry.value)

    async def release(self) -> int:
        """Give back every live lease's unspent tokens (an agent closing); how many."""
        returned = 0
        for (region, tenant, resource), local in list(self._local.items()):
            async with local.lock:
                if local.tokens <= 0 or self.clock() >= local.expires_at:
                    continue
                current = await self.state(region, tenant, resource)
                if current is None:
                    continue
                await self.lease(
                    region,
                    tenant,
                    resource,
                    current.rate_per_s,
                    current.burst,
                    unspent=local.tokens,
                    want=0,
                )
                returned += local.tokens
                local.tokens = 0
        return returned
