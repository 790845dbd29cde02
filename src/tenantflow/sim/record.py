"""Turning simulation state into the report's records: profiles, run outcomes, notes."""

from __future__ import annotations

from tenantflow.report.trace import RunOutcome, RunStatus, TenantProfile
from tenantflow.sim.state import RunState, SimStats, TenantState

__all__ = ["notes", "outcome", "profile"]


def profile(tenant: TenantState, tenant_class: str) -> TenantProfile:
    """The tenant as its policy configures it (also without controls: the yardstick the
    report measures both variants against)."""
    policy = tenant.policy
    return TenantProfile(
        tenant=tenant.id,
        tenant_class=tenant_class,
        tier=policy.tier,
        weight=policy.weight,
        residency=policy.region,
        max_running_steps=policy.max_running_steps,
        sla_s=policy.run_sla.total_seconds() if policy.run_sla else None,
    )


def outcome(run: RunState, status: RunStatus, finished_s: float | None) -> RunOutcome:
    """One run's record."""
    return RunOutcome(
        tenant=run.tenant.id,
        submitted_s=run.submitted_s,
        finished_s=finished_s,
        status=status,
        cost_micros=run.cost,
        rate_limit_waits=run.waits,
        degradations=tuple(run.degradations),
        endpoint_regions=tuple(run.regions),
        reviewed=run.reviewed,
        review_wait_s=run.review_wait_s,
    )


def notes(stats: SimStats, simulated_s: float) -> list[str]:
    """Lines for the report about what the table does not show."""
    lines = [
        f"{stats.events:,} events, {stats.steps:,} step attempts, "
        f"{simulated_s / 3600.0:.2f} simulated hours"
    ]
    if stats.refused:
        lines.append(f"{stats.refused:,} submissions refused (backpressure or period budget)")
    if stats.residency_violations:
        lines.append(
            f"{stats.residency_violations:,} model calls of region-bound tenants left their region"
        )
    if stats.residency_blocked:
        lines.append(
            f"{stats.residency_blocked:,} attempts found no usable endpoint and were retried"
        )
    if stats.budget_refusals:
        lines.append(
            f"{stats.budget_refusals:,} attempts failed: a tool's price did not fit the budget"
        )
    if stats.budget_overruns:
        lines.append(f"{stats.budget_overruns:,} runs spent more than their per-run budget")
    if stats.paused_at_end:
        lines.append(f"{stats.paused_at_end:,} runs were paused for budget at the end")
    for kind in sorted(stats.burst_notices):
        lines.append(f"burst credit: {stats.burst_notices[kind]:,} × {kind}")
    return lines
