"""Statements of one transaction sent down one connection without waiting between them.

psycopg's pipeline mode sends each statement through a full wait on the socket (the event loop
registers the connection, polls it and unregisters it), statement by statement, and its
``transaction()`` nests pipelines around ``BEGIN`` and ``COMMIT`` that sync on their own: a
store transaction of ten statements cost about ten waits and four round trips of client CPU,
where the statements themselves cost the client almost nothing. :class:`Wire` drives libpq's
pipeline mode itself (psycopg's ``pq`` layer, with psycopg's own adapters for the values):
:meth:`Wire.send` puts a statement in libpq's output buffer and returns at once;
:meth:`Wire.sync` sends what is buffered with a sync point, waits once for everything up to
it, and fills in each statement's :class:`Sent` (rows, row count), raising the first error the
server reported (the server skips the statements after a failing one up to the sync).

Each statement is prepared on its connection the first time it is sent there (named ``tf<n>``,
kept per statement text and parameter types for the connection's life, at most
:data:`MAX_PREPARED` of them): the server parses and plans it once, not at every execution —
with row-level security on every table, planning is most of a small statement's cost. The
pool's connections are opened with psycopg's own automatic preparation off, so that nothing
deallocates these behind this module's back.

Without pipeline mode (libpq < 14) every :meth:`Wire.send` is a round trip of its own, through
a psycopg cursor, and :meth:`Wire.sync` has nothing to do.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncRawCursor, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.waiting import READY_R, WAIT_R, WAIT_RW, Ready, Wait

__all__ = ["MAX_PREPARED", "Sent", "Wire"]

MAX_PREPARED = 500
"""Statements prepared per connection at most; past it, new ones are sent unprepared."""

_STALE_PLANS = (psycopg.errors.InvalidSqlStatementName, psycopg.errors.FeatureNotSupported)
"""A statement prepared here is gone (``DISCARD ALL``, a proxy) or its plan no longer fits the
schema ("cached plan must not change result type" after a migration)."""
_ROWS = pq.ExecStatus.TUPLES_OK
_ERROR = pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC


_Key = tuple[bytes, tuple[int, ...]]
_prepared: weakref.WeakKeyDictionary[AsyncConnection[Any], dict[_Key, bytes]] = (
    weakref.WeakKeyDictionary()
)
"""Per connection: the statements prepared on it, by text and parameter types."""
_names = itertools.count()


@dataclass(slots=True, frozen=True)
class _Prepare:
    """A statement being prepared: kept as prepared once the server said so."""

    key: _Key
    name: bytes


@dataclass(slots=True)
class Sent:
    """A statement sent: its rows and the rows it changed, once its sync has been read (for a
    statement sent once per parameter row, the rows changed by all of them)."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rowcount: int = -1

    def _count(self, n: int | None) -> None:
        if n is not None:
            self.rowcount = n if self.rowcount < 0 else self.rowcount + n


class Wire:
    """The statements of one transaction on ``conn`` (see the module doc). Use as an async
    context manager around the transaction: it enters libpq's pipeline mode and leaves it, and
    a block that ends by an error collects what is still in flight first (or closes the
    connection when that fails: the pool then drops it)."""

    def __init__(self, conn: AsyncConnection[Any], *, piped: bool) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self._piped = piped
        self._tx = Transformer.from_context(conn)
        self._names = _prepared.setdefault(conn, {})
        self._pending: dict[_Key, bytes] = {}
        """Statements being prepared in this transaction, not yet confirmed by the server."""
        self._waiting: list[Sent | _Prepare] = []
        """One entry per query sent since the last sync, in order."""
        self._syncs = 0
        """Sync points sent whose result has not been read yet."""

    async def __aenter__(self) -> Wire:
        if self._piped:
            self._pgconn.enter_pipeline_mode()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if not self._piped:
            return
        try:
            if exc_type is None:
                await self.sync()
            elif self._waiting or self._syncs:  # collect what is in flight; its error is moot
                with contextlib.suppress(psycopg.Error):
                    await self.sync(check=False)
        finally:
            try:
                self._pgconn.exit_pipeline_mode()
            except psycopg.Error:  # results still in flight: give the connection up
                await self._conn.close()

    async def send(self, text: bytes, args: Sequence[Any] = (), *, many: bool = False) -> Sent:
        """Send ``text`` (``$n`` placeholders) with ``args`` (with ``many``: once per parameter
        row); in pipeline mode without waiting: its result is there after the next sync."""
        sent = Sent()
        rows: Sequence[Sequence[Any]] = args if many else (args,)
        if not self._piped:
            cur = AsyncRawCursor(self._conn)
            if many:
                await cur.executemany(text, rows)
            else:
                await cur.execute(text, args)
            sent.rows = await cur.fetchall() if cur.description is not None else []
            sent.rowcount = cur.rowcount
            return sent
        tx, pgconn, names, pending = self._tx, self._pgconn, self._names, self._pending
        for row in rows:
            params = tx.dump_sequence(row, [PyFormat.AUTO] * len(row)) if row else None
            types = tuple(tx.types or ()) if row else ()
            formats = tx.formats if row else None
            key = (text, types)
            name = names.get(key) or pending.get(key)
            if name is None and len(names) + len(pending) < MAX_PREPARED:
                name = b"tf%d" % next(_names)
                pgconn.send_prepare(name, text, types or None)
                pending[key] = name  # kept once the server said it is prepared (see sync)
                self._waiting.append(_Prepare(key, name))
            if name is None:
                pgconn.send_query_params(text, params, types or None, formats)
            else:
                pgconn.send_query_prepared(name, params, formats)
            self._waiting.append(sent)
        if many and not rows:
            sent.rowcount = 0
        return sent

    async def sync(self, *, check: bool = True) -> None:
        """Send what is buffered with a sync point and read every result up to it: the
        :class:`Sent` of each statement is then complete. With ``check``, the first error the
        server reported is raised (a :class:`psycopg.Error`), before any row is loaded."""
        if not self._piped or not (self._waiting or self._syncs):
            return  # nothing sent since the last sync
        self._pgconn.pipeline_sync()
        self._syncs += 1
        waiting, self._waiting = self._waiting, []
        pending, self._pending = self._pending, {}
        async with self._conn.lock:
            groups = await self._conn.wait(self._exchange())
        error: psycopg.Error | None = None
        for sent, results in zip(waiting, groups, strict=False):
            for res in results:
                if res.status == _ERROR and error is None:  # what follows it was skipped
                    error = psycopg.errors.error_from_result(res, encoding=self._conn.info.encoding)
            if isinstance(sent, _Prepare) and results:
                if all(res.status == pq.ExecStatus.COMMAND_OK for res in results):
                    self._names[sent.key] = sent.name
                pending.pop(sent.key, None)
        if len(groups) != len(waiting) and error is None:
            error = psycopg.InternalError(
                f"the server answered {len(groups)} statements of {len(waiting)} sent"
            )
        if isinstance(error, _STALE_PLANS):
            self._names.clear()  # deallocated or stale behind this module's back: anew
        if error is not None:
            if check:
                raise error
            return
        tx = self._tx
        for sent, results in zip(waiting, groups, strict=True):
            if isinstance(sent, _Prepare):
                continue
            for res in results:
                if res.status == _ROWS:
                    tx.set_pgresult(res)
                    sent.rows.extend(tx.load_rows(0, res.ntuples, tuple))
                sent._count(res.command_tuples)

    def _exchange(self) -> Generator[Wait, Ready | int, list[list[pq.abc.PGresult]]]:
        """Flush the output buffer (reading meanwhile, so that neither side blocks on a full
        socket), then read the results of every query up to the outstanding sync points: one
        list of results per query (libpq ends each query's results with a null result)."""
        pgconn = self._pgconn
        while pgconn.flush():
            ready = yield WAIT_RW
            if ready & READY_R:
                pgconn.consume_input()
        groups: list[list[pq.abc.PGresult]] = []
        current: list[pq.abc.PGresult] | None = []
        while self._syncs:
            while pgconn.is_busy():
                yield WAIT_R
                pgconn.consume_input()
            res = pgconn.get_result()
            if res is None:
                if current is None:  # two in a row: no query pending, yet no sync came
                    raise psycopg.OperationalError(
                        f"the connection lost its pipeline: {pgconn.error_message.decode()}"
                    )
                groups.append(current)
                current = None
            elif res.status == _SYNC:
                self._syncs -= 1
                current = []
            elif current is None:
                current = [res]
            else:
                current.append(res)
        return groups
