"""Scenario files: the shipped ones load; every malformed one is refused with its line and field."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantflow.errors import ConfigurationError
from tenantflow.sim import Scenario, ScenarioError, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

# A small valid scenario; the tests below break one thing at a time. Line numbers matter.
VALID = """\
name: tiny
seed: 3
slots: 4
duration: 30m
endpoints:
  - {name: us-small, model: m-small, region: us-east-1, tier: small,
     price_in_per_1k: 150, price_out_per_1k: "$0.0006"}
  - {name: eu-small, model: m-small, region: eu-west-1, tier: small,
     price_in_per_1k: 165, price_out_per_1k: 660}
reviewer_pools:
  - {name: shared, reviewers: 2, decision_time: {mean: 2m, cv: 0.5}}
workflow:
  steps:
    - name: verify
      duration: {mean: 5s}
      tool: bureau
      tool_cost: "$0.01"
    - name: decide
      duration: {dist: uniform, low: 2s, high: 6s}
      model: {prompt_tokens: 500, max_tokens: 100, completion_tokens: 50}
      review: {probability: 0.1}
tenants:
  - name: bank
    tier: standard
    policy: {run_sla: 5m}
    arrivals: 100/day
  - name: eu
    tier: standard
    policy: {region: eu-west-1}
    arrivals: {rate: 50/day, lane: urgent}
  - name: inst
    count: 3
    tier: free
    arrivals: 20/day
bursts:
  - {group: bank, at: 5m, count: 50, spread: 5m}
"""


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the text")


def _error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source="bad.yaml")
    return caught.value


# -- valid files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["monday_morning.yaml", "month.yaml", "quick.yaml", "topology.yaml"]
)
def test_shipped_scenarios_load(name: str) -> None:
    scenario = load_scenario(SCENARIOS / name)
    assert scenario.source == name
    assert scenario.groups and scenario.spec.workflow.steps
    for group in scenario.groups:
        assert group.policy.tier in ("enterprise", "standard", "free")


def test_shipped_scenarios_are_package_data_found_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenantflow.sim import find_scenario, shipped_scenarios

    monkeypatch.chdir(tmp_path)  # outside a checkout
    shipped = shipped_scenarios()
    assert set(shipped) == {"monday_morning", "month", "quick", "topology"}
    assert all("tenantflow" in str(p) and p.is_file() for p in shipped.values())
    assert find_scenario("monday_morning") == shipped["monday_morning"]
    assert find_scenario("quick.yaml") == shipped["quick"]
    (tmp_path / "quick.yaml").write_text("name: mine\n", encoding="utf-8")
    assert find_scenario("quick.yaml") == Path("quick.yaml")  # a file that exists wins
    with pytest.raises(ScenarioError, match="monday_morning, month, quick, topology"):
        find_scenario("tuesday")
    # The checkout's scenarios/ are the same files.
    assert (SCENARIOS / "month.yaml").read_bytes() == shipped["month"].read_bytes()


def test_monday_morning_is_seed_001_at_full_scale() -> None:
    scenario = load_scenario(SCENARIOS / "monday_morning.yaml")
    assert scenario.tenant_count == 200
    assert scenario.spec.slots == 100
    by_name = {g.name: g for g in scenario.groups}
    bank = by_name["regional-bank"].policy
    assert (bank.tier, bank.max_active_runs, bank.model_tier) == ("enterprise", 50, "large")
    assert bank.rate_limit_for("tool:credit_bureau") is not None
    assert bank.rate_limit_for("tool:credit_bureau").count == 500  # type: ignore[union-attr]
    assert bank.budget.run_micros == 2_000_000
    assert bank.region == "us-east-1"
    union = by_name["credit-union"].policy
    assert (union.max_active_runs, union.model_tier, union.budget.run_micros) == (
        10,
        "small",
        500_000,
    )
    fintech = by_name["fintech-startup"].policy
    assert (fintech.max_active_runs, fintech.budget.run_micros) == (3, 100_000)
    assert fintech.review_lane == "background"
    assert by_name["eu-institution"].policy.region == "eu-west-1"
    x = by_name["institution-x"].policy
    assert x.max_running_steps == 20
    assert x.rate_limit_for("tool:credit_bureau").count == 200  # type: ignore[union-attr]
    (burst,) = scenario.spec.bursts
    assert (burst.group, burst.count, burst.spread) == ("institution-x", 5000, 1800.0)


def test_a_valid_scenario_resolves_groups_policies_and_endpoints() -> None:
    scenario = parse_scenario(VALID, source="tiny.yaml")
    assert isinstance(scenario, Scenario)
    assert scenario.name == "tiny"
    assert [g.tenant_ids for g in scenario.groups] == [
        ("bank",),
        ("eu",),
        ("inst-001", "inst-002", "inst-003"),
    ]
    assert scenario.groups[0].rate_per_s == pytest.approx(100 / 86400)
    assert scenario.groups[0].policy.run_sla is not None
    assert scenario.groups[1].lane == "urgent"
    assert scenario.groups[2].lane == "normal"
    assert scenario.endpoints[0].endpoint.price_out_per_1k_micros == 600
    assert scenario.spec.workflow.steps[0].tool_cost == 10_000
    assert scenario.spec.duration == 1800.0
    assert scenario.with_seed(99).seed == 99 and scenario.with_seed(None).seed == 3


def test_extension_keys_anchors_and_merge_keys_are_read() -> None:
    text = VALID.replace(
        "tenants:\n",
        "x-defaults: &defaults {tier: standard, arrivals: 10/day}\ntenants:\n"
        "  - {<<: *defaults, name: merged}\n",
    )
    scenario = parse_scenario(text, source="tiny.yaml")
    merged = scenario.groups[0]
    assert merged.name == "merged" and merged.policy.tier == "standard"


# -- malformed files: one error naming the line and the field ------------------------------


def test_yaml_syntax_error_names_the_line() -> None:
    text = VALID.replace("  - name: bank\n", "  - name: [bank\n")
    err = _error(text)
    assert isinstance(err, ConfigurationError)
    assert err.code == "scenario_invalid"
    assert re.match(r"^bad\.yaml:\d+: YAML syntax error: ", err.message)
    assert err.fields["line"] >= _line_of(text, "name: [bank")


def test_unknown_field_names_line_and_path() -> None:
    text = VALID.replace("    count: 3\n", "    count: 3\n    colour: red\n")
    err = _error(text)
    line = _line_of(text, "colour: red")
    assert err.message == f"bad.yaml:{line}: tenants[2].colour: unknown field (got 'red')"
    assert err.fields["line"] == line
    assert err.fields["field"] == "tenants[2].colour"


def test_wrong_type_names_line_and_path() -> None:
    text = VALID.replace("slots: 4", "slots: many")
    err = _error(text)
    assert err.message.startswith(f"bad.yaml:{_line_of(text, 'slots: many')}: slots: ")
    assert "valid integer" in err.message and "(got 'many')" in err.message


def test_invalid_policy_value_names_line_and_path() -> None:
    text = VALID.replace("    count: 3\n", "    count: 3\n    policy:\n      max_active_runs: -3\n")
    err = _error(text)
    line = _line_of(text, "max_active_runs: -3")
    assert err.message == (
        f"bad.yaml:{line}: tenants[2].policy.max_active_runs: must be >= 0 (got -3)"
    )


def test_invalid_rate_limit_in_a_policy_names_the_resource() -> None:
    text = VALID.replace(
        "policy: {run_sla: 5m}", 'policy:\n      rate_limits: {"tool:bureau": lots}'
    )
    err = _error(text)
    line = _line_of(text, "rate_limits")
    assert err.message.startswith(
        f'bad.yaml:{line}: tenants[0].policy.rate_limits["tool:bureau"]: '
    )
    assert "lots" in err.message


def test_unknown_policy_field_and_region_are_refused() -> None:
    err = _error(VALID.replace("policy: {run_sla: 5m}", "policy: {run_sla: 5m, turbo: true}"))
    assert "tenants[0].policy.turbo: unknown policy field" in err.message
    err = _error(VALID.replace("region: eu-west-1}", "region: mars-1}"))
    assert f"bad.yaml:{_line_of(VALID, 'region: eu-west-1}')}: tenants[1].policy.region:" in (
        err.message
    )
    assert "unknown region" in err.message


def test_a_policy_value_of_the_wrong_shape_is_a_scenario_error() -> None:
    # Policy validation itself trips on an unhashable region; the loader still names the field.
    text = VALID.replace("region: eu-west-1}", "region: []}")
    err = _error(text)
    assert err.fields["field"] == "tenants[1].policy.region"
    assert err.fields["line"] == _line_of(text, "region: []}")


def test_missing_required_field_names_the_parent() -> None:
    err = _error(VALID.replace("slots: 4\n", ""))
    assert err.message == "bad.yaml:1: slots: Field required"


@pytest.mark.parametrize(
    ("old", "new", "path", "needle"),
    [
        ("duration: 30m", "duration: 2 fortnights", "duration", "not a duration"),
        ("arrivals: 20/day", "arrivals: often", "tenants[2].arrivals.rate", "not a rate"),
        ('tool_cost: "$0.01"', "tool_cost: 0.01", "workflow.steps[0].tool_cost", "amount"),
        ("high: 6s}", "high: 1s}", "workflow.steps[1].duration", "below low"),
        ("probability: 0.1}", "probability: 1.5}", "workflow.steps[1].review.probability", "1"),
        ("tier: free", "tier: platinum", "tenants[2].tier", "enterprise"),
        ("count: 3", "count: 0", "tenants[2].count", "greater than or equal to 1"),
    ],
)
def test_bad_values_name_line_and_field(old: str, new: str, path: str, needle: str) -> None:
    text = VALID.replace(old, new)
    assert text != VALID
    err = _error(text)
    assert err.fields["field"] == path
    assert err.fields["line"] == _line_of(text, new.split(":")[0] + ":" + new.split(":")[1])
    assert needle in err.message


def test_cross_section_mistakes_are_refused_at_their_line() -> None:
    err = _error(VALID.replace("{group: bank,", "{group: nobody,"))
    assert err.fields["field"] == "bursts[0].group"
    assert err.fields["line"] == _line_of(VALID, "{group: bank,")
    assert "no tenant group is called 'nobody'" in err.message
    no_eu = VALID.replace("region: eu-west-1, tier", "region: us-west-2, tier")
    err = _error(no_eu)
    assert err.fields["field"] == "tenants[1].policy"
    assert "no endpoint in region 'eu-west-1'" in err.message
    no_pool = VALID.replace("{name: shared, reviewers", "{name: other, reviewers")
    err = _error(no_pool)
    assert "sends reviews to pool 'shared'" in err.message
    twice = VALID.replace("  - name: inst\n", "  - name: bank\n")
    assert "duplicated name 'bank'" in _error(twice).message


def test_duplicated_key_is_refused() -> None:
    text = VALID.replace("seed: 3\n", "seed: 3\nseed: 4\n")
    err = _error(text)
    assert err.fields["line"] == 3
    assert "duplicated key" in err.message


@pytest.mark.parametrize(
    "text", ["", "just a string\n", "- a\n- list\n", "a: 1\n---\nb: 2\n", "x: !custom 3\n"]
)
def test_not_a_scenario_at_all(text: str) -> None:
    err = _error(text)
    assert re.match(r"^bad\.yaml:\d+: ", err.message)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


# -- anything scenario-like loads or is refused with a ScenarioError -------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["1h", "50/day", "$0.10", "eu-west-1", "standard", "bank", "-3", "0s"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_BASE: dict[str, Any] = yaml.safe_load(VALID)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.extend(_paths(item, (*prefix, index)))
    return out


_PATHS = _paths(_BASE)


def _mutate(data: dict[str, Any], path: tuple[Any, ...], action: str, value: Any) -> None:
    parent: Any = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"extra_{last}"] = value


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(_PATHS), st.sampled_from(["replace", "delete", "add"]), _VALUES),
        min_size=1,
        max_size=3,
    )
)
def test_scenario_like_mappings_load_or_raise_scenario_error(
    mutations: list[tuple[tuple[Any, ...], str, Any]],
) -> None:
    data = copy.deepcopy(_BASE)
    for path, action, value in mutations:
        try:
            _mutate(data, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced the path's parent
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        scenario = parse_scenario(text, source="fuzz.yaml")
    except ScenarioError as exc:
        assert re.match(r"^fuzz\.yaml:\d+: ", exc.message), exc.message
        assert "\n" not in exc.message.strip()
    else:
        assert scenario.groups


@settings(max_examples=100, deadline=None, derandomize=True)
@given(text=st.text(max_size=200))
def test_arbitrary_text_loads_or_raises_scenario_error(text: str) -> None:
    try:
        parse_scenario(text, source="fuzz.yaml")
    except ScenarioError as exc:
        assert re.match(r"^fuzz\.yaml:\d+: ", exc.message), exc.message


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.dictionaries(st.sampled_from([*_BASE, "other"]), _VALUES, max_size=6))
def test_arbitrary_top_level_mappings_load_or_raise_scenario_error(data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        parse_scenario(text, source="fuzz.yaml")
    except ScenarioError as exc:
        assert re.match(r"^fuzz\.yaml:\d+: ", exc.message), exc.message
