"""Audit: tamper with, delete, reorder and forge rows of a real audit log; verification must
name the exact row each time.

For each trial a fresh tenant writes a few audit rows through the engine (registration, policy
changes, an API key), then the scenario — as someone with write access to the database, below
the application — changes the stored rows with SQL: edits a field of one row; edits one and
re-computes its hash so that the row itself checks out; deletes a row; swaps two rows' places;
moves a row to another tenant; appends a forged row. ``engine.audit_verify`` must report the
chain broken at exactly the row where the damage is visible (the re-hashed row shows at the next
one, whose ``prev_hash`` no longer matches). The tail row is not deleted or moved: without an
anchor kept outside the store, truncation cannot be seen from the rows (see
:func:`~tenantflow.domain.audit.verify_chain`).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import tenantflow as tf
from tenantflow.domain.audit import chain_hash
from tenantflow.selftest.core import Context, Row

__all__ = ["TAMPERS", "run_audit"]

TAMPERS = ("edit", "rehash", "delete", "reorder", "move", "append")
_FIELDS = ("ts", "actor", "action", "subject", "detail")


def run_audit(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring)."""
    asyncio.run(_trials(ctx, row, directory))


async def _trials(ctx: Context, row: Row, directory: Path) -> None:
    rng = ctx.rng("audit")
    url = f"sqlite:///{directory / 'audit.db'}?synchronous=normal"
    kinds: dict[str, int] = {}
    async with tf.Engine.open(url, seed=ctx.seed) as engine:
        sql: Any = engine.store
        await engine.tenants.create("bystander", tier="free")
        for trial in range(ctx.profile.audit_trials):
            tenant = f"audited-{trial}"
            await engine.tenants.create(tenant, tier="standard", actor="selftest")
            for n in range(rng.randint(4, 10)):
                await engine.tenants.update(tenant, actor=f"user:{n}", max_active_runs=5 + n)
            await engine.keys.create(tenant, name=f"key-{trial}")
            control = await engine.audit_verify(tenant)
            row.check(control.ok, f"trial {trial}: a chain no one touched does not verify")
            rows = await sql.execute_sql(
                "SELECT seq, ts, actor, action, subject, detail, prev_hash, hash FROM audit_log"
                " WHERE tenant_id = ? ORDER BY seq",
                (tenant,),
            )
            kind = TAMPERS[trial % len(TAMPERS)]
            expected = await _tamper(sql, rng, tenant, kind, rows)
            result = await engine.audit_verify(tenant)
            row.tamper_injected = (row.tamper_injected or 0) + 1
            found = not result.ok and result.first_bad_seq == expected
            row.tamper_detected = (row.tamper_detected or 0) + int(found)
            kinds[kind] = kinds.get(kind, 0) + 1
            if not found:
                row.check(
                    False,
                    f"trial {trial} ({kind}): expected row {expected}, verification said"
                    f" {result.first_bad_seq} ({result.reason})",
                )
        bystander = await engine.audit_verify("bystander")
        row.check(bystander.ok, "a tenant whose rows were not touched no longer verifies")
    row.note("tampering by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))


async def _tamper(sql: Any, rng: random.Random, tenant: str, kind: str, rows: list[Any]) -> int:
    """Damage the stored chain; the seq at which verification must report it."""
    n = len(rows)
    k = rng.randint(1, n - 1)  # never the tail (see the module docstring)
    where = " WHERE tenant_id = ? AND seq = ?"
    if kind == "edit":
        field = rng.choice(_FIELDS)
        seq, ts, actor, action, subject, detail = rows[k - 1][:6]
        value: Any = {
            "ts": ts + 1.0,
            "actor": actor + "!",
            "action": action + "!",
            "subject": subject + "!",
            "detail": json.dumps({**json.loads(detail), "forged": True}),
        }[field]
        await sql.execute_sql(f"UPDATE audit_log SET {field} = ?" + where, (value, tenant, seq))
        return int(seq)
    if kind == "rehash":  # a changed row that checks out by itself: the next row shows it
        seq, ts, _, action, subject, detail, prev, _ = rows[k - 1]
        forged = chain_hash(
            prev, tenant, seq, ts, "user:mallory", action, subject, json.loads(detail)
        )
        await sql.execute_sql(
            "UPDATE audit_log SET actor = ?, hash = ?" + where,
            ("user:mallory", forged, tenant, seq),
        )
        return int(seq) + 1
    if kind == "delete":
        await sql.execute_sql("DELETE FROM audit_log" + where, (tenant, k))
        return k
    if kind == "reorder":
        j = rng.randint(1, k)
        k2 = rng.randint(k + 1, n)
        await sql.execute_sql("UPDATE audit_log SET seq = -1" + where, (tenant, j))
        await sql.execute_sql("UPDATE audit_log SET seq = ?" + where, (j, tenant, k2))
        await sql.execute_sql("UPDATE audit_log SET seq = ?" + where, (k2, tenant, -1))
        return j
    if kind == "move":  # handed to another tenant: a gap in this one's chain
        await sql.execute_sql(
            "UPDATE audit_log SET tenant_id = ?" + where,
            (f"shadow-of-{tenant}", tenant, k),
        )
        return k
    # append: a forged row after the last one, chained to nothing
    seq, ts = n + 1, float(rows[-1][1]) + 1.0
    detail = {"forged": True}
    prev = "0" * 64
    forged = chain_hash(
        prev, tenant, seq, ts, "user:mallory", "policy.updated", f"tenant:{tenant}", detail
    )
    await sql.execute_sql(
        "INSERT INTO audit_log (tenant_id, seq, ts, actor, action, subject, detail, prev_hash,"
        " hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            tenant,
            seq,
            ts,
            "user:mallory",
            "policy.updated",
            f"tenant:{tenant}",
            json.dumps(detail),
            prev,
            forged,
        ),
    )
    return seq
