"""Policy: tier presets, overrides, validation errors, helpers and money conversion."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantflow.domain.policy import (
    DEFAULT_REGIONS,
    Policy,
    RateLimit,
    micros_to_usd,
    parse_duration,
    tier_preset,
    usd_to_micros,
    validate_policy,
)
from tenantflow.errors import ConfigurationError


def test_presets_carry_the_seed_numbers() -> None:
    bank = Policy.for_tier("enterprise")
    union = Policy.for_tier("standard")
    fintech = Policy.for_tier("free")

    assert (bank.max_active_runs, union.max_active_runs, fintech.max_active_runs) == (50, 10, 3)
    # The presets are generic: the loan platform's tools belong to its own policies.
    assert [p.rate_limits for p in (bank, union, fintech)] == [{}, {}, {}]
    assert [p.model_tier for p in (bank, union, fintech)] == ["large", "small", "small"]
    assert [p.budget.run_micros for p in (bank, union, fintech)] == [2_000_000, 500_000, 100_000]
    assert (bank.region, union.region, fintech.region) == ("us-east-1", None, None)
    assert bank.dedicated_reviewers and not union.dedicated_reviewers
    assert bank.review_pool_for("bank-1") == "bank-1-reviewers"
    assert fintech.review_pool_for("fin-9") == "shared"
    assert (bank.run_sla, union.run_sla, fintech.run_sla) == (
        timedelta(hours=4),
        timedelta(hours=24),
        None,
    )
    assert fintech.review_lane == "background"
    assert bank.weight > union.weight > fintech.weight


def test_for_tier_overrides_any_field_and_merges_budget() -> None:
    policy = Policy.for_tier(
        "standard",
        max_active_runs=7,
        region="eu-west-1",
        budget={"period": "daily", "period_micros": "$5"},
        review_sla="90m",
    )
    assert policy.max_active_runs == 7
    assert policy.region == "eu-west-1"
    assert policy.budget.run_micros == 500_000  # kept from the preset
    assert policy.budget.period == "daily"
    assert policy.budget.period_micros == 5_000_000
    assert policy.review_sla == timedelta(minutes=90)
    assert tier_preset("standard").max_active_runs == 10  # the preset is untouched


@pytest.mark.parametrize(
    ("overrides", "field", "value"),
    [
        ({"max_active_runs": -1}, "max_active_runs", -1),
        ({"max_running_steps": -5}, "max_running_steps", -5),
        ({"budget": {"run_micros": -3}}, "budget.run_micros", -3),
        ({"budget": {"period_tokens": -1}}, "budget.period_tokens", -1),
        ({"budget": {"period": "weekly"}}, "budget.period", "weekly"),
        ({"region": "mars-1"}, "region", "mars-1"),
        ({"allowed_tools": ["bureau", "kyc"], "denied_tools": ["kyc"]}, "allowed_tools", ["kyc"]),
        ({"allowed_models": ["gpt-4"], "denied_models": ["gpt-4"]}, "allowed_models", ["gpt-4"]),
        ({"rate_limits": {"tool:x": "5/fortnight"}}, "rate_limits.tool:x", "5/fortnight"),
        ({"rate_limits": {"tool:x": "lots"}}, "rate_limits.tool:x", "lots"),
        ({"rate_limits": {"tool:x": "0/hour"}}, "rate_limits.tool:x", "0/hour"),
        ({"model_tier": "huge"}, "model_tier", "huge"),
        ({"weight": 0}, "weight", 0),
        ({"review_breach_action": "shrug"}, "review_breach_action", "shrug"),
        ({"degradation": ["pause", "pause"]}, "degradation", ["pause", "pause"]),
        ({"degradation": ["panic"]}, "degradation.0", "panic"),
        ({"guaranteed_slots": 30}, "guaranteed_slots", 30),
        ({"no_such_field": 1}, "no_such_field", 1),
    ],
)
def test_invalid_policies_name_the_field_and_value(
    overrides: dict[str, Any], field: str, value: object
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Policy.for_tier("standard", **overrides)
    assert info.value.fields["field"] == field
    assert info.value.fields["value"] == value
    assert field.split(".")[0] in str(info.value)


def test_non_positive_durations_are_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        Policy.for_tier("free", review_sla="0s")
    assert info.value.fields["field"] == "review_sla"


def test_unknown_tier_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        Policy.for_tier("platinum")
    assert info.value.fields == {"field": "tier", "value": "platinum"}
    with pytest.raises(ConfigurationError):
        tier_preset("gold")
    with pytest.raises(ConfigurationError):
        Policy.for_tier("free", tier="enterprise")


def test_direct_construction_raises_configuration_error_not_pydantic() -> None:
    with pytest.raises(ConfigurationError) as info:
        Policy(tier="free", weight=1.0, max_active_runs=-1, max_running_steps=1)
    assert info.value.fields["field"] == "max_active_runs"
    with pytest.raises(ConfigurationError):
        Policy.model_validate_json('{"tier": "free", "weight": "heavy"}')


def test_regions_validate_against_the_deployment_set() -> None:
    assert "eu-west-1" in DEFAULT_REGIONS
    with pytest.raises(ConfigurationError):
        Policy.for_tier("free", region="ca-central-1")
    custom = Policy.for_tier("free", region="ca-central-1", known_regions={"ca-central-1"})
    assert custom.region == "ca-central-1"
    with pytest.raises(ConfigurationError) as info:
        validate_policy(Policy.for_tier("enterprise"), known_regions={"eu-west-1"})
    assert info.value.fields["value"] == "us-east-1"
    assert validate_policy(custom, {"ca-central-1"}) == custom
    assert Policy.for_tier("enterprise", region="any").region is None


def test_allow_and_deny_lists() -> None:
    policy = Policy.for_tier(
        "standard",
        allowed_tools=["credit_bureau_v2", "compliance_db"],
        denied_tools=["experimental_model_v3"],
        denied_models=["gpt-4"],
    )
    assert policy.allows_tool("credit_bureau_v2")
    assert not policy.allows_tool("notification_api")  # not on the allow list
    assert not policy.allows_tool("experimental_model_v3")
    assert policy.allows_model("gpt-4o-mini")  # no allow list: anything not denied
    assert not policy.allows_model("gpt-4")
    assert policy.allowed_tools == ("compliance_db", "credit_bureau_v2")  # sorted, deduplicated


def test_rate_limit_lookup_falls_back_to_wildcards() -> None:
    policy = Policy.for_tier(
        "free",
        rate_limits={"tool:credit_bureau": "10/hour", "tool:*": "100/hour", "*": "5/second"},
    )
    assert policy.rate_limit_for("tool:credit_bureau") == RateLimit.parse("10/hour")
    assert policy.rate_limit_for("tool:kyc") == RateLimit.parse("100/hour")
    assert policy.rate_limit_for("model:gpt-4") == RateLimit.parse("5/second")
    assert Policy.for_tier("free", rate_limits={}).rate_limit_for("tool:kyc") is None


@pytest.mark.parametrize(
    ("text", "count", "window_s"),
    [
        ("500/hour", 500, 3600.0),
        ("10/minute", 10, 60.0),
        ("5/second", 5, 1.0),
        ("100 / 15min", 100, 900.0),
        ("1000/day", 1000, 86400.0),
    ],
)
def test_rate_strings_parse(text: str, count: int, window_s: float) -> None:
    limit = RateLimit.parse(text)
    assert (limit.count, limit.window_s, limit.burst) == (count, window_s, count)
    assert limit.rate_per_s == pytest.approx(count / window_s)


def test_rate_limit_burst_and_mapping_form() -> None:
    limit = RateLimit.model_validate({"rate": "500/hour", "burst": 20})
    assert (limit.count, limit.burst) == (500, 20)
    assert limit.emission_interval_s == pytest.approx(7.2)
    with pytest.raises(ConfigurationError):
        RateLimit.parse("500/hour", burst=0)


def test_policy_round_trips_through_json() -> None:
    policy = Policy.for_tier("enterprise", org_id="holding", denied_tools=["x"])
    assert Policy.model_validate_json(policy.model_dump_json()) == policy


def test_durations_in_words() -> None:
    assert parse_duration("4h") == timedelta(hours=4)
    assert parse_duration("30 days") == timedelta(days=30)
    seven_years = parse_duration("7 years")
    assert isinstance(seven_years, timedelta)
    assert seven_years >= timedelta(days=7 * 365 + 2)  # never short of the calendar date
    assert parse_duration("PT4H") == "PT4H"  # left for pydantic's ISO 8601 parser
    assert Policy.for_tier("free", data_retention="PT4H").data_retention == timedelta(hours=4)


def test_money_conversion_is_exact() -> None:
    assert usd_to_micros("$2.00") == 2_000_000
    assert usd_to_micros(0.1) == 100_000
    assert usd_to_micros(Decimal("0.0000005")) == 0  # half-even at the micro
    assert usd_to_micros("0.0000015") == 2
    assert micros_to_usd(2_500_001) == Decimal("2.500001")
    for bad in ("two dollars", "nan", True):
        with pytest.raises(ConfigurationError):
            usd_to_micros(bad)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_micros_round_trip(micros: int) -> None:
    assert usd_to_micros(micros_to_usd(micros)) == micros
