"""Per-tenant hash-chained audit rows, and the check that finds the first tampered one.

Each tenant has its own chain: rows are numbered ``seq = 1, 2, 3, ...`` and each row's ``hash``
is SHA-256 over the canonical JSON of its content and the previous row's hash (the first row
chains from :data:`GENESIS_HASH`). Changing, deleting or reordering any row therefore breaks the
chain at that row. The store appends a row in the same transaction as the change it records, with
``UNIQUE (tenant_id, seq)`` so two writers cannot both append the same ``seq``.

Truncating the newest rows, or re-hashing every row from some point on, leaves a chain that is
consistent in itself; to catch that, pass an ``anchor`` — a ``(seq, hash)`` pair recorded outside
the store (published periodically, or held by the verifier) — to :func:`verify_chain`.

``ts`` is hashed at microsecond precision, so a store that keeps microsecond timestamps (SQLite
REAL, PostgreSQL ``double precision`` or ``timestamptz``) reproduces the same hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from tenantflow.errors import ContractError

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "VerifyResult",
    "append_record",
    "chain_hash",
    "verify_chain",
]

GENESIS_HASH: Final[str] = "0" * 64
"""The ``prev_hash`` of every tenant's first row."""


class AuditRecord(BaseModel):
    """One audit row in a tenant's chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant_id: str = Field(min_length=1)
    seq: int = Field(ge=1)
    ts: float
    actor: str
    action: str
    subject: str
    detail: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str


def _canonical(value: object) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ContractError(
            f"audit detail must be plain JSON (str, number, bool, None, list, dict): {exc}",
            field="detail",
        ) from exc
    return text.encode("utf-8")


def chain_hash(
    prev_hash: str,
    tenant_id: str,
    seq: int,
    ts: float,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any],
) -> str:
    """SHA-256 (hex) over the canonical JSON of a row's content and the previous hash.

    Raises:
        ContractError: ``detail`` is not plain JSON (e.g. holds a datetime or NaN).
    """
    payload = [prev_hash, tenant_id, seq, f"{ts:.6f}", actor, action, subject, dict(detail)]
    return hashlib.sha256(_canonical(payload)).hexdigest()


def append_record(
    prev: AuditRecord | None,
    *,
    tenant_id: str,
    ts: float,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any] | None = None,
) -> AuditRecord:
    """Build the row that follows ``prev`` (``None`` for the tenant's first row).

    Raises:
        ContractError: ``prev`` belongs to another tenant, or ``detail`` is not plain JSON.
    """
    if prev is not None and prev.tenant_id != tenant_id:
        raise ContractError(
            "an audit row cannot chain onto another tenant's row",
            field="tenant_id",
        )
    seq = 1 if prev is None else prev.seq + 1
    ts = round(ts, 6)  # stored value == hashed value, whatever the store's timestamp type
    prev_hash = GENESIS_HASH if prev is None else prev.hash
    body = dict(detail or {})
    # Round-trip the detail so the stored row holds exactly what was hashed.
    body = json.loads(_canonical(body))
    digest = chain_hash(prev_hash, tenant_id, seq, ts, actor, action, subject, body)
    return AuditRecord(
        tenant_id=tenant_id,
        seq=seq,
        ts=ts,
        actor=actor,
        action=action,
        subject=subject,
        detail=body,
        prev_hash=prev_hash,
        hash=digest,
    )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify_chain`.

    Attributes:
        ok: Whether every row checked out.
        checked: Rows verified good before the first bad one (all rows when ``ok``).
        first_bad_seq: The ``seq`` at which the chain breaks (a missing row's expected ``seq``).
        reason: What is wrong there, in words.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify_chain(
    records: Iterable[AuditRecord],
    *,
    tenant_id: str | None = None,
    anchor: tuple[int, str] | None = None,
) -> VerifyResult:
    """Walk one tenant's rows in stored order and name the first one that breaks the chain.

    Detects a modified row (its hash no longer matches its content), a deleted row (a gap in
    ``seq``), reordered rows (a ``seq`` arriving early), a row re-hashed after a change (the next
    row's ``prev_hash`` no longer matches), and rows of another tenant.

    Args:
        records: The tenant's rows in the order the store keeps them (insertion order).
        tenant_id: The tenant whose chain this is; defaults to the first row's tenant.
        anchor: A ``(seq, hash)`` recorded outside the store; the chain must reach ``seq`` and
            that row must carry ``hash``, which detects truncation and wholesale re-hashing.

    Returns:
        The result; ``first_bad_seq`` is ``None`` when ``ok``.
    """
    rows = list(records)
    owner = tenant_id if tenant_id is not None else (rows[0].tenant_id if rows else None)
    present = {row.seq for row in rows}
    prev_hash = GENESIS_HASH
    for index, row in enumerate(rows):
        expected_seq = index + 1
        if row.seq != expected_seq:
            if expected_seq in present:
                why = f"rows out of order: expected seq {expected_seq}, found {row.seq}"
            else:
                why = f"row {expected_seq} is missing (found seq {row.seq})"
            return VerifyResult(False, index, expected_seq, why)
        if row.tenant_id != owner:
            return VerifyResult(
                False, index, row.seq, f"row belongs to tenant {row.tenant_id!r}, not {owner!r}"
            )
        if row.prev_hash != prev_hash:
            why = "prev_hash does not match the previous row's hash (a row was changed)"
            return VerifyResult(False, index, row.seq, why)
        digest = chain_hash(
            row.prev_hash,
            row.tenant_id,
            row.seq,
            row.ts,
            row.actor,
            row.action,
            row.subject,
            row.detail,
        )
        if digest != row.hash:
            return VerifyResult(False, index, row.seq, "hash does not match the row's content")
        prev_hash = row.hash
    count = len(rows)
    if anchor is not None:
        anchor_seq, anchor_hash = anchor
        if count < anchor_seq:
            why = f"chain ends at seq {count} but the anchor is at seq {anchor_seq} (truncated)"
            return VerifyResult(False, count, count + 1, why)
        if rows[anchor_seq - 1].hash != anchor_hash:
            why = "hash differs from the anchor: the chain was rewritten at or before this row"
            return VerifyResult(False, count, anchor_seq, why)
    return VerifyResult(True, count)
