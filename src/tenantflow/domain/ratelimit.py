"""Rate-limit math: GCRA over one number, and an AIMD factor for provider throttling.

GCRA (the generic cell rate algorithm) is a token bucket stored as a single float, the
theoretical arrival time (TAT): the moment the bucket would be full again if nothing else
arrived. With emission interval ``T = 1 / rate`` a request of ``cost`` cells is allowed iff
``max(TAT, now) + cost*T - burst*T <= now``; if allowed, ``TAT := max(TAT, now) + cost*T``.
So ``burst`` calls may go at once from idle, then one per ``T``; in any window of ``W`` seconds
no more than ``rate*W + burst`` cells are admitted.

Durability across processes (the store's job, not this module's): keep one row per
``(tenant_id, resource)`` holding the TAT and apply the decision in one atomic statement, so
two workers can never both take the last cell. SQLite and PostgreSQL can do it in one upsert::

    INSERT INTO rate_tat (tenant_id, resource, tat_us) VALUES (:t, :r, :now + :cost * :T)
    ON CONFLICT (tenant_id, resource) DO UPDATE
       SET tat_us = max(rate_tat.tat_us, :now) + :cost * :T        -- GREATEST() on PostgreSQL
     WHERE max(rate_tat.tat_us, :now) + :cost * :T - :burst * :T <= :now
    RETURNING tat_us

with every time in integer microseconds (``BIGINT tat_us``; ``:now`` is
``round(now_s * 1e6)``, ``:T`` is :func:`emission_interval_us`). :func:`gcra` computes on the same
grid, so ``round(new_tat_s * 1e6)`` is exact and the SQL and Python paths agree exactly.
No row returned means denied; read the TAT and call :func:`gcra` for ``retry_after_s``.
(Equivalently: ``SELECT ... FOR UPDATE`` / ``BEGIN IMMEDIATE``, call :func:`gcra`, write
``new_tat_s`` in the same transaction.) A denied call must not hold a worker slot while it
waits ``retry_after_s``.

Provider throttling (HTTP 429) is handled by scaling the configured rate by an AIMD factor:
:func:`adapt_on_throttle` cuts it multiplicatively, :func:`adapt_on_success` restores it
additively, and :func:`defer_tat` pushes the TAT past the provider's ``Retry-After``. The store
keeps the factor next to the TAT, per endpoint when the provider quota is shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from tenantflow.errors import ConfigurationError

__all__ = [
    "LONG_RETRY_AFTER_S",
    "MIN_FACTOR",
    "Decision",
    "adapt_on_success",
    "adapt_on_throttle",
    "defer_tat",
    "emission_interval_us",
    "gcra",
]

MIN_FACTOR: Final[float] = 0.05
"""The adaptive factor never drops below this, so a throttled resource keeps probing."""

LONG_RETRY_AFTER_S: Final[float] = 60.0
"""A provider ``Retry-After`` longer than this is treated as quota exhaustion, not a spike."""

_US: Final[int] = 1_000_000


def _to_us(t_s: float) -> int:
    return round(t_s * _US)


def emission_interval_us(rate_per_s: float) -> int:
    """GCRA's ``T`` in whole microseconds, rounded up so the rate never exceeds ``rate_per_s``."""
    # The tiny slack keeps 500/3600 per second (7_199_999.999... µs in binary) at exactly 7.2 s.
    return max(1, math.ceil(_US / rate_per_s - 1e-6))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one GCRA check.

    Attributes:
        allowed: Whether the request may go now.
        new_tat_s: The TAT to store (unchanged when denied).
        retry_after_s: Seconds until the same request would be allowed (0 when allowed).
        remaining: Further cost-1 requests that would be allowed right now.
        reset_after_s: Seconds until the bucket is full again.
    """

    allowed: bool
    new_tat_s: float
    retry_after_s: float
    remaining: int
    reset_after_s: float


def gcra(
    tat_s: float | None, now_s: float, rate_per_s: float, burst: int, cost: int = 1
) -> Decision:
    """Decide one request under GCRA.

    Args:
        tat_s: The stored theoretical arrival time, or ``None`` for a resource never used.
        now_s: The current time, seconds since the epoch.
        rate_per_s: The steady rate (already multiplied by any adaptive factor).
        burst: How many cells may be taken at once from idle (>= 1).
        cost: Cells this request takes (0 peeks without consuming).

    Returns:
        The decision, including the TAT to store.

    Raises:
        ConfigurationError: a non-positive rate or burst, a negative cost, or a cost larger than
            the burst (such a request could never be admitted).
    """
    if not rate_per_s > 0 or not math.isfinite(rate_per_s):
        raise ConfigurationError(
            f"invalid rate_per_s = {rate_per_s!r}: must be > 0",
            field="rate_per_s",
            value=rate_per_s,
        )
    if burst < 1:
        raise ConfigurationError(
            f"invalid burst = {burst!r}: must be >= 1", field="burst", value=burst
        )
    if cost < 0 or cost > burst:
        raise ConfigurationError(
            f"invalid cost = {cost!r}: must be between 0 and burst ({burst})",
            field="cost",
            value=cost,
        )
    # Integer microseconds: adding T to an epoch-sized float TAT loses ~0.1 µs per call, which
    # would drop the last cell of a large burst. On the µs grid the sums are exact, and a float
    # holding a whole number of µs round-trips through _to_us unchanged.
    interval_us = emission_interval_us(rate_per_s)
    now_us = _to_us(now_s)
    base_us = now_us if tat_s is None else max(_to_us(tat_s), now_us)
    new_tat_us = base_us + cost * interval_us
    allow_at_us = new_tat_us - burst * interval_us
    if allow_at_us <= now_us:
        return Decision(
            allowed=True,
            new_tat_s=new_tat_us / _US,
            retry_after_s=0.0,
            remaining=_remaining(new_tat_us, now_us, interval_us, burst),
            reset_after_s=(new_tat_us - now_us) / _US,
        )
    return Decision(
        allowed=False,
        new_tat_s=base_us / _US,  # a denial implies tat_s > now_s: the stored TAT, unchanged
        retry_after_s=(allow_at_us - now_us) / _US,
        remaining=_remaining(base_us, now_us, interval_us, burst),
        reset_after_s=(base_us - now_us) / _US,
    )


def _remaining(tat_us: int, now_us: int, interval_us: int, burst: int) -> int:
    return max(0, min(burst, (now_us + burst * interval_us - tat_us) // interval_us))


def defer_tat(
    tat_s: float | None, now_s: float, retry_after_s: float, rate_per_s: float, burst: int
) -> float:
    """The TAT that admits nothing before ``now_s + retry_after_s`` (a provider's Retry-After).

    After the wait exactly one call is admitted and the bucket then refills at the steady rate,
    so the tenant does not hit the provider with a full burst the moment it reopens.
    """
    if not rate_per_s > 0:
        raise ConfigurationError(
            f"invalid rate_per_s = {rate_per_s!r}: must be > 0",
            field="rate_per_s",
            value=rate_per_s,
        )
    # Leave room for exactly one call at the deadline: TAT = deadline + (burst - 1) * T.
    deadline_us = _to_us(now_s + max(0.0, retry_after_s))
    target_us = deadline_us + (burst - 1) * emission_interval_us(rate_per_s)
    if tat_s is not None:
        target_us = max(_to_us(tat_s), target_us)
    return target_us / _US


def adapt_on_throttle(
    factor: float,
    retry_after_s: float | None = None,
    *,
    decrease: float = 0.5,
    floor: float = MIN_FACTOR,
) -> float:
    """Multiplicative decrease of the rate factor after a provider throttled a call.

    A long ``retry_after_s`` (over :data:`LONG_RETRY_AFTER_S`) means the provider's quota window,
    not a momentary spike, is exhausted; a single halving would trip it again the moment it
    reopens, so the decrease is applied twice.
    """
    if not 0 < decrease < 1:
        raise ValueError(f"decrease must be in (0, 1), got {decrease}")
    cut = decrease * decrease if (retry_after_s or 0.0) > LONG_RETRY_AFTER_S else decrease
    return max(floor, min(1.0, factor) * cut)


def adapt_on_success(factor: float, *, step: float = 0.05) -> float:
    """Additive increase of the rate factor after a call the provider accepted, capped at 1."""
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    return min(1.0, factor + step)
