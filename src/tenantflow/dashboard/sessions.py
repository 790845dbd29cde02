"""Dashboard sessions: an API key is exchanged once for an opaque, server-side session.

The browser holds only a random session token, in an ``HttpOnly; SameSite=Strict`` cookie; the
API key itself never reaches the page, JavaScript or browser storage. The server keeps, per
session, the key's id and tenant (never the key), a CSRF token and an expiry. Every request
re-checks that the key is still active (:meth:`ApiKeys.get`), so revoking the key, or deleting
its tenant, ends its sessions at once. Sessions live in this process's memory: a restart signs
everyone out, which is the safe direction.

Tokens are stored by their SHA-256 digest, so the table itself holds nothing a browser could
present.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

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


class SessionStore:
    """Sessions by token digest, each with a fixed lifetime.

    Args:
        ttl: a session's lifetime from sign-in.
        now: the clock (seconds since the epoch); tests pass one they move.
        max_sessions: the most sessions kept; past it the oldest are dropped.
    """

    def __init__(
        self,
        *,
        ttl: timedelta = DEFAULT_TTL,
        now: Callable[[], float],
        max_sessions: int = 10_000,
    ) -> None:
        if ttl <= timedelta(0):
            raise ConfigurationError("the session TTL must be positive", field="ttl")
        self.ttl_s = ttl.total_seconds()
        self.now = now
        self._max = max_sessions
        self._sessions: dict[str, Session] = {}

    def open(self, principal: Principal, key_name: str) -> tuple[str, Session]:
        """A new session for ``principal``; returns the token for the cookie and the session."""
        self._expire()
        token = secrets.token_urlsafe(32)
        now = self.now()
        session = Session(principal, key_name, secrets.token_urlsafe(32), now, now + self.ttl_s)
        self._sessions[_digest(token)] = session
        while len(self._sessions) > self._max:
            del self._sessions[next(iter(self._sessions))]
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token``, or None (unknown, or expired: then it is dropped)."""
        if not token:
            return None
        digest = _digest(token)
        session = self._sessions.get(digest)
        if session is None:
            return None
        if session.expires_at <= self.now():
            del self._sessions[digest]
            return None
        return session

    def close(self, token: str | None) -> None:
        """End the session of ``token`` (signing out); unknown tokens are ignored."""
        if token:
            self._sessions.pop(_digest(token), None)

    def now_s(self) -> float:
        """The sessions' clock now (``now`` may be replaced, e.g. by a test moving time)."""
        return self.now()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        now = self.now()
        for digest in [d for d, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[digest]
