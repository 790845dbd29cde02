"""Tenancy records and the ops that change them: tenants, audit, budgets, rate limits, reviews,
usage.

Like the run ops in :mod:`tenantflow.domain.records`, each op is applied by a store inside one
transaction (group commit); audit rows and usage increments ride along with the change they
record (``Transition.audit``/``Transition.usage`` or an op's own ``audit``), so the audit log can
never disagree with what happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "PURGE_TARGET_S",
    "AcquireRate",
    "AppendAudit",
    "AuditEntry",
    "Charge",
    "ClaimReview",
    "CreateReview",
    "DecideReview",
    "DeleteTenant",
    "EscalateReview",
    "LedgerLine",
    "PurgeRuns",
    "PutTenant",
    "RateDecision",
    "Refusal",
    "ReleaseHolds",
    "Reserve",
    "ReviewRecord",
    "ReviewStatus",
    "Settle",
    "TenantRecord",
    "ThrottleRate",
    "UsageDelta",
]


@dataclass(slots=True)
class TenantRecord:
    """A tenant as stored: its current policy (JSON) and the policy's version."""

    id: str
    org_id: str | None
    policy_json: str
    policy_version: int
    created_at: float
    updated_at: float


@dataclass(slots=True)
class AuditEntry:
    """An audit row to append to the tenant's hash chain, in the op's transaction."""

    actor: str
    action: str
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AppendAudit:
    """Append ``entries`` to the tenant's audit chain (an admin's act that changes no other row
    of this batch's kind, e.g. registering the tenant's MCP server beside a memory op, in the
    same transaction). Result: True."""

    tenant_id: str
    now: float
    entries: list[AuditEntry]


@dataclass(slots=True)
class UsageDelta:
    """Add ``value`` to a usage counter of the tenant for the day of ``ts``."""

    metric: str
    value: float
    dim: str = ""


@dataclass(slots=True)
class PutTenant:
    """Create (``create=True``) or update a tenant's policy; appends a policy version and an
    audit row. Result: the new policy version. Errors (returned, not raised): ConflictError if
    it exists on create, NotFoundError if missing on update."""

    tenant_id: str
    org_id: str | None
    policy_json: str
    now: float
    actor: str
    create: bool


@dataclass(slots=True)
class DeleteTenant:
    """Purge every row of the tenant (runs, steps, versions, events, reviews, rate buckets,
    ledgers, holds, usage, policy versions, API keys, the tenant). The audit log is kept unless
    ``purge_audit``; a final ``tenant.deleted`` row is appended to it. Result: rows deleted by
    table, and the rows left afterwards by table (all zero)."""

    tenant_id: str
    now: float
    actor: str
    purge_audit: bool = False


# How long a retention purge transaction should hold a store whose writes wait for the one
# committing (SQLite's one writer thread): about the time of a group commit.
PURGE_TARGET_S = 0.002


@dataclass(slots=True)
class PurgeRuns:
    """Delete the tenant's finished runs that ended before ``before`` (data retention), with
    their steps, state versions, events, recorded calls and reviews: all of them, or the oldest
    ``limit`` (by creation), so that a large purge goes in short transactions. Result: rows
    deleted by table (fewer than ``limit`` runs: none are left)."""

    tenant_id: str
    before: float
    now: float
    actor: str = "retention"
    limit: int | None = None


@dataclass(slots=True)
class LedgerLine:
    """One ledger touched by a reservation: ``scope`` is ``run:<id>`` or ``period``."""

    scope: str
    unit: str  # "micros" | "tokens"
    amount: int
    limit: int | None
    period: str | None = None  # "daily" | "monthly" for period ledgers


@dataclass(slots=True)
class Refusal:
    """A reservation that did not fit: which ledger, what was needed and what was left."""

    scope: str
    unit: str
    needed: int
    available: int


@dataclass(slots=True)
class Reserve:
    """Hold ``amount`` on every line, all or nothing, idempotent by ``key``.

    Result: True, or a :class:`Refusal` (nothing written). Period ledgers reset at most once
    per period (compare-and-set on their period start)."""

    tenant_id: str
    key: str
    lines: list[LedgerLine]
    now: float
    audit: list[AuditEntry] = field(default_factory=list)


@dataclass(slots=True)
class Settle:
    """Close the holds of ``key``, charging ``actual[(scope, unit)]`` (0 if absent). A second
    settle is a no-op. A key with no hold is charged directly, once (``Charge``).
    Result: total micros charged by this op."""

    tenant_id: str
    key: str
    actual: dict[tuple[str, str], int]
    now: float
    usage: list[UsageDelta] = field(default_factory=list)


@dataclass(slots=True)
class Charge:
    """Charge without a hold (e.g. a streamed call that outran its release), once per key."""

    tenant_id: str
    key: str
    lines: list[LedgerLine]
    now: float


@dataclass(slots=True)
class ReleaseHolds:
    """Release every open hold whose key starts with ``prefix`` (a crashed or finished
    attempt, a finished run). Result: the number released."""

    tenant_id: str
    prefix: str
    now: float


@dataclass(slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float
    remaining: int


@dataclass(slots=True)
class AcquireRate:
    """Take ``cost`` cells of the tenant's (tenant, resource) GCRA bucket. Result: RateDecision."""

    tenant_id: str
    resource: str
    now: float
    rate_per_s: float
    burst: int
    cost: int = 1


@dataclass(slots=True)
class ThrottleRate:
    """A provider said 429: lower the tenant's adaptive factor for ``resource`` and defer the
    bucket until ``retry_after_s`` has passed. Result: the new factor."""

    tenant_id: str
    resource: str
    now: float
    retry_after_s: float
    rate_per_s: float
    burst: int


class ReviewStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class ReviewRecord:
    """A human decision waiting in a tenant's reviewer pool."""

    id: str
    tenant_id: str
    run_id: str
    step: str
    pool: str
    lane: str
    status: ReviewStatus
    sla_due: float | None
    created_at: float
    payload: dict[str, Any]
    claimed_by: str | None = None
    decided_by: str | None = None
    comment: str | None = None
    decided_at: float | None = None
    escalations: int = 0


@dataclass(slots=True)
class CreateReview:
    """Insert the review; ``then`` (the step now waiting) commits with it."""

    review: ReviewRecord
    then: Any = None  # a records.Transition


@dataclass(slots=True)
class ClaimReview:
    """Result: the review after the claim; ConflictError if decided or claimed by another."""

    tenant_id: str
    review_id: str
    reviewer: str
    now: float


@dataclass(slots=True)
class DecideReview:
    """Record the decision (only from pending or claimed). Result: the review, or
    ConflictError if already decided."""

    tenant_id: str
    review_id: str
    reviewer: str
    approved: bool
    comment: str | None
    now: float
    then: Any = None  # a records.Transition, applied only if the decision is recorded


@dataclass(slots=True)
class EscalateReview:
    """Move a pending review to another pool with a new SLA. Result: the review."""

    tenant_id: str
    review_id: str
    pool: str
    sla_due: float | None
    now: float
    reason: str
    then: Any = None
