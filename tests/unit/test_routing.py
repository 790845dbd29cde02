"""Endpoint selection: residency, allow lists, health, tier preference and budget."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantflow.domain.policy import ModelTier, Policy
from tenantflow.domain.routing import Endpoint, Selection, select_endpoint
from tenantflow.errors import (
    BudgetExceededError,
    ConfigurationError,
    ContractError,
    NotAllowedError,
    ResidencyError,
)


def _ep(name: str, region: str, tier: str, price: int, model: str | None = None) -> Endpoint:
    return Endpoint.model_validate(
        dict(
            name=name,
            provider="openai-compatible",
            model=model or f"{tier}-model",
            region=region,
            tier=tier,
            price_in_per_1k_micros=price,
            price_out_per_1k_micros=price * 2,
            max_context=8192,
        )
    )


US_LARGE = _ep("us-large", "us-east-1", "large", 30_000, "gpt-4")
US_SMALL = _ep("us-small", "us-east-1", "small", 150, "gpt-4o-mini")
EU_LARGE = _ep("eu-large", "eu-west-1", "large", 30_000, "gpt-4")
EU_SMALL = _ep("eu-small", "eu-west-1", "small", 150, "gpt-4o-mini")
ALL = [EU_LARGE, US_SMALL, EU_SMALL, US_LARGE]
NAMES = {e.name for e in ALL}
BANK = Policy.for_tier("enterprise")  # us-east-1, large
EU_BANK = Policy.for_tier("enterprise", region="eu-west-1")


def _select(
    policy: Policy,
    *,
    healthy: Callable[[str], bool] | AbstractSet[str] = NAMES,
    remaining: int | None = None,
    prompt_tokens: int = 1000,
    max_tokens: int = 500,
    prefer_tier: ModelTier | None = None,
) -> Selection:
    return select_endpoint(
        policy,
        ALL,
        healthy=healthy,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        remaining_micros=remaining,
        prefer_tier=prefer_tier,
    )


def test_prefers_the_policy_tier_in_the_policy_region() -> None:
    chosen = _select(BANK)
    assert chosen.endpoint is US_LARGE and not chosen.degraded
    assert chosen.estimate_micros == US_LARGE.worst_case_micros(1000, 500) == 60_000
    assert _select(EU_BANK).endpoint is EU_LARGE
    assert _select(Policy.for_tier("standard", region="eu-west-1")).endpoint is EU_SMALL


def test_eu_endpoint_down_never_falls_back_to_us() -> None:
    with pytest.raises(ResidencyError) as info:
        _select(EU_BANK, healthy={"us-large", "us-small"})
    assert info.value.fields == {"region": "eu-west-1", "tried": ["eu-large", "eu-small"]}


def test_unhealthy_preferred_tier_degrades_within_the_region() -> None:
    chosen = _select(EU_BANK, healthy=lambda name: name != "eu-large")
    assert chosen.endpoint is EU_SMALL and chosen.degraded
    assert "large" in chosen.reason


def test_budget_pressure_picks_a_cheaper_in_region_model() -> None:
    chosen = _select(BANK, remaining=1_000)
    assert chosen.endpoint is US_SMALL and chosen.degraded
    assert "budget" in chosen.reason
    with pytest.raises(BudgetExceededError) as info:
        _select(BANK, remaining=100)
    assert info.value.fields["needed"] == US_SMALL.worst_case_micros(1000, 500)
    assert info.value.fields["available"] == 100


def test_allow_and_deny_lists_filter_models() -> None:
    no_gpt4 = Policy.for_tier("enterprise", denied_models=["gpt-4"])
    chosen = _select(no_gpt4)
    assert chosen.endpoint is US_SMALL and chosen.degraded
    with pytest.raises(NotAllowedError):
        _select(Policy.for_tier("enterprise", allowed_models=["claude"]))


def test_unconstrained_policy_may_use_any_region_deterministically() -> None:
    anywhere = Policy.for_tier("standard")  # region None, small tier
    first = _select(anywhere)
    # eu-small and us-small cost the same; the name breaks the tie.
    assert first.endpoint is EU_SMALL
    assert _select(anywhere, healthy={"us-small", "us-large"}).endpoint is US_SMALL


def test_no_endpoint_in_region_at_all() -> None:
    with pytest.raises(ResidencyError) as info:
        _select(Policy.for_tier("free", region="ap-southeast-1"))
    assert info.value.fields["region"] == "ap-southeast-1"


def test_context_window_must_fit() -> None:
    with pytest.raises(ContractError):
        _select(BANK, prompt_tokens=8000, max_tokens=500)


def test_prefer_tier_overrides_the_policy() -> None:
    assert _select(BANK, prefer_tier="small").endpoint is US_SMALL


def test_endpoint_validation_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        _ep("bad", "us-east-1", "medium", 1)
    assert info.value.fields["field"] == "endpoint.tier"


_endpoints = st.lists(
    st.builds(
        Endpoint,
        name=st.text("abcdef", min_size=1, max_size=4),
        provider=st.sampled_from(["p1", "p2"]),
        model=st.sampled_from(["m1", "m2", "m3"]),
        region=st.sampled_from(["us-east-1", "eu-west-1", "eu-central-1"]),
        tier=st.sampled_from(["large", "small"]),
        price_in_per_1k_micros=st.integers(0, 50_000),
        price_out_per_1k_micros=st.integers(0, 50_000),
        max_context=st.just(10_000),
    ),
    max_size=8,
)


@given(
    endpoints=_endpoints,
    healthy=st.sets(st.text("abcdef", min_size=1, max_size=4)),
    region=st.sampled_from(["us-east-1", "eu-west-1"]),
    denied=st.sets(st.sampled_from(["m1", "m2", "m3"])),
    remaining=st.one_of(st.none(), st.integers(0, 200_000)),
)
def test_selection_never_breaks_residency_allow_lists_health_or_budget(
    endpoints: list[Endpoint],
    healthy: set[str],
    region: str,
    denied: set[str],
    remaining: int | None,
) -> None:
    policy = Policy.for_tier("enterprise", region=region, denied_models=denied)
    try:
        chosen = select_endpoint(
            policy,
            endpoints,
            healthy=healthy,
            prompt_tokens=1000,
            max_tokens=1000,
            remaining_micros=remaining,
        )
    except (ResidencyError, NotAllowedError, BudgetExceededError):
        usable = [
            e
            for e in endpoints
            if e.region == region and e.model not in denied and e.name in healthy
        ]
        affordable = [
            e for e in usable if remaining is None or e.worst_case_micros(1000, 1000) <= remaining
        ]
        assert not affordable  # refused only when nothing usable was affordable
        return
    endpoint = chosen.endpoint
    assert endpoint.region == region
    assert endpoint.model not in denied
    assert endpoint.name in healthy
    assert remaining is None or chosen.estimate_micros <= remaining
    assert chosen.degraded == (endpoint.tier != "large")
