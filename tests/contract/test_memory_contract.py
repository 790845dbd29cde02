"""The store contract for agent memory: every store (memory, SQLite, PostgreSQL) keeps each
tenant's entries and documents in its own partition, expires them, ranks search within the
tenant's namespace only, and forgets everything with the tenant."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tenantflow.adapters.memory import MemoryStore
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.memory import (
    AddDocument,
    DeleteDocument,
    DeleteMemory,
    DocumentAdded,
    PurgeMemory,
    PutMemory,
    query_words,
    term_counts,
)
from tenantflow.domain.tenancy import DeleteTenant, PutTenant
from tenantflow.errors import NotFoundError, StoreError
from tenantflow.ports import Store

if TYPE_CHECKING:
    from tenantflow.adapters.postgres import PostgresStore

NOW = 1_800_000_000.0
STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def postgres_store(url: str) -> PostgresStore:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from tenantflow.adapters.postgres import PostgresStore

    return PostgresStore.from_url(url)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind = request.param
    s: Store
    if kind == "memory":
        s = MemoryStore()
    elif kind == "sqlite":
        s = SqliteStore(tmp_path / "m.db")
    else:
        s = postgres_store(request.getfixturevalue("postgres_url"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def put(
    key: str,
    value: Any,
    *,
    tenant: str = "t1",
    namespace: str = "default",
    now: float = NOW,
    expires_at: float | None = None,
) -> PutMemory:
    return PutMemory(tenant, namespace, key, json.dumps(value), now, expires_at)


def doc(
    document_id: str,
    text: str,
    *,
    tenant: str = "t1",
    namespace: str = "default",
    now: float = NOW,
    expires_at: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> AddDocument:
    terms, length = term_counts(text)
    return AddDocument(
        tenant,
        namespace,
        document_id,
        text,
        json.dumps(metadata or {}),
        terms,
        length,
        now,
        expires_at,
    )


async def search(
    store: Store, query: str, *, tenant: str = "t1", namespace: str = "default", now: float = NOW
) -> list[str]:
    hits = await store.search_memory(tenant, namespace, query_words(query), now=now, limit=10)
    return [h.id for h in hits]


async def keys(store: Store, tenant: str = "t1", namespace: str = "default", **kw: Any) -> list:
    found = await store.list_memory(tenant, namespace, now=kw.pop("now", NOW), **kw)
    return [e.key for e in found]


async def test_entries_are_put_read_listed_and_deleted(store: Store) -> None:
    [first] = await store.apply([put("pref:channel", {"channel": "email"})])
    assert (first.key, first.value, first.version, first.expires_at) == (
        "pref:channel",
        {"channel": "email"},
        1,
        None,
    )
    [second] = await store.apply([put("pref:channel", {"channel": "sms"}, now=NOW + 5)])
    assert (second.version, second.created_at, second.updated_at) == (2, NOW, NOW + 5)
    entry = await store.get_memory("t1", "default", "pref:channel", now=NOW + 6)
    assert (entry.tenant_id, entry.value, entry.version) == ("t1", {"channel": "sms"}, 2)

    await store.apply([put(k, i) for i, k in enumerate(["note:2", "note:1", "pref:x", "a"])])
    assert await keys(store) == ["a", "note:1", "note:2", "pref:channel", "pref:x"]
    assert await keys(store, prefix="note:") == ["note:1", "note:2"]
    assert await keys(store, after="note:1", limit=2) == ["note:2", "pref:channel"]
    assert await keys(store, prefix="pref:", after="pref:channel") == ["pref:x"]

    [deleted, missing] = await store.apply(
        [DeleteMemory("t1", "default", "note:1", NOW), DeleteMemory("t1", "default", "nope", NOW)]
    )
    assert deleted is True and isinstance(missing, NotFoundError)
    with pytest.raises(NotFoundError, match="'note:1' not found in namespace 'default'"):
        await store.get_memory("t1", "default", "note:1", now=NOW)
    [value] = await store.apply([put("json", [1, "two", None, {"3": 4.5}])])
    assert value.value == [1, "two", None, {"3": 4.5}]


async def test_namespaces_are_separate(store: Store) -> None:
    await store.apply(
        [
            put("k", "shared"),
            put("k", "alice's", namespace="user:alice"),
            put("k", "session's", namespace="session:abc"),
        ]
    )
    for namespace, value in (
        ("default", "shared"),
        ("user:alice", "alice's"),
        ("session:abc", "session's"),
    ):
        assert (await store.get_memory("t1", namespace, "k", now=NOW)).value == value
    await store.apply([DeleteMemory("t1", "user:alice", "k", NOW)])
    assert await keys(store, namespace="user:alice") == []
    assert await keys(store, namespace="session:abc") == ["k"]
    assert await keys(store) == ["k"]


async def test_expired_entries_are_never_returned_and_are_purged(store: Store) -> None:
    await store.apply(
        [
            put("short", 1, expires_at=NOW + 10),
            put("long", 2, expires_at=NOW + 1000),
            put("forever", 3),
        ]
    )
    assert (await store.get_memory("t1", "default", "short", now=NOW + 9)).value == 1
    with pytest.raises(NotFoundError):
        await store.get_memory("t1", "default", "short", now=NOW + 10)
    assert await keys(store, now=NOW + 10) == ["forever", "long"]
    # An expired key written again starts over; deleting an expired one finds nothing.
    [again] = await store.apply([put("short", "new", now=NOW + 20, expires_at=NOW + 30)])
    assert (again.version, again.created_at, again.value) == (1, NOW + 20, "new")
    [gone] = await store.apply([DeleteMemory("t1", "default", "short", NOW + 30)])
    assert isinstance(gone, NotFoundError)

    await store.apply(
        [
            put("other", 1, tenant="t2", expires_at=NOW + 10),
            doc("d1", "expiring note", expires_at=NOW + 10),
            doc("d2", "lasting note"),
        ]
    )
    [purged] = await store.apply([PurgeMemory("t1", NOW + 2000)])
    assert purged == {"memory_entries": 1, "memory_documents": 1, "memory_terms": 2}
    assert await keys(store, now=NOW) == ["forever"]  # gone for good, whatever the time
    assert await search(store, "note", now=NOW) == ["d2"]
    assert [r.action for r in await store.audit_log("t1")] == ["memory.purged"]
    # Nothing to purge: no rows, no audit row. Another tenant's expired rows are its own.
    [nothing] = await store.apply([PurgeMemory("t1", NOW + 3000)])
    assert set(nothing.values()) == {0}
    assert len(await store.audit_log("t1")) == 1
    assert await keys(store, "t2", now=NOW) == ["other"]


async def test_search_ranks_within_the_namespace(store: Store) -> None:
    await store.apply(
        [
            doc("d-fee", "The customer disputes an overdraft fee on the card", metadata={"n": 1}),
            doc("d-limits", "Overdraft overdraft: limits and overdraft fees explained"),
            doc("d-mortgage", "Mortgage rates for first-time buyers"),
            doc("d-other-ns", "overdraft overdraft overdraft", namespace="user:alice"),
        ]
    )
    assert await search(store, "overdraft") == ["d-limits", "d-fee"]
    # A rarer word weighs more: "disputes" appears in one document, "overdraft" in two.
    assert await search(store, "OVERDRAFT disputes") == ["d-fee", "d-limits"]
    assert await search(store, "mortgage") == ["d-mortgage"]
    assert await search(store, "nothing-like-this") == []
    assert await search(store, "overdraft", namespace="user:alice") == ["d-other-ns"]
    assert await search(store, "overdraft", namespace="session:none") == []
    [hit] = await store.search_memory("t1", "default", ["disputes"], now=NOW, limit=5)
    assert (hit.text, hit.metadata, hit.namespace, hit.tenant_id) == (
        "The customer disputes an overdraft fee on the card",
        {"n": 1},
        "default",
        "t1",
    )
    assert hit.score > 0
    hits = await store.search_memory("t1", "default", ["overdraft"], now=NOW, limit=1)
    assert [h.id for h in hits] == ["d-limits"]


async def test_documents_are_idempotent_by_id_expire_and_are_deleted(store: Store) -> None:
    [first, again] = await store.apply(
        [doc("d1", "first text", expires_at=NOW + 10), doc("d1", "second text")]
    )
    assert first == DocumentAdded("d1", True) and again == DocumentAdded("d1", False)
    assert await search(store, "first") == ["d1"] and await search(store, "second") == []
    assert await search(store, "first", now=NOW + 10) == []  # expired
    [replaced] = await store.apply([doc("d1", "second text", now=NOW + 10)])
    assert replaced == DocumentAdded("d1", True)
    assert await search(store, "first second", now=NOW + 11) == ["d1"]
    [hit] = await store.search_memory("t1", "default", ["second"], now=NOW + 11, limit=5)
    assert hit.text == "second text"
    [deleted, missing] = await store.apply(
        [
            DeleteDocument("t1", "default", "d1", NOW + 12),
            DeleteDocument("t1", "default", "d1", NOW),
        ]
    )
    assert deleted is True and isinstance(missing, NotFoundError)
    assert await search(store, "second", now=NOW + 12) == []


async def test_a_tenant_never_sees_another_tenants_memory(store: Store) -> None:
    await store.apply(
        [
            put("profile", {"owner": "t1"}),
            put("profile", {"owner": "t2", "canary": "zebrafish"}, tenant="t2"),
            put("t2-only", 1, tenant="t2"),
            doc("d-a", "quarterly revenue report"),
            doc("d-b", "zebrafish secret merger revenue", tenant="t2"),
        ]
    )
    assert (await store.get_memory("t1", "default", "profile", now=NOW)).value == {"owner": "t1"}
    with pytest.raises(NotFoundError):
        await store.get_memory("t1", "default", "t2-only", now=NOW)
    assert await keys(store) == ["profile"]
    assert await search(store, "zebrafish") == []
    assert await search(store, "revenue") == ["d-a"]
    [refused] = await store.apply([DeleteMemory("t1", "default", "t2-only", NOW)])
    assert isinstance(refused, NotFoundError)
    [refused] = await store.apply([DeleteDocument("t1", "default", "d-b", NOW)])
    assert isinstance(refused, NotFoundError)
    # The same id in another tenant is another document: nothing of t2's is returned.
    [added] = await store.apply([doc("d-b", "my own document")])
    assert added == DocumentAdded("d-b", True)
    assert await search(store, "zebrafish merger") == []
    assert await search(store, "zebrafish", tenant="t2") == ["d-b"]
    assert (await store.get_memory("t2", "default", "t2-only", now=NOW)).value == 1


async def test_ranking_does_not_depend_on_other_tenants_documents(store: Store) -> None:
    await store.apply(
        [
            doc("a1", "loan application income verified"),
            doc("a2", "loan loan refinance"),
            doc("a3", "income statement"),
        ]
    )
    query = query_words("loan income")
    before = await store.search_memory("t1", "default", query, now=NOW, limit=10)
    # Another tenant adds many documents full of the same words, of every length.
    await store.apply([doc(f"b{i}", "loan " * (i + 1) + "income", tenant="t2") for i in range(30)])
    after = await store.search_memory("t1", "default", query, now=NOW, limit=10)
    assert [(h.id, h.score) for h in after] == [(h.id, h.score) for h in before]


async def test_deleting_a_tenant_deletes_its_memory_and_no_other(store: Store) -> None:
    await store.apply([PutTenant(t, None, "{}", NOW, "admin", True) for t in ("t1", "t2")])
    await store.apply(
        [
            put("k", 1),
            put("k", 2, namespace="user:alice"),
            doc("d", "two words"),
            put("k", 3, tenant="t2"),
            doc("d", "their words", tenant="t2"),
        ]
    )
    [proof] = await store.apply([DeleteTenant("t1", NOW + 1, "admin")])
    assert proof["deleted"]["memory_entries"] == 2
    assert proof["deleted"]["memory_documents"] == 1
    assert proof["deleted"]["memory_terms"] == 2
    assert all(proof["left"][t] == 0 for t in ("memory_entries", "memory_documents"))
    assert await keys(store) == [] and await keys(store, namespace="user:alice") == []
    assert await search(store, "words") == []
    assert await keys(store, "t2") == ["k"]
    assert await search(store, "words", tenant="t2") == ["d"]


# -- PostgreSQL: row-level security behind the queries ----------------------------------------


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[PostgresStore]:
    s = postgres_store(postgres_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.postgres
async def test_postgres_rls_hides_other_tenants_memory_from_raw_sql(pg: PostgresStore) -> None:
    await pg.apply(
        [
            put("k", "a's"),
            put("k", "b's", tenant="t2"),
            doc("d1", "alpha words"),
            doc("d2", "beta words", tenant="t2"),
        ]
    )
    # No tenant filter in any of these: the policies supply it.
    assert await pg.execute_sql("SELECT tenant_id, value FROM memory_entries", tenant="t1") == [
        ("t1", '"a\'s"')
    ]
    assert await pg.execute_sql("SELECT id FROM memory_documents", tenant="t2") == [("d2",)]
    terms = await pg.execute_sql("SELECT DISTINCT tenant_id FROM memory_terms", tenant="t1")
    assert terms == [("t1",)]
    for table in ("memory_entries", "memory_documents", "memory_terms"):
        assert await pg.execute_sql(f"SELECT count(*) FROM {table}", tenant="") == [(0,)]
    # Writes into another tenant's partition are refused; deletes reach only one's own rows.
    with pytest.raises(StoreError, match="row-level security"):
        await pg.execute_sql(
            "INSERT INTO memory_entries (tenant_id, namespace, key, value, version, created_at,"
            " updated_at) VALUES ('t2', 'default', 'forged', '1', 1, 0, 0)",
            tenant="t1",
        )
    with pytest.raises(StoreError, match="row-level security"):
        await pg.execute_sql("UPDATE memory_entries SET tenant_id = 't2'", tenant="t1")
    deleted = await pg.execute_sql("DELETE FROM memory_terms RETURNING tenant_id", tenant="t1")
    assert {t for (t,) in deleted} == {"t1"}
    assert await search(pg, "beta", tenant="t2") == ["d2"]
    assert (await pg.get_memory("t2", "default", "k", now=NOW)).value == "b's"
    # The application role neither owns the memory tables nor may update a document.
    [(owner,)] = await pg.execute_sql(
        "SELECT tableowner FROM pg_tables WHERE schemaname = current_schema()"
        " AND tablename = 'memory_entries'"
    )
    assert owner != "tenantflow_app"
    with pytest.raises(StoreError, match="permission denied"):
        await pg.execute_sql("UPDATE memory_documents SET text = 'x'", tenant="t1")
