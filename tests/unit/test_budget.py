"""Budget ledgers: reserve / settle / release, periods, degradation and pricing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantflow.domain.budget import (
    Ledger,
    charge,
    cost_micros,
    decide_degradation,
    needs_reset,
    period_start,
    release,
    reserve,
    reset_period,
    settle,
    worst_case_micros,
)
from tenantflow.errors import BudgetExceededError, ConfigurationError


def _ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_reserve_refuses_past_the_limit_with_structured_fields() -> None:
    ledger, _ = reserve(Ledger("run:r1", limit=100), "a1", 60)
    with pytest.raises(BudgetExceededError) as info:
        reserve(ledger, "a2", 41)
    assert info.value.fields == {"needed": 41, "available": 40, "scope": "run:r1", "unit": "micros"}
    ledger, res = reserve(ledger, "a2", 40)  # exactly the rest still fits
    assert res.created and ledger.available == 0


def test_reserve_is_idempotent_by_key() -> None:
    ledger, first = reserve(Ledger("run:r1", limit=100), "a1", 70)
    assert first.created
    again, second = reserve(ledger, "a1", 70)
    assert again == ledger
    assert (second.amount, second.created) == (70, False)
    # A replay with a different amount still returns the first reservation, and cannot fail.
    same, third = reserve(ledger, "a1", 99)
    assert same == ledger and third.amount == 70


def test_settle_charges_once_and_frees_the_rest() -> None:
    ledger, _ = reserve(Ledger("run:r1", limit=100), "a1", 70)
    ledger, done = settle(ledger, "a1", 25)
    assert (done.state, done.charged, done.reserved, done.overrun) == ("settled", 25, 70, 0)
    assert (ledger.spent, ledger.reserved, ledger.available) == (25, 0, 75)
    again, retry = settle(ledger, "a1", 25)
    assert again == ledger and (retry.state, retry.charged) == ("already_settled", 0)
    # A reserve retried after the settle must not open a second hold.
    same, res = reserve(ledger, "a1", 70)
    assert same == ledger and res.state == "settled"


def test_streamed_overrun_is_charged_and_recorded() -> None:
    ledger, _ = reserve(Ledger("run:r1", limit=100), "a1", 90)
    ledger, done = settle(ledger, "a1", 120)
    assert (done.charged, done.overrun) == (120, 30)
    assert (ledger.spent, ledger.overrun, ledger.available) == (120, 30, 0)
    with pytest.raises(BudgetExceededError):
        reserve(ledger, "a2", 1)


def test_release_is_idempotent_and_blocks_a_late_settle() -> None:
    ledger, _ = reserve(Ledger("run:r1", limit=100), "a1", 70)
    ledger, rel = release(ledger, "a1")
    assert (rel.state, rel.freed, ledger.reserved, ledger.spent) == ("released", 70, 0, 0)
    again, rel2 = release(ledger, "a1")
    assert again == ledger and (rel2.state, rel2.freed) == ("already_released", 0)
    late, done = settle(ledger, "a1", 50)
    assert late == ledger and done.state == "already_released"


def test_charge_prices_a_released_attempt_exactly_once() -> None:
    ledger, _ = reserve(Ledger("run:r1", limit=100), "a1", 70)
    ledger, _ = release(ledger, "a1")  # the lease expired mid-stream
    ledger, done = charge(ledger, "a1", 30)  # tokens already consumed must still be paid
    assert (done.state, done.charged, done.overrun, ledger.spent) == ("settled", 30, 30, 30)
    again, retry = charge(ledger, "a1", 30)
    assert again == ledger and retry.state == "already_settled"


def test_unknown_keys_are_reported_not_charged() -> None:
    ledger = Ledger("run:r1", limit=100)
    same, done = settle(ledger, "ghost", 10)
    assert same == ledger and (done.state, done.charged) == ("unknown", 0)
    same, rel = release(ledger, "ghost")
    assert same == ledger and (rel.state, rel.freed) == ("unknown", 0)


def test_unlimited_ledgers_track_but_never_refuse() -> None:
    ledger, _ = reserve(Ledger("tenant:t1", unit="tokens"), "a1", 10**12)
    assert ledger.available is None and ledger.reserved == 10**12


def test_bad_inputs() -> None:
    with pytest.raises(ConfigurationError):
        Ledger("run:r1", limit=-1)
    with pytest.raises(ValueError):
        reserve(Ledger("run:r1", limit=10), "a1", -1)
    with pytest.raises(ValueError):
        reserve(Ledger("run:r1", limit=10), "", 1)


_keys = st.sampled_from(["a", "b", "c", "d", "e"])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), _keys, st.integers(0, 60)),
        st.tuples(st.just("settle"), _keys, st.integers(0, 60)),
        st.tuples(st.just("release"), _keys, st.just(0)),
    ),
    max_size=40,
)


@given(ops=_ops, limit=st.integers(0, 150), allow_overrun=st.booleans())
def test_any_interleaving_keeps_the_ledger_within_its_limit(
    ops: list[tuple[str, str, int]], limit: int, allow_overrun: bool
) -> None:
    ledger = Ledger("run:r1", limit=limit)
    charged: dict[str, int] = {}
    for op, key, amount in ops:
        before = ledger
        if op == "reserve":
            try:
                ledger, _ = reserve(ledger, key, amount)
            except BudgetExceededError as exc:
                assert before.spent + before.reserved + amount > limit
                assert exc.fields["needed"] == amount
                continue
        elif op == "settle":
            held = ledger.holds.get(key)
            actual = amount if allow_overrun or held is None else min(amount, held)
            ledger, done = settle(ledger, key, actual)
            if held is not None:
                charged[key] = actual
            assert done.charged == (actual if held is not None else 0)
            retried, retry = settle(ledger, key, actual)  # a retried settle changes nothing
            assert retried == ledger and retry.charged == 0
        else:
            ledger, _ = release(ledger, key)
            assert release(ledger, key)[0] == ledger
        assert ledger.spent == sum(charged.values())  # each key charged at most once
        assert ledger.spent + ledger.reserved <= limit + ledger.overrun
        if not allow_overrun:
            assert ledger.overrun == 0
            assert ledger.spent + ledger.reserved <= limit


def test_period_start_is_utc_midnight_and_first_of_month() -> None:
    now = _ts(2024, 2, 29, 23, 59, 59)
    assert period_start(now, "daily") == _ts(2024, 2, 29)
    assert period_start(now, "monthly") == _ts(2024, 2, 1)
    assert period_start(_ts(2024, 3, 1), "monthly") == _ts(2024, 3, 1)
    with pytest.raises(ConfigurationError):
        period_start(now, "weekly")  # type: ignore[arg-type]


def test_needs_reset_only_when_a_new_period_began() -> None:
    start = _ts(2024, 5, 1)
    assert not needs_reset(start, _ts(2024, 5, 31, 23, 59), "monthly")
    assert needs_reset(start, _ts(2024, 6, 1), "monthly")
    assert needs_reset(_ts(2024, 5, 31), _ts(2024, 6, 1, 0, 0, 1), "daily")
    assert not needs_reset(start, _ts(2024, 4, 30), "monthly")  # the clock stepped back
    assert needs_reset(None, start, "daily")


def test_reset_zeroes_spend_but_keeps_open_holds() -> None:
    ledger = Ledger("tenant:t1:monthly", limit=100, period_start_s=_ts(2024, 5, 1))
    ledger, _ = reserve(ledger, "old", 40)
    ledger, _ = settle(ledger, "old", 40)
    ledger, _ = reserve(ledger, "open", 30)
    assert reset_period(ledger, _ts(2024, 5, 20), "monthly") is ledger
    fresh = reset_period(ledger, _ts(2024, 6, 2), "monthly")
    assert (fresh.spent, fresh.reserved, fresh.period_start_s) == (0, 30, _ts(2024, 6, 1))
    assert settle(fresh, "old", 40)[1].state == "unknown"  # no double charge across the reset
    fresh, done = settle(fresh, "open", 30)
    assert done.state == "settled" and fresh.spent == 30


def test_cost_rounds_up_and_worst_case_bounds_actual() -> None:
    assert cost_micros(1, 0, price_in_per_1k_micros=1, price_out_per_1k_micros=0) == 1
    assert cost_micros(
        1000, 500, price_in_per_1k_micros=30_000, price_out_per_1k_micros=60_000
    ) == (60_000)
    with pytest.raises(ValueError):
        cost_micros(-1, 0, price_in_per_1k_micros=1, price_out_per_1k_micros=1)


@given(
    prompt=st.integers(0, 10**6),
    max_tokens=st.integers(0, 10**5),
    used=st.integers(0, 10**5),
    p_in=st.integers(0, 10**6),
    p_out=st.integers(0, 10**6),
)
def test_worst_case_never_under_reserves(
    prompt: int, max_tokens: int, used: int, p_in: int, p_out: int
) -> None:
    used = min(used, max_tokens)
    prices = {"price_in_per_1k_micros": p_in, "price_out_per_1k_micros": p_out}
    actual = cost_micros(prompt, used, **prices)
    assert worst_case_micros(prompt, max_tokens, **prices) >= actual
    assert actual * 1000 >= prompt * p_in + used * p_out  # rounding never under-charges


_LADDER = ("cheaper_model", "skip_optional", "escalate_to_human", "pause")


@pytest.mark.parametrize(
    ("remaining", "optional", "cheaper", "ladder", "action"),
    [
        (100, False, None, _LADDER, "proceed"),
        (None, False, None, _LADDER, "proceed"),
        (50, False, 40, _LADDER, "cheaper_model"),
        (50, True, 60, _LADDER, "skip_optional"),  # the cheaper model does not fit either
        (50, False, 60, _LADDER, "escalate_to_human"),
        (50, False, None, ("cheaper_model", "skip_optional", "pause"), "pause"),
        (50, True, 40, ("skip_optional", "cheaper_model"), "skip_optional"),  # ladder order
        (50, False, None, ("cheaper_model",), "pause"),  # nothing applies: never overspend
        (50, False, None, (), "pause"),
    ],
)
def test_degradation_walks_the_ladder(
    remaining: int | None,
    optional: bool,
    cheaper: int | None,
    ladder: tuple[str, ...],
    action: str,
) -> None:
    decision = decide_degradation(
        remaining_micros=remaining,
        estimate_micros=80,
        optional=optional,
        cheaper_estimate_micros=cheaper,
        ladder=ladder,  # type: ignore[arg-type]
    )
    assert decision.action == action
    assert decision.reason


def test_degradation_rejects_unknown_rungs() -> None:
    with pytest.raises(ConfigurationError):
        decide_degradation(
            remaining_micros=0,
            estimate_micros=1,
            optional=False,
            cheaper_estimate_micros=None,
            ladder=("panic",),  # type: ignore[arg-type]
        )
