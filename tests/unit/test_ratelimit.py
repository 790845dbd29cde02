"""GCRA rate limiting and the AIMD factor for provider throttling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantflow.domain.policy import RateLimit
from tenantflow.domain.ratelimit import (
    MIN_FACTOR,
    adapt_on_success,
    adapt_on_throttle,
    defer_tat,
    gcra,
)
from tenantflow.errors import ConfigurationError

EPOCH = 1_700_000_000.0


def test_a_full_burst_then_the_steady_rate() -> None:
    tat: float | None = None
    for expected_remaining in (4, 3, 2, 1, 0):
        decision = gcra(tat, EPOCH, rate_per_s=2.0, burst=5)
        assert decision.allowed and decision.remaining == expected_remaining
        tat = decision.new_tat_s
    denied = gcra(tat, EPOCH, rate_per_s=2.0, burst=5)
    assert not denied.allowed
    assert denied.new_tat_s == tat  # a denial consumes nothing
    assert denied.retry_after_s == pytest.approx(0.5)
    assert denied.reset_after_s == pytest.approx(2.5)
    assert not gcra(tat, EPOCH + 0.49, 2.0, 5).allowed
    assert gcra(tat, EPOCH + 0.5, 2.0, 5).allowed


def test_the_seed_bank_spends_500_bureau_calls_then_waits() -> None:
    limit = RateLimit.parse("500/hour")
    tat: float | None = None
    admitted = 0
    for _ in range(600):  # 200 workflows x 3 bureau calls, all at once
        decision = gcra(tat, EPOCH, limit.rate_per_s, limit.burst)
        if decision.allowed:
            admitted += 1
            tat = decision.new_tat_s
    assert admitted == 500
    refused = gcra(tat, EPOCH, limit.rate_per_s, limit.burst)
    assert not refused.allowed
    # The quota refills smoothly, one call per 7.2 s, rather than all at once on the hour.
    assert refused.retry_after_s == pytest.approx(7.2)
    assert refused.reset_after_s == pytest.approx(3600.0)


def test_cost_takes_several_cells_and_zero_cost_peeks() -> None:
    first = gcra(None, EPOCH, rate_per_s=1.0, burst=3, cost=3)
    assert first.allowed and first.remaining == 0
    peek = gcra(first.new_tat_s, EPOCH, rate_per_s=1.0, burst=3, cost=0)
    assert peek.allowed and peek.new_tat_s == first.new_tat_s and peek.remaining == 0
    later = gcra(first.new_tat_s, EPOCH + 2, rate_per_s=1.0, burst=3, cost=2)
    assert later.allowed and later.remaining == 0


@pytest.mark.parametrize(
    ("rate", "burst", "cost"), [(0.0, 1, 1), (-1.0, 1, 1), (1.0, 0, 1), (1.0, 2, 3), (1.0, 2, -1)]
)
def test_invalid_parameters_are_configuration_errors(rate: float, burst: int, cost: int) -> None:
    with pytest.raises(ConfigurationError):
        gcra(None, EPOCH, rate, burst, cost)


@given(
    rate=st.floats(0.1, 50.0),
    burst=st.integers(1, 10),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=120),
)
def test_never_more_than_rate_times_window_plus_burst(
    rate: float, burst: int, gaps: list[float]
) -> None:
    tat: float | None = None
    now = EPOCH
    allowed: list[float] = []
    for gap in gaps:
        now += gap
        decision = gcra(tat, now, rate, burst)
        if decision.allowed:
            allowed.append(now)
            tat = decision.new_tat_s
        else:
            assert decision.retry_after_s > 0
            assert decision.new_tat_s == tat
    # Every window [allowed[i], allowed[j]] holds j - i + 1 admissions.
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            window_s = allowed[j] - start
            assert j - i + 1 <= rate * (window_s + 1e-6) + burst + 1e-6


@given(
    rate=st.floats(0.1, 50.0),
    burst=st.integers(1, 10),
    used=st.integers(0, 30),
    cost=st.integers(1, 10),
)
def test_retry_after_is_exact(rate: float, burst: int, used: int, cost: int) -> None:
    cost = min(cost, burst)
    tat: float | None = None
    for _ in range(used):
        decision = gcra(tat, EPOCH, rate, burst)
        tat = decision.new_tat_s if decision.allowed else tat
    decision = gcra(tat, EPOCH, rate, burst, cost)
    if decision.allowed:
        return
    wait = decision.retry_after_s
    assert gcra(tat, EPOCH + wait, rate, burst, cost).allowed
    assert not gcra(tat, EPOCH + wait * 0.9 - 1e-3, rate, burst, cost).allowed


def test_defer_tat_honours_retry_after_then_admits_one() -> None:
    tat = defer_tat(None, EPOCH, retry_after_s=30.0, rate_per_s=1.0, burst=10)
    assert not gcra(tat, EPOCH + 29.9, 1.0, 10).allowed
    first = gcra(tat, EPOCH + 30.0, 1.0, 10)
    assert first.allowed and first.remaining == 0
    # An existing TAT further out is never pulled in.
    assert defer_tat(EPOCH + 500, EPOCH, 1.0, 1.0, 1) == EPOCH + 500


def test_aimd_factor() -> None:
    assert adapt_on_throttle(1.0) == 0.5
    assert adapt_on_throttle(1.0, retry_after_s=5) == 0.5
    assert adapt_on_throttle(1.0, retry_after_s=120) == 0.25  # quota exhausted: cut harder
    assert adapt_on_throttle(0.06) == MIN_FACTOR
    assert adapt_on_success(0.5) == pytest.approx(0.55)
    assert adapt_on_success(0.99) == 1.0
    with pytest.raises(ValueError):
        adapt_on_throttle(1.0, decrease=1.0)


@given(st.lists(st.one_of(st.none(), st.floats(0, 600)), max_size=60))
def test_aimd_factor_stays_in_bounds_and_recovers(events: list[float | None]) -> None:
    factor = 1.0
    for event in events:
        # None is a success; a number is a 429 with that Retry-After.
        factor = adapt_on_success(factor) if event is None else adapt_on_throttle(factor, event)
        assert MIN_FACTOR <= factor <= 1.0
    for _ in range(20):
        factor = adapt_on_success(factor)
    assert factor == 1.0
