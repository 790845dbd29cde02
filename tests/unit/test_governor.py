"""The adaptive concurrency limit of a broker-fed process (no clock: lag samples are given)."""

from __future__ import annotations

import pytest

from tenantflow.domain.governor import Governor
from tenantflow.errors import ConfigurationError


def _window(g: Governor, lag_s: float, *, wanted: bool = True) -> bool:
    changed = False
    for _ in range(g.window):
        changed = g.observe(lag_s, wanted=wanted) or changed
    return changed


def test_it_starts_at_its_ceiling_with_no_reserve() -> None:
    g = Governor(most=8)
    assert (g.limit, g.reserve) == (8, 0)


def test_a_saturated_window_lowers_the_limit_by_a_quarter_down_to_its_floor() -> None:
    g = Governor(most=8, least=2, target_lag_s=0.004)
    assert _window(g, 0.010)
    assert (g.limit, g.reserve, g.lowered) == (6, 1, 1)
    assert _window(g, 0.010)
    assert g.limit == 4
    _window(g, 0.010)
    _window(g, 0.010)
    assert g.limit == 2  # never under the floor
    assert not _window(g, 0.010)


def test_a_small_limit_still_drops_by_one() -> None:
    g = Governor(most=3, target_lag_s=0.004)
    _window(g, 0.05)
    assert g.limit == 2
    _window(g, 0.05)
    assert g.limit == 1


def test_a_calm_window_raises_it_by_one_only_when_work_waited() -> None:
    g = Governor(most=8, target_lag_s=0.004, limit=3)
    assert not _window(g, 0.001, wanted=False)  # nothing waited for a slot: no reason to grow
    assert g.limit == 3
    assert _window(g, 0.001, wanted=True)
    assert (g.limit, g.raised) == (4, 1)
    for _ in range(10):
        _window(g, 0.001)
    assert (g.limit, g.reserve) == (8, 0)  # never over the ceiling


def test_a_lag_between_half_the_target_and_the_target_holds_the_limit() -> None:
    g = Governor(most=8, target_lag_s=0.004, limit=5)
    assert not _window(g, 0.003)
    assert g.limit == 5


def test_the_window_decides_on_its_median_not_on_one_late_timer() -> None:
    g = Governor(most=8, target_lag_s=0.004, window=5)
    for lag in (0.001, 0.5, 0.001, 0.001, 0.001):  # one pause (a collection, say)
        g.observe(lag, wanted=False)
    assert g.limit == 8
    for lag in (0.001, 0.02, 0.02, 0.02, 0.001):
        g.observe(lag, wanted=False)
    assert g.limit == 6


def test_wanted_counts_for_the_window_it_was_seen_in_only() -> None:
    g = Governor(most=8, target_lag_s=0.004, window=2, limit=4)
    g.observe(0.001, wanted=True)
    g.observe(0.001, wanted=False)
    assert g.limit == 5
    g.observe(0.001, wanted=False)
    g.observe(0.001, wanted=False)
    assert g.limit == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"most": 0},
        {"most": 4, "least": 5},
        {"most": 4, "least": 0},
        {"most": 4, "target_lag_s": 0.0},
        {"most": 4, "window": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        Governor(**kwargs)  # type: ignore[arg-type]
