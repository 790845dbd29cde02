"""Agent memory through the engine: ``engine.memory`` (the library) and ``ctx.memory`` (a step
in a real run) keep each tenant in its partition and its region's store, follow the policy's
retention, and go with the tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.memory import MemoryStore
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.memory import query_words
from tenantflow.engine.memory import MemoryView
from tenantflow.testing import FakeClock

CANARY = "zebrafish"


@pytest.fixture
async def engine() -> AsyncIterator[tf.Engine]:
    async with tf.Engine(MemoryStore(), tf.EngineConfig(slots=8, seed=1)) as eng:
        await eng.tenants.create("bank-a", tier="standard")
        await eng.tenants.create("bank-b", tier="standard")
        yield eng


async def test_the_library_keeps_each_tenant_in_its_own_memory(engine: tf.Engine) -> None:
    memory = engine.memory
    await memory.put("bank-a", "profile", {"risk": "low"})
    await memory.put("bank-b", "profile", {"risk": "high", "note": CANARY})
    await memory.put("bank-a", "profile", {"risk": "alice"}, namespace="user:alice")
    assert (await memory.get("bank-a", "profile")).value == {"risk": "low"}
    assert (await memory.get("bank-b", "profile")).value == {"risk": "high", "note": CANARY}
    assert (await memory.get("bank-a", "profile", namespace="user:alice")).value == {
        "risk": "alice"
    }
    assert [e.key for e in await memory.list("bank-a")] == ["profile"]
    assert [e.tenant_id for e in await memory.list("bank-b")] == ["bank-b"]

    await memory.add_document("bank-b", f"the {CANARY} merger is confidential")
    doc = await memory.add_document("bank-a", "merger talks stalled", metadata={"src": "memo"})
    assert await memory.search("bank-a", CANARY) == []
    [hit] = await memory.search("bank-a", "merger")
    assert (hit.id, hit.metadata, hit.tenant_id) == (doc, {"src": "memo"}, "bank-a")

    await memory.delete("bank-a", "profile")
    with pytest.raises(tf.NotFoundError):
        await memory.get("bank-a", "profile")
    with pytest.raises(tf.NotFoundError):
        await memory.delete("bank-a", "profile")
    assert (await memory.get("bank-b", "profile")).version == 1  # untouched
    with pytest.raises(tf.NotFoundError, match="tenant 'nobody' not found"):
        await memory.put("nobody", "k", 1)


async def test_bad_input_is_refused_with_a_typed_error_and_nothing_is_written(
    engine: tf.Engine,
) -> None:
    memory = engine.memory
    cases: list[tuple[str, Any]] = [
        ("namespace", memory.put("bank-a", "k", 1, namespace="team:x")),
        ("namespace", memory.put("bank-a", "k", 1, namespace="user:")),
        ("key", memory.put("bank-a", "a/b", 1)),
        ("key", memory.put("bank-a", "k" * 201, 1)),
        ("value", memory.put("bank-a", "k", "x" * (256 * 1024))),
        ("value", memory.put("bank-a", "k", float("nan"))),
        ("value", memory.put("bank-a", "k", object())),
        ("text", memory.add_document("bank-a", "   ")),
        ("metadata", memory.add_document("bank-a", "text", metadata={"x": "y" * 20_000})),
        ("query", memory.search("bank-a", "")),
        ("limit", memory.search("bank-a", "word", limit=0)),
        ("limit", memory.list("bank-a", limit=1001)),
        ("tenant", memory.put("bad tenant", "k", 1)),
    ]
    for field, call in cases:
        with pytest.raises(tf.ConfigurationError) as err:
            await call
        assert err.value.fields["field"] == field, (field, err.value)
    assert await memory.list("bank-a") == []
    assert await memory.search("bank-a", "text") == []


async def test_retention_comes_from_the_policy_and_expired_memory_is_purged() -> None:
    clock = FakeClock()
    async with tf.Engine(MemoryStore(), clock=clock) as engine:
        await engine.tenants.create("short", tier="standard", memory_retention="1h")
        await engine.tenants.create("keep", tier="standard")
        t0 = clock.now()
        entry = await engine.memory.put("short", "k", 1)
        assert entry.expires_at == t0 + 3600
        assert (await engine.memory.put("keep", "k", 1)).expires_at is None
        await engine.memory.add_document("short", "expiring words")
        clock.advance(3599)
        assert (await engine.memory.get("short", "k")).value == 1
        clock.advance(1)
        with pytest.raises(tf.NotFoundError):
            await engine.memory.get("short", "k")
        assert await engine.memory.list("short") == []
        assert await engine.memory.search("short", "words") == []
        purged = await engine.memory.purge_expired()
        assert purged == {"short": {"memory_entries": 1, "memory_documents": 1, "memory_terms": 2}}
        assert await engine.memory.purge_expired() == {}
        assert "memory.purged" in [r.action for r in await engine.audit_log("short")]
        assert (await engine.memory.get("keep", "k")).value == 1
        # A new retention applies to what is written from now on.
        await engine.tenants.update("short", memory_retention="2d")
        assert (await engine.memory.put("short", "k", 2)).expires_at == clock.now() + 2 * 86400


def memory_workflow(seen: dict[str, Any]) -> tf.Workflow:
    wf = tf.Workflow("remember", input=dict[str, str])

    @wf.step
    async def write(ctx: tf.StepContext, input: dict[str, str]) -> str:
        memory = ctx.memory
        assert isinstance(memory, MemoryView)
        assert memory.tenant_id == ctx.tenant_id and memory.namespace == "default"
        await memory.put("last-input", input)
        await memory.scope("user:alice").put("seen", input["word"])
        return await memory.add_document(f"note about {input['word']}", metadata=input)

    @wf.step(after=[write])
    async def read(ctx: tf.StepContext, input: dict[str, str], write: str) -> dict[str, Any]:
        mine = await ctx.memory.get("last-input")
        hits = await ctx.memory.search(f"{input['word']} {CANARY}")
        found = {
            "value": mine.value,
            "alice": (await ctx.memory.scope("user:alice").get("seen")).value,
            "hits": [[h.id, h.text] for h in hits],
            "keys": [e.key for e in await ctx.memory.list()],
            "document": write,
        }
        seen[ctx.tenant_id] = found
        return found

    return wf


async def test_steps_see_only_their_runs_tenant(engine: tf.Engine) -> None:
    seen: dict[str, Any] = {}
    engine.register(memory_workflow(seen))
    await engine.memory.put("bank-b", "last-input", {"word": CANARY})
    await engine.memory.add_document("bank-b", f"{CANARY} {CANARY} secret")
    run_a = await engine.submit("remember", tenant="bank-a", input={"word": "loan"})
    result = await run_a.result()
    assert result["value"] == {"word": "loan"} and result["alice"] == "loan"
    assert result["hits"] == [[result["document"], "note about loan"]]
    assert result["keys"] == ["last-input"]
    # Written by the step, durably, in bank-a's memory only.
    assert (await engine.memory.get("bank-a", "last-input")).value == {"word": "loan"}
    assert (await engine.memory.get("bank-b", "last-input")).value == {"word": CANARY}
    assert await engine.memory.search("bank-a", CANARY) == []

    # A later run of the other tenant: its own memory, across runs.
    run_b = await engine.submit("remember", tenant="bank-b", input={"word": "lease"})
    result_b = await run_b.result()
    assert result_b["value"] == {"word": "lease"}
    assert {text for _, text in result_b["hits"]} == {
        "note about lease",
        f"{CANARY} {CANARY} secret",
    }
    assert "note about loan" not in str(result_b)
    assert (await engine.memory.get("bank-a", "seen", namespace="user:alice")).value == "loan"


async def test_a_document_added_by_a_retried_step_is_stored_once(engine: tf.Engine) -> None:
    attempts: list[int] = []
    wf = tf.Workflow("flaky")

    @wf.step(retry=tf.Retry(max_attempts=3, initial=timedelta(milliseconds=1)))
    async def learn(ctx: tf.StepContext) -> str:
        document = await ctx.memory.add_document("the applicant prefers email")
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("crashed after writing")
        return document

    engine.register(wf)
    document = await (await engine.submit("flaky", tenant="bank-a", input=None)).result()
    assert attempts == [1, 2]
    hits = await engine.memory.search("bank-a", "email", limit=10)
    assert [h.id for h in hits] == [document]


async def test_a_region_tenants_memory_lives_in_its_region_store() -> None:
    eu_store = MemoryStore()
    async with tf.Engine(
        MemoryStore(), tf.EngineConfig(region="us-east-1"), regions={"eu-west-1": eu_store}
    ) as e:
        await e.tenants.create("gdpr-bank", tier="standard", region="eu-west-1")
        await e.tenants.create("us-bank", tier="standard", region="us-east-1")
        seen: dict[str, Any] = {}
        e.register(memory_workflow(seen))
        await e.memory.put("gdpr-bank", "direct", 1)
        await (await e.submit("remember", tenant="gdpr-bank", input={"word": "eu"})).result()
        now = e.clock.now()
        found = await eu_store.list_memory("gdpr-bank", "default", now=now)
        assert [x.key for x in found] == ["direct", "last-input"]
        terms = query_words("eu")
        assert len(await eu_store.search_memory("gdpr-bank", "default", terms, now=now)) == 1
        assert await e.store.list_memory("gdpr-bank", "default", now=now) == []
        assert await e.store.search_memory("gdpr-bank", "default", terms, now=now) == []
        await e.memory.put("us-bank", "direct", 2)
        assert await eu_store.list_memory("us-bank", "default", now=now) == []


async def test_deleting_a_tenant_deletes_its_memory(engine: tf.Engine) -> None:
    await engine.memory.put("bank-a", "k", 1)
    await engine.memory.put("bank-a", "k", 1, namespace="session:s1")
    await engine.memory.add_document("bank-a", "some words")
    await engine.memory.put("bank-b", "k", 2)
    proof = await engine.tenants.delete("bank-a")
    assert proof["deleted"]["memory_entries"] == 2
    assert proof["deleted"]["memory_documents"] == 1
    assert proof["deleted"]["memory_terms"] == 2
    assert proof["left"]["memory_entries"] == proof["left"]["memory_terms"] == 0
    await engine.tenants.create("bank-a", tier="standard")  # the same id, a new tenant
    assert await engine.memory.list("bank-a") == []
    assert await engine.memory.list("bank-a", namespace="session:s1") == []
    assert await engine.memory.search("bank-a", "words") == []
    assert (await engine.memory.get("bank-b", "k")).value == 2


async def test_memory_is_written_without_executing_next_to_a_running_engine(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    async with tf.Engine.open(url) as running:
        await running.tenants.create("bank-a", tier="standard")
        async with tf.Engine(
            SqliteStore(tmp_path / "m.db"), tf.EngineConfig(execute=False)
        ) as side:
            entry = await side.memory.put("bank-a", "from-the-side", [1, 2])
            await side.memory.add_document("bank-a", "written beside a server")
        assert entry.version == 1
        assert (await running.memory.get("bank-a", "from-the-side")).value == [1, 2]
        assert len(await running.memory.search("bank-a", "server")) == 1


async def test_memory_needs_a_started_engine() -> None:
    engine = tf.Engine(MemoryStore())
    with pytest.raises(tf.ConfigurationError, match="not started"):
        await engine.memory.get("bank-a", "k")


@pytest.mark.postgres
async def test_steps_and_the_library_on_postgresql(postgres_url: str) -> None:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    async with tf.Engine.open(postgres_url, lease=timedelta(seconds=2)) as engine:
        await engine.tenants.create("bank-a", tier="standard", memory_retention="7d")
        await engine.tenants.create("bank-b", tier="standard")
        seen: dict[str, Any] = {}
        engine.register(memory_workflow(seen))
        await engine.memory.add_document("bank-b", f"{CANARY} loan secrets")
        for tenant, word in (("bank-a", "loan"), ("bank-b", "lease")):
            await (await engine.submit("remember", tenant=tenant, input={"word": word})).result()
        assert seen["bank-a"]["hits"] == [[seen["bank-a"]["document"], "note about loan"]]
        assert seen["bank-a"]["value"] == {"word": "loan"}
        assert seen["bank-b"]["value"] == {"word": "lease"}
        entry = await engine.memory.get("bank-a", "last-input")
        assert entry.expires_at is not None and entry.expires_at > engine.clock.now()
        assert (await engine.memory.get("bank-b", "last-input")).expires_at is None
        store: Any = engine.store  # PostgresStore: raw SQL as the application role
        rows = await store.execute_sql(
            "SELECT DISTINCT tenant_id FROM memory_terms", tenant="bank-a"
        )
        assert rows == [("bank-a",)]
        proof = await engine.tenants.delete("bank-b")
        assert proof["deleted"]["memory_documents"] == 2 and proof["left"]["memory_terms"] == 0
        assert await engine.memory.search("bank-a", CANARY) == []


async def test_a_step_without_a_policy_snapshot_reads_the_retention_from_the_store() -> None:
    from tenantflow.engine.memory import step_memory

    clock = FakeClock()
    async with tf.Engine(MemoryStore(), clock=clock) as engine:
        await engine.tenants.create("bank-a", tier="standard", memory_retention="2h")
        rt = engine.runtime
        view = step_memory(rt.store, rt.clock, rt.writer.write, "bank-a", None, "run_x:step")
        assert (await view.put("k", 1)).expires_at == clock.now() + 7200
        first = await view.add_document("same text")
        assert await view.add_document("same text") == first  # derived from the step's key
        other = step_memory(rt.store, rt.clock, rt.writer.write, "bank-a", None, "run_y:step")
        assert await other.add_document("same text") != first
