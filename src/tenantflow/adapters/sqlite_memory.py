"""SQLite schema of agent memory: entries, documents and the documents' words.

Every table is a tenant table: its primary key starts with the tenant and the namespace, so a
tenant's memory is one contiguous range of each index and every lookup, listing and search
stays inside it. Search reads ``memory_terms`` (word → document, with the word's count), an
inverted index partitioned the same way: there is no index shared across tenants to rank by.
The ops are dialect-neutral (:mod:`~tenantflow.adapters.sql_memory`); the PostgreSQL schema is
derived from this DDL (``postgres_schema``), with row-level security on every table.
"""

from __future__ import annotations

__all__ = ["MIGRATION"]

MIGRATION: list[str] = [
    """CREATE TABLE memory_entries (
        tenant_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL,
        PRIMARY KEY (tenant_id, namespace, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX memory_entries_expiry ON memory_entries (tenant_id, expires_at)"
    " WHERE expires_at IS NOT NULL",
    """CREATE TABLE memory_documents (
        tenant_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        text TEXT NOT NULL,
        metadata TEXT NOT NULL,
        length INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        PRIMARY KEY (tenant_id, namespace, id)
    ) WITHOUT ROWID""",
    "CREATE INDEX memory_documents_expiry ON memory_documents (tenant_id, expires_at)"
    " WHERE expires_at IS NOT NULL",
    """CREATE TABLE memory_terms (
        tenant_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        term TEXT NOT NULL,
        document_id TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, namespace, term, document_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX memory_terms_document ON memory_terms (tenant_id, namespace, document_id)",
]
