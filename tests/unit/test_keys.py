"""API keys (``engine.keys``) on the in-memory store with a fake clock: format, hashing,
authentication, rotation, revocation, the verified-key cache, audit rows and tenant deletion."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.domain.keys import ApiKeyRecord
from tenantflow.engine.keys import ApiKeyInfo, ApiKeys, Principal
from tenantflow.testing import FakeClock, MemoryStore

_KEY = re.compile(r"^tfk_([0-9a-f]{24})_([A-Za-z0-9_-]{43})$")


class CountingStore(MemoryStore):
    """The in-memory store, counting the key lookups authentication makes."""

    def __init__(self) -> None:
        super().__init__()
        self.key_reads = 0

    async def get_api_key(self, key_id: str) -> ApiKeyRecord:
        self.key_reads += 1
        return await super().get_api_key(key_id)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def engine(clock: FakeClock) -> AsyncIterator[tf.Engine]:
    async with tf.Engine(CountingStore(), clock=clock) as eng:
        await eng.tenants.create("acme", tier="standard")
        await eng.tenants.create("globex", tier="free")
        yield eng


def reads(engine: tf.Engine) -> int:
    assert isinstance(engine.store, CountingStore)
    return engine.store.key_reads


async def refused(engine: tf.Engine, secret: str) -> str:
    with pytest.raises(tf.AuthenticationError) as err:
        await engine.keys.authenticate(secret)
    return err.value.message


# -- format and storage -------------------------------------------------------------------------


async def test_a_key_names_its_id_and_only_its_digest_is_stored(engine: tf.Engine) -> None:
    info, secret = await engine.keys.create("acme", name="ci")
    match = _KEY.match(secret)
    assert match is not None, secret
    assert info.id == f"key_{match.group(1)}"
    assert (info.tenant_id, info.name, info.revoked_at) == ("acme", "ci", None)
    assert info.prefix == secret[:12] and info.prefix.startswith("tfk_")
    assert info.created_at == engine.clock.now()
    assert isinstance(engine.store, MemoryStore)
    [row] = await engine.store.execute_sql("SELECT * FROM api_keys")
    assert hashlib.sha256(secret.encode()).hexdigest() in row
    for column in row:  # neither the key string nor its random part is kept anywhere
        assert secret not in str(column) and match.group(2) not in str(column)
    other, other_secret = await engine.keys.create("acme", name="ci")
    assert other.id != info.id and other_secret != secret


async def test_a_keys_info_never_carries_its_secret(engine: tf.Engine) -> None:
    info, secret = await engine.keys.create("acme")
    shown = info.to_dict()
    assert set(shown) == {
        "id",
        "tenant_id",
        "admin",
        "name",
        "prefix",
        "created_at",
        "revoked_at",
        "active",
    }
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(shown) and digest not in repr(shown)
    assert secret not in repr(info) and digest not in repr(info)
    assert shown["active"] is True and shown["admin"] is False


# -- authentication -----------------------------------------------------------------------------


async def test_tenant_and_admin_keys_authenticate_as_their_principal(engine: tf.Engine) -> None:
    tenant_key, tenant_secret = await engine.keys.create("acme")
    admin_key, admin_secret = await engine.keys.create(None, name="ops")
    tenant = await engine.keys.authenticate(tenant_secret)
    assert tenant == Principal(tenant_key.id, "acme") and not tenant.is_admin
    admin = await engine.keys.authenticate(admin_secret)
    assert admin == Principal(admin_key.id, None) and admin.is_admin
    assert admin_key.to_dict()["admin"] is True


@pytest.mark.parametrize(
    "text",
    [
        "Bearer tfk_0123456789abcdef01234567_" + "a" * 43,
        "tfk_0123456789ABCDEF01234567_" + "a" * 43,  # the id is lowercase hex
        "tfk_0123456789abcdef0123456_" + "a" * 43,  # an id one character short
        "tfk_0123456789abcdef01234567_short",
        "tfk_0123456789abcdef01234567_" + "a" * 42 + "!",
        "key_0123456789abcdef01234567",  # a key id is not a key
        "sk-0123456789",
    ],
)
async def test_a_malformed_key_is_refused_as_malformed(engine: tf.Engine, text: str) -> None:
    before = reads(engine)
    assert (await refused(engine, text)).startswith("malformed API key")
    assert reads(engine) == before  # refused without touching the store


async def test_a_missing_key_is_refused(engine: tf.Engine) -> None:
    assert await refused(engine, "") == "missing API key"


async def test_unknown_wrong_and_revoked_keys_are_refused_alike(engine: tf.Engine) -> None:
    info, secret = await engine.keys.create("acme")
    unknown = "tfk_" + "0" * 24 + "_" + "a" * 43
    forged = secret[: -len("x")] + ("x" if not secret.endswith("x") else "y")
    await engine.keys.revoke("acme", info.id)
    messages = {await refused(engine, s) for s in (unknown, forged, secret)}
    assert messages == {"invalid API key"}  # never says which of them it was


async def test_rotation_revokes_the_old_key_and_the_new_one_works(
    engine: tf.Engine, clock: FakeClock
) -> None:
    old, old_secret = await engine.keys.create("acme", name="ci")
    await engine.keys.authenticate(old_secret)
    clock.advance(10)
    new, new_secret = await engine.keys.rotate("acme", old.id)
    assert (new.name, new.tenant_id, new.revoked_at) == ("ci", "acme", None)
    assert new.id != old.id and new_secret != old_secret
    assert await refused(engine, old_secret) == "invalid API key"
    assert await engine.keys.authenticate(new_secret) == Principal(new.id, "acme")
    listed = {k.id: k for k in await engine.keys.list("acme")}
    assert listed[old.id].revoked_at == engine.clock.now() and listed[new.id].active
    with pytest.raises(tf.ConflictError, match="revoked"):
        await engine.keys.rotate("acme", old.id)  # a revoked key is not rotated again
    assert len(await engine.keys.list("acme")) == 2


async def test_an_admin_key_is_rotated_and_revoked_like_a_tenants(engine: tf.Engine) -> None:
    old, old_secret = await engine.keys.create(None)
    new, new_secret = await engine.keys.rotate(None, old.id)
    assert await refused(engine, old_secret) == "invalid API key"
    assert (await engine.keys.authenticate(new_secret)).is_admin
    revoked = await engine.keys.revoke(None, new.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert await refused(engine, new_secret) == "invalid API key"
    assert [k.active for k in await engine.keys.list(None)] == [False, False]


async def test_revoking_twice_changes_nothing_the_second_time(
    engine: tf.Engine, clock: FakeClock
) -> None:
    info, _ = await engine.keys.create("acme")
    first = await engine.keys.revoke("acme", info.id, actor="alice")
    clock.advance(60)
    again = await engine.keys.revoke("acme", info.id, actor="bob")
    assert again == first
    actions = [r.action for r in await engine.audit_log("acme")]
    assert actions.count("api_key.revoked") == 1


# -- the cache -----------------------------------------------------------------------------------


async def test_verified_keys_are_cached_for_the_ttl(engine: tf.Engine, clock: FakeClock) -> None:
    _, secret = await engine.keys.create("acme")
    before = reads(engine)
    for _ in range(100):
        await engine.keys.authenticate(secret)
    assert reads(engine) == before + 1
    clock.advance(4.9)
    await engine.keys.authenticate(secret)
    assert reads(engine) == before + 1
    clock.advance(0.2)
    await engine.keys.authenticate(secret)
    assert reads(engine) == before + 2  # past the TTL the store is asked again
    # A wrong secret for a cached id is refused from the cache.
    assert await refused(engine, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert reads(engine) == before + 2


async def test_a_revocation_here_takes_effect_at_once(engine: tf.Engine) -> None:
    info, secret = await engine.keys.create("acme")
    rotated, rotated_secret = await engine.keys.create("acme")
    await engine.keys.authenticate(secret)
    await engine.keys.authenticate(rotated_secret)
    await engine.keys.revoke("acme", info.id)
    assert await refused(engine, secret) == "invalid API key"
    await engine.keys.rotate("acme", rotated.id)
    assert await refused(engine, rotated_secret) == "invalid API key"


async def test_unknown_ids_are_not_cached(engine: tf.Engine) -> None:
    unknown = "tfk_" + "1" * 24 + "_" + "b" * 43
    before = reads(engine)
    for _ in range(3):
        await refused(engine, unknown)
    assert reads(engine) == before + 3


async def test_the_cache_is_bounded_and_can_be_turned_off(engine: tf.Engine) -> None:
    secrets = [(await engine.keys.create("acme"))[1] for _ in range(3)]
    small = ApiKeys(engine.router, engine.clock, cache_size=2)
    for secret in secrets:
        await small.authenticate(secret)
    before = reads(engine)
    await small.authenticate(secrets[2])
    assert reads(engine) == before
    await small.authenticate(secrets[0])  # the oldest entry went first
    assert reads(engine) == before + 1
    uncached = ApiKeys(engine.router, engine.clock, cache_ttl=timedelta(0))
    await uncached.authenticate(secrets[0])
    await uncached.authenticate(secrets[0])
    assert reads(engine) == before + 3
    with pytest.raises(tf.ConfigurationError, match="cache_ttl"):
        ApiKeys(engine.router, engine.clock, cache_ttl=timedelta(seconds=-1))
    with pytest.raises(tf.ConfigurationError, match="cache_size"):
        ApiKeys(engine.router, engine.clock, cache_size=0)


async def test_another_process_sees_a_revocation_within_the_ttl(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    async with tf.Engine.open(url, clock=clock) as writer:
        await writer.tenants.create("acme")
        async with tf.Engine.open(url, clock=clock, execute=False) as server:
            info, secret = await writer.keys.create("acme")
            assert await server.keys.authenticate(secret) == Principal(info.id, "acme")
            await writer.keys.revoke("acme", info.id)
            assert await refused(writer, secret) == "invalid API key"
            # The other engine trusts its cached verification until the TTL has passed.
            assert await server.keys.authenticate(secret) == Principal(info.id, "acme")
            clock.advance(5.0)
            assert await refused(server, secret) == "invalid API key"


# -- scoping -------------------------------------------------------------------------------------


async def test_a_tenant_reaches_only_its_own_keys(engine: tf.Engine) -> None:
    mine, _ = await engine.keys.create("acme")
    theirs, theirs_secret = await engine.keys.create("globex")
    admin, _ = await engine.keys.create(None)
    assert [k.id for k in await engine.keys.list("acme")] == [mine.id]
    assert [k.id for k in await engine.keys.list("globex")] == [theirs.id]
    assert [k.id for k in await engine.keys.list(None)] == [admin.id]
    assert await engine.keys.get("acme", mine.id) == mine
    for tenant, key_id in (
        ("acme", theirs.id),
        ("acme", admin.id),
        (None, mine.id),
        ("acme", "key_" + "f" * 24),
        ("acme", "not-a-key-id"),
    ):
        with pytest.raises(tf.NotFoundError, match="API key"):
            await engine.keys.get(tenant, key_id)
        with pytest.raises(tf.NotFoundError, match="API key"):
            await engine.keys.revoke(tenant, key_id)
        with pytest.raises(tf.NotFoundError, match="API key"):
            await engine.keys.rotate(tenant, key_id)
    assert await engine.keys.authenticate(theirs_secret) == Principal(theirs.id, "globex")


async def test_unknown_tenants_and_bad_names_are_refused(engine: tf.Engine) -> None:
    with pytest.raises(tf.NotFoundError, match="tenant 'nope'"):
        await engine.keys.create("nope")
    with pytest.raises(tf.NotFoundError, match="tenant 'nope'"):
        await engine.keys.list("nope")
    with pytest.raises(tf.ConfigurationError, match="tenant id"):
        await engine.keys.create("bad tenant!")
    for name in ("", " leading", "x" * 65, "semi;colon"):
        with pytest.raises(tf.ConfigurationError, match="key name"):
            await engine.keys.create("acme", name=name)
    assert await engine.keys.list("acme") == []


# -- audit ---------------------------------------------------------------------------------------


async def test_key_changes_are_in_the_tenants_audit_chain(engine: tf.Engine) -> None:
    info, _ = await engine.keys.create("acme", name="ci", actor="alice")
    new, _ = await engine.keys.rotate("acme", info.id, actor="bob")
    await engine.keys.revoke("acme", new.id, actor="carol")
    admin, _ = await engine.keys.create(None, actor="root")
    await engine.keys.revoke(None, admin.id, actor="root")
    log = await engine.audit_log("acme")
    assert [(r.actor, r.action, r.subject) for r in log[1:]] == [
        ("alice", "api_key.created", f"api_key:{info.id}"),
        ("bob", "api_key.rotated", f"api_key:{info.id}"),
        ("carol", "api_key.revoked", f"api_key:{new.id}"),
    ]
    assert log[1].detail == {"name": "ci", "prefix": info.prefix}
    assert log[2].detail == {"name": "ci", "replacement": new.id, "prefix": new.prefix}
    assert (await engine.audit_verify("acme")).ok
    # Admin keys belong to no tenant: no tenant's chain records them.
    assert [r.action for r in await engine.audit_log("globex")] == ["tenant.created"]


async def test_a_region_tenants_keys_live_in_the_control_plane(clock: FakeClock) -> None:
    eu = MemoryStore()
    async with tf.Engine(
        MemoryStore(), tf.EngineConfig(region="us-east-1"), clock=clock, regions={"eu-west-1": eu}
    ) as engine:
        await engine.tenants.create("gdpr-bank", region="eu-west-1")
        info, secret = await engine.keys.create("gdpr-bank")
        assert await engine.keys.authenticate(secret) == Principal(info.id, "gdpr-bank")
        assert [k.id for k in await engine.store.list_api_keys("gdpr-bank")] == [info.id]
        assert await eu.list_api_keys("gdpr-bank") == []
        await engine.keys.revoke("gdpr-bank", info.id)
        await engine.keys.revoke("gdpr-bank", info.id)
        # The audit rows went to the tenant's own (EU) store, in a write of their own.
        actions = [r.action for r in await eu.audit_log("gdpr-bank")]
        assert actions == ["tenant.created", "api_key.created", "api_key.revoked"]
        assert await engine.store.audit_log("gdpr-bank") == []
        assert (await engine.audit_verify("gdpr-bank")).ok


# -- tenant deletion -----------------------------------------------------------------------------


async def test_deleting_a_tenant_deletes_its_keys(engine: tf.Engine) -> None:
    gone = [await engine.keys.create("acme", name=f"k{i}") for i in range(2)]
    kept, kept_secret = await engine.keys.create("globex")
    admin, admin_secret = await engine.keys.create(None)
    for _, secret in gone:
        await engine.keys.authenticate(secret)  # cached as valid
    proof = await engine.tenants.delete("acme")
    assert proof["deleted"]["api_keys"] == 2 and proof["left"]["api_keys"] == 0
    for _, secret in gone:
        assert await refused(engine, secret) == "invalid API key"
    assert await engine.store.list_api_keys("acme") == []
    assert await engine.keys.authenticate(kept_secret) == Principal(kept.id, "globex")
    assert await engine.keys.authenticate(admin_secret) == Principal(admin.id, None)
    deleted = [r for r in await engine.audit_log("acme") if r.action == "tenant.deleted"]
    assert deleted[0].detail["deleted"]["api_keys"] == 2


async def test_deleting_a_region_tenant_revokes_its_control_plane_keys(clock: FakeClock) -> None:
    async with tf.Engine(
        MemoryStore(),
        tf.EngineConfig(region="us-east-1"),
        clock=clock,
        regions={"eu-west-1": MemoryStore()},
    ) as engine:
        await engine.tenants.create("gdpr-bank", region="eu-west-1")
        info, secret = await engine.keys.create("gdpr-bank")
        await engine.tenants.delete("gdpr-bank")
        [row] = await engine.store.list_api_keys("gdpr-bank")
        assert row.id == info.id and row.revoked_at is not None
        # A tenant re-created with the same id does not inherit the old key.
        await engine.tenants.create("gdpr-bank", region="eu-west-1")
        assert await refused(engine, secret) == "invalid API key"


# -- an engine that does not execute -------------------------------------------------------------


async def test_an_engine_that_does_not_execute_writes_keys(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "k.db")
    async with tf.Engine(store) as engine:
        await engine.tenants.create("acme")
    async with tf.Engine(SqliteStore(tmp_path / "k.db"), tf.EngineConfig(execute=False)) as reader:
        info, secret = await reader.keys.create("acme")
        rotated, rotated_secret = await reader.keys.rotate("acme", info.id)
        assert await reader.keys.authenticate(rotated_secret) == Principal(rotated.id, "acme")
        admin, _ = await reader.keys.create(None)
    async with tf.Engine(SqliteStore(tmp_path / "k.db"), tf.EngineConfig(execute=False)) as later:
        listed = await later.keys.list("acme")
        assert {(k.id, k.active) for k in listed} == {(info.id, False), (rotated.id, True)}
        assert await later.keys.list(None) == [
            ApiKeyInfo(admin.id, None, "default", admin.prefix, admin.created_at, None)
        ]
        assert await refused(later, secret) == "invalid API key"
        assert [r.action for r in await later.audit_log("acme")][1:] == [
            "api_key.created",
            "api_key.rotated",
        ]
