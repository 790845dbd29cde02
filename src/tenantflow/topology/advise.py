"""``tenantflow topology advise``: a placement for a platform's profile, with its reasons.

The rules are seed 000's decision framework ("Choose Centralized Orchestration if…", "Choose
Decentralized Mesh if…", "Choose Federated Orchestration if…") plus seed 001's boundary
("< 10 tenants … manual management works"), scored per placement; every rule that fires is
given as a reason, quoted from the seed, and paired with the figure measured for it — from
the last ``tenantflow topology compare`` report (``--from``) or the shipped figures of a real
run (:mod:`tenantflow.topology.defaults`). A placement that was not measured says so.

The thresholds that turn the seed's words into numbers are this advisor's, stated in
:data:`THRESHOLDS`: a team of fewer than 3 platform engineers is "small", 5 or more can carry a
mesh's distributed observability.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["THRESHOLDS", "Advice", "Profile", "advise"]

Mix = Literal["similar", "mixed"]

THRESHOLDS = {
    "embedded_max_tenants": 10,
    "centralized_max_tenants": 50,
    "mesh_target_tenants": 200,
    "small_team": 3,
    "mesh_team": 5,
}


@dataclass(frozen=True, slots=True)
class Profile:
    """What the advisor asks.

    Attributes:
        tenants: Tenants today.
        tenants_in_18_months: Tenants expected in 12-18 months.
        regulated: Tenants whose data residency or sovereignty is non-negotiable.
        mix: ``similar`` workload profiles and latency needs, or a ``mixed`` bag of high- and
            low-volume tenants with very different latency profiles.
        sla_tiers: Distinct SLA tiers sold (1: everyone the same).
        team: Engineers who run the platform.
        noisy_incidents: Noisy-neighbour or isolation incidents already in the incident log.
        side_effects: Many steps are side effects (notifications, webhooks, analytics).
    """

    tenants: int
    tenants_in_18_months: int
    regulated: int = 0
    mix: Mix = "similar"
    sla_tiers: int = 1
    team: int = 2
    noisy_incidents: bool = False
    side_effects: bool = False


@dataclass
class Advice:
    placement: str
    scores: dict[str, int]
    reasons: dict[str, list[str]] = field(default_factory=dict)
    figures: dict[str, list[str]] = field(default_factory=dict)
    graduate: list[str] = field(default_factory=list)
    source: str = ""


def _fig(report: Mapping[str, Any], placement: str, key: str) -> float | None:
    entry = report.get("placements", {}).get(placement, {})
    if not entry.get("available"):
        return None
    value = entry.get("summary_figures", {}).get(key, {})
    got = value.get("median") if isinstance(value, Mapping) else None
    return None if got is None else float(got)


def _measured(report: Mapping[str, Any], placement: str) -> list[str]:
    """The figures behind a recommendation, or why there are none."""
    entry = report.get("placements", {}).get(placement)
    if entry is None:
        return [f"{placement}: not in the report"]
    if not entry.get("available"):
        return [f"{placement}: not measured: {entry.get('reason', 'not available')}"]
    out: list[str] = []

    def add(label: str, key: str, fmt: str) -> None:
        value = _fig(report, placement, key)
        if value is not None:
            out.append(f"{label}: {fmt.format(value)}")

    add("quiet tenants' p99 with a burst / without", "quiet_p99_ratio", "{:.2f}x")
    add("Jain's index at saturation", "jain", "{:.3f}")
    for key in sorted(entry.get("summary_figures", {})):
        if key.startswith("affected_share["):
            add(f"tenants affected by {key[15:-1].replace('_', ' ')}", key, "{:.0%}")
    add("policy: admissions over a lowered cap", "policy_violations", "{:.0f}")
    add("policy: lag to the last of them", "policy_lag_s", "{:.2f} s")
    add("cross-region model calls", "cross_region_calls", "{:.0f}")
    add("processes", "processes", "{:.0f}")
    add("resident memory per tenant", "rss_mb_per_tenant", "{:.1f} MB")
    add("CPU-seconds per 1,000 steps", "cpu_s_per_1000_steps", "{:.2f}")
    add("throughput at saturation", "steps_per_s", "{:.0f} steps/s")
    add("timeline assembly p50", "timeline_p50_ms", "{:.1f} ms")
    add("runs lost", "runs_lost", "{:.0f}")
    add("duplicate completions", "duplicate_completions", "{:.0f}")
    return out


def advise(profile: Profile, report: Mapping[str, Any], source: str) -> Advice:
    """Score every placement against ``profile``; the highest wins (ties: the simpler one)."""
    t = THRESHOLDS
    scores = {p: 0 for p in ("embedded", "centralized", "federated", "mesh", "hybrid")}
    reasons: dict[str, list[str]] = {p: [] for p in scores}

    def rule(placement: str, points: int, why: str) -> None:
        scores[placement] += points
        reasons[placement].append(why)

    growth = profile.tenants_in_18_months
    tiny = profile.tenants < t["embedded_max_tenants"] and growth < t["embedded_max_tenants"]
    # Under 10 tenants the reasons for one shared control plane hold for one process.
    shared = "embedded" if tiny else "centralized"
    if tiny:
        rule(
            "embedded",
            3,
            "seed 001: under 10 tenants 'all this isolation is overhead without value'",
        )
    elif (
        profile.tenants < t["centralized_max_tenants"] and growth < t["centralized_max_tenants"] * 2
    ):
        rule("centralized", 2, "seed 000: 'fewer than 50 tenants and near-term growth is modest'")
    if profile.mix == "similar" and profile.sla_tiers <= 2:
        rule(
            shared,
            1,
            "seed 000: 'tenants have similar workload profiles and comparable SLA tiers'",
        )
    if profile.team < t["small_team"]:
        rule(
            shared,
            2,
            "seed 000: 'your engineering team is small and cannot afford the operational "
            "overhead of a mesh'",
        )
    if profile.regulated == 0:
        rule(
            shared,
            1,
            "seed 000: 'compliance requirements are manageable through logical separation'",
        )
    if profile.regulated > 0:
        rule(
            "mesh", 2, "seed 000: 'regulated industries … where data sovereignty is non-negotiable'"
        )
        rule(
            "federated",
            1,
            "seed 000: a per-tenant orchestrator keeps a regulated tenant's execution in "
            "its own failure and residency domain",
        )
    if profile.mix == "mixed":
        rule(
            "mesh",
            1,
            "seed 000: 'a mix of high-volume and low-volume customers with very different "
            "latency profiles'",
        )
        rule("federated", 1, "seed 000: 'starting to see noisy-neighbor effects'")
    if growth >= t["mesh_target_tenants"]:
        rule("mesh", 3, "seed 000: 'targeting 200+ tenants within 12 to 18 months'")
    if (
        profile.tenants >= t["centralized_max_tenants"]
        or growth >= t["centralized_max_tenants"] * 2
    ):
        rule("federated", 2, "seed 000: 'scaling past 50 tenants'")
    if profile.noisy_incidents:
        rule(
            "mesh", 1, "seed 000: 'isolation failures are already showing up in your incident log'"
        )
        rule("federated", 2, "seed 000: 'cannot accept shared execution risk'")
    if profile.team >= t["mesh_team"]:
        rule(
            "mesh",
            1,
            "seed 000: 'the platform engineering maturity to invest in distributed observability'",
        )
    elif profile.regulated or growth >= t["mesh_target_tenants"]:
        rule(
            "mesh",
            -2,
            f"a team under {t['mesh_team']} engineers carries a mesh's observability and "
            f"policy-propagation work at its peril (seed 000: 'Observability becomes a "
            f"first-class engineering problem')",
        )
    if profile.team >= t["small_team"]:
        rule(
            "federated",
            1,
            "seed 000: 'a platform engineering team capable of building and maintaining "
            "tenant lifecycle automation'",
        )
    else:
        rule(
            "federated",
            -1,
            "seed 000: federated needs 'robust tenant lifecycle management' a small team "
            "does not yet have",
        )
    if profile.sla_tiers >= 3:
        rule(
            "federated",
            1,
            "several SLA tiers: a dedicated cell per top-tier tenant bounds its blast radius",
        )
    if profile.side_effects:
        rule(
            "hybrid",
            2,
            "many side-effect steps: choreograph them off the critical path, keep the rest "
            "orchestrated (research §6(c))",
        )
    _evidence(report, profile, rule)
    order = ["embedded", "centralized", "federated", "hybrid", "mesh"]  # simpler first on ties
    best = max(order, key=lambda p: (scores[p], -order.index(p)))
    graduate = _graduation(best, profile)
    entry = report.get("placements", {}).get(best, {})
    if not entry.get("available"):
        why = entry.get("reason", "it is not in the report")
        graduate.insert(
            0,
            f"Note: {best} was not measured here ({why}); no figure of its own stands behind"
            " this advice yet. Until it is, the measured fallback is the best-scoring measured"
            " placement: " + _best_measured(report, scores) + ".",
        )
    figures = {p: _measured(report, p) for p in scores}
    return Advice(best, scores, reasons, figures, graduate, source)


def _best_measured(report: Mapping[str, Any], scores: Mapping[str, int]) -> str:
    measured: list[str] = [
        str(p) for p, e in report.get("placements", {}).items() if e.get("available")
    ]
    if not measured:
        return "none"
    return max(measured, key=lambda p: scores.get(p, 0))


def _evidence(report: Mapping[str, Any], profile: Profile, rule: Any) -> None:
    """Rules from the measured figures of the shared (centralized) placement."""
    ratio = _fig(report, "centralized", "quiet_p99_ratio")
    if ratio is not None:
        if ratio <= 1.10:
            rule(
                "centralized",
                1,
                f"measured: a burst left quiet tenants' p99 within {ratio:.2f}x (target 1.10)",
            )
        elif profile.mix == "mixed" or profile.noisy_incidents:
            rule(
                "federated",
                1,
                f"measured: a burst moved quiet tenants' p99 by {ratio:.2f}x in the shared"
                " deployment (target 1.10)",
            )
    cross = _fig(report, "centralized", "cross_region_calls")
    checked = _fig(report, "centralized", "region_bound_calls_checked")
    if profile.regulated and cross == 0 and checked:
        rule(
            "centralized",
            1,
            f"measured: 0 of {checked:.0f} region-bound model calls left their region in the"
            " shared deployment (residency routing holds; data at rest needs region stores)",
        )
    front = _fig(report, "centralized", "affected_share[api_kill]")
    if front is not None and front >= 0.99 and profile.sla_tiers >= 3:
        rule(
            "federated",
            1,
            f"measured: killing the shared front touched {front:.0%} of tenants; a top SLA tier"
            " needs a failure domain of its own",
        )


def _graduation(best: str, profile: Profile) -> list[str]:
    move = (
        "tenant moves between placements: `tenantflow tenants move` (issue 16, being built;"
        " docs/tenant-move.md once it lands)"
    )
    steps = {
        "embedded": [
            "Graduate to centralized when a second process is needed: the same store schema"
            " runs on PostgreSQL (tenantflow db upgrade; serve --workers external + workers).",
        ],
        "centralized": [
            "Re-run `tenantflow topology compare` at each doubling of tenants; when quiet"
            " tenants' p99 ratio under a burst passes 1.10 or a shared component's blast radius"
            " becomes unacceptable, move the noisiest or regulated tenants into cells of their"
            " own (federated), one tenant at a time: " + move + ".",
        ],
        "federated": [
            "Start with a centralized deployment for the long tail and give regulated or"
            " top-tier tenants cells of their own; move tenants cell by cell (canary cell"
            " first): " + move + ".",
        ],
        "mesh": [
            "Keep an orchestrated (centralized or federated) core until the mesh runner is"
            " measured here; choreograph side effects first (hybrid), then move tenants: "
            + move
            + ".",
        ],
        "hybrid": [
            "Mark side-effect steps side_effect=True (issue 17) and keep the critical path"
            " orchestrated; graduate the core like the centralized advice: " + move + ".",
        ],
    }
    out = list(steps[best])
    if profile.regulated and best in ("centralized", "embedded"):
        out.append(
            "Regulated tenants: give each residency region its own store now (region stores)"
            " and check cross-region calls stay 0 in every compare."
        )
    return out
