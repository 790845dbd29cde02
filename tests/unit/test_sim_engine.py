"""The simulator: deterministic, and showing each isolation dimension hold with tenant controls
and fail without them, on scenarios/quick.yaml (a small Monday morning) and tiny inline ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tenantflow.domain.scheduler import FairScheduler, ReadyItem
from tenantflow.report.build import percentile
from tenantflow.report.trace import Trace
from tenantflow.sim import (
    Scenario,
    SimResult,
    load_scenario,
    parse_scenario,
    run_variants,
    simulate,
)

QUICK = Path(__file__).resolve().parents[2] / "scenarios" / "quick.yaml"
BURSTER = "institution-x"


@pytest.fixture(scope="module")
def quick() -> Scenario:
    return load_scenario(QUICK)


@pytest.fixture(scope="module")
def on(quick: Scenario) -> SimResult:
    return simulate(quick, controls=True)


@pytest.fixture(scope="module")
def off(quick: Scenario) -> SimResult:
    return simulate(quick, controls=False)


@pytest.fixture(scope="module")
def baseline() -> SimResult:
    """quick.yaml without Institution X's burst, with controls: the quiet tenants' normal."""
    text = QUICK.read_text(encoding="utf-8").split("\nbursts:")[0]
    return simulate(parse_scenario(text, source="quick.yaml"), controls=True)


def _fingerprint(trace: Trace) -> dict[str, Any]:
    data = trace.to_json()
    del data["wall_s"]
    return data


def _class_of(trace: Trace) -> dict[str, str]:
    return {p.tenant: p.tenant_class for p in trace.tenants}


def _p99(trace: Trace, tenant_class: str) -> float:
    klass = _class_of(trace)
    latencies = sorted(
        r.latency_s if r.latency_s is not None else float("inf")
        for r in trace.runs
        if klass[r.tenant] == tenant_class and r.status != "refused"
    )
    value = percentile(latencies, 0.99)
    assert value is not None
    return value


def _runs(trace: Trace, tenant: str) -> list[Any]:
    return [r for r in trace.runs if r.tenant == tenant]


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_same_result(quick: Scenario, on: SimResult) -> None:
    again = simulate(quick, controls=True)
    assert _fingerprint(again.trace) == _fingerprint(on.trace)
    assert again.stats == on.stats
    other = simulate(quick.with_seed(quick.seed + 1), controls=True)
    assert _fingerprint(other.trace) != _fingerprint(on.trace)


def test_both_variants_get_the_same_workload(on: SimResult, off: SimResult) -> None:
    submitted = sorted((r.tenant, r.submitted_s) for r in on.trace.runs)
    assert submitted == sorted((r.tenant, r.submitted_s) for r in off.trace.runs)
    assert len(submitted) > 600
    assert on.trace.demand_s.keys() == off.trace.demand_s.keys()


def test_parallel_variants_match_sequential(quick: Scenario, on: SimResult, off: SimResult) -> None:
    parallel = run_variants(quick, [False, True], jobs=2)
    assert [_fingerprint(r.trace) for r in parallel] == [
        _fingerprint(off.trace),
        _fingerprint(on.trace),
    ]


# -- compute: caps ---------------------------------------------------------------------------


def test_the_bursting_tenant_never_exceeds_its_caps(
    quick: Scenario, on: SimResult, off: SimResult
) -> None:
    policy = next(g.policy for g in quick.groups if g.name == BURSTER)
    assert (policy.max_running_steps, policy.max_active_runs, policy.burst_slots) == (4, 8, 0)
    assert on.stats.max_running[BURSTER] == policy.max_running_steps  # held at the cap
    assert on.stats.max_active[BURSTER] == policy.max_active_runs
    assert max(s.running["bursting"] for s in on.trace.samples) <= policy.max_running_steps
    # Without controls nothing holds it: it takes every slot and admits hundreds of runs.
    assert off.stats.max_running[BURSTER] == quick.spec.slots
    assert off.stats.max_active[BURSTER] > 100


def test_slots_are_never_oversubscribed(quick: Scenario, on: SimResult, off: SimResult) -> None:
    for result in (on, off):
        samples = result.trace.samples
        assert [s.t_s for s in samples] == sorted(s.t_s for s in samples)
        assert samples[-1].t_s >= quick.spec.duration
        for sample in samples:
            assert sum(sample.running.values()) <= quick.spec.slots
            assert min(sample.queued.values()) >= 0
            assert min(sample.reviews.values()) >= 0


def test_quiet_tenants_keep_their_latency_only_with_controls(
    baseline: SimResult, on: SimResult, off: SimResult
) -> None:
    normal = _p99(baseline.trace, "ordinary")
    assert _p99(on.trace, "ordinary") <= 1.2 * normal
    assert _p99(off.trace, "ordinary") >= 4 * normal
    for quiet in ("ordinary", "enterprise", "gdpr"):
        klass = _class_of(on.trace)
        late_on = [
            r for r in on.trace.runs if klass[r.tenant] == quiet and (r.latency_s or 1e9) > 600
        ]
        late_off = [
            r for r in off.trace.runs if klass[r.tenant] == quiet and (r.latency_s or 1e9) > 600
        ]
        assert len(late_on) == 0, quiet
        assert len(late_off) > 0, quiet


# -- residency -------------------------------------------------------------------------------


def test_the_eu_tenant_never_leaves_the_eu_with_controls(on: SimResult, off: SimResult) -> None:
    with_controls = [
        region for r in _runs(on.trace, "eu-institution") for region in r.endpoint_regions
    ]
    assert with_controls and set(with_controls) == {"eu-west-1"}
    assert on.stats.residency_violations == 0
    without = [region for r in _runs(off.trace, "eu-institution") for region in r.endpoint_regions]
    assert "us-east-1" in without  # the fastest endpoint, wherever it is
    assert off.stats.residency_violations == sum(1 for region in without if region != "eu-west-1")


OUTAGE = """
slots: 4
duration: 1h
reviewer_pools: [{name: shared, reviewers: 1, decision_time: 1m}]
endpoints:
  - {name: us, model: m, region: us-east-1, tier: small, price_in_per_1k: 100,
     price_out_per_1k: 100}
  - {name: eu, model: m, region: eu-west-1, tier: small, price_in_per_1k: 100,
     price_out_per_1k: 100, outages: [{at: 10m, for: 20m}]}
workflow:
  steps:
    - name: ask
      duration: 5s
      model: {prompt_tokens: 100, max_tokens: 50, completion_tokens: 20}
      failure: {probability: 0, retries: 8, backoff: 30s, multiplier: 2, max_backoff: 5m}
tenants:
  - {name: eu, tier: standard, policy: {region: eu-west-1}, arrivals: 120/hour}
"""


def test_an_in_region_outage_waits_and_never_falls_back_across_regions() -> None:
    scenario = parse_scenario(OUTAGE, source="outage.yaml")
    on = simulate(scenario, controls=True)
    regions = {region for r in on.trace.runs for region in r.endpoint_regions}
    assert regions == {"eu-west-1"}
    assert on.stats.residency_blocked > 0  # attempts during the outage found nothing in the EU
    during = [r for r in on.trace.runs if 600 <= r.submitted_s < 1500]
    assert during and all(r.latency_s is None or r.latency_s > 5 for r in during)
    off = simulate(scenario, controls=False)
    assert {region for r in off.trace.runs for region in r.endpoint_regions} == {
        "eu-west-1",
        "us-east-1",
    }


# -- budget ----------------------------------------------------------------------------------


def test_budgets_are_never_overspent_with_controls(
    quick: Scenario, on: SimResult, off: SimResult
) -> None:
    policies = {t: g.policy for g in quick.groups for t in g.tenant_ids}
    for run in on.trace.runs:
        limit = policies[run.tenant].budget.run_micros
        assert limit is None or run.cost_micros <= limit, run
    assert on.stats.budget_overruns == 0
    period = policies["credit-union"].budget.period_micros
    assert period == 500_000
    assert sum(r.cost_micros for r in _runs(on.trace, "credit-union")) <= period
    # The budgets bind: with controls the fintech's compliance goes to a human, and without
    # them both tenants spend more than their policies allow.
    fintech_on = [d for r in _runs(on.trace, "fintech-startup") for d in r.degradations]
    assert "escalate_to_human" in fintech_on
    fintech_limit = policies["fintech-startup"].budget.run_micros
    assert fintech_limit is not None
    assert any(r.cost_micros > fintech_limit for r in _runs(off.trace, "fintech-startup"))
    assert off.stats.budget_overruns > 0
    assert sum(r.cost_micros for r in _runs(off.trace, "credit-union")) > period


# -- rate limits -----------------------------------------------------------------------------


def test_rate_limit_waits_fall_on_the_tenant_that_floods(
    quick: Scenario, on: SimResult, off: SimResult
) -> None:
    ordinary = {t for g in quick.groups if g.tenant_class == "ordinary" for t in g.tenant_ids}
    assert sum(r.rate_limit_waits for r in on.trace.runs if r.tenant in ordinary) == 0
    assert sum(r.rate_limit_waits for r in _runs(on.trace, BURSTER)) > 0
    assert sum(r.rate_limit_waits for r in off.trace.runs if r.tenant in ordinary) > 0


TWO_TENANTS = """
slots: 50
duration: 1h
shared_rate_limits: {"tool:bureau": 60/hour}
workflow:
  steps:
    - {name: pull, duration: 2s, tool: bureau}
tenants:
  - {name: a, tier: standard, policy: {rate_limits: {"tool:bureau": 60/hour}}, arrivals: 20/hour}
  - {name: b, tier: standard, policy: {rate_limits: {"tool:bureau": 60/hour}}, arrivals: 20/hour}
bursts:
  - {group: a, at: 5m, count: 300, spread: 1m}
"""


def test_each_tenant_has_its_own_bucket_with_controls() -> None:
    scenario = parse_scenario(TWO_TENANTS, source="two.yaml")
    on, off = simulate(scenario, controls=True), simulate(scenario, controls=False)
    waits = {
        (flag, tenant): sum(r.rate_limit_waits for r in _runs(result.trace, tenant))
        for flag, result in (("on", on), ("off", off))
        for tenant in ("a", "b")
    }
    assert waits["on", "a"] > 0 and waits["on", "b"] == 0
    assert waits["off", "b"] > 0  # one shared bucket: a's flood makes b wait
    # No bucket ever lets more than its rate plus burst through in an hour of submissions.
    started_a = [
        r for r in _runs(on.trace, "a") if r.finished_s is not None and r.finished_s <= 3600
    ]
    assert len(started_a) <= 60 + 60


# -- failures and reviews --------------------------------------------------------------------

FAILING = """
seed: 1
slots: 2
duration: 10m
drain: 1h
workflow:
  steps:
    - {name: hold, duration: 5s, compensate: 2s}
    - name: charge
      duration: 5s
      failure: {probability: 1, retries: 1, backoff: 10s, jitter: 0}
tenants:
  - {name: t, tier: standard, arrivals: 60/hour}
"""


def test_a_run_that_fails_for_good_compensates_and_fails() -> None:
    result = simulate(parse_scenario(FAILING, source="f.yaml"), controls=True)
    runs = result.trace.runs
    assert runs and all(r.status == "failed" for r in runs)
    # hold, charge, charge again after 10 s, then hold's 2 s compensation.
    assert result.stats.steps == 4 * len(runs)
    for run in runs:
        assert run.latency_s is not None and run.latency_s >= 5 + 5 + 10 + 5 + 2


REVIEWS = """
slots: 50
duration: 30m
drain: 3h
reviewer_pools: [{name: shared, reviewers: 1, decision_time: 1m}]
workflow:
  steps:
    - {name: check, duration: 5s, review: {probability: 1}}
tenants:
  - {name: a, tier: standard}
  - {name: b, tier: standard, arrivals: 12/hour}
bursts:
  - {group: a, at: 1m, count: 40, spread: 10s}
"""


def test_a_shared_reviewer_pool_serves_tenants_fairly_only_with_controls() -> None:
    scenario = parse_scenario(REVIEWS, source="reviews.yaml")
    worst, mean = {}, {}
    for flag in (True, False):
        trace = simulate(scenario, controls=flag).trace
        assert all(r.reviewed for r in _runs(trace, "a"))
        b_waits = [r.review_wait_s for r in _runs(trace, "b") if r.reviewed]
        assert len(b_waits) == len(_runs(trace, "b")) > 2
        worst[flag] = max(w or 0.0 for w in b_waits)
        mean[flag] = sum(w or 0.0 for w in b_waits) / len(b_waits)
    # With controls b's reviews alternate with a's (and a's active-run cap bounds its queue):
    # b waits for its own and a few of a's one-minute reviews. Without, b's reviews wait behind
    # every one of a's 40.
    assert mean[True] <= 3 * 60 and worst[True] <= 6 * 60
    assert worst[False] >= 20 * 60


# -- the scheduler accessor the simulator relies on --------------------------------------------


def test_next_wake_s_is_when_an_exhausted_tenant_is_restored() -> None:
    sched = FairScheduler(slots=10)
    sched.configure_tenant("t", running_cap=1, burst_slots=1, burst_window_s=10.0, now_s=0.0)
    for key in "abc":
        sched.push(ReadyItem("t", key, cost_hint_s=8.0), 0.0)
    assert sched.pop(0.0) is not None and sched.pop(0.0) is not None  # the cap, then a burst
    assert sched.pop(0.0) is None and sched.next_wake_s is None
    sched.done("t", "b", 12.0, 12.0)  # 12 slot-seconds above the cap: credit exhausted
    assert sched.next_wake_s == pytest.approx(24.0)  # repaid at 1 s/s
    assert sched.pop(23.0) is None
    item = sched.pop(24.0)
    assert item is not None and item.key == "c"
    assert sched.next_wake_s is None
