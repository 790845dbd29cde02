"""API keys as stored, the ops that change them, and the pure rules of the key string.

A key string is ``tfk_<key hex>_<secret>``: ``key_<key hex>`` is the key's public id, so the
stored row is found by primary key, never by scanning, and ``<secret>`` is random (URL-safe
base64). The store keeps only the SHA-256 digest of the whole string, never the string itself.

SHA-256 rather than a slow password hash (bcrypt, scrypt, argon2) on purpose: a slow hash exists
to make guessing a *low-entropy* secret (a password) expensive. A key's secret is 256 random bits;
no amount of hashing speed makes searching that space feasible, and a fast digest keeps
authentication — done on every API request — at microseconds.

Like every op in :mod:`tenantflow.domain.tenancy`, the key ops are applied by a store inside one
transaction, with the tenant's audit rows (``audit``) riding along with the change they record.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import ConfigurationError

__all__ = [
    "KEY_ID_PREFIX",
    "KEY_SCHEME",
    "PREFIX_CHARS",
    "ApiKeyRecord",
    "CreateApiKey",
    "Revocation",
    "RevokeApiKey",
    "check_key_name",
    "format_key",
    "is_key_id",
    "key_id_for",
    "parse_key",
    "secret_digest",
    "shown_prefix",
]

KEY_SCHEME = "tfk"
"""What every key string starts with (``tfk_``): recognisable in logs and by secret scanners."""

KEY_ID_PREFIX = "key_"
"""What every key id starts with; 24 lowercase hex characters follow."""

PREFIX_CHARS = 12
"""How many leading characters of a key string lists show (the scheme and part of the id)."""

_HEX_CHARS = 24
_KEY = re.compile(rf"^{KEY_SCHEME}_([0-9a-f]{{{_HEX_CHARS}}})_([A-Za-z0-9_-]{{32,128}})$")
_KEY_ID = re.compile(rf"^{KEY_ID_PREFIX}[0-9a-f]{{{_HEX_CHARS}}}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:@/\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A key as stored: never the secret, only its SHA-256 digest.

    ``tenant_id`` is None for an admin (control-plane) key.
    """

    id: str
    tenant_id: str | None
    name: str
    prefix: str
    secret_sha256: str
    created_at: float
    created_by: str
    revoked_at: float | None = None
    revoked_by: str | None = None


@dataclass(slots=True)
class CreateApiKey:
    """Insert ``key`` and, for a tenant key, append ``audit`` to the tenant's chain in the same
    transaction. Result: True."""

    key: ApiKeyRecord
    audit: list[AuditEntry] = field(default_factory=list)

    @property
    def tenant_id(self) -> str | None:
        """The tenant the op acts for (None: an admin key, written in system scope)."""
        return self.key.tenant_id


@dataclass(slots=True)
class RevokeApiKey:
    """Revoke the key ``key_id`` of ``tenant_id`` (None: an admin key); with ``replacement``,
    insert it in the same transaction (a rotation). ``audit`` is appended only if the key is
    revoked by this op.

    Result (errors returned, not raised): a :class:`Revocation`; NotFoundError when the key is
    not this tenant's (or not an admin key, for None); ConflictError when rotating a key that is
    already revoked. Revoking a revoked key changes nothing (``Revocation.changed`` is False)."""

    tenant_id: str | None
    key_id: str
    now: float
    actor: str
    replacement: ApiKeyRecord | None = None
    audit: list[AuditEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Revocation:
    """What :class:`RevokeApiKey` did: the key afterwards, and whether this op revoked it."""

    key: ApiKeyRecord
    changed: bool


def key_id_for(key_hex: str) -> str:
    """The public key id for the hex part of a key string."""
    return f"{KEY_ID_PREFIX}{key_hex}"


def format_key(key_id: str, secret: str) -> str:
    """The key string for ``key_id`` (``key_<hex>``) and a random URL-safe ``secret``."""
    return f"{KEY_SCHEME}_{key_id.removeprefix(KEY_ID_PREFIX)}_{secret}"


def parse_key(text: str) -> str | None:
    """The key id a key string names, or None when the string is not a key at all."""
    match = _KEY.match(text)
    return None if match is None else key_id_for(match.group(1))


def is_key_id(text: str) -> bool:
    """Whether ``text`` has the shape of a key id (``key_`` and 24 hex characters)."""
    return _KEY_ID.match(text) is not None


def secret_digest(text: str) -> str:
    """The hex SHA-256 digest of a key string: what the store keeps (see the module docstring
    for why a fast hash is right here)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shown_prefix(text: str) -> str:
    """The leading characters of a key string that lists may show: the scheme and part of the
    public id, none of the secret."""
    return text[:PREFIX_CHARS]


def check_key_name(name: str) -> str:
    """``name`` if it is a valid key label (1-64 letters, digits, spaces or ``_.:@/-``).

    Raises:
        ConfigurationError: it is not.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"invalid key name {name!r}: 1-64 letters, digits, spaces or '_.:@/-',"
            " starting with a letter or digit",
            field="name",
            value=repr(name),
        )
    return name
