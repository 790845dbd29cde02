"""Dashboard sessions: an API key is exchanged once for an opaque, server-side session.

The browser holds only a random session token, in an ``HttpOnly; SameSite=Strict`` cookie; the
API key itself never reaches the page, JavaScript or browser storage. The server keeps, per
session, the key's id, name and tenant (never the key) and an expiry; the session's CSRF token
is derived from its token (a keyed digest), so it is stored nowhere. Every request re-checks
that the key is still active (:meth:`ApiKeys.get`), so revoking the key, or deleting its
tenant, ends its sessions at once.

Sessions are kept by the SHA-256 digest of their token (nothing stored is something a browser
could present) in :class:`~tenantflow.dashboard.records.DashboardRecords`: by default the
database the API uses, so that every ``tenantflow serve`` process on it shares them — sign in
through one, go on through another, sign out anywhere — with no sticky sessions needed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from tenantflow.dashboard.records import DashboardRecords, ProcessRecords
from tenantflow.engine.keys import Principal
from tenantflow.errors import ConfigurationError

__all__ = ["COOKIE", "DEFAULT_TTL", "Session", "SessionStore"]

COOKIE = "tf_session"
"""The session cookie's name."""

DEFAULT_TTL = timedelta(minutes=30)
"""How long a session lasts after sign-in (not extended by use: a stolen cookie ages out)."""


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser."""

    principal: Principal
    key_name: str
    csrf: str  # sent back in every form; compared in constant time
    created_at: float
    expires_at: float

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    def csrf_ok(self, presented: str | None) -> bool:
        """True if ``presented`` is this session's CSRF token."""
        return presented is not None and hmac.compare_digest(presented, self.csrf)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _csrf(token: str) -> str:
    return hmac.new(token.encode(), b"tenantflow-dashboard-csrf", hashlib.sha256).hexdigest()


_NAMESPACE = "sessions"


class SessionStore:
    """Sessions by token digest, each with a fixed lifetime.

    Args:
        records: where sessions are kept (default: this process's memory).
        ttl: a session's lifetime from sign-in.
        now: the clock (seconds since the epoch); tests pass one they move.
    """

    def __init__(
        self,
        records: DashboardRecords | None = None,
        *,
        ttl: timedelta = DEFAULT_TTL,
        now: Callable[[], float],
    ) -> None:
        if ttl <= timedelta(0):
            raise ConfigurationError("the session TTL must be positive", field="ttl")
        self.records: DashboardRecords = records if records is not None else ProcessRecords()
        self.ttl_s = ttl.total_seconds()
        self.now = now

    async def open(self, principal: Principal, key_name: str) -> tuple[str, Session]:
        """A new session for ``principal``; returns the token for the cookie and the session."""
        token = secrets.token_urlsafe(32)
        now = self.now()
        session = Session(principal, key_name, _csrf(token), now, now + self.ttl_s)
        row = {
            "key_id": principal.key_id,
            "tenant": principal.tenant_id,
            "key_name": key_name,
            "created_at": now,
            "expires_at": session.expires_at,
        }
        await self.records.put(
            _NAMESPACE, _digest(token), row, now=now, expires_at=session.expires_at
        )
        return token, session

    async def get(self, token: str | None) -> Session | None:
        """The live session of ``token``, or None (unknown, signed out or expired)."""
        if not token or len(token) > 256:
            return None
        now = self.now()
        row = await self.records.get(_NAMESPACE, _digest(token), now=now)
        if row is None:
            return None
        try:
            expires_at = float(row["expires_at"])
            tenant = row["tenant"]
            principal = Principal(str(row["key_id"]), None if tenant is None else str(tenant))
            session = Session(
                principal, str(row["key_name"]), _csrf(token), float(row["created_at"]), expires_at
            )
        except (KeyError, TypeError, ValueError):
            return None
        if expires_at <= now:
            return None
        return session

    async def close(self, token: str | None) -> None:
        """End the session of ``token`` (signing out), in every process; unknown tokens are
        ignored."""
        if token and len(token) <= 256:
            await self.records.delete(_NAMESPACE, _digest(token), now=self.now())

    def now_s(self) -> float:
        """The sessions' clock now (``now`` may be replaced, e.g. by a test moving time)."""
        return self.now()
