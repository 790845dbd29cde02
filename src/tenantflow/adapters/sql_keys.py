"""API key ops and reads in SQL (dialect-neutral; see :mod:`~tenantflow.adapters.sql`).

Keys live in the control plane's store, table ``api_keys``. A tenant key's ops run in its
tenant's scope and append to its audit chain in the same transaction; an admin key (no tenant)
runs in system scope, which on PostgreSQL may read every key (authentication looks a key up by
id before it knows the tenant) but write only admin keys (see
:mod:`~tenantflow.adapters.postgres_schema`). A key is never deleted except with its tenant
(:class:`~tenantflow.domain.tenancy.DeleteTenant` purges every table in ``TENANT_TABLES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tenantflow.adapters import sql_tenancy as tq
from tenantflow.adapters.sql import Gen, execute, one, rows
from tenantflow.domain.keys import ApiKeyRecord, CreateApiKey, Revocation, RevokeApiKey
from tenantflow.errors import ConflictError, NotFoundError

__all__ = ["create_api_key", "get_api_key", "list_api_keys", "revoke_api_key"]

_COLS = "id, tenant_id, name, prefix, secret_sha256, created_at, created_by, revoked_at, revoked_by"
# Null-safe: the tenant's key, or with None an admin key (next to ``id = ?``, the primary key).
_OWNER = "tenant_id IS /*pg: NOT DISTINCT FROM*/ ?"


def _record(r: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(*r)


def _not_found(key_id: str) -> NotFoundError:
    return NotFoundError(f"API key {key_id!r} not found", kind="api_key", id=key_id)


def get_api_key(key_id: str) -> Gen[ApiKeyRecord]:
    """The key, whoever owns it (system scope: authentication); NotFoundError if absent."""
    row = yield from one(f"SELECT {_COLS} FROM api_keys WHERE id = ?", key_id)
    if row is None:
        raise _not_found(key_id)
    return _record(row)


def list_api_keys(tenant_id: str | None) -> Gen[list[ApiKeyRecord]]:
    """The tenant's keys, or with None the admin keys, revoked ones included, oldest first."""
    # Two statements rather than the null-safe comparison: ``=`` and ``IS NULL`` use the index.
    order = "ORDER BY created_at, id"
    if tenant_id is None:
        found = yield from rows(f"SELECT {_COLS} FROM api_keys WHERE tenant_id IS NULL {order}")
    else:
        found = yield from rows(
            f"SELECT {_COLS} FROM api_keys WHERE tenant_id = ? {order}", tenant_id
        )
    return [_record(r) for r in found]


def _insert(key: ApiKeyRecord) -> Gen[None]:
    yield from execute(
        f"INSERT INTO api_keys ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        key.id,
        key.tenant_id,
        key.name,
        key.prefix,
        key.secret_sha256,
        key.created_at,
        key.created_by,
        key.revoked_at,
        key.revoked_by,
    )


def create_api_key(op: CreateApiKey) -> Gen[bool]:
    yield from _insert(op.key)
    if op.key.tenant_id is not None:
        yield from tq.append_audit(op.key.tenant_id, op.key.created_at, op.audit)
    return True


def revoke_api_key(op: RevokeApiKey) -> Gen[Any]:
    # Locked until commit: of two concurrent rotations of one key exactly one replaces it.
    row = yield from one(
        f"SELECT {_COLS} FROM api_keys WHERE id = ? AND {_OWNER} /*pg: FOR UPDATE*/",
        op.key_id,
        op.tenant_id,
    )
    if row is None:
        return _not_found(op.key_id)
    key = _record(row)
    if key.revoked_at is not None:
        if op.replacement is not None:
            return ConflictError(
                f"API key {op.key_id!r} is revoked and cannot be rotated; create a new key",
                key_id=op.key_id,
            )
        return Revocation(key, changed=False)
    yield from execute(
        "UPDATE api_keys SET revoked_at = ?, revoked_by = ? WHERE id = ?",
        op.now,
        op.actor,
        op.key_id,
    )
    if op.replacement is not None:
        yield from _insert(op.replacement)
    if op.tenant_id is not None:
        yield from tq.append_audit(op.tenant_id, op.now, op.audit)
    revoked = ApiKeyRecord(
        key.id,
        key.tenant_id,
        key.name,
        key.prefix,
        key.secret_sha256,
        key.created_at,
        key.created_by,
        op.now,
        op.actor,
    )
    return Revocation(revoked, changed=True)
