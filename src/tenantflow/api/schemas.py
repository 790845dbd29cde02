"""The request and response bodies of the REST API, as pydantic models.

Every operation declares its body and its answers with these models, so ``/openapi.json``
describes exactly what goes over the wire. Request models forbid unknown fields: a misspelt
field is a 422 naming it, not a silently ignored option. Times are ISO 8601 in UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tenantflow.domain.audit import AuditRecord, VerifyResult
from tenantflow.domain.policy import Policy
from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from tenantflow.domain.state import Change
from tenantflow.domain.tenancy import ReviewRecord, ReviewStatus
from tenantflow.domain.timefmt import event_times_iso
from tenantflow.placement import StateVersion, TenantInfo

__all__ = [
    "AuditOut",
    "AuditPage",
    "BudgetOut",
    "CancelIn",
    "ChangeOut",
    "ChangesOut",
    "ClaimIn",
    "DecideIn",
    "ErrorDetail",
    "ErrorOut",
    "EventOut",
    "EventsOut",
    "HealthOut",
    "KeyCreated",
    "KeyIn",
    "KeyOut",
    "KeysOut",
    "LedgerOut",
    "ReviewOut",
    "ReviewsOut",
    "RunOut",
    "RunSubmitted",
    "RunsPage",
    "StateOut",
    "StatesOut",
    "StepOut",
    "StepsOut",
    "SubmitIn",
    "TenantCreate",
    "TenantDeleted",
    "TenantOut",
    "TenantPatch",
    "TenantsPage",
    "UsageOut",
    "UsageRow",
    "VerifyOut",
    "utc",
]

Lane = Literal["urgent", "normal", "background"]
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


def utc(ts: float | None) -> datetime | None:
    """A POSIX timestamp as an aware UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _load(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code``, a message for people, and structured fields (such
    as ``field``, the path of the offending value, or ``retry_after_s``)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error answer has this shape."""

    error: ErrorDetail


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]


# -- tenants (admin) -----------------------------------------------------------------------------


class TenantCreate(_In):
    """A new tenant: a tier preset with policy fields overridden."""

    id: str = Field(pattern=_ID, description="1-64 letters, digits, '.', '_' or '-'.")
    tier: str = Field(default="standard", description="enterprise, standard or free.")
    org_id: str | None = Field(default=None, max_length=200)
    policy: dict[str, Any] = Field(
        default_factory=dict,
        description="Policy fields that override the tier preset (see GET /v1/tenants/{id}).",
    )


class TenantPatch(_In):
    """Policy fields to change; new admissions use them at once, running runs at their next
    step boundary. ``budget`` is merged into the current budget."""

    policy: dict[str, Any] = Field(description="Policy fields to replace.")


class TenantOut(BaseModel):
    id: str
    org_id: str | None
    policy_version: int
    region: str | None
    store: str
    created_at: datetime
    updated_at: datetime
    policy: Policy

    @classmethod
    def of(cls, info: TenantInfo) -> TenantOut:
        return cls(
            id=info.id,
            org_id=info.org_id,
            policy_version=info.policy_version,
            region=info.policy.region,
            store=info.store,
            created_at=datetime.fromtimestamp(info.created_at, UTC),
            updated_at=datetime.fromtimestamp(info.updated_at, UTC),
            policy=info.policy,
        )


class TenantsPage(BaseModel):
    items: list[TenantOut]
    next: str | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class TenantDeleted(BaseModel):
    """Rows deleted per table, and rows left (all zero)."""

    tenant_id: str
    deleted: dict[str, int]
    left: dict[str, int]


# -- API keys (admin) ----------------------------------------------------------------------------


class KeyIn(_In):
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:@/\-]{0,63}$")


class KeyOut(BaseModel):
    """An API key's metadata; the secret is never shown again after creation."""

    id: str
    tenant_id: str | None
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, info: Any) -> KeyOut:
        return cls(
            id=info.id,
            tenant_id=info.tenant_id,
            name=info.name,
            prefix=info.prefix,
            created_at=datetime.fromtimestamp(info.created_at, UTC),
            revoked_at=utc(info.revoked_at),
        )


class KeyCreated(BaseModel):
    key: KeyOut
    secret: str = Field(description="The key itself: shown once, store it now.")


class KeysOut(BaseModel):
    items: list[KeyOut]


# -- runs ----------------------------------------------------------------------------------------


class SubmitIn(_In):
    workflow: str = Field(min_length=1, max_length=200)
    input: Any = Field(description="The workflow's input; checked against its input contract.")
    version: str | None = Field(default=None, min_length=1, max_length=100)
    lane: Lane | None = Field(default=None, description="Default: the tenant policy's lane.")
    start_at: datetime | None = Field(
        default=None,
        description="Start later, at this time (ISO-8601 with a zone): a delayed start (202).",
    )
    delay_s: float | None = Field(
        default=None,
        gt=0,
        le=366 * 86400,
        allow_inf_nan=False,
        description="Start later, in this many seconds: a delayed start (202).",
    )


class DelayedStart(BaseModel):
    """A delayed start (202): a durable one-shot schedule that submits the run at ``start_at``,
    through admission like any run, once (its run's idempotency key is
    ``schedule:<schedule>:<time>``); ``GET /v1/schedules`` lists it until it fires."""

    schedule: str = Field(description="The one-shot schedule's name.")
    workflow: str
    start_at: datetime
    created: bool = Field(description="False when an earlier submission with the key made it.")


class RunSubmitted(BaseModel):
    """A submitted run (201), or the run an earlier submission with the same
    ``Idempotency-Key`` created (200)."""

    id: str
    status: RunStatus
    workflow: str
    workflow_version: str
    lane: str
    created: bool = Field(description="False when an earlier submission created the run.")


class RunOut(BaseModel):
    id: str
    tenant_id: str
    workflow: str
    workflow_version: str
    status: RunStatus
    lane: str
    input: Any
    result: Any
    error: str | None
    state_version: int
    state_hash: str
    idempotency_key: str | None
    parent_run_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    meta: dict[str, Any] = Field(description="Fixed at admission: policy_version, region.")

    @classmethod
    def of(cls, run: RunRecord) -> RunOut:
        return cls(
            id=run.id,
            tenant_id=run.tenant_id,
            workflow=run.workflow,
            workflow_version=run.workflow_version,
            status=run.status,
            lane=run.lane,
            input=_load(run.input_json),
            result=_load(run.result_json),
            error=run.error,
            state_version=run.state_version,
            state_hash=run.state_hash,
            idempotency_key=run.idempotency_key,
            parent_run_id=run.parent_run_id,
            created_at=datetime.fromtimestamp(run.created_at, UTC),
            updated_at=datetime.fromtimestamp(run.updated_at, UTC),
            finished_at=utc(run.finished_at),
            meta=run.meta,
        )


class RunsPage(BaseModel):
    items: list[RunOut]
    next: str | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class CancelIn(_In):
    reason: str = Field(default="cancelled by request", min_length=1, max_length=500)


class StepOut(BaseModel):
    key: str
    status: StepStatus
    attempt: int
    state_version: int | None
    output: Any
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, step: StepRecord) -> StepOut:
        return cls(
            key=step.key,
            status=step.status,
            attempt=step.attempt,
            state_version=step.version,
            output=_load(step.output_json),
            error=step.error,
            started_at=utc(step.started_at),
            finished_at=utc(step.finished_at),
        )


class StepsOut(BaseModel):
    items: list[StepOut]


class EventOut(BaseModel):
    """One entry of a run's execution log."""

    id: int
    ts: datetime
    kind: str
    step: str | None
    attempt: int | None
    data: dict[str, Any]

    @classmethod
    def of(cls, event: EventRecord) -> EventOut:
        return cls(
            id=event.id,
            ts=datetime.fromtimestamp(event.ts, UTC),
            kind=event.kind,
            step=event.step,
            attempt=event.attempt,
            data=event_times_iso(event.data) or {},  # until, retry_at, ... as ISO-8601
        )


class EventsOut(BaseModel):
    items: list[EventOut]


class StateOut(BaseModel):
    run_id: str
    version: int
    parent: int | None
    step: str | None
    hash: str
    created_at: datetime
    state: dict[str, Any]

    @classmethod
    def of(cls, found: StateVersion) -> StateOut:
        return cls(
            run_id=found.run_id,
            version=found.version,
            parent=found.parent,
            step=found.step,
            hash=found.hash,
            created_at=datetime.fromtimestamp(found.created_at, UTC),
            state=found.state,
        )


class StatesOut(BaseModel):
    items: list[StateOut]


class ChangeOut(BaseModel):
    path: str
    kind: Literal["added", "removed", "changed"]
    before: Any
    after: Any

    @classmethod
    def of(cls, change: Change) -> ChangeOut:
        return cls(path=change.path, kind=change.kind, before=change.before, after=change.after)


class ChangesOut(BaseModel):
    a: int
    b: int
    items: list[ChangeOut]


# -- reviews -------------------------------------------------------------------------------------


class ReviewOut(BaseModel):
    id: str
    run_id: str
    step: str
    pool: str
    lane: str
    status: ReviewStatus
    sla_due: datetime | None
    created_at: datetime
    claimed_by: str | None
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    escalations: int
    payload: dict[str, Any]

    @classmethod
    def of(cls, review: ReviewRecord) -> ReviewOut:
        return cls(
            id=review.id,
            run_id=review.run_id,
            step=review.step,
            pool=review.pool,
            lane=review.lane,
            status=review.status,
            sla_due=utc(review.sla_due),
            created_at=datetime.fromtimestamp(review.created_at, UTC),
            claimed_by=review.claimed_by,
            decided_by=review.decided_by,
            decided_at=utc(review.decided_at),
            comment=review.comment,
            escalations=review.escalations,
            payload=review.payload,
        )


class ReviewsOut(BaseModel):
    items: list[ReviewOut]


class ClaimIn(_In):
    reviewer: str = Field(min_length=1, max_length=200, pattern=r"\S")


class DecideIn(_In):
    reviewer: str = Field(min_length=1, max_length=200, pattern=r"\S")
    approve: bool = Field(description="True approves, false rejects.")
    comment: str | None = Field(default=None, max_length=2000)
    fail_step: bool = Field(
        default=False, description="Reject by failing the waiting step (the run may compensate)."
    )


# -- usage, budget and audit ---------------------------------------------------------------------


class UsageRow(BaseModel):
    day: date
    metric: str
    dim: str = Field(description="The tool, model, step or pool counted; empty for totals.")
    value: float


class UsageOut(BaseModel):
    items: list[UsageRow]


class LedgerOut(BaseModel):
    """One budget ledger; money in micro-dollars (``unit`` ``micros``) or tokens."""

    scope: str
    unit: str
    period: str | None
    limit: int | None = Field(description="null: unlimited.")
    spent: int
    reserved: int
    overrun: int
    period_start: datetime | None


class BudgetOut(BaseModel):
    items: list[LedgerOut]


class AuditOut(BaseModel):
    seq: int
    ts: datetime
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, record: AuditRecord) -> AuditOut:
        return cls(
            seq=record.seq,
            ts=datetime.fromtimestamp(record.ts, UTC),
            actor=record.actor,
            action=record.action,
            subject=record.subject,
            detail=record.detail,
            prev_hash=record.prev_hash,
            hash=record.hash,
        )


class AuditPage(BaseModel):
    items: list[AuditOut]
    next: int | None = Field(description="Pass as ?after= for the next page; null at the end.")


class VerifyOut(BaseModel):
    """The audit hash chain's check: ``first_bad_seq`` names the first tampered, missing or
    moved row."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str

    @classmethod
    def of(cls, result: VerifyResult) -> VerifyOut:
        return cls(
            ok=result.ok,
            checked=result.checked,
            first_bad_seq=result.first_bad_seq,
            reason=result.reason,
        )
