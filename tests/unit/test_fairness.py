"""Jain's fairness index, plain and weight-normalised."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantflow.domain.fairness import jain_index, weighted_jain
from tenantflow.errors import ContractError

allocations = st.lists(st.floats(0.0, 1e6), min_size=1, max_size=50)


def test_known_values() -> None:
    assert jain_index([5.0, 5.0, 5.0, 5.0]) == 1.0
    assert jain_index([7.0]) == 1.0
    assert jain_index([10.0, 0.0, 0.0, 0.0]) == pytest.approx(1 / 4)  # one hog of n
    assert jain_index([1.0, 1.0, 0.0, 0.0]) == pytest.approx(2 / 4)  # k equal of n
    assert jain_index([1.0, 2.0]) == pytest.approx(9 / 10)
    assert jain_index([0.0, 0.0]) == 1.0


def test_weighted_index_normalises_by_weight() -> None:
    weights = {"gold": 3.0, "silver": 2.0, "bronze": 1.0}
    assert weighted_jain({"gold": 30.0, "silver": 20.0, "bronze": 10.0}, weights) == 1.0
    # Equal raw throughput is unfair when weights differ.
    equal = weighted_jain({"gold": 10.0, "silver": 10.0, "bronze": 10.0}, weights)
    assert equal == pytest.approx(jain_index([10 / 3, 10 / 2, 10 / 1]))
    assert equal < 0.9
    # A tenant that had nothing counts as zero, not as absent.
    assert weighted_jain({"gold": 30.0}, weights) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "values", [[], [-1.0], [1.0, math.nan], [math.inf, 1.0]], ids=["empty", "neg", "nan", "inf"]
)
def test_invalid_values_are_refused(values: list[float]) -> None:
    with pytest.raises(ContractError):
        jain_index(values)


def test_invalid_weights_are_refused() -> None:
    with pytest.raises(ContractError):
        weighted_jain({"a": 1.0}, {"a": 0.0})
    with pytest.raises(ContractError):
        weighted_jain({"a": 1.0, "ghost": 1.0}, {"a": 1.0})
    with pytest.raises(ContractError):
        weighted_jain({}, {})


@given(allocations)
def test_index_lies_between_one_over_n_and_one(values: list[float]) -> None:
    index = jain_index(values)
    assert 1 / len(values) - 1e-9 <= index <= 1.0


@given(allocations, st.floats(1e-3, 1e3))
def test_index_is_scale_invariant(values: list[float], scale: float) -> None:
    scaled = [v * scale for v in values]
    assert jain_index(scaled) == pytest.approx(jain_index(values), rel=1e-6, abs=1e-9)


@given(st.dictionaries(st.text(min_size=1, max_size=4), st.floats(0.1, 10.0), min_size=1))
def test_throughput_proportional_to_weight_is_perfectly_fair(weights: dict[str, float]) -> None:
    throughput = {tenant: 7.0 * weight for tenant, weight in weights.items()}
    assert weighted_jain(throughput, weights) == pytest.approx(1.0)
