"""The side-effect outbox: what the hybrid placement hands to side-effect agents.

Under the hybrid placement (a :class:`~tenantflow.domain.spec.WorkflowSpec` whose
``choreograph`` is set) a side-effect step that becomes ready is not executed by the engine: the
transition that makes it ready records it as succeeded with no output and appends an
``fx.enqueued`` event carrying what an agent needs to run it (workflow, version, step, arguments
as JSON). The store writes an outbox row for every ``fx.enqueued`` event **in the same
transaction** (the transactional outbox): the row exists if and only if the transition
committed. A relay publishes the rows and marks them (:class:`MarkPublished`) after the
broker's acknowledgement; an agent's final outcome removes a row (:class:`RecordFxOutcome`),
in the transaction that logs that outcome in the run's timeline.

The outbox id (``<run id>:<step>``) is stable: the relay publishes it as the message id (the
broker drops a republished duplicate) and agents use it as the side effect's idempotency key.

Pure: no I/O; the ops are applied by the stores like every other op.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenantflow.domain.contracts import contract_for
from tenantflow.domain.spec import WorkflowSpec

__all__ = [
    "FX_DEAD_LETTERED",
    "FX_DELIVERED",
    "FX_ENQUEUED",
    "FX_FAILED",
    "FX_OUTCOMES",
    "MarkPublished",
    "OutboxRecord",
    "RecordFxOutcome",
    "fx_enqueued_data",
    "outbox_id",
    "subject_token",
]

FX_ENQUEUED = "fx.enqueued"
"""The event that is also an outbox row (written by the store in the same transaction)."""
FX_DELIVERED = "fx.delivered"
"""A side-effect agent ran the step (once per outbox id)."""
FX_FAILED = "fx.failed"
"""One delivery of a side effect failed; it is retried with backoff."""
FX_DEAD_LETTERED = "fx.dead_lettered"
"""A side effect failed on every allowed delivery and went to the dead-letter subject."""
FX_OUTCOMES = frozenset({FX_DELIVERED, FX_FAILED, FX_DEAD_LETTERED})


def outbox_id(run_id: str, key: str) -> str:
    """The outbox id of step ``key`` of ``run_id``: its message id and idempotency key."""
    return f"{run_id}:{key}"


def subject_token(value: str) -> str:
    """``value`` (a tenant id or region) as one NATS subject token: '.' separates tokens, so it
    becomes '~', which tenant ids and regions never contain (the mapping is one-to-one)."""
    return value.replace(".", "~")


def fx_enqueued_data(
    spec: WorkflowSpec, run_id: str, key: str, args: Mapping[str, Any]
) -> dict[str, Any]:
    """The data of the ``fx.enqueued`` event of step ``key``: the outbox payload.

    Arguments are stored as JSON through the contracts of what they come from (an upstream
    step's output type, or the workflow's input type), so the agent validates them back into
    the same types.
    """
    step = spec.step(key)
    encoded: dict[str, Any] = {}
    for param in step.params:
        if param.name not in args:
            continue
        value = args[param.name]
        if param.source == "step" and param.step is not None:
            kind = spec.step(param.step).result_type
        elif param.source == "input":
            kind = spec.input_type
        else:
            kind = Any
        encoded[param.name] = json.loads(contract_for(kind).dump(value))
    return {
        "outbox_id": outbox_id(run_id, key),
        "workflow": spec.name,
        "version": spec.version,
        "args": encoded,
    }


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One side effect of the outbox: waiting to be published (``published_at`` None), or
    published and waiting for an agent's final outcome."""

    id: str
    tenant_id: str
    run_id: str
    step: str
    payload: dict[str, Any]
    created_at: float
    published_at: float | None = None


@dataclass(slots=True)
class MarkPublished:
    """The broker acknowledged the tenant's outbox rows ``ids``: mark them published at
    ``now``. Result: how many rows were marked (another tenant's ids, or rows already marked
    or settled, are left alone and not counted)."""

    tenant_id: str
    ids: Sequence[str]
    now: float


@dataclass(slots=True)
class RecordFxOutcome:
    """Record an agent's outcome for the tenant's outbox row ``outbox_id`` of ``run_id``: append
    ``kind`` (one of :data:`FX_OUTCOMES`) to the run's execution log. A final outcome
    (``fx.delivered``, ``fx.dead_lettered``) also removes the row, and is recorded only by the
    op that removed it, so a redelivered outcome is written once. ``fx.failed`` is recorded
    only while the row exists. Result: True if recorded, False if the row was not there."""

    tenant_id: str
    run_id: str
    outbox_id: str
    step: str
    kind: str
    now: float
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.kind != FX_FAILED
