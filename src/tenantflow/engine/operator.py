"""An operator's view across tenants: runs by status, the tenants that load the platform most,
and the runs that have stopped moving (``tenantflow operator overview``, ``GET
/v1/operator/overview`` with an admin key).

Read from each tenant's store in the tenant's own scope, one tenant at a time; nothing is
written. Counts of one status stop at :data:`COUNT_CAP` runs per tenant (``capped`` says so).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tenantflow.domain.records import RunRecord, RunStatus
from tenantflow.domain.why import Reason

__all__ = ["COUNT_CAP", "Overview", "StuckRun", "TenantLoad", "overview"]

COUNT_CAP = 1000
"""Runs of one status counted per tenant, at most."""

ACTIVE = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.PAUSED,
    RunStatus.COMPENSATING,
    RunStatus.CANCELLING,
)
_MOVING = (RunStatus.RUNNING, RunStatus.COMPENSATING, RunStatus.CANCELLING)


@dataclass(frozen=True, slots=True)
class TenantLoad:
    """One tenant's share of the load.

    Attributes:
        tenant_id: the tenant.
        runs: unfinished runs by status, and ``failed_24h`` (runs that failed in the last day).
        spend_micros: what its runs spent today (UTC), in micro-dollars.
        rate_limit_waits: how often its steps waited for a rate limit today.
    """

    tenant_id: str
    runs: dict[str, int]
    spend_micros: int = 0
    rate_limit_waits: int = 0

    @property
    def queued(self) -> int:
        return self.runs.get(RunStatus.QUEUED.value, 0)


@dataclass(frozen=True, slots=True)
class StuckRun:
    """An unfinished run with no transition for a while, and what holds it."""

    tenant_id: str
    run_id: str
    workflow: str
    status: str
    updated_at: float
    idle_s: float
    reasons: tuple[Reason, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Overview:
    """Runs by status across tenants, the top tenants, and stuck runs.

    Attributes:
        at: when it was read.
        by_status: runs by status over every tenant (unfinished ones, and ``failed_24h``).
        tenants: every tenant with any unfinished run, spend or rate-limit wait today.
        top_queued, top_spend, top_rate_limited: the ``top`` tenants by queue depth, today's
            spend and today's rate-limit waits (ids, most first; ties by id).
        stuck: unfinished runs idle for ``stuck_after_s`` or longer, longest idle first.
        capped: a count stopped at :data:`COUNT_CAP` (the true number is higher).
    """

    at: float
    by_status: dict[str, int]
    tenants: list[TenantLoad]
    top_queued: list[str]
    top_spend: list[str]
    top_rate_limited: list[str]
    stuck: list[StuckRun]
    stuck_after_s: float
    capped: bool = False


ListRuns = Callable[[str, RunStatus], Awaitable[list[RunRecord]]]
Usage = Callable[[str, str], Awaitable[list[dict[str, Any]]]]
Why = Callable[[str, str], Awaitable[list[Reason]]]


async def overview(
    tenants: Sequence[str],
    *,
    list_runs: ListRuns,
    usage: Usage,
    why: Why,
    now: float,
    stuck_after_s: float = 3600.0,
    top: int = 10,
) -> Overview:
    """Read the overview (see the module docstring).

    Args:
        tenants: every tenant id.
        list_runs: a tenant's runs in one status, newest first (at most :data:`COUNT_CAP`).
        usage: a tenant's usage rows of one day (``YYYY-MM-DD``).
        why: what holds a run (see :meth:`tenantflow.engine.runs.RunControl.why`).
        now: the time.
        stuck_after_s: a run idle this long counts as stuck.
        top: how many tenants each ranking names.
    """
    today = datetime.fromtimestamp(now, UTC).date().isoformat()
    loads: list[TenantLoad] = []
    totals: dict[str, int] = {s.value: 0 for s in ACTIVE}
    totals["failed_24h"] = 0
    stuck: list[StuckRun] = []
    capped = False
    for tenant in tenants:
        runs: dict[str, int] = {}
        for status in ACTIVE:
            found = await list_runs(tenant, status)
            capped = capped or len(found) >= COUNT_CAP
            if found:
                runs[status.value] = len(found)
            if status in _MOVING:
                for record in found:
                    idle = now - record.updated_at
                    if idle >= stuck_after_s:
                        stuck.append(
                            StuckRun(
                                tenant,
                                record.id,
                                record.workflow,
                                record.status.value,
                                record.updated_at,
                                idle,
                            )
                        )
        failed = await list_runs(tenant, RunStatus.FAILED)
        recent = sum(1 for r in failed if (r.finished_at or r.updated_at) >= now - 86_400)
        if recent:
            runs["failed_24h"] = recent
        spend = waits = 0
        for row in await usage(tenant, today):
            if row["metric"] == "cost_micros":
                spend += int(row["value"])
            elif row["metric"] == "rate_limit_waits":
                waits += int(row["value"])
        for key, n in runs.items():
            totals[key] = totals.get(key, 0) + n
        if runs or spend or waits:
            loads.append(TenantLoad(tenant, runs, spend, waits))
    stuck.sort(key=lambda s: (-s.idle_s, s.tenant_id, s.run_id))
    stuck = stuck[:50]
    explained = [
        StuckRun(
            s.tenant_id,
            s.run_id,
            s.workflow,
            s.status,
            s.updated_at,
            s.idle_s,
            tuple(await why(s.tenant_id, s.run_id)),
        )
        for s in stuck
    ]

    def ranked(key: Callable[[TenantLoad], int]) -> list[str]:
        chosen = [t for t in loads if key(t) > 0]
        chosen.sort(key=lambda t: (-key(t), t.tenant_id))
        return [t.tenant_id for t in chosen[:top]]

    return Overview(
        at=now,
        by_status=totals,
        tenants=sorted(loads, key=lambda t: t.tenant_id),
        top_queued=ranked(lambda t: t.queued),
        top_spend=ranked(lambda t: t.spend_micros),
        top_rate_limited=ranked(lambda t: t.rate_limit_waits),
        stuck=explained,
        stuck_after_s=stuck_after_s,
        capped=capped,
    )
