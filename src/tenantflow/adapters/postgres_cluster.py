"""Coordination of worker processes on one PostgreSQL database (:class:`PostgresCoordinator`).

The tables (created by the migrations like every other):

* ``workers`` — one row per live worker process, its heartbeat (``beat_at``). A worker whose beat
  is older than the liveness window is gone; it is deleted by the next worker that beats.
* ``tenant_owners`` — which worker drives which tenant, as a lease (``expires_at``). A worker
  renews its leases with each beat; a lease is taken only when it is free, expired or already
  the taker's, in one conditional upsert, so two workers never hold one tenant at once.
* ``commands`` — a durable inbox of run commands (cancel a run, decide a review) posted by a
  process that does not drive the run, for the worker that does. Each is taken with a lease
  (``taken_until``) and finished once with its result; a command whose taker died is taken again.

Wake-ups: every change another process must react to is also announced with ``pg_notify`` on the
channel :attr:`PostgresCoordinator.channel` (one per schema), as ``kind:tenant:target``. A
notification is a hint, never the only copy: what it announces is in the tables, and workers
sweep them periodically in case one was missed (a listener reconnecting, say). The ends of runs
(kind ``ended``, see :mod:`tenantflow.engine.ends`) go on a channel of their own,
:attr:`PostgresCoordinator.ends_channel`, listened to only by processes waiting on runs, so that
workers are not woken by every run's end.

Scopes: the coordination tables hold ids and commands, not tenant data, but ``commands`` carries
a tenant's words (a reviewer's comment), so it is under row-level security like any tenant table:
a command is posted in its tenant's scope (the application role) and taken and finished in system
scope. ``workers`` and ``tenant_owners`` are written in system scope only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo

from tenantflow.domain.cluster import ENDED, Command, Notice
from tenantflow.errors import StoreError, StoreUnavailableError

__all__ = ["PostgresCoordinator", "ScopedConnections"]

log = logging.getLogger("tenantflow.cluster")

_ACTIVE = "('queued', 'running', 'paused', 'compensating', 'cancelling')"
_MAX_CHANNEL = 63
"""PostgreSQL's longest identifier: a channel name beyond it is refused by ``pg_notify``."""


_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""TCP keepalives of a listening connection: one silently cut (a NAT's or a balancer's idle
timeout) is found dead within about a minute and opened anew, not waited on forever."""


def _digest(schema: str) -> str:
    return hashlib.blake2b(schema.encode(), digest_size=16).hexdigest()


def _channel(prefix: str, schema: str) -> str:
    """The channel ``prefix`` + ``schema``; for a schema too long for that, its digest."""
    name = prefix + schema
    return name if len(name.encode()) <= _MAX_CHANNEL else prefix + _digest(schema)


class ScopedConnections(Protocol):
    """What the coordinator needs of its store (a
    :class:`~tenantflow.adapters.postgres.PostgresStore` has it): typed here, so that this
    module does not import the store's, which makes coordinators with
    :meth:`~tenantflow.adapters.postgres.PostgresStore.coordinator`."""

    @property
    def schema(self) -> str | None:
        """The schema holding the tables (None: the search path's)."""
        ...

    @property
    def conninfo(self) -> str:
        """A connection string for a connection of one's own (listening)."""
        ...

    def scoped(self, tenant_id: str | None) -> AbstractAsyncContextManager[AsyncConnection[Any]]:
        """A pooled connection in one transaction acting as ``tenant_id`` (None: system)."""
        ...


FINISH_COMMAND = (
    "UPDATE commands SET done_at = %s, result = %s"
    " WHERE id = %s AND tenant_id = %s AND done_at IS NULL"
)
"""A command's result, once. Its tenant names it in the index of open commands (tenant, id)
too: by its id alone, that partial index (whose predicate the statement implies) was walked
whole whenever statistics said no command was open."""


class PostgresCoordinator:
    """Worker liveness, tenant ownership, the command inbox and wake-ups, on a PostgresStore."""

    def __init__(self, store: ScopedConnections) -> None:
        self.store = store
        schema = store.schema or "public"
        self.channel = _channel("tenantflow_", schema)
        # Always the schema's digest: no schema's wake-up channel can be another's of ends.
        self.ends_channel = "tenantflow_ended_" + _digest(schema)
        self._outbox: list[tuple[str, str]] = []  # (channel, payload)
        self._flusher: asyncio.Task[None] | None = None

    # -- liveness and ownership -------------------------------------------------------------

    async def beat(
        self, worker: str, now: float, alive_s: float, info: dict[str, Any]
    ) -> list[str]:
        """Record ``worker``'s heartbeat, forget workers silent for ``alive_s``; the live ids."""
        async with self.store.scoped(None) as conn:
            await conn.execute(
                "INSERT INTO workers (id, info, started_at, beat_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at",
                (worker, json.dumps(info), now, now),
            )
            await conn.execute("DELETE FROM workers WHERE beat_at < %s", (now - alive_s,))
            cur = await conn.execute("SELECT id FROM workers ORDER BY id")
            return [str(r[0]) for r in await cur.fetchall()]

    async def members(self) -> list[dict[str, Any]]:
        """Every worker with a row (live, or silent and not yet forgotten): its id, info,
        start and last beat, and the tenants it holds leases on (``tenant_id``,
        ``expires_at``); read in system scope, ids and times only."""
        async with self.store.scoped(None) as conn:
            cur = await conn.execute(
                "SELECT id, info, started_at, beat_at FROM workers ORDER BY id"
            )
            workers = await cur.fetchall()
            cur = await conn.execute(
                "SELECT tenant_id, owner, expires_at FROM tenant_owners ORDER BY tenant_id"
            )
            leases = await cur.fetchall()
        held: dict[str, list[dict[str, Any]]] = {}
        for tenant_id, owner, expires_at in leases:
            held.setdefault(str(owner), []).append(
                {"tenant_id": str(tenant_id), "expires_at": float(expires_at)}
            )
        out = [
            {
                "id": str(row[0]),
                "info": row[1] if isinstance(row[1], dict) else json.loads(row[1] or "{}"),
                "started_at": float(row[2]),
                "beat_at": float(row[3]),
                "tenants": held.pop(str(row[0]), []),
            }
            for row in workers
        ]
        # Leases of workers that are gone: shown so that an operator sees who held what.
        out.extend(
            {"id": owner, "info": {}, "started_at": None, "beat_at": None, "tenants": tenants}
            for owner, tenants in sorted(held.items())
        )
        return out

    async def hold(
        self, worker: str, tenants: Sequence[str], now: float, until: float
    ) -> list[str]:
        """Take or renew the leases on ``tenants`` that are free, expired or ours; the tenants
        that are ours afterwards (in the order given)."""
        if not tenants:
            return []
        async with self.store.scoped(None) as conn:
            cur = await conn.execute(
                "INSERT INTO tenant_owners (tenant_id, owner, expires_at)"
                " SELECT t, %s, %s FROM unnest(%s::text[]) AS t"
                " ON CONFLICT (tenant_id) DO UPDATE"
                " SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE tenant_owners.owner = excluded.owner OR tenant_owners.expires_at < %s"
                " RETURNING tenant_id",
                (worker, until, list(tenants), now),
            )
            held = {str(r[0]) for r in await cur.fetchall()}
        return [t for t in tenants if t in held]

    async def release(self, worker: str, tenants: Sequence[str] | None = None) -> None:
        """Give up ``worker``'s leases on ``tenants`` (all of them when None)."""
        async with self.store.scoped(None) as conn:
            if tenants is None:
                await conn.execute("DELETE FROM tenant_owners WHERE owner = %s", (worker,))
                await conn.execute("DELETE FROM workers WHERE id = %s", (worker,))
            else:
                await conn.execute(
                    "DELETE FROM tenant_owners WHERE owner = %s AND tenant_id = ANY(%s::text[])",
                    (worker, list(tenants)),
                )

    async def active_runs(self) -> list[tuple[str, str]]:
        """(tenant, run id) of every unfinished run: the sweep for missed wake-ups."""
        async with self.store.scoped(None) as conn:
            cur = await conn.execute(f"SELECT tenant_id, id FROM runs WHERE status IN {_ACTIVE}")
            return [(str(t), str(r)) for t, r in await cur.fetchall()]

    # -- the command inbox ------------------------------------------------------------------

    async def post(
        self, tenant_id: str, kind: str, target: str, payload: dict[str, Any], now: float
    ) -> int:
        """Queue a command in ``tenant_id``'s scope and announce it; its id."""
        async with self.store.scoped(tenant_id) as conn:
            cur = await conn.execute(
                "INSERT INTO commands (tenant_id, kind, target, payload, created_at)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (tenant_id, kind, target, json.dumps(payload), now),
            )
            row = await cur.fetchone()
            assert row is not None
            command_id = int(row[0])
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (self.channel, f"command:{tenant_id}:{command_id}")
            )
            return command_id

    async def take(
        self, worker: str, tenants: Sequence[str], now: float, until: float, limit: int = 100
    ) -> list[Command]:
        """Lease up to ``limit`` unfinished commands of ``tenants`` not leased by a live taker."""
        if not tenants:
            return []
        async with self.store.scoped(None) as conn:
            cur = await conn.execute(
                "UPDATE commands SET taken_by = %s, taken_until = %s WHERE id IN ("
                " SELECT id FROM commands WHERE done_at IS NULL AND tenant_id = ANY(%s::text[])"
                " AND (taken_until IS NULL OR taken_until < %s) ORDER BY id LIMIT %s"
                " FOR UPDATE SKIP LOCKED)"
                " RETURNING id, tenant_id, kind, target, payload",
                (worker, until, list(tenants), now, limit),
            )
            found = await cur.fetchall()
        return sorted(
            (
                Command(int(i), str(t), str(k), str(g), json.loads(p or "{}"))
                for i, t, k, g, p in found
            ),
            key=lambda c: c.id,
        )

    async def finish(self, command: Command, result: dict[str, Any], now: float) -> None:
        """Record ``command``'s result (once: a second finish changes nothing; see
        :data:`FINISH_COMMAND`)."""
        async with self.store.scoped(None) as conn:
            await conn.execute(
                FINISH_COMMAND, (now, json.dumps(result), command.id, command.tenant_id)
            )

    async def result(self, tenant_id: str, command_id: int) -> dict[str, Any] | None:
        """The command's result once finished (None before), read in its tenant's scope."""
        async with self.store.scoped(tenant_id) as conn:
            cur = await conn.execute(
                "SELECT done_at, result FROM commands WHERE id = %s AND tenant_id = %s",
                (command_id, tenant_id),
            )
            row = await cur.fetchone()
        if row is None or row[0] is None:
            return None
        value: dict[str, Any] = json.loads(row[1] or "{}")
        return value

    # -- wake-ups ---------------------------------------------------------------------------

    async def notify(self, kind: str, tenant_id: str, target: str) -> None:
        """Announce ``kind`` about ``target`` of ``tenant_id`` to every listening process."""
        async with self.store.scoped(tenant_id) as conn:
            await conn.execute(
                "SELECT pg_notify(%s, %s)",
                (self._channel_for(kind), f"{kind}:{tenant_id}:{target}"),
            )

    def _channel_for(self, kind: str) -> str:
        return self.ends_channel if kind == ENDED else self.channel

    def announce(self, kind: str, tenant_id: str, target: str) -> None:
        """Like :meth:`notify`, without waiting: announcements made while one batch is being
        sent go out together in the next (one transaction for many submissions). Best effort:
        a batch that fails is dropped — the listeners' sweeps find what it announced."""
        self._outbox.append((self._channel_for(kind), f"{kind}:{tenant_id}:{target}"))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="tenantflow-announce")

    async def _flush(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                async with self.store.scoped(None) as conn:
                    await conn.execute(
                        "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS n (c, p)",
                        ([c for c, _ in batch], [p for _, p in batch]),
                    )
            except StoreError as exc:  # best effort: what was announced is in the tables
                log.warning(
                    "could not announce %d wake-ups (sweeps will find them): %s", len(batch), exc
                )

    async def close(self) -> None:
        """Send what is waiting to be announced."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    def listen(self) -> AsyncIterator[Notice]:
        """Wake-ups as they arrive, on a connection of their own, until cancelled.

        Raises:
            StoreUnavailableError: the connection was lost (the caller reconnects and sweeps).
        """
        return self._listen(self.channel, None)

    def listen_ends(self, ready: Callable[[], None]) -> AsyncIterator[Notice]:
        """Announced ends of runs (kind ``ended``, the run's id as target), as :meth:`listen`;
        ``ready`` is called once listening (ends announced before it were missed).

        Raises:
            StoreUnavailableError: the connection was lost (the caller reconnects).
        """
        return self._listen(self.ends_channel, ready)

    async def _listen(
        self, channel: str, ready: Callable[[], None] | None
    ) -> AsyncIterator[Notice]:
        try:
            conninfo = make_conninfo(self.store.conninfo, **_KEEPALIVE)
            conn = await AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot listen for wake-ups: {exc}") from exc
        try:
            async with conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                if ready is not None:
                    ready()
                async for note in conn.notifies():
                    kind, _, rest = note.payload.partition(":")
                    tenant, _, target = rest.partition(":")
                    yield Notice(kind, tenant, target)
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"lost the wake-up connection: {exc}") from exc
