"""Budget ledger arithmetic: reserve before a step, settle or release after it.

A :class:`Ledger` is one limit in one unit (micro-dollars or tokens) for one scope — a run, or a
tenant for the current period. Holds are keyed (by step attempt), which makes every operation
idempotent: a retried reserve returns the first reservation, a retried settle never charges twice,
and a retried release frees nothing twice. All functions are pure and return a new ledger.

How the store applies this atomically (one writer per ledger row, whatever the process):

* ``reserve`` is one transaction that inserts the hold ``(scope, key, amount, state='held')``
  only if no row for ``key`` exists and ``spent + reserved + amount <= limit`` — e.g. an
  ``UPDATE ledger SET reserved = reserved + :amount WHERE scope = :scope AND spent + reserved +
  :amount <= limit`` in the same transaction as ``INSERT ... ON CONFLICT (scope, key) DO
  NOTHING``; zero rows updated means :class:`~tenantflow.errors.BudgetExceededError`.
* ``settle`` / ``release`` flip the hold row from ``held`` to ``settled``/``released`` with
  ``WHERE state = 'held'`` and adjust ``spent``/``reserved`` only if that flip hit a row, so a
  retry finds nothing to do.
* A run needs several ledgers (run and tenant-period, money and tokens): reserve them all in one
  transaction, so either every hold exists or none does.
* Period resets use :func:`needs_reset` as a compare-and-set on ``period_start``
  (``UPDATE ... SET spent = 0, period_start = :new WHERE period_start = :old``): exactly one
  writer wins; open holds survive the reset and are charged to the new period when settled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, get_args

from tenantflow.domain.policy import DegradationAction, Period
from tenantflow.errors import BudgetExceededError, ConfigurationError

__all__ = [
    "Degradation",
    "DegradationDecision",
    "Ledger",
    "Release",
    "Reservation",
    "Settlement",
    "Unit",
    "charge",
    "cost_micros",
    "decide_degradation",
    "needs_reset",
    "period_start",
    "release",
    "reserve",
    "reset_period",
    "settle",
    "worst_case_micros",
]

Unit = Literal["micros", "tokens"]
DegradationDecision = Literal[
    "proceed", "cheaper_model", "skip_optional", "escalate_to_human", "pause"
]


@dataclass(frozen=True, slots=True)
class Ledger:
    """One budget limit in one unit for one scope.

    Attributes:
        scope: What the ledger covers, e.g. ``"run:r-17"`` or ``"tenant:t-4:monthly"``; reported
            in :class:`~tenantflow.errors.BudgetExceededError`.
        unit: ``"micros"`` (micro-dollars) or ``"tokens"``.
        limit: The cap, or ``None`` for unlimited (still tracked, never refused).
        spent: Amount charged by settled keys.
        holds: Open reservations, ``key -> amount``.
        settled: Closed keys, ``key -> amount charged``; remembered so retries are no-ops.
        released: Keys whose hold was released without a charge.
        overrun: Total charged beyond reservations (streamed calls that ran past the estimate).
        period_start_s: Start of the current period for period ledgers; ``None`` for run ledgers.
    """

    scope: str
    unit: Unit = "micros"
    limit: int | None = None
    spent: int = 0
    holds: Mapping[str, int] = field(default_factory=dict)
    settled: Mapping[str, int] = field(default_factory=dict)
    released: frozenset[str] = frozenset()
    overrun: int = 0
    period_start_s: float | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ConfigurationError(
                f"invalid ledger limit = {self.limit}: must be >= 0 or None",
                field="limit",
                value=self.limit,
            )

    @property
    def reserved(self) -> int:
        """Sum of open holds."""
        return sum(self.holds.values())

    @property
    def available(self) -> int | None:
        """What a new reservation may take (never negative); ``None`` if unlimited."""
        if self.limit is None:
            return None
        return max(0, self.limit - self.spent - self.reserved)


@dataclass(frozen=True, slots=True)
class Reservation:
    """The hold for ``key``; ``created`` is False when a retry found an existing record."""

    key: str
    amount: int
    state: Literal["held", "settled", "released"]
    created: bool


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one ``settle``/``charge`` call did; ``charged`` is 0 unless ``state == 'settled'``."""

    key: str
    state: Literal["settled", "already_settled", "already_released", "unknown"]
    charged: int = 0
    reserved: int = 0
    overrun: int = 0


@dataclass(frozen=True, slots=True)
class Release:
    """What one ``release`` call did; ``freed`` is the hold returned to the budget."""

    key: str
    state: Literal["released", "already_released", "already_settled", "unknown"]
    freed: int = 0


def _check(key: str, amount: int) -> None:
    if not key:
        raise ValueError("a ledger key must be a non-empty string")
    if amount < 0:
        raise ValueError(f"a ledger amount must be >= 0, got {amount}")


def reserve(ledger: Ledger, key: str, amount: int) -> tuple[Ledger, Reservation]:
    """Hold ``amount`` under ``key``; a repeat for a known key returns the first record.

    Raises:
        BudgetExceededError: ``spent + reserved + amount`` would exceed the limit (fields:
            ``needed``, ``available``, ``scope``, ``unit``).
    """
    _check(key, amount)
    if key in ledger.holds:
        return ledger, Reservation(key, ledger.holds[key], "held", created=False)
    if key in ledger.settled:
        return ledger, Reservation(key, ledger.settled[key], "settled", created=False)
    if key in ledger.released:
        return ledger, Reservation(key, 0, "released", created=False)
    available = ledger.available
    if available is not None and amount > available:
        raise BudgetExceededError(
            f"{ledger.scope}: needs {amount} {ledger.unit}, {available} available",
            needed=amount,
            available=available,
            scope=ledger.scope,
            unit=ledger.unit,
        )
    new = replace(ledger, holds={**ledger.holds, key: amount})
    return new, Reservation(key, amount, "held", created=True)


def settle(ledger: Ledger, key: str, actual: int) -> tuple[Ledger, Settlement]:
    """Close the hold for ``key`` and charge ``actual``, which may exceed the hold.

    An overrun is charged, not refused — the tokens were already consumed — and recorded, so
    ``spent`` may pass the limit; the next reservation then fails. Settling a key that is
    already closed or was never reserved changes nothing and says so in ``Settlement.state``.
    """
    _check(key, actual)
    if key not in ledger.holds:
        return ledger, Settlement(key, _closed_state(ledger, key))
    return _charge(ledger, key, actual, ledger.holds[key])


def charge(ledger: Ledger, key: str, amount: int) -> tuple[Ledger, Settlement]:
    """Charge ``amount`` under ``key`` even without an open hold; idempotent by key.

    For money spent outside a reservation: a streamed or interrupted call whose hold was already
    released (an expired lease), priced from the tokens actually consumed. The unreserved part
    counts as overrun. A key that is already settled is not charged again.
    """
    _check(key, amount)
    if key in ledger.settled:
        return ledger, Settlement(key, "already_settled")
    return _charge(ledger, key, amount, ledger.holds.get(key, 0))


def _charge(ledger: Ledger, key: str, actual: int, held: int) -> tuple[Ledger, Settlement]:
    overrun = max(0, actual - held)
    new = replace(
        ledger,
        spent=ledger.spent + actual,
        holds={k: v for k, v in ledger.holds.items() if k != key},
        settled={**ledger.settled, key: actual},
        released=ledger.released - {key},
        overrun=ledger.overrun + overrun,
    )
    return new, Settlement(key, "settled", charged=actual, reserved=held, overrun=overrun)


def release(ledger: Ledger, key: str) -> tuple[Ledger, Release]:
    """Drop the hold for ``key`` without charging (a failed or crashed attempt); idempotent."""
    _check(key, 0)
    if key not in ledger.holds:
        return ledger, Release(key, _closed_state(ledger, key))
    freed = ledger.holds[key]
    new = replace(
        ledger,
        holds={k: v for k, v in ledger.holds.items() if k != key},
        released=ledger.released | {key},
    )
    return new, Release(key, "released", freed=freed)


def _closed_state(
    ledger: Ledger, key: str
) -> Literal["already_settled", "already_released", "unknown"]:
    if key in ledger.settled:
        return "already_settled"
    if key in ledger.released:
        return "already_released"
    return "unknown"


def period_start(now_s: float, period: Period) -> float:
    """Start (UTC, seconds since epoch) of the daily or monthly period containing ``now_s``."""
    moment = datetime.fromtimestamp(now_s, tz=UTC)
    if period == "daily":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "monthly":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ConfigurationError(
            f"invalid period = {period!r}: use 'daily' or 'monthly'", field="period", value=period
        )
    return start.timestamp()


def needs_reset(ledger_period_start_s: float | None, now_s: float, period: Period) -> bool:
    """Whether ``now_s`` lies in a later period than the ledger's (a clock step back never resets).

    The store uses this as the guard of a compare-and-set on ``period_start`` so that one
    writer, not every process, performs the reset.
    """
    if ledger_period_start_s is None:
        return True
    return period_start(now_s, period) > ledger_period_start_s


def reset_period(ledger: Ledger, now_s: float, period: Period) -> Ledger:
    """Start a new period if one has begun: zero ``spent``, keep open holds.

    Closed keys are forgotten (they belong to the old period), so the ledger does not grow
    without bound; a settle retried across the reset finds ``unknown`` and charges nothing.
    """
    if not needs_reset(ledger.period_start_s, now_s, period):
        return ledger
    return replace(
        ledger,
        spent=0,
        overrun=0,
        settled={},
        released=frozenset(),
        period_start_s=period_start(now_s, period),
    )


def cost_micros(
    prompt_tokens: int,
    completion_tokens: int,
    *,
    price_in_per_1k_micros: int,
    price_out_per_1k_micros: int,
) -> int:
    """Price a model call in micro-dollars, rounding up.

    Rounding up rather than down keeps many tiny calls from systematically under-charging.
    """
    if min(prompt_tokens, completion_tokens, price_in_per_1k_micros, price_out_per_1k_micros) < 0:
        raise ValueError("token counts and prices must be >= 0")
    total = prompt_tokens * price_in_per_1k_micros + completion_tokens * price_out_per_1k_micros
    return -(-total // 1000)


def worst_case_micros(
    prompt_tokens: int,
    max_tokens: int,
    *,
    price_in_per_1k_micros: int,
    price_out_per_1k_micros: int,
) -> int:
    """The reservation for a model call: the prompt plus ``max_tokens`` of output, priced."""
    return cost_micros(
        prompt_tokens,
        max_tokens,
        price_in_per_1k_micros=price_in_per_1k_micros,
        price_out_per_1k_micros=price_out_per_1k_micros,
    )


@dataclass(frozen=True, slots=True)
class Degradation:
    """The degradation decision for one step, and why."""

    action: DegradationDecision
    reason: str


def decide_degradation(
    *,
    remaining_micros: int | None,
    estimate_micros: int,
    optional: bool,
    cheaper_estimate_micros: int | None,
    ladder: Sequence[DegradationAction],
) -> Degradation:
    """Choose how a step proceeds when its worst case may not fit the remaining budget.

    Args:
        remaining_micros: Budget left (``None``: unlimited).
        estimate_micros: The step's worst-case cost as planned.
        optional: Whether the workflow marks the step optional.
        cheaper_estimate_micros: Worst case on the cheapest allowed in-region model, if any.
        ladder: The policy's degradation ladder, tried in order.

    Returns:
        ``proceed`` if the estimate fits; otherwise the first rung that applies. ``pause`` is the
        fallback when no rung applies: waiting for budget is always safe, overspending is not.
    """
    if remaining_micros is None or estimate_micros <= remaining_micros:
        return Degradation("proceed", "the worst-case estimate fits the remaining budget")
    short = f"worst case {estimate_micros} µ$ exceeds the remaining {remaining_micros} µ$"
    known = get_args(DegradationAction)
    for rung in ladder:
        if rung not in known:
            raise ConfigurationError(
                f"invalid degradation rung = {rung!r}", field="degradation", value=rung
            )
        if rung == "cheaper_model":
            if cheaper_estimate_micros is not None and cheaper_estimate_micros <= remaining_micros:
                return Degradation(
                    "cheaper_model", f"{short}; a cheaper model costs {cheaper_estimate_micros} µ$"
                )
        elif rung == "skip_optional":
            if optional:
                return Degradation("skip_optional", f"{short}; the step is optional")
        elif rung == "escalate_to_human":
            return Degradation("escalate_to_human", f"{short}; a reviewer spends no model budget")
        else:
            return Degradation("pause", f"{short}; pausing until budget is available")
    return Degradation("pause", f"{short}; no degradation rung applies, pausing")
