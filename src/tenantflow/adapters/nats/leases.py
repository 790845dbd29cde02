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
* **Provider throttling.** When a provider answers 429 to a call the bucket let through, the
  agent records it in the entry (:meth:`RateLeases.throttle`), as the store's bucket does
  elsewhere (``ThrottleRate``): the bucket's adaptive ``factor`` is cut
  (:func:`~tenantflow.domain.ratelimit.adapt_on_throttle`, the refill then runs at
  ``rate_per_s * factor`` and recovers by the same additive step per token granted), the pool
  is emptied to at most one token, every live lease is dropped (its tokens forfeit, never
  returned), and ``paused_until`` is set to the provider's ``Retry-After``: no agent is granted
  a lease before then, whatever its clock reads of the pool. The agent that saw the 429 drops
  its own unspent tokens at once; another agent may still spend what it leased before the
  throttle was recorded (at most one batch, see :meth:`RateLeases.batch_for`), never more.

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
from typing import Any, TypeVar

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region, token
from tenantflow.domain.ratelimit import adapt_on_success, adapt_on_throttle
from tenantflow.errors import ConflictError

T = TypeVar("T")

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
    factor: float = 1.0
    """The adaptive factor a provider's 429 cut (the refill runs at ``rate_per_s * factor``)."""
    paused_until: float = 0.0
    """No lease is granted before this (a provider's Retry-After)."""

    @property
    def leased(self) -> int:
        return sum(int(n) for n, _ in self.leases.values())

    def expire(self, now: float) -> None:
        """Drop the leases that lapsed by ``now``."""
        for holder in [h for h, (_, exp) in self.leases.items() if exp <= now]:
            del self.leases[holder]

    def refill(self, now: float, rate_per_s: float, burst: int) -> None:
        """Apply the (possibly changed) limit and refill, at ``rate_per_s * factor``, up to
        ``burst`` minus the leased."""
        self.rate_per_s, self.burst = rate_per_s, burst
        if now > self.at:
            self.level += (now - self.at) * rate_per_s * self.factor
            self.at = now
        self.level = max(0.0, min(self.level, float(burst - self.leased)))

    def paused(self, now: float) -> bool:
        """Whether a provider's Retry-After still holds every lease back at ``now``."""
        return now < self.paused_until

    def throttle(self, now: float, retry_after_s: float) -> None:
        """A provider answered 429: cut the factor, drop every lease (their tokens forfeit),
        leave at most one token in the pool and hold every lease back for ``retry_after_s``."""
        self.factor = adapt_on_throttle(self.factor, retry_after_s)
        self.leases.clear()
        self.level = min(self.level, 1.0)
        self.paused_until = max(self.paused_until, now + max(0.0, retry_after_s))
        self.at = max(self.at, self.paused_until)  # nothing refills during the pause

    def granted(self, tokens: int) -> None:
        """``tokens`` went out on a lease: the factor recovers one additive step per token."""
        for _ in range(tokens):
            if self.factor >= 1.0:
                break
            self.factor = adapt_on_success(self.factor)

    def retry_after(self, now: float | None = None) -> float:
        """Seconds until a token could be in the pool (at least the time to refill one, and
        never before a pause ends)."""
        now = self.at if now is None else now
        rate = self.rate_per_s * self.factor
        short = max(0.0, 1.0 - self.level)
        wait = short / rate if rate > 0 else math.inf
        if self.leased + 1 > self.burst and self.leases:
            wait = max(wait, min(exp for _, exp in self.leases.values()) - self.at)
        wait = max(wait, self.paused_until - now)
        return max(0.001, wait)

    def dump(self) -> bytes:
        return json.dumps(
            {
                "rate_per_s": self.rate_per_s,
                "burst": self.burst,
                "level": self.level,
                "at": self.at,
                "leases": self.leases,
                "factor": self.factor,
                "paused_until": self.paused_until,
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
            float(body.get("factor", 1.0)),
            float(body.get("paused_until", 0.0)),
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
        self.throttles = 0

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
        ask = self.batch_for(burst) if want is None else max(0, want)

        def take(state: RateBucket, now: float) -> LeaseGrant:
            mine = state.leases.pop(self.holder, None)
            if mine is not None:  # a live lease: its unspent tokens go back
                state.level += min(max(0, unspent), int(mine[0]))
            state.refill(now, rate_per_s, burst)
            granted = 0 if state.paused(now) else min(ask, math.floor(state.level + 1e-9))
            expires = now + self.ttl_s
            if granted <= 0:
                return LeaseGrant(0, now, state.retry_after(now))
            state.level -= granted
            state.leases[self.holder] = [float(granted), expires]
            state.granted(granted)
            return LeaseGrant(granted, expires)

        grant = await self._change(region, tenant, resource, rate_per_s, burst, take)
        if grant.tokens > 0:
            self.leases_taken += 1
        return grant

    async def throttle(
        self,
        region: str,
        tenant: str,
        resource: str,
        rate_per_s: float,
        burst: int,
        retry_after_s: float,
    ) -> float:
        """Record a provider's 429 in ``tenant``'s bucket for ``resource`` (module doc): every
        agent's next lease waits out ``retry_after_s`` and then refills at the lowered factor.
        This process drops its own unspent tokens of that bucket. Returns the new factor."""

        def lower(state: RateBucket, now: float) -> float:
            state.refill(now, rate_per_s, burst)
            state.throttle(now, retry_after_s)
            return state.factor

        local = self._local.setdefault((region, tenant, resource), _Local())
        async with local.lock:
            local.tokens = 0
            factor = await self._change(region, tenant, resource, rate_per_s, burst, lower)
            self.throttles += 1
            return factor

    async def _change(
        self,
        region: str,
        tenant: str,
        resource: str,
        rate_per_s: float,
        burst: int,
        change: Callable[[RateBucket, float], T],
    ) -> T:
        """Apply ``change`` to the bucket as stored (a full one if none is), its lapsed leases
        dropped, and write it back if nobody wrote it meanwhile (compare-and-set; again if
        somebody did); what ``change`` returned."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = await self._bucket(region)
        key = bucket_key(tenant, resource)
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
            result = change(state, now)
            try:
                if revision is None:
                    await kv.create(key, state.dump())
                else:
                    await kv.update(key, state.dump(), last=revision)
            except KeyWrongLastSequenceError:
                self.conflicts += 1
                continue
            return result
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
