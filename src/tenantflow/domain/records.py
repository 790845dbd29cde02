"""Stored records and the write commands (ops) every Store applies.

A Store is a small interpreter of these ops: it applies a batch of them in one transaction
(group commit) and returns one result per op. Every op names its tenant, and every fenced op is
conditional on the attempt's fencing token and live lease, so a late write from a lost attempt
changes nothing and answers :data:`STALE`. A finish or a transition may also be conditional on
the run's state version (``expected_version``): decided from a view the run has moved on from,
it changes nothing and answers :class:`VersionConflict`. Which tenant an op may act for is the
caller's scope to decide, not the op's (:func:`check_scope`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tenantflow.domain import keys as _k
from tenantflow.domain import memory as _m
from tenantflow.domain import outbox as _o
from tenantflow.domain import tenancy as _t
from tenantflow.domain.tenancy import AuditEntry, ReviewRecord, UsageDelta
from tenantflow.errors import PermissionDeniedError

__all__ = [
    "STALE",
    "TERMINAL_RUN",
    "TERMINAL_STEP",
    "CreateResult",
    "CreateRun",
    "EventRecord",
    "FailAttempt",
    "FinishAttempt",
    "Lease",
    "NewEvent",
    "Op",
    "ParkAttempt",
    "RecordCall",
    "RecoverOrphans",
    "RenewLeases",
    "RunRead",
    "RunRecord",
    "RunStatus",
    "RunUpdate",
    "StartAttempt",
    "StateVersionRecord",
    "StepRecord",
    "StepStatus",
    "StepUpdate",
    "Transition",
    "VersionConflict",
    "check_scope",
    "next_state_hash",
    "op_tenant",
]


class RunStatus(StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPENSATING = "compensating"
    CANCELLING = "cancelling"
    PAUSED = "paused"  # the budget ladder paused it; resumed by engine.resume or a new budget
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"


TERMINAL_RUN = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.COMPENSATED, RunStatus.CANCELLED}
)


class StepStatus(StrEnum):
    """Where one step (or one fan-out element) is."""

    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    MAPPED = "mapped"  # a fan-out step whose elements are running
    WAITING = "waiting"  # waiting for a human review: holds no slot
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


TERMINAL_STEP = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATION_FAILED,
    }
)


@dataclass(slots=True)
class RunRecord:
    """One run as stored."""

    id: str
    tenant_id: str
    workflow: str
    workflow_version: str
    status: RunStatus
    input_json: bytes
    created_at: float
    updated_at: float
    lane: str = "normal"
    state_version: int = 0
    state_hash: str = ""
    result_json: bytes | None = None
    error: str | None = None
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    finished_at: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StepRecord:
    """One step (or fan-out element) of a run as stored."""

    run_id: str
    tenant_id: str
    key: str
    status: StepStatus
    attempt: int = 0
    fence: int = 0
    owner: str | None = None
    lease_expires_at: float | None = None
    available_at: float = 0.0
    output_json: bytes | None = None
    error: str | None = None
    version: int | None = None
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(slots=True)
class StateVersionRecord:
    """An immutable state version: the delta one step added on top of its parent."""

    run_id: str
    tenant_id: str
    version: int
    parent: int | None
    step: str | None
    delta_json: bytes
    hash: str
    created_at: float


@dataclass(slots=True)
class EventRecord:
    """One entry of a run's execution log."""

    id: int
    tenant_id: str
    run_id: str
    ts: float
    kind: str
    step: str | None
    attempt: int | None
    data: dict[str, Any]


@dataclass(slots=True)
class RunRead:
    """A run read in one transaction (:meth:`~tenantflow.ports.Store.read_run`): the run, its
    steps, and, when asked for, its events and state versions newer than the reader has."""

    run: RunRecord
    steps: list[StepRecord]
    events: list[EventRecord]
    versions: list[StateVersionRecord]


@dataclass(slots=True)
class NewEvent:
    """An event to append with an op."""

    kind: str
    step: str | None = None
    attempt: int | None = None
    data: dict[str, Any] | None = None


@dataclass(slots=True)
class StepUpdate:
    """Set a step's status (and optionally more). ``create`` inserts a new row (fan-out)."""

    key: str
    status: StepStatus
    available_at: float | None = None
    output_json: bytes | None = None
    error: str | None = None
    create: bool = False
    # A state-version delta this update appends (a gathered fan-out output).
    delta_json: bytes | None = None
    reopen: bool = False  # a step run again (a retry): its error and finish time are cleared


@dataclass(slots=True)
class RunUpdate:
    """Set a run's status, and its result or error when it ends (and its meta, if given)."""

    status: RunStatus
    result_json: bytes | None = None
    error: str | None = None
    meta: dict[str, Any] | None = None  # replaces the run's meta when given
    reopen: bool = False  # an ended run retried: its result, error and finish time are cleared


@dataclass(slots=True)
class Lease:
    """A claimed attempt: the fencing token every later write of it must present."""

    fence: int
    attempt: int
    lease_expires_at: float


class _Stale:
    """The op's fencing condition failed: the attempt had lost its lease."""

    def __repr__(self) -> str:
        return "STALE"


STALE: Any = _Stale()


@dataclass(frozen=True, slots=True)
class VersionConflict:
    """The op carried the run's expected state version (``expected_version``) and the run had
    moved on to ``current``: nothing of the op was written, and the attempt (if any) still holds
    its lease. The caller re-reads the run, decides again and retries.

    Two processes finishing parallel branches of one run both read version ``v``; the first to
    commit moves the run to ``v + 1`` and the second gets this result instead of committing a
    join decided from the stale view.
    """

    run_id: str
    expected: int
    current: int


@dataclass(slots=True)
class CreateRun:
    """Insert a run, its step rows, state version 0 (the input) and its first events.

    With an idempotency key already used by this tenant, nothing is written and the existing
    run's id is returned.
    """

    run: RunRecord
    steps: list[StepRecord]
    events: list[NewEvent]


@dataclass(slots=True)
class CreateResult:
    run_id: str
    created: bool


@dataclass(slots=True)
class StartAttempt:
    """Claim a step: READY and due, or RUNNING with an expired lease. Result: Lease or None."""

    tenant_id: str
    run_id: str
    key: str
    owner: str
    now: float
    lease_until: float


@dataclass(slots=True)
class FinishAttempt:
    """Record a successful attempt (fenced). Result: the new state version, STALE, or a
    :class:`VersionConflict`.

    ``delta_json`` (when given) appends the next state version; ``then`` carries the follow-on
    transitions decided from the output (ready, skipped, run completed) so that they commit in
    the same transaction as the completion. ``expected_version`` (when given) is the run's state
    version the follow-ons were decided from: if the run is at another version, nothing is
    written and the result is a :class:`VersionConflict` (``then`` itself carries none).
    """

    tenant_id: str
    run_id: str
    key: str
    fence: int
    now: float
    output_json: bytes
    delta_json: bytes | None
    then: Transition
    expected_version: int | None = None


@dataclass(slots=True)
class FailAttempt:
    """Record a failed attempt (fenced): retry at ``retry_at`` or fail for good.

    Result: True, or STALE.
    """

    tenant_id: str
    run_id: str
    key: str
    fence: int
    now: float
    error: str
    retry_at: float | None
    then: Transition


@dataclass(slots=True)
class ParkAttempt:
    """End an attempt without an outcome (fenced): the step waits (``status``: WAITING for a
    review, READY at ``available_at`` for a rate limit), without counting as a failure.
    Result: True or STALE."""

    tenant_id: str
    run_id: str
    key: str
    fence: int
    now: float
    status: StepStatus
    available_at: float
    reason: str
    then: Transition


@dataclass(slots=True)
class RecordCall:
    """Durably remember the result of call ``index`` (a model or tool call) of a step, so that
    a re-executed attempt replays it instead of calling (and paying) again. Result: True."""

    tenant_id: str
    run_id: str
    key: str
    index: int
    kind: str
    name: str
    result_json: str
    now: float


@dataclass(slots=True)
class Transition:
    """Unfenced changes to one run: step updates, a run update and events. Result: True, or a
    :class:`VersionConflict`.

    ``expected_version`` (when given) makes the transition conditional on the run's state
    version: if the run is at another version, nothing is written. It is checked only on a
    transition applied as an op of its own; a transition carried as another op's ``then`` must
    leave it None (the outer op's condition covers the whole op).
    """

    tenant_id: str
    run_id: str
    now: float
    steps: list[StepUpdate] = field(default_factory=list)
    run: RunUpdate | None = None
    events: list[NewEvent] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    usage: list[UsageDelta] = field(default_factory=list)
    review: ReviewRecord | None = None  # a review to open with this change
    release_prefix: str | None = None  # release the open budget holds whose key starts so
    expected_version: int | None = None  # compare-and-set on the run's state version


@dataclass(slots=True)
class RenewLeases:
    """Extend every live lease of ``owner``. Result: (run_id, key, fence) of lapsed leases."""

    owner: str
    now: float
    lease_until: float


@dataclass(slots=True)
class RecoverOrphans:
    """Make every RUNNING attempt claimable again (its owner is known to be dead). Result: count."""

    now: float
    owners: tuple[str, ...] | None = None  # None: every owner (an exclusive embedded engine)
    tenant_id: str | None = None  # only this tenant's (a worker handing the tenant over)


Op = (
    CreateRun
    | StartAttempt
    | FinishAttempt
    | FailAttempt
    | Transition
    | RenewLeases
    | RecoverOrphans
    | ParkAttempt
    | RecordCall
    | _t.PutTenant
    | _t.AppendAudit
    | _t.DeleteTenant
    | _t.PurgeRuns
    | _t.Reserve
    | _t.Settle
    | _t.Charge
    | _t.ReleaseHolds
    | _t.AcquireRate
    | _t.ThrottleRate
    | _t.CreateReview
    | _t.ClaimReview
    | _t.DecideReview
    | _t.EscalateReview
    | _k.CreateApiKey
    | _k.RevokeApiKey
    | _m.PutMemory
    | _m.DeleteMemory
    | _m.AddDocument
    | _m.DeleteDocument
    | _m.PurgeMemory
    | _o.MarkPublished
    | _o.RecordFxOutcome
)


def op_tenant(op: Op) -> str | None:
    """The tenant ``op`` acts for, or None for a system-scoped op (leases across tenants, admin
    API keys)."""
    if isinstance(op, RenewLeases | RecoverOrphans):
        return None
    if isinstance(op, CreateRun):
        return op.run.tenant_id
    if isinstance(op, _t.CreateReview):
        return op.review.tenant_id
    return op.tenant_id


def check_scope(tenant_id: str, ops: Sequence[Op]) -> None:
    """Refuse a batch a caller acting as ``tenant_id`` may not apply: every op must be that
    tenant's own (a system-scoped op, or another tenant's, is refused).

    Raises:
        PermissionDeniedError: naming the first op out of scope; nothing of the batch may then
            be written.
    """
    for index, op in enumerate(ops):
        owner = op_tenant(op)
        if owner != tenant_id:
            raise PermissionDeniedError(
                f"{type(op).__name__} acts for "
                f"{'the system' if owner is None else f'tenant {owner!r}'},"
                f" not for tenant {tenant_id!r} whose scope applies it",
                tenant_id=tenant_id,
                op=type(op).__name__,
                index=index,
            )


def next_state_hash(parent_hash: str, version: int, step: str | None, delta_json: bytes) -> str:
    """Hash chain over the state history: each version commits to its parent's hash."""
    h = hashlib.sha256()
    h.update(parent_hash.encode())
    h.update(b"|%d|" % version)
    h.update((step or "").encode())
    h.update(b"|")
    h.update(delta_json)
    return h.hexdigest()
