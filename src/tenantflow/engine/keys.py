"""API keys: per-tenant keys and admin keys, stored hashed, rotatable and revocable.

Every API request carries ``Authorization: Bearer <key>``; :meth:`ApiKeys.authenticate` turns
the key into a :class:`Principal` — a tenant, or the control plane (an admin key). A key string
is ``tfk_<key hex>_<secret>`` (see :mod:`tenantflow.domain.keys`): the secret is shown once, when
the key is created or rotated, and only its SHA-256 digest is stored.

Keys live in the engine's default store (the control plane), whatever store holds their
tenant's data. Creating, revoking and rotating a tenant key appends a row to the tenant's audit
log: in the same transaction as the change when the tenant's data lives in the default store;
when it lives in a region store, in a separate write to that store right after the change
commits. Should that write fail, the error is raised: the key changed without its audit row,
but a created or rotated key's secret was never returned, so no one can use it.

Deleting a tenant whose data lives in the default store deletes its keys in the same
transaction (:class:`~tenantflow.domain.tenancy.DeleteTenant` purges ``api_keys`` with the
tenant's other rows). A tenant key also authenticates only while this engine knows its tenant,
so a deleted tenant's keys stop working here at once in every case — including a tenant whose
data lived in a region store, whose key rows the deletion (applied to that store) leaves in the
control plane's table.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tenantflow.domain.ids import check_tenant
from tenantflow.domain.keys import (
    ApiKeyRecord,
    CreateApiKey,
    Revocation,
    RevokeApiKey,
    check_key_name,
    format_key,
    is_key_id,
    key_id_for,
    parse_key,
    secret_digest,
    shown_prefix,
)
from tenantflow.domain.records import Transition
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.engine.direct import apply_one
from tenantflow.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
)

if TYPE_CHECKING:
    from tenantflow.engine.regions import RegionRouter
    from tenantflow.ports import Clock

__all__ = ["ApiKeyInfo", "ApiKeys", "Principal"]

_INVALID = "invalid API key"  # unknown, revoked, wrong secret, tenant gone: never said which

_AuditRows = list[AuditEntry]  # named here: inside ApiKeys, ``list`` is the method


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """A key as shown to its owner: never its secret or the secret's digest."""

    id: str  # public, random, opaque: "key_" + 24 hex characters
    tenant_id: str | None  # None for an admin (control-plane) key
    name: str  # a label given at creation ("default", "ci", …)
    prefix: str  # the first characters of the key string, safe to show in lists
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        """True until the key is revoked."""
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (times as seconds since the epoch)."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "admin": self.tenant_id is None,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an authenticated request acts as: a tenant, or the control plane (admin key)."""

    key_id: str
    tenant_id: str | None  # None: an admin key

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None


@dataclass(frozen=True, slots=True)
class _Verified:
    """What the cache remembers of a stored key (the digest, never the secret)."""

    digest: str
    principal: Principal
    revoked: bool
    expires_at: float


def _info(record: ApiKeyRecord) -> ApiKeyInfo:
    return ApiKeyInfo(
        record.id,
        record.tenant_id,
        record.name,
        record.prefix,
        record.created_at,
        record.revoked_at,
    )


@dataclass(frozen=True, slots=True)
class _Owner:
    """A key's tenant, and the key of the store holding its audit log."""

    id: str
    store: str


class ApiKeys:
    """Create, list, revoke, rotate and check API keys (``engine.keys``).

    ``tenant`` is a tenant id throughout, or None for admin keys. Writes go straight to the
    default store (not through the executing engine's writer), so they work in an engine opened
    with ``execute=False`` too — e.g. from the command line while a server runs on the same
    database.

    :meth:`authenticate` runs on every API request, so keys it has verified are cached in memory
    for ``cache_ttl``. A revocation or rotation made through this object takes effect at once;
    one made in another process is seen here within ``cache_ttl``. Revoked keys are cached like
    live ones (they are bounded by the keys that exist); ids that match no key are not cached, so
    a flood of made-up keys cannot fill the cache — each costs one primary-key lookup, and
    limiting such floods belongs in front of the API.

    Args:
        router: the stores: the default one holds the keys, and it knows the tenants (and
            which store holds each one's audit log).
        clock: the engine's clock.
        cache_ttl: how long a verified key is trusted without reading the store again; zero
            turns the cache off.
        cache_size: the most keys cached at once (the oldest entries go first).
    """

    def __init__(
        self,
        router: RegionRouter,
        clock: Clock,
        *,
        cache_ttl: timedelta = timedelta(seconds=5),
        cache_size: int = 100_000,
    ) -> None:
        if cache_ttl < timedelta(0):
            raise ConfigurationError(
                "cache_ttl must not be negative", field="cache_ttl", value=str(cache_ttl)
            )
        if cache_size < 1:
            raise ConfigurationError(
                "cache_size must be at least 1", field="cache_size", value=cache_size
            )
        self._router = router
        self._clock = clock
        self._ttl_s = cache_ttl.total_seconds()
        self._cache_size = cache_size
        self._cache: dict[str, _Verified] = {}
        # Bumped by every revocation here: a lookup that was already in flight then does not
        # cache what it read, which may predate the revocation.
        self._epoch = 0

    # -- management -------------------------------------------------------------------------

    async def create(
        self, tenant: str | None, *, name: str = "default", actor: str = "library"
    ) -> tuple[ApiKeyInfo, str]:
        """A new key for ``tenant`` (None: an admin key); returns its info and the key string,
        which is shown this once and never stored.

        Raises:
            NotFoundError: the tenant does not exist.
            ConfigurationError: an invalid tenant id or key name.
        """
        owner = self._tenant(tenant)
        check_key_name(name)
        now = self._clock.now()
        record, secret = self._new_key(tenant, name, actor, now)
        entry = AuditEntry(
            actor,
            "api_key.created",
            f"api_key:{record.id}",
            {"name": name, "prefix": record.prefix},
        )
        here, elsewhere = self._audit_split(owner, entry)
        await apply_one(self._router.store, CreateApiKey(record, here))
        await self._audit_elsewhere(owner, elsewhere, now)
        return _info(record), secret

    async def list(self, tenant: str | None) -> list[ApiKeyInfo]:
        """The tenant's keys (None: the admin keys), revoked ones included, oldest first.

        Raises:
            NotFoundError: the tenant does not exist.
        """
        self._tenant(tenant)
        return [_info(r) for r in await self._router.store.list_api_keys(tenant)]

    async def get(self, tenant: str | None, key_id: str) -> ApiKeyInfo:
        """The key ``key_id`` of ``tenant`` (None: an admin key).

        Raises:
            NotFoundError: the tenant does not exist, or the key is not this tenant's (another
                tenant's key, or an admin key, is "not found" exactly like a missing one).
        """
        self._tenant(tenant)
        return _info(await self._own(tenant, key_id))

    async def revoke(
        self, tenant: str | None, key_id: str, *, actor: str = "library"
    ) -> ApiKeyInfo:
        """Revoke the key: it never authenticates again (in another process, after at most that
        process's cache TTL). Revoking a revoked key changes nothing and returns it.

        Raises:
            NotFoundError: the tenant does not exist, or the key is not this tenant's.
        """
        owner = self._tenant(tenant)
        if not is_key_id(key_id):
            raise NotFoundError(f"API key {key_id!r} not found", kind="api_key", id=key_id)
        now = self._clock.now()
        entry = AuditEntry(actor, "api_key.revoked", f"api_key:{key_id}", {})
        here, elsewhere = self._audit_split(owner, entry)
        done: Revocation = await apply_one(
            self._router.store, RevokeApiKey(tenant, key_id, now, actor, audit=here)
        )
        self._forget(key_id)
        if done.changed:
            await self._audit_elsewhere(owner, elsewhere, now)
        return _info(done.key)

    async def revoke_all(self, tenant: str, actor: str) -> None:
        """Revoke every live key of ``tenant`` (before it is deleted, so that a tenant
        re-created with this id never inherits them)."""
        for key in await self.list(tenant):
            if key.revoked_at is None:
                await self.revoke(tenant, key.id, actor=actor)

    async def rotate(
        self, tenant: str | None, key_id: str, *, actor: str = "library"
    ) -> tuple[ApiKeyInfo, str]:
        """Revoke ``key_id`` and create its replacement (same name) in one transaction; returns
        the replacement's info and key string (shown this once).

        Raises:
            NotFoundError: the tenant does not exist, or the key is not this tenant's.
            ConflictError: the key is already revoked (of two concurrent rotations of one key,
                exactly one succeeds).
        """
        owner = self._tenant(tenant)
        old = await self._own(tenant, key_id)
        now = self._clock.now()
        record, secret = self._new_key(tenant, old.name, actor, now)
        entry = AuditEntry(
            actor,
            "api_key.rotated",
            f"api_key:{key_id}",
            {"name": old.name, "replacement": record.id, "prefix": record.prefix},
        )
        here, elsewhere = self._audit_split(owner, entry)
        op = RevokeApiKey(tenant, key_id, now, actor, replacement=record, audit=here)
        try:
            await apply_one(self._router.store, op)
        finally:
            self._forget(key_id)
        await self._audit_elsewhere(owner, elsewhere, now)
        return _info(record), secret

    # -- authentication ---------------------------------------------------------------------

    async def authenticate(self, secret: str) -> Principal:
        """The principal a key string authenticates.

        Raises:
            AuthenticationError: the key is missing or malformed (the message says so), or it
                is unknown, revoked, or its tenant is gone (the message does not say which).
        """
        if not secret:
            raise AuthenticationError("missing API key")
        key_id = parse_key(secret) if isinstance(secret, str) else None
        if key_id is None:
            raise AuthenticationError("malformed API key: expected tfk_<key id>_<secret>")
        now = self._clock.now()
        verified = self._cache.get(key_id)
        if verified is None or verified.expires_at <= now:
            verified = await self._lookup(key_id, now)
        digest = secret_digest(secret)
        if (
            verified is None
            or not hmac.compare_digest(verified.digest, digest)
            or verified.revoked
            or not self._tenant_known(verified.principal.tenant_id)
        ):
            raise AuthenticationError(_INVALID)
        return verified.principal

    async def _lookup(self, key_id: str, now: float) -> _Verified | None:
        epoch = self._epoch
        try:
            record = await self._router.store.get_api_key(key_id)
        except NotFoundError:
            return None
        verified = _Verified(
            record.secret_sha256,
            Principal(record.id, record.tenant_id),
            record.revoked_at is not None,
            now + self._ttl_s,
        )
        if self._ttl_s > 0 and epoch == self._epoch:
            self._cache.pop(key_id, None)  # re-inserted last: the dict stays in expiry order
            self._cache[key_id] = verified
            while len(self._cache) > self._cache_size:
                del self._cache[next(iter(self._cache))]
        return verified

    def _forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)
        self._epoch += 1

    # -- helpers ----------------------------------------------------------------------------

    def _tenant_known(self, tenant: str | None) -> bool:
        return tenant is None or self._router.home_of(tenant) is not None

    def _tenant(self, tenant: str | None) -> _Owner | None:
        """The tenant and the key of its store (None for admin keys); NotFoundError if the
        engine has no such tenant."""
        if tenant is None:
            return None
        home = self._router.home_of(check_tenant(tenant))
        if home is None:
            raise NotFoundError(f"tenant {tenant!r} not found", kind="tenant", id=tenant)
        return _Owner(tenant, home)

    async def _own(self, tenant: str | None, key_id: str) -> ApiKeyRecord:
        """The stored key if it is ``tenant``'s (an admin key for None), else NotFoundError."""
        if is_key_id(key_id):
            try:
                record = await self._router.store.get_api_key(key_id)
            except NotFoundError:
                pass
            else:
                if record.tenant_id == tenant:
                    return record
        raise NotFoundError(f"API key {key_id!r} not found", kind="api_key", id=key_id)

    def _new_key(
        self, tenant: str | None, name: str, actor: str, now: float
    ) -> tuple[ApiKeyRecord, str]:
        key_id = key_id_for(secrets.token_hex(12))
        secret = format_key(key_id, secrets.token_urlsafe(32))
        record = ApiKeyRecord(
            id=key_id,
            tenant_id=tenant,
            name=name,
            prefix=shown_prefix(secret),
            secret_sha256=secret_digest(secret),
            created_at=now,
            created_by=actor,
        )
        return record, secret

    def _audit_split(
        self, owner: _Owner | None, entry: AuditEntry
    ) -> tuple[_AuditRows, _AuditRows]:
        """(rows for the key op's own transaction, rows for a separate write to the tenant's
        region store). Admin keys have no tenant and no audit row."""
        if owner is None:
            return [], []
        if self._router.stores[owner.store] is self._router.store:
            return [entry], []
        return [], [entry]

    async def _audit_elsewhere(self, owner: _Owner | None, entries: _AuditRows, now: float) -> None:
        if owner is None or not entries:
            return
        write = Transition(owner.id, "", now, audit=entries)
        await apply_one(self._router.stores[owner.store], write)
