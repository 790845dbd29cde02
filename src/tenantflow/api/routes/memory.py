"""The caller's agent memory: entries (JSON values by key) and documents (text to search), per
namespace (``default``, ``user:<id>``, ``session:<id>``).

The tenant is the API key's; the namespace and key in the path only ever name rows of that
tenant, so another tenant's entry answers 404 exactly like one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from tenantflow.api.auth import EngineDep, TenantId
from tenantflow.api.errors import ERROR_RESPONSES
from tenantflow.domain.memory import (
    MAX_KEY_CHARS,
    MAX_LIST,
    MAX_QUERY_CHARS,
    MAX_SEARCH,
    MemoryEntry,
    SearchHit,
)
from tenantflow.errors import ConfigurationError

__all__ = [
    "DocumentAddedOut",
    "DocumentIn",
    "MemoryDeletedOut",
    "MemoryEntriesPage",
    "MemoryEntryOut",
    "MemoryValueIn",
    "SearchHitOut",
    "SearchOut",
    "router",
]

router = APIRouter(prefix="/v1/memory", tags=["memory"], responses=ERROR_RESPONSES)

NamespacePath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        description="`default`, `user:<id>` or `session:<id>` (the id: letters, digits,"
        " `_ . @ -`).",
    ),
]
KeyPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_KEY_CHARS,
        description="The entry's key: letters, digits and `_ . : @ = + ~ , -`.",
    ),
]
DocumentPath = Annotated[
    str, Path(min_length=1, max_length=MAX_KEY_CHARS, description="The document's id.")
]

_PAGE = MAX_LIST // 2  # one more than a page is read, to know whether there is a next one

# Where each argument the library checks sits in the request (for ``field`` in a 422).
_WHERE = {
    "namespace": "path.namespace",
    "key": "path.key",
    "document_id": "path.document_id",
    "value": "body.value",
    "text": "body.text",
    "metadata": "body.metadata",
    "query": "query.q",
    "limit": "query.limit",
    "prefix": "query.prefix",
    "after": "query.cursor",
}


@contextmanager
def _located(body_id: bool = False) -> Iterator[None]:
    """Name the offending part of the request in a refused argument's ``field``."""
    try:
        yield
    except ConfigurationError as exc:
        field = exc.fields.get("field")
        if body_id and field == "document_id":
            exc.fields["field"] = "body.id"
        elif isinstance(field, str) and field in _WHERE:
            exc.fields["field"] = _WHERE[field]
        raise


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemoryValueIn(_In):
    value: Any = Field(description="Any JSON value, at most 256 KiB as compact JSON.")


class MemoryEntryOut(BaseModel):
    namespace: str
    key: str
    value: Any
    version: int = Field(description="Writes since the key was (re)created; 1 for a new key.")
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = Field(
        description="From the tenant's memory_retention; null: kept until deleted."
    )

    @classmethod
    def of(cls, entry: MemoryEntry) -> MemoryEntryOut:
        return cls(
            namespace=entry.namespace,
            key=entry.key,
            value=entry.value,
            version=entry.version,
            created_at=datetime.fromtimestamp(entry.created_at, UTC),
            updated_at=datetime.fromtimestamp(entry.updated_at, UTC),
            expires_at=_utc(entry.expires_at),
        )


class MemoryEntriesPage(BaseModel):
    items: list[MemoryEntryOut]
    next: str | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class MemoryDeletedOut(BaseModel):
    namespace: str
    id: str = Field(description="The entry's key or the document's id.")
    kind: str = Field(description="`entry` or `document`.")
    deleted: bool = True


class DocumentIn(_In):
    text: str = Field(min_length=1, description="The text to index; at most 256 KiB.")
    metadata: dict[str, Any] | None = Field(
        default=None, description="A JSON object returned with the document; at most 16 KiB."
    )
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY_CHARS,
        description="An id of your own: adding again with it changes nothing (200).",
    )


class DocumentAddedOut(BaseModel):
    namespace: str
    id: str
    created: bool = Field(description="False when a document with this id was already there.")


class SearchHitOut(BaseModel):
    id: str
    namespace: str
    text: str
    metadata: dict[str, Any]
    score: float = Field(description="BM25 over the namespace's documents; higher is better.")
    created_at: datetime
    expires_at: datetime | None

    @classmethod
    def of(cls, hit: SearchHit) -> SearchHitOut:
        return cls(
            id=hit.id,
            namespace=hit.namespace,
            text=hit.text,
            metadata=hit.metadata,
            score=hit.score,
            created_at=datetime.fromtimestamp(hit.created_at, UTC),
            expires_at=_utc(hit.expires_at),
        )


class SearchOut(BaseModel):
    items: list[SearchHitOut]


@router.get(
    "/{namespace}/entries",
    response_model=MemoryEntriesPage,
    summary="List memory entries by key",
)
async def list_entries(
    namespace: NamespacePath,
    engine: EngineDep,
    tenant: TenantId,
    prefix: Annotated[
        str | None,
        Query(max_length=MAX_KEY_CHARS, description="Only keys that start with this."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=_PAGE)] = 100,
    cursor: Annotated[
        str | None,
        Query(min_length=1, max_length=MAX_KEY_CHARS, description="`next` of the previous page."),
    ] = None,
) -> MemoryEntriesPage:
    """Live entries in byte order of their keys."""
    with _located():
        found = await engine.memory.list(
            tenant, namespace=namespace, prefix=prefix, after=cursor, limit=limit + 1
        )
    page = found[:limit]
    more = len(found) > limit
    return MemoryEntriesPage(
        items=[MemoryEntryOut.of(e) for e in page], next=page[-1].key if more else None
    )


@router.get(
    "/{namespace}/entries/{key}", response_model=MemoryEntryOut, summary="Read a memory entry"
)
async def get_entry(
    namespace: NamespacePath, key: KeyPath, engine: EngineDep, tenant: TenantId
) -> MemoryEntryOut:
    with _located():
        return MemoryEntryOut.of(await engine.memory.get(tenant, key, namespace=namespace))


@router.put(
    "/{namespace}/entries/{key}", response_model=MemoryEntryOut, summary="Write a memory entry"
)
async def put_entry(
    namespace: NamespacePath,
    key: KeyPath,
    body: MemoryValueIn,
    engine: EngineDep,
    tenant: TenantId,
) -> MemoryEntryOut:
    """Store the value under the key, replacing what was there; committed before the answer.
    It expires after the tenant policy's ``memory_retention`` (if set)."""
    with _located():
        entry = await engine.memory.put(tenant, key, body.value, namespace=namespace)
    return MemoryEntryOut.of(entry)


@router.delete(
    "/{namespace}/entries/{key}",
    response_model=MemoryDeletedOut,
    summary="Delete a memory entry",
)
async def delete_entry(
    namespace: NamespacePath, key: KeyPath, engine: EngineDep, tenant: TenantId
) -> MemoryDeletedOut:
    with _located():
        await engine.memory.delete(tenant, key, namespace=namespace)
    return MemoryDeletedOut(namespace=namespace, id=key, kind="entry")


@router.post(
    "/{namespace}/documents",
    status_code=201,
    response_model=DocumentAddedOut,
    summary="Add a document to search",
    responses={200: {"model": DocumentAddedOut, "description": "A document with this id exists."}},
)
async def add_document(
    namespace: NamespacePath,
    body: DocumentIn,
    response: Response,
    engine: EngineDep,
    tenant: TenantId,
) -> DocumentAddedOut:
    """Index the text's words for search in this namespace; committed before the answer."""
    with _located(body_id=True):
        view = await engine.memory.view(tenant, namespace)
        added = await view.add(body.text, metadata=body.metadata, id=body.id)
    if not added.created:
        response.status_code = 200
    return DocumentAddedOut(namespace=namespace, id=added.id, created=added.created)


@router.delete(
    "/{namespace}/documents/{document_id}",
    response_model=MemoryDeletedOut,
    summary="Delete a document",
)
async def delete_document(
    namespace: NamespacePath, document_id: DocumentPath, engine: EngineDep, tenant: TenantId
) -> MemoryDeletedOut:
    with _located():
        await engine.memory.delete_document(tenant, document_id, namespace=namespace)
    return MemoryDeletedOut(namespace=namespace, id=document_id, kind="document")


@router.get("/{namespace}/search", response_model=SearchOut, summary="Search documents")
async def search(
    namespace: NamespacePath,
    engine: EngineDep,
    tenant: TenantId,
    q: Annotated[
        str,
        Query(min_length=1, max_length=MAX_QUERY_CHARS, description="Words to look for."),
    ],
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH)] = 5,
) -> SearchOut:
    """Documents containing any of the words, best first (BM25 over this tenant's documents in
    this namespace only; words are case-folded letter and digit runs, without stemming)."""
    with _located():
        hits = await engine.memory.search(tenant, q, namespace=namespace, limit=limit)
    return SearchOut(items=[SearchHitOut.of(h) for h in hits])
