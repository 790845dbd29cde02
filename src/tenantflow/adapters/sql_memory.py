"""Agent memory in SQL: the memory ops and the scoped reads (dialect-neutral; see
:mod:`~tenantflow.adapters.sql`).

Every statement names the tenant and the namespace, the leading columns of every primary key,
so each one reads and writes inside the tenant's partition (and, on PostgreSQL, row-level
security refuses anything else). Expiry is checked in every read: a row past ``expires_at`` is
never returned, whether or not :class:`~tenantflow.domain.memory.PurgeMemory` has deleted it yet.

Keys are compared and ordered byte-wise on both databases (SQLite's ``BINARY``, PostgreSQL's
``"C"`` collation), so a listing pages the same way on either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tenantflow.adapters import sql_tenancy as tq
from tenantflow.adapters.sql import Gen, count, execute, many, one, rows
from tenantflow.domain.memory import (
    AddDocument,
    DeleteDocument,
    DeleteMemory,
    DocumentAdded,
    MemoryEntry,
    Posting,
    PurgeMemory,
    PutMemory,
    SearchHit,
    rank,
)
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import NotFoundError

__all__ = [
    "add_document",
    "delete_document",
    "delete_entry",
    "get_entry",
    "list_entries",
    "purge_memory",
    "put_entry",
    "search",
]

_ENTRY_COLS = "namespace, key, value, version, created_at, updated_at, expires_at"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_BYTES = '/*pg: COLLATE "C"*/'
_BATCH = 64


def _pad(values: Sequence[str]) -> list[str]:
    """``values`` padded with its first to 1, 4, 16, 32 or 64 entries: a handful of statement
    texts for PostgreSQL to prepare (a duplicate in ``IN`` changes nothing)."""
    size = next((n for n in (1, 4, 16, 32, _BATCH) if n >= len(values)), len(values))
    return [*values, *([values[0]] * (size - len(values)))]


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" for _ in values)


def _entry(tenant_id: str, r: Sequence[Any]) -> MemoryEntry:
    return MemoryEntry(
        tenant_id=tenant_id,
        namespace=r[0],
        key=r[1],
        value=json.loads(r[2]),
        version=int(r[3]),
        created_at=float(r[4]),
        updated_at=float(r[5]),
        expires_at=None if r[6] is None else float(r[6]),
    )


def _entry_missing(namespace: str, key: str) -> NotFoundError:
    return NotFoundError(
        f"memory entry {key!r} not found in namespace {namespace!r}",
        kind="memory_entry",
        id=key,
        namespace=namespace,
    )


def _document_missing(namespace: str, document_id: str) -> NotFoundError:
    return NotFoundError(
        f"memory document {document_id!r} not found in namespace {namespace!r}",
        kind="memory_document",
        id=document_id,
        namespace=namespace,
    )


# -- entries ------------------------------------------------------------------------------------


def get_entry(tenant_id: str, namespace: str, key: str, now: float) -> Gen[MemoryEntry]:
    """The live entry; NotFoundError if the tenant has none under ``key`` in ``namespace``."""
    row = yield from one(
        f"SELECT {_ENTRY_COLS} FROM memory_entries"
        f" WHERE tenant_id = ? AND namespace = ? AND key = ? AND {_LIVE}",
        tenant_id,
        namespace,
        key,
        now,
    )
    if row is None:
        raise _entry_missing(namespace, key)
    return _entry(tenant_id, row)


def list_entries(
    tenant_id: str,
    namespace: str,
    now: float,
    prefix: str | None,
    after: str | None,
    limit: int,
) -> Gen[list[MemoryEntry]]:
    """Live entries by key; with ``prefix`` only keys starting so, with ``after`` only keys
    after it (paging)."""
    sql = f"SELECT {_ENTRY_COLS} FROM memory_entries WHERE tenant_id = ? AND namespace = ?"
    args: list[Any] = [tenant_id, namespace]
    if prefix:
        sql += " AND substr(key, 1, ?) = ?"
        args.extend([len(prefix), prefix])
    if after is not None:
        sql += f" AND key > ? {_BYTES}"
        args.append(after)
    sql += f" AND {_LIVE} ORDER BY key {_BYTES} LIMIT ?"
    args.extend([now, limit])
    found = yield from rows(sql, *args)
    return [_entry(tenant_id, r) for r in found]


def put_entry(op: PutMemory) -> Gen[MemoryEntry]:
    # One statement, so that concurrent writers of a new key on PostgreSQL never collide on
    # the primary key: the second updates what the first inserted.
    expired = "memory_entries.expires_at IS NOT NULL AND memory_entries.expires_at <= ?"
    row = yield from one(
        f"INSERT INTO memory_entries (tenant_id, {_ENTRY_COLS}) VALUES (?, ?, ?, ?, 1, ?, ?, ?)"
        " ON CONFLICT (tenant_id, namespace, key) DO UPDATE SET value = excluded.value,"
        f" version = CASE WHEN {expired} THEN 1 ELSE memory_entries.version + 1 END,"
        f" created_at = CASE WHEN {expired} THEN excluded.created_at"
        " ELSE memory_entries.created_at END,"
        " updated_at = excluded.updated_at, expires_at = excluded.expires_at"
        f" RETURNING {_ENTRY_COLS}",
        op.tenant_id,
        op.namespace,
        op.key,
        op.value_json,
        op.now,
        op.now,
        op.expires_at,
        op.now,
        op.now,
    )
    assert row is not None  # an upsert always returns its row
    return _entry(op.tenant_id, row)


def delete_entry(op: DeleteMemory) -> Gen[Any]:
    row = yield from one(
        "DELETE FROM memory_entries WHERE tenant_id = ? AND namespace = ? AND key = ?"
        " RETURNING expires_at",
        op.tenant_id,
        op.namespace,
        op.key,
    )
    if row is None or (row[0] is not None and float(row[0]) <= op.now):
        return _entry_missing(op.namespace, op.key)  # an expired entry was already gone
    return True


# -- documents ----------------------------------------------------------------------------------


def add_document(op: AddDocument) -> Gen[DocumentAdded]:
    yield from execute(  # an expired document of that id is replaced as if it were absent
        "DELETE FROM memory_terms WHERE tenant_id = ? AND namespace = ? AND document_id IN"
        " (SELECT id FROM memory_documents WHERE tenant_id = ? AND namespace = ? AND id = ?"
        " AND expires_at <= ?)",
        op.tenant_id,
        op.namespace,
        op.tenant_id,
        op.namespace,
        op.id,
        op.now,
    )
    yield from execute(
        "DELETE FROM memory_documents WHERE tenant_id = ? AND namespace = ? AND id = ?"
        " AND expires_at <= ?",
        op.tenant_id,
        op.namespace,
        op.id,
        op.now,
    )
    # Concurrent adds of one id on PostgreSQL: the second waits for the first and inserts
    # nothing, rather than failing on the primary key.
    inserted = yield from one(
        "INSERT INTO memory_documents (tenant_id, namespace, id, text, metadata, length,"
        " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, namespace, id) DO NOTHING RETURNING id",
        op.tenant_id,
        op.namespace,
        op.id,
        op.text,
        op.metadata_json,
        op.length,
        op.now,
        op.expires_at,
    )
    if inserted is None:
        return DocumentAdded(op.id, created=False)
    yield from many(
        "INSERT INTO memory_terms (tenant_id, namespace, term, document_id, count)"
        " VALUES (?, ?, ?, ?, ?)",
        [(op.tenant_id, op.namespace, w, op.id, n) for w, n in sorted(op.terms.items())],
    )
    return DocumentAdded(op.id, created=True)


def delete_document(op: DeleteDocument) -> Gen[Any]:
    row = yield from one(
        "DELETE FROM memory_documents WHERE tenant_id = ? AND namespace = ? AND id = ?"
        " RETURNING expires_at",
        op.tenant_id,
        op.namespace,
        op.id,
    )
    if row is not None:
        yield from execute(
            "DELETE FROM memory_terms WHERE tenant_id = ? AND namespace = ? AND document_id = ?",
            op.tenant_id,
            op.namespace,
            op.id,
        )
    if row is None or (row[0] is not None and float(row[0]) <= op.now):
        return _document_missing(op.namespace, op.id)  # an expired one was already gone
    return True


def search(
    tenant_id: str, namespace: str, terms: Sequence[str], now: float, limit: int
) -> Gen[list[SearchHit]]:
    """The live documents of the tenant's namespace that contain any of ``terms``, best first
    (BM25 over that namespace's documents only)."""
    stats = yield from one(
        "SELECT COUNT(*), COALESCE(SUM(length), 0) FROM memory_documents"
        f" WHERE tenant_id = ? AND namespace = ? AND {_LIVE}",
        tenant_id,
        namespace,
        now,
    )
    documents, total = (0, 0) if stats is None else (int(stats[0]), int(stats[1]))
    if not documents or not terms:
        return []
    words = _pad(list(terms))
    found = yield from rows(
        "SELECT t.document_id, t.term, t.count, d.length, d.created_at FROM memory_terms t"
        " JOIN memory_documents d ON d.tenant_id = t.tenant_id AND d.namespace = t.namespace"
        " AND d.id = t.document_id"
        f" WHERE t.tenant_id = ? AND t.namespace = ? AND t.term IN ({_marks(words)})"
        " AND (d.expires_at IS NULL OR d.expires_at > ?)",
        tenant_id,
        namespace,
        *words,
        now,
    )
    postings = [Posting(r[0], r[1], int(r[2]), int(r[3]), float(r[4])) for r in found]
    best = rank(postings, documents=documents, total_length=total)[:limit]
    if not best:
        return []
    ids = _pad([document_id for document_id, _ in best])
    docs = yield from rows(
        "SELECT id, text, metadata, created_at, expires_at FROM memory_documents"
        f" WHERE tenant_id = ? AND namespace = ? AND id IN ({_marks(ids)})",
        tenant_id,
        namespace,
        *ids,
    )
    by_id = {r[0]: r for r in docs}
    return [
        SearchHit(
            tenant_id=tenant_id,
            namespace=namespace,
            id=document_id,
            text=by_id[document_id][1],
            metadata=json.loads(by_id[document_id][2]),
            score=score,
            created_at=float(by_id[document_id][3]),
            expires_at=None if by_id[document_id][4] is None else float(by_id[document_id][4]),
        )
        for document_id, score in best
        if document_id in by_id
    ]


# -- retention ----------------------------------------------------------------------------------


def purge_memory(op: PurgeMemory) -> Gen[dict[str, int]]:
    """Delete the tenant's expired entries and documents (with their words)."""
    deleted = {"memory_entries": 0, "memory_documents": 0, "memory_terms": 0}
    deleted["memory_entries"] = yield from count(
        "DELETE FROM memory_entries WHERE tenant_id = ? AND expires_at <= ?",
        op.tenant_id,
        op.now,
    )
    expired = yield from rows(
        "SELECT namespace, id FROM memory_documents WHERE tenant_id = ? AND expires_at <= ?"
        " ORDER BY namespace, id",
        op.tenant_id,
        op.now,
    )
    by_namespace: dict[str, list[str]] = {}
    for namespace, document_id in expired:
        by_namespace.setdefault(namespace, []).append(document_id)
    for namespace, ids in by_namespace.items():
        for start in range(0, len(ids), _BATCH):
            batch = _pad(ids[start : start + _BATCH])
            deleted["memory_terms"] += yield from count(
                "DELETE FROM memory_terms WHERE tenant_id = ? AND namespace = ?"
                f" AND document_id IN ({_marks(batch)})",
                op.tenant_id,
                namespace,
                *batch,
            )
            deleted["memory_documents"] += yield from count(
                "DELETE FROM memory_documents WHERE tenant_id = ? AND namespace = ?"
                f" AND id IN ({_marks(batch)})",
                op.tenant_id,
                namespace,
                *batch,
            )
    if any(deleted.values()):
        entry = AuditEntry(
            op.actor, "memory.purged", f"tenant:{op.tenant_id}", {"deleted": deleted}
        )
        yield from tq.append_audit(op.tenant_id, op.now, [entry])
    return deleted
