"""What steps wait for besides a slot: rate limits, reviewers and budget — on the real domain code.

* :class:`RateBucket` is one GCRA bucket (:func:`tenantflow.domain.ratelimit.gcra`) with a FIFO
  of calls waiting for it. A denied call gives its slot back and waits here, so waiting holds
  no slot; the bucket wakes its first waiter when GCRA says a cell is free, and then one per
  emission interval. Calls arriving while others wait queue behind them.
* :class:`ReviewDesk` is one reviewer pool: a :class:`~tenantflow.domain.scheduler.FairScheduler`
  whose slots are the reviewers, so reviews are served fairly across tenants by weight, then
  by the tenant's review lane (with aging). :class:`ReviewPools` knows which desk a tenant's
  reviews go to (``Policy.review_pool_for``: a named pool, or the tenant's dedicated team) and
  how long its reviewers take. With tenant controls off there is one desk with every reviewer
  and a single queue: one FIFO for everybody's reviews.
* :class:`BudgetBook` is the set of ledgers a step attempt reserves against (the run's and the
  tenant's period ledgers, money and tokens), applied with the real
  :func:`~tenantflow.domain.budget.reserve` / :func:`~tenantflow.domain.budget.settle` /
  :func:`~tenantflow.domain.budget.release`, all-or-nothing like the store's transaction.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import replace
from typing import Any

from tenantflow.domain.budget import Ledger, period_start, release, reserve, reset_period, settle
from tenantflow.domain.policy import Budget, Lane, Period, Policy
from tenantflow.domain.ratelimit import emission_interval_us, gcra
from tenantflow.domain.scheduler import FairScheduler, ReadyItem
from tenantflow.errors import BudgetExceededError
from tenantflow.sim.spec import ScenarioSpec
from tenantflow.sim.values import Sampler

__all__ = ["BudgetBook", "RateBucket", "ReviewDesk", "ReviewPools", "reserve_all"]

_COMPACT_AT = 256


class RateBucket:
    """One GCRA bucket (a tenant's limit on a resource, or a shared one) and its waiters.

    Args:
        rate_per_s: The steady rate.
        burst: Calls that may go at once from idle.
    """

    __slots__ = ("burst", "interval_s", "rate_per_s", "tat_s", "waiters", "wake_pending")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.interval_s = emission_interval_us(rate_per_s) / 1e6
        self.tat_s: float | None = None
        self.waiters: deque[Any] = deque()
        self.wake_pending = False

    def try_take(self, now_s: float) -> float:
        """Take one cell if GCRA allows it now: 0.0 if taken, else seconds until one is free."""
        decision = gcra(self.tat_s, now_s, self.rate_per_s, self.burst)
        if decision.allowed:
            self.tat_s = decision.new_tat_s
            return 0.0
        return max(decision.retry_after_s, 1e-6)


class ReviewDesk:
    """A reviewer pool: reviews wait here without holding a worker slot.

    Args:
        name: The pool's name.
        reviewers: Reviewers deciding at once (the scheduler's slots).
        mean_decision_s: Cost hint for the fair scheduler.
        aging_s: A review waiting this long is served one lane higher.
    """

    __slots__ = ("_configured", "mean_decision_s", "name", "open", "scheduler")

    def __init__(self, name: str, reviewers: int, mean_decision_s: float, aging_s: float) -> None:
        self.name = name
        self.scheduler = FairScheduler(slots=reviewers, aging_s=aging_s)
        self.mean_decision_s = max(mean_decision_s, 1e-3)
        self._configured: set[str] = set()
        self.open = 0

    def submit(self, queue_id: str, key: Hashable, lane: Lane, weight: float, now_s: float) -> None:
        """Queue a review under ``queue_id`` (a tenant, or ``*`` for one shared FIFO)."""
        if queue_id not in self._configured:
            self.scheduler.configure_tenant(queue_id, weight=weight, now_s=now_s)
            self._configured.add(queue_id)
        item = ReadyItem(queue_id, key, lane, True, self.mean_decision_s, None)
        self.scheduler.push(item, now_s)
        self.open += 1

    def next(self, now_s: float) -> ReadyItem | None:
        """The next review a free reviewer takes, or None."""
        return self.scheduler.pop(now_s)

    def decided(self, queue_id: str, key: Hashable, took_s: float, now_s: float) -> None:
        """A reviewer finished a review after ``took_s``."""
        self.scheduler.done(queue_id, key, took_s, now_s)
        self.open -= 1


class ReviewPools:
    """The scenario's reviewer pools, created on first use.

    Args:
        spec: The scenario (its ``reviewer_pools`` and ``dedicated_reviewers``).
        shared: Tenant controls off: every review goes to one desk staffed by every reviewer
            (each named pool's, plus a dedicated team per tenant that has one).
        dedicated_tenants: How many tenants have a dedicated team (to staff the shared desk).
    """

    def __init__(self, spec: ScenarioSpec, *, shared: bool, dedicated_tenants: int) -> None:
        self._spec = spec
        self._desks: dict[str, ReviewDesk] = {}
        self._shared: ReviewDesk | None = None
        if shared:
            team = spec.dedicated_reviewers
            staff = sum(p.reviewers for p in spec.reviewer_pools)
            staff += team.reviewers * dedicated_tenants if team is not None else 0
            self._shared = ReviewDesk("*", max(1, staff), 60.0, spec.review_aging)

    def sampler_for(self, tenant_id: str, policy: Policy) -> Sampler | None:
        """How long a review of this tenant takes (its own pool's reviewers decide, with or
        without controls: the work is the same, only the queue differs)."""
        name = policy.review_pool_for(tenant_id)
        for pool in self._spec.reviewer_pools:
            if pool.name == name:
                return pool.decision_time.sampler()
        team = self._spec.dedicated_reviewers
        if policy.dedicated_reviewers and team is not None:
            return team.decision_time.sampler()
        return None

    def desk_for(self, tenant_id: str, policy: Policy) -> ReviewDesk:
        """The desk this tenant's reviews queue at."""
        if self._shared is not None:
            return self._shared
        name = policy.review_pool_for(tenant_id)
        desk = self._desks.get(name)
        if desk is None:
            spec = self._spec
            pool = next((p for p in spec.reviewer_pools if p.name == name), None)
            if pool is not None:
                size, mean_s = pool.reviewers, pool.decision_time.expected_s
            else:  # a dedicated team: loading the scenario checked that one is configured
                team = spec.dedicated_reviewers
                assert team is not None
                size, mean_s = team.reviewers, team.decision_time.expected_s
            desk = self._desks[name] = ReviewDesk(name, size, mean_s, spec.review_aging)
        return desk


class BudgetBook:
    """The money and token ledgers of one scope (a run, or a tenant's period).

    Ledgers with no limit are not kept (nothing to enforce; spending is counted elsewhere).
    A period book resets itself, with :func:`~tenantflow.domain.budget.reset_period`, at
    each use.

    Args:
        scope: ``run:<id>`` or ``tenant:<id>:<period>``.
        money_limit: Micro-dollars, or None.
        token_limit: Tokens, or None.
        period: The period of a tenant book; None for a run book.
        epoch_s: Calendar seconds of the scenario's second 0 (periods follow the calendar).
    """

    __slots__ = ("epoch_s", "money", "period", "tokens")

    def __init__(
        self,
        scope: str,
        money_limit: int | None,
        token_limit: int | None,
        *,
        period: Period | None = None,
        epoch_s: float = 0.0,
    ) -> None:
        self.period = period
        self.epoch_s = epoch_s
        self.money = None if money_limit is None else Ledger(scope, "micros", money_limit)
        self.tokens = None if token_limit is None else Ledger(scope, "tokens", token_limit)

    @classmethod
    def for_run(cls, run_id: int, budget: Budget) -> BudgetBook | None:
        """The run's book, or None when the policy sets no per-run limit."""
        if budget.run_micros is None and budget.run_tokens is None:
            return None
        return cls(f"run:{run_id}", budget.run_micros, budget.run_tokens)

    @classmethod
    def for_period(cls, tenant_id: str, budget: Budget, epoch_s: float) -> BudgetBook | None:
        """The tenant's period book, or None when the policy sets no period limit."""
        if budget.period_micros is None and budget.period_tokens is None:
            return None
        return cls(
            f"tenant:{tenant_id}:{budget.period}",
            budget.period_micros,
            budget.period_tokens,
            period=budget.period,
            epoch_s=epoch_s,
        )

    def _roll(self, now_s: float) -> None:
        if self.period is None:
            return
        calendar_s = self.epoch_s + now_s
        if self.money is not None:
            self.money = reset_period(self.money, calendar_s, self.period)
        if self.tokens is not None:
            self.tokens = reset_period(self.tokens, calendar_s, self.period)

    def available_micros(self, now_s: float) -> int | None:
        """Money a new reservation may take, or None if unlimited."""
        self._roll(now_s)
        return None if self.money is None else self.money.available

    def spent_micros(self) -> int:
        """Money settled in the current period (0 when money is unlimited)."""
        return 0 if self.money is None else self.money.spent

    def reserve(self, key: str, micros: int, tokens: int, now_s: float) -> None:
        """Hold ``micros`` and ``tokens`` under ``key`` in every ledger, or in none.

        Raises:
            BudgetExceededError: a ledger cannot cover the hold (nothing is held then).
        """
        self._roll(now_s)
        money, token_ledger = self.money, self.tokens
        if money is not None:
            money, _ = reserve(money, key, micros)
        if token_ledger is not None:
            token_ledger, _ = reserve(token_ledger, key, tokens)  # may raise: money not stored
        self.money, self.tokens = money, token_ledger

    def settle(self, key: str, micros: int, tokens: int) -> None:
        """Charge what the attempt actually used and close its hold."""
        if self.money is not None:
            self.money = self._compact(settle(self.money, key, micros)[0])
        if self.tokens is not None:
            self.tokens = self._compact(settle(self.tokens, key, tokens)[0])

    def release(self, key: str) -> None:
        """Drop the hold of an attempt that will not be charged."""
        if self.money is not None:
            self.money = self._compact(release(self.money, key)[0])
        if self.tokens is not None:
            self.tokens = self._compact(release(self.tokens, key)[0])

    def _compact(self, ledger: Ledger) -> Ledger:
        """Forget closed keys of a long-lived period ledger once there are many.

        The simulation never retries a settle, so the keys only make every later copy of the
        ledger longer; a run ledger closes a handful of keys and is dropped with its run.
        """
        if self.period is None or len(ledger.settled) + len(ledger.released) < _COMPACT_AT:
            return ledger
        return replace(ledger, settled={}, released=frozenset())

    def next_period_s(self, now_s: float) -> float | None:
        """Scenario seconds when the next period starts (None for a run book)."""
        if self.period is None:
            return None
        calendar_s = self.epoch_s + now_s
        current = period_start(calendar_s, self.period)
        step_s = 86400.0 if self.period == "daily" else 32 * 86400.0
        return period_start(current + step_s, self.period) - self.epoch_s


def reserve_all(
    books: tuple[BudgetBook, ...], key: str, micros: int, tokens: int, now_s: float
) -> None:
    """Reserve in every book or in none (like the store's single transaction).

    Raises:
        BudgetExceededError: from the first book that cannot cover the hold; the holds already
            taken in earlier books are released.
    """
    done: list[BudgetBook] = []
    try:
        for book in books:
            book.reserve(key, micros, tokens, now_s)
            done.append(book)
    except BudgetExceededError:
        for book in done:
            book.release(key)
        raise
