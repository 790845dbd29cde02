"""From traces to figures: the comparison a platform team reads.

Per tenant class and scenario: latency percentiles (submission to the end of the last step),
SLA violations, rate-limit waits, budget degradations, where model calls went and whether any
left the tenant's residency region, the deepest open-review queue, cost, and the class's share of
the worker slots. Per scenario: Jain's fairness index.

**Unfinished runs.** A run still going when the scenario stopped has no latency; it counts with
the lower bound ``end - submitted`` and makes the class's percentiles *censored* (shown ``≥``):
the true figure is at least that. It always counts as an SLA violation when the tenant has an SLA.

**Jain's index** is taken over every tenant that asked for work: the slot-seconds it received
divided by its weighted max-min fair share of the scenario's capacity (``slots × duration``)
given what it asked for and its running-step cap
(:func:`~tenantflow.domain.fairness.max_min_shares`).
1.0 means everyone got what the policy entitles them to. Every scenario of a report is measured
against **one reference**: the policy each tenant profile carries (in a scenario without tenant
controls, the policy that was *not* enforced) applied to the work the policy admits — the
demand recorded with controls on, when the report has that scenario. Taken over the whole
window it only asks whether each tenant's work was served by the end: when the platform
catches up within the window it is close to 1.0 with or without controls, and it does not see
delay.

**Fairness when contended** is the figure that compares the scenarios: at each sample where the
tenant classes asked for more steps than there are slots (running plus waiting), Jain's index
over the classes of the slots each held divided by its weighted max-min fair share of the slots
under the tenants' policies (a class's weight is the sum of its tenants' weights, its cap the
sum of their running-step caps), averaged over those samples. The rule is the same in every
scenario; 1.0 means every class held what the policies entitle it to whenever it mattered.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tenantflow.domain.fairness import jain_index, max_min_shares
from tenantflow.report.trace import RunOutcome, Trace

__all__ = ["ClassRow", "Report", "ScenarioSummary", "build_report", "percentile"]


@dataclass(slots=True)
class ClassRow:
    """One tenant class in one scenario."""

    tenant_class: str
    tenants: int
    submitted: int
    completed: int
    failed: int
    unfinished: int
    refused: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    censored: bool
    """True when unfinished runs reach the percentiles: each is at least the figure shown."""
    sla_measured: int
    sla_violations: int
    rate_limit_waits: int
    degradations: dict[str, int]
    model_calls_by_region: dict[str, int]
    residency_violations: int
    max_open_reviews: int
    cost_usd: float
    cost_per_run_usd: float | None
    slot_share: float
    """This class's fraction of all slot-seconds served in the scenario."""


@dataclass(slots=True)
class ScenarioSummary:
    """One scenario's figures."""

    scenario: str
    controls: bool
    slots: int
    duration_s: float
    wall_s: float
    runs: int
    completed: int
    jain: float | None
    """Jain's index over the whole window, against the report's common reference."""
    classes: list[ClassRow]
    notes: list[str] = field(default_factory=list)
    jain_contended: float | None = None
    """Mean Jain's index of slots held vs fair share over the contended samples."""
    contended_samples: int = 0
    """Samples where the classes asked for more steps than there were slots."""


@dataclass(slots=True)
class Report:
    """A titled comparison of scenarios, with the traces it was computed from (for plots)."""

    title: str
    params: dict[str, Any]
    scenarios: list[ScenarioSummary]
    traces: list[Trace]

    def class_order(self) -> list[str]:
        """Tenant classes in the order the first trace introduced them."""
        seen: dict[str, None] = {}
        for trace in self.traces:
            for profile in trace.tenants:
                seen.setdefault(profile.tenant_class, None)
        return list(seen)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (``0 < q <= 1``) of sorted ``values``; None if empty."""
    if not values:
        return None
    rank = max(1, math.ceil(q * len(values)))
    return values[rank - 1]


def build_report(title: str, params: dict[str, Any], traces: list[Trace]) -> Report:
    """Compute every figure of the report from ``traces`` (one per scenario)."""
    reference = next((t for t in traces if t.controls), traces[0] if traces else None)
    demand = reference.demand_s if reference is not None else {}
    return Report(
        title=title,
        params=dict(params),
        scenarios=[_summarise(trace, demand) for trace in traces],
        traces=list(traces),
    )


def _summarise(trace: Trace, demand: dict[str, float]) -> ScenarioSummary:
    klass = {p.tenant: p.tenant_class for p in trace.tenants}
    order = list(dict.fromkeys(p.tenant_class for p in trace.tenants))
    by_class: dict[str, list[RunOutcome]] = {c: [] for c in order}
    for run in trace.runs:
        by_class.setdefault(klass.get(run.tenant, "unknown"), []).append(run)
    served_total = sum(trace.service_s.values())
    served: defaultdict[str, float] = defaultdict(float)
    for tenant, seconds in trace.service_s.items():
        served[klass.get(tenant, "unknown")] += seconds
    rows = [
        _class_row(trace, name, runs, served[name] / served_total if served_total else 0.0)
        for name, runs in by_class.items()
    ]
    contended = _contended_jain(trace)
    return ScenarioSummary(
        scenario=trace.scenario,
        controls=trace.controls,
        slots=trace.slots,
        duration_s=trace.duration_s,
        wall_s=trace.wall_s,
        runs=len(trace.runs),
        completed=sum(1 for r in trace.runs if r.status == "completed"),
        jain=_jain(trace, demand),
        classes=rows,
        notes=list(trace.notes),
        jain_contended=contended[0],
        contended_samples=contended[1],
    )


def _class_row(trace: Trace, name: str, runs: list[RunOutcome], share: float) -> ClassRow:
    profiles = {p.tenant: p for p in trace.tenants}
    members = [p for p in trace.tenants if p.tenant_class == name]
    end = trace.duration_s
    latencies: list[float] = []
    unfinished_floor = math.inf
    sla_measured = sla_violations = 0
    degradations: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    residency_violations = 0
    for run in runs:
        if run.status == "refused":
            continue
        profile = profiles.get(run.tenant)
        latency = run.latency_s
        if latency is None:
            latency = max(0.0, end - run.submitted_s)
            unfinished_floor = min(unfinished_floor, latency)
        latencies.append(latency)
        if profile is not None and profile.sla_s is not None:
            sla_measured += 1
            if run.finished_s is None or latency > profile.sla_s:
                sla_violations += 1
        degradations.update(run.degradations)
        regions.update(run.endpoint_regions)
        if profile is not None and profile.residency is not None:
            residency_violations += sum(1 for r in run.endpoint_regions if r != profile.residency)
    latencies.sort()
    p50, p95, p99 = (percentile(latencies, q) for q in (0.5, 0.95, 0.99))
    cost = sum(r.cost_micros for r in runs) / 1_000_000
    priced = sum(1 for r in runs if r.status != "refused")
    open_reviews = (s.reviews.get(name, 0) for s in trace.samples)
    return ClassRow(
        tenant_class=name,
        tenants=len(members),
        submitted=len(runs),
        completed=sum(1 for r in runs if r.status == "completed"),
        failed=sum(1 for r in runs if r.status in ("failed", "cancelled")),
        unfinished=sum(1 for r in runs if r.status == "unfinished"),
        refused=sum(1 for r in runs if r.status == "refused"),
        p50_s=p50,
        p95_s=p95,
        p99_s=p99,
        censored=p99 is not None and p99 >= unfinished_floor,
        sla_measured=sla_measured,
        sla_violations=sla_violations,
        rate_limit_waits=sum(r.rate_limit_waits for r in runs),
        degradations=dict(sorted(degradations.items())),
        model_calls_by_region=dict(sorted(regions.items())),
        residency_violations=residency_violations,
        max_open_reviews=max(open_reviews, default=0),
        cost_usd=cost,
        cost_per_run_usd=cost / priced if priced else None,
        slot_share=share,
    )


def _jain(trace: Trace, reference: dict[str, float]) -> float | None:
    """Jain's index of ``trace``'s service against fair shares of the ``reference`` demand."""
    demand = {t: d for t, d in reference.items() if d > 0}
    if not demand or trace.duration_s <= 0:
        return None
    profiles = {p.tenant: p for p in trace.tenants}
    weight = {t: profiles[t].weight if t in profiles else 1.0 for t in demand}
    cap: dict[str, float] = {}
    for t in demand:
        running = profiles[t].max_running_steps if t in profiles else None
        cap[t] = math.inf if running is None else running * trace.duration_s
    shares = max_min_shares(demand, weight, cap, trace.slots * trace.duration_s)
    return jain_index([trace.service_s.get(t, 0.0) / shares[t] for t in demand])


def _contended_jain(trace: Trace) -> tuple[float | None, int]:
    """(mean Jain's index over the contended samples, how many there were); see the module
    docstring. None when the classes never asked for more than the slots."""
    weight: defaultdict[str, float] = defaultdict(float)
    cap: defaultdict[str, float] = defaultdict(float)
    for p in trace.tenants:
        weight[p.tenant_class] += p.weight
        running_cap = p.max_running_steps
        cap[p.tenant_class] += math.inf if running_cap is None else float(running_cap)
    values: list[float] = []
    for sample in trace.samples:
        demand = {
            c: float(sample.running.get(c, 0) + sample.queued.get(c, 0))
            for c in weight
            if sample.running.get(c, 0) + sample.queued.get(c, 0) > 0
        }
        if sum(demand.values()) <= trace.slots:
            continue  # everyone can have what it asks: nothing to share
        shares = max_min_shares(demand, weight, cap, float(trace.slots))
        ratios = [sample.running.get(c, 0) / shares[c] for c in demand if shares[c] > 0]
        if ratios:
            values.append(jain_index(ratios))
    if not values:
        return None, 0
    return sum(values) / len(values), len(values)
