"""Audit hash chains: building them and naming the first tampered row."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantflow.domain.audit import (
    GENESIS_HASH,
    AuditRecord,
    append_record,
    chain_hash,
    verify_chain,
)
from tenantflow.errors import ContractError

EPOCH = 1_700_000_000.0


def _chain(n: int, tenant_id: str = "bank") -> list[AuditRecord]:
    rows: list[AuditRecord] = []
    for i in range(n):
        rows.append(
            append_record(
                rows[-1] if rows else None,
                tenant_id=tenant_id,
                ts=EPOCH + i * 0.25,
                actor="user:alice" if i % 2 else "system",
                action="run.submitted" if i % 3 else "policy.updated",
                subject=f"run-{i}",
                detail={"step": i, "amount_micros": 1000 * i, "tags": ["x", "y"]},
            )
        )
    return rows


def _edit(row: AuditRecord, **changes: object) -> AuditRecord:
    return row.model_copy(update=changes)  # a tamperer writing the row directly


def test_a_fresh_chain_verifies() -> None:
    rows = _chain(5)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    result = verify_chain(rows)
    assert (result.ok, result.checked, result.first_bad_seq) == (True, 5, None)
    assert verify_chain([]).ok


def test_hash_is_canonical_over_key_order_and_sensitive_to_every_field() -> None:
    fields: dict[str, Any] = {
        "prev_hash": "0" * 64,
        "tenant_id": "bank",
        "seq": 1,
        "ts": EPOCH,
        "actor": "system",
        "action": "run.submitted",
        "subject": "run-1",
        "detail": {"a": 1, "b": [1, 2]},
    }
    base = chain_hash(**fields)
    assert base == chain_hash(**{**fields, "detail": {"b": [1, 2], "a": 1}})
    assert len(base) == 64
    changes = {"seq": 2, "ts": EPOCH + 1e-6, "detail": {"a": 2, "b": [1, 2]}}
    for name, value in fields.items():
        altered = changes.get(name, value + "x" if isinstance(value, str) else value)
        assert chain_hash(**{**fields, name: altered}) != base, name


def test_modified_row_is_named() -> None:
    rows = _chain(6)
    rows[3] = _edit(rows[3], detail={**rows[3].detail, "amount_micros": 1})
    result = verify_chain(rows)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 4, 3)
    assert "hash" in result.reason


def test_rehashed_modification_is_caught_at_the_next_row() -> None:
    rows = _chain(6)
    forged = _edit(rows[2], actor="user:mallory")
    forged = _edit(
        forged,
        hash=chain_hash(
            forged.prev_hash,
            forged.tenant_id,
            forged.seq,
            forged.ts,
            forged.actor,
            forged.action,
            forged.subject,
            forged.detail,
        ),
    )
    rows[2] = forged
    result = verify_chain(rows)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "prev_hash" in result.reason


def test_deleted_row_is_named_by_its_missing_seq() -> None:
    rows = _chain(6)
    del rows[2]
    result = verify_chain(rows)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "missing" in result.reason


def test_reordered_rows_are_named() -> None:
    rows = _chain(6)
    rows[1], rows[4] = rows[4], rows[1]
    result = verify_chain(rows)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "order" in result.reason


def test_a_row_from_another_tenant_is_named() -> None:
    rows = _chain(4)
    rows[2] = _edit(rows[2], tenant_id="fintech")
    assert verify_chain(rows).first_bad_seq == 3
    assert verify_chain(rows, tenant_id="fintech").first_bad_seq == 1


def test_truncation_and_wholesale_rewrite_need_an_anchor() -> None:
    rows = _chain(6)
    anchor = (6, rows[5].hash)
    assert verify_chain(rows[:4]).ok  # undetectable from the rows alone
    truncated = verify_chain(rows[:4], anchor=anchor)
    assert (truncated.ok, truncated.first_bad_seq) == (False, 5)
    rewritten = [rows[0]]
    for row in rows[1:]:
        rewritten.append(
            append_record(
                rewritten[-1],
                tenant_id=row.tenant_id,
                ts=row.ts,
                actor="user:mallory",
                action=row.action,
                subject=row.subject,
                detail=row.detail,
            )
        )
    assert verify_chain(rewritten).ok
    assert verify_chain(rewritten, anchor=anchor).first_bad_seq == 6
    assert verify_chain(_chain(8), anchor=anchor).ok  # rows appended after the anchor are fine
    assert verify_chain(rows, anchor=anchor).ok


def test_append_refuses_cross_tenant_chains_and_non_json_detail() -> None:
    with pytest.raises(ContractError):
        append_record(_chain(1)[0], tenant_id="other", ts=EPOCH, actor="a", action="b", subject="c")
    for bad in ({"when": datetime.now(UTC)}, {"x": math.nan}):
        with pytest.raises(ContractError):
            append_record(
                None, tenant_id="t", ts=EPOCH, actor="a", action="b", subject="c", detail=bad
            )


def test_stored_timestamp_round_trip_keeps_the_hash() -> None:
    row = append_record(
        None, tenant_id="t", ts=EPOCH + 0.1234567, actor="a", action="b", subject="c"
    )
    assert row.ts == pytest.approx(EPOCH + 0.123457)
    reloaded = AuditRecord.model_validate_json(row.model_dump_json())
    assert verify_chain([reloaded]).ok


_tamper = st.sampled_from(["modify", "delete", "swap", "prev_hash", "seq"])


@given(n=st.integers(2, 12), data=st.data(), kind=_tamper)
def test_any_single_tamper_is_found_at_the_right_row(
    n: int, data: st.DataObject, kind: str
) -> None:
    rows = _chain(n)
    if kind == "delete":
        k = data.draw(st.integers(1, n - 1), label="deleted seq")  # not the tail
        del rows[k - 1]
        expected = k
    elif kind == "swap":
        k = data.draw(st.integers(1, n - 1), label="swapped seq")
        rows[k - 1], rows[k] = rows[k], rows[k - 1]
        expected = k
    else:
        k = data.draw(st.integers(1, n), label="tampered seq")
        row = rows[k - 1]
        if kind == "modify":
            field = data.draw(st.sampled_from(["ts", "actor", "action", "subject", "detail"]))
            value: object = {
                "ts": row.ts + 1,
                "actor": row.actor + "!",
                "action": row.action + "!",
                "subject": row.subject + "!",
                "detail": {**row.detail, "extra": True},
            }[field]
            rows[k - 1] = _edit(row, **{field: value})
        elif kind == "prev_hash":
            rows[k - 1] = _edit(row, prev_hash="f" * 64)
        else:
            rows[k - 1] = _edit(row, seq=row.seq + 100)
        expected = k
    result = verify_chain(rows)
    assert not result.ok
    assert result.first_bad_seq == expected
    assert result.checked == expected - 1
