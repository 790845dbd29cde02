"""Budgets on the fabric: a tenant's ledger in KV ``LEDGER_<r>``, moved by compare-and-set.

A ledger entry (key ``<tenant>.<budget>``) holds the limit, what was spent and the open holds,
in micro-dollars (integers: no float drift). A step **reserves** its maximum cost before it
spends (a hold named by the attempt, so a retried reserve is the same hold), and **settles**
the actual cost afterwards (at most what it reserved; the rest goes back). Every change is a
KV ``update`` with the revision read: of two agents changing one ledger at once, one commits
and the other reads again, so ``spent + held <= limit`` holds whatever the concurrency, and
nothing is ever overspent. Contention is per ledger, i.e. per tenant.

A hold may carry an **expiry** (the ledger's ``hold_ttl_s``, from the reserver's clock): an
agent killed between a call's reserve and its settle cannot settle, so once its hold expires
the next reserve on that ledger (or :meth:`Ledger.sweep`) releases it — counted in
``released``, never as spent. A hold settled after it expired (a call that outlived the TTL)
is still spent, in full: the spend is recorded even if it takes ``spent`` past the limit
(``late`` counts it), so a TTL shorter than the longest call trades the no-overspend bound for
budget that a dead agent would otherwise withhold until the period ends. Holds without an
expiry (no TTL, or entries written before there was one) never expire.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region
from tenantflow.errors import ConfigurationError, ConflictError, NotFoundError

__all__ = ["Ledger", "LedgerState"]

MAX_TRIES = 256
_SETTLED_KEPT = 512


@dataclass(slots=True)
class LedgerState:
    limit: int
    spent: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    settled: dict[str, int] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)
    """hold -> when it expires (a hold not here never does)."""
    lapsed: dict[str, int] = field(default_factory=dict)
    """hold -> micros it held when it expired (recent ones: a late settle still spends)."""
    released: int = 0
    """Micros of expired holds released (never spent)."""
    late: int = 0
    """Micros spent by holds settled after they expired."""

    @property
    def held(self) -> int:
        return sum(self.holds.values())

    @property
    def available(self) -> int:
        return self.limit - self.spent - self.held

    def expire(self, now: float) -> int:
        """Release the holds expired by ``now`` (counted in ``released``); how many micros."""
        freed = 0
        for hold in [h for h, at in self.expires.items() if at <= now]:
            del self.expires[hold]
            micros = self.holds.pop(hold, None)
            if micros is None:
                continue
            self.lapsed[hold] = micros
            freed += micros
        self.released += freed
        _trim(self.lapsed)
        return freed

    def dump(self) -> bytes:
        return json.dumps(
            {
                "limit": self.limit,
                "spent": self.spent,
                "holds": self.holds,
                "settled": self.settled,
                "expires": self.expires,
                "lapsed": self.lapsed,
                "released": self.released,
                "late": self.late,
            }
        ).encode()

    @classmethod
    def load(cls, raw: bytes) -> LedgerState:
        body = json.loads(raw)
        return cls(
            int(body["limit"]),
            int(body["spent"]),
            {str(k): int(v) for k, v in body["holds"].items()},
            {str(k): int(v) for k, v in body.get("settled", {}).items()},
            {str(k): float(v) for k, v in body.get("expires", {}).items()},
            {str(k): int(v) for k, v in body.get("lapsed", {}).items()},
            int(body.get("released", 0)),
            int(body.get("late", 0)),
        )


def _trim(kept: dict[str, int]) -> None:
    while len(kept) > _SETTLED_KEPT:
        kept.pop(next(iter(kept)))


class Ledger:
    """The budget ledgers of one region (see the module doc).

    Args:
        fabric: the connection.
        region: whose ``LEDGER_<r>`` bucket.
        hold_ttl_s: a hold this process opens expires this long after it was reserved
            (None: never; must be > 0).
        clock: wall-clock seconds (the agents' clocks are assumed to agree to well within
            ``hold_ttl_s``).
    """

    def __init__(
        self,
        fabric: Fabric,
        region: str,
        *,
        hold_ttl_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if hold_ttl_s is not None and not hold_ttl_s > 0:
            raise ConfigurationError(
                f"hold_ttl_s must be > 0, got {hold_ttl_s!r}", field="hold_ttl_s", value=hold_ttl_s
            )
        self.fabric = fabric
        self.region = Region(region)
        self.hold_ttl_s = hold_ttl_s
        self.clock = clock
        self._kv: Any = None
        self.conflicts = 0

    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await self.fabric.js.key_value(self.region.ledger_bucket)
        return self._kv

    async def open(self, tenant: str, budget: str, limit_micros: int) -> None:
        """Create the ledger with ``limit_micros`` (a no-op if it exists)."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = await self._bucket()
        try:
            await kv.create(Region.ledger_key(tenant, budget), LedgerState(limit_micros).dump())
        except KeyWrongLastSequenceError:
            return

    async def state(self, tenant: str, budget: str) -> LedgerState:
        from nats.js.errors import KeyNotFoundError

        kv = await self._bucket()
        try:
            entry = await kv.get(Region.ledger_key(tenant, budget))
        except KeyNotFoundError:
            raise NotFoundError(
                f"no budget ledger {budget!r} for tenant {tenant!r}", kind="budget", id=budget
            ) from None
        return LedgerState.load(entry.value)

    async def _change(self, tenant: str, budget: str, change: Any) -> Any:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = await self._bucket()
        key = Region.ledger_key(tenant, budget)
        for _ in range(MAX_TRIES):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                raise NotFoundError(
                    f"no budget ledger {budget!r} for tenant {tenant!r}", kind="budget", id=budget
                ) from None
            state = LedgerState.load(entry.value)
            result, changed = change(state)
            if not changed:
                return result
            try:
                await kv.update(key, state.dump(), last=entry.revision)
                return result
            except KeyWrongLastSequenceError:
                self.conflicts += 1
        raise ConflictError(f"budget ledger {budget!r} of {tenant!r} kept changing", id=budget)

    async def reserve(self, tenant: str, budget: str, hold: str, micros: int) -> bool:
        """Hold ``micros`` for ``hold`` if the budget has them; False (nothing held) if not.
        Idempotent: a hold already open (or settled) answers True again."""
        granted, _ = await self.try_reserve(tenant, budget, hold, micros)
        return granted

    async def try_reserve(
        self, tenant: str, budget: str, hold: str, micros: int
    ) -> tuple[bool, int]:
        """:meth:`reserve`, also answering what the budget had available when it decided."""

        def change(state: LedgerState) -> tuple[tuple[bool, int], bool]:
            now = self.clock()
            freed = state.expire(now)  # a dead agent's holds go back before deciding
            if hold in state.holds or hold in state.settled:
                return (True, state.available), freed > 0
            if micros > state.available:
                return (False, state.available), freed > 0
            state.lapsed.pop(hold, None)
            state.holds[hold] = micros
            if self.hold_ttl_s is not None:
                state.expires[hold] = now + self.hold_ttl_s
            return (True, state.available), True

        answer: tuple[bool, int] = await self._change(tenant, budget, change)
        return answer

    async def ensure(self, tenant: str, budget: str, limit_micros: int) -> None:
        """Create the ledger with ``limit_micros``, or move an existing ledger's limit to it
        (a changed policy): what was spent and held stays; a lower limit than that only
        refuses new holds."""
        await self.open(tenant, budget, limit_micros)

        def change(state: LedgerState) -> tuple[None, bool]:
            if state.limit == limit_micros:
                return None, False
            state.limit = limit_micros
            return None, True

        await self._change(tenant, budget, change)

    async def settle(self, tenant: str, budget: str, hold: str, actual_micros: int) -> int:
        """Close ``hold``, spending ``actual_micros`` of it (at most what it held; the rest is
        released); what was spent. Idempotent."""

        def change(state: LedgerState) -> tuple[int, bool]:
            if hold in state.settled:
                return state.settled[hold], False
            held = state.holds.pop(hold, None)
            state.expires.pop(hold, None)
            late = held is None
            if late:  # expired and released meanwhile: what the call spent still counts
                held = state.lapsed.pop(hold, None)
                if held is None:
                    return 0, False
            assert held is not None
            spent = max(0, min(actual_micros, held))
            state.spent += spent
            if late:
                state.late += spent
            state.settled[hold] = spent
            _trim(state.settled)
            return spent, True

        spent: int = await self._change(tenant, budget, change)
        return spent

    async def sweep(self, tenant: str, budget: str) -> int:
        """Release the expired holds of ``tenant``'s ledger ``budget`` now (module doc); how
        many micros went back."""

        def change(state: LedgerState) -> tuple[int, bool]:
            freed = state.expire(self.clock())
            return freed, freed > 0

        freed: int = await self._change(tenant, budget, change)
        return freed
