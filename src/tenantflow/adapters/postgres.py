"""The scale-out store: PostgreSQL through psycopg 3 (async) and a connection pool.

URL: ``postgresql://user[:password]@host[:port]/dbname`` (or ``postgres://``). libpq options go
in the query (``?sslmode=require``), with two of the store's own:

* ``schema=NAME`` keeps tenantflow's tables in that schema, created on first open (one schema per
  environment, or per test);
* ``pool_size=N`` caps the connection pool (default 10).

**Transactions.** ``apply(ops)`` is one transaction (the group commit) with one result per op.
What each op does is decided once for every SQL store (:mod:`~tenantflow.adapters.sql_ops`);
this module executes it, in libpq's pipeline mode driven by
:class:`~tenantflow.adapters.postgres_wire.Wire`: a statement whose result the op does not read
is put in the connection's output buffer without waiting, ``BEGIN`` and ``COMMIT`` included, so
a transaction costs one round trip plus one per result it reads, and one wait on the socket for
each. Every statement sent still costs a message each way and a wake-up of the server, so a
batch's ops are applied tenant by tenant and their append-only rows (events, state versions,
usage) go as one multi-row statement per tenant and table (see :class:`_Session`). Statements
use the server's own ``$n`` placeholders, converted once (:func:`postgres_text`), and are
prepared on each connection the first time they are sent there (with row-level security on
every table, planning is most of a small statement's cost). A unique
violation fails the batch, which is then applied op by op so that only the bad op fails (its
result is a :class:`~tenantflow.errors.ConflictError`); a deadlock or serialization failure
against another process retries the whole batch, which committed nothing. Driver errors never
escape: an unreachable server is :class:`~tenantflow.errors.StoreUnavailableError`, anything
else :class:`~tenantflow.errors.StoreError`.

**Row-level security, the second wall.** Every query names its tenant; row-level security
makes the database refuse what a query that forgot to would see or write. The roles (created by
the migrations, :mod:`~tenantflow.adapters.postgres_schema`):

* the connecting role owns the tables and runs the migrations. It may be a superuser, and a
  superuser bypasses row-level security, so no tenant's work ever runs as it;
* every tenant-scoped transaction (and, inside a batch, every op) first sets, transaction-locally
  (``set_config(…, true)``, i.e. ``SET LOCAL``), ``role`` to ``tenantflow_app`` — not the owner,
  no ``BYPASSRLS`` — and ``tenantflow.tenant`` to the op's tenant (through a tenant-scoped
  handle, :meth:`~tenantflow.adapters.sql_store.SqlStore.for_tenant`, the handle's tenant for
  every op: the caller's scope, not the op's word). Its policies (``USING`` and ``WITH CHECK``,
  forced on every tenant table) show it that tenant's rows only, and refuse to write any
  other's. (A read takes no transaction of its own: each round trip of it is one, set up so,
  and read-only.) Both settings end with the transaction, so nothing carries over to the
  next user of a pooled connection;
* system scope — the reads and ops that recovery needs across tenants (``active_runs``,
  ``pending_reviews``, ``list_tenants``, ``RenewLeases``, ``RecoverOrphans``) — runs as
  ``tenantflow_system``: a role of its own whose policy sees every tenant, granted only what
  those need (read; take over, renew and log step leases; release a dead attempt's budget holds).
  It is a policy rather than ``BYPASSRLS`` deliberately: creating a bypassing role needs a
  superuser, a bypass would let it write anything anywhere, and the policy stands in the catalog
  next to the tenant policy it widens. The only other work in this scope is the control plane's
  API keys: looking a key up by id to authenticate a request (``get_api_key``: the tenant is not
  known yet) and reading and writing admin keys, which belong to no tenant (``list_api_keys(None)``,
  the key ops with ``tenant_id`` None); the system role may write no tenant's key.

The wall catches a query that forgets its tenant; it does not stop code that sets
``tenantflow.tenant`` itself (the application role may): that code is this module.

**Several processes on one database.** ``exclusive`` is False: a RUNNING attempt in the table
may belong to a live engine elsewhere, so it is taken over only once its lease has expired,
never assumed orphaned. What is safe with many processes:

* claims: ``StartAttempt`` takes a step with ``FOR UPDATE SKIP LOCKED`` (two claimers never wait
  on each other; exactly one wins), ``RecoverOrphans`` skips rows another recoverer holds, and
  every fenced write is a conditional ``UPDATE`` on the fence and a live lease, re-checked by
  PostgreSQL on the latest row after a lock wait — a late write of a lost attempt changes nothing;
* read-check-writes: ledger rows (budget reservations, settlements, releases), review rows
  (claims, decisions), a run's state version chain and a tenant's policy version are locked
  ``FOR UPDATE``; a tenant's audit chain and each rate bucket are serialised by transaction
  advisory locks; a repeated idempotency key returns the run that won the insert.

Admission caps, fair dispatch and a run's unfenced transitions are decided in the process that
drives the run. Two plain executing engines on one database would each drive the runs they
admitted, each counting caps on its own; to share the load run them as a cluster instead
(``cluster="worker"``, ``tenantflow worker``): each tenant is then driven by exactly one worker
at a time, so every tenant's caps and fair share hold across processes (see
:mod:`tenantflow.engine.cluster` and :mod:`~tenantflow.adapters.postgres_cluster`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, closing
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection, AsyncRawCursor
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from tenantflow.adapters.postgres_schema import (
    APP_ROLE,
    MIGRATIONS,
    SYSTEM_ROLE,
    TENANT_SETTING,
    migrate,
    schema_version,
)
from tenantflow.adapters.postgres_wire import Sent, Wire
from tenantflow.adapters.sql import Done, Gen, Held, Result, Sql, Together, advance
from tenantflow.adapters.sql_ops import apply_op, op_tenant, start_attempts
from tenantflow.adapters.sql_store import SqlStore
from tenantflow.domain.records import (
    CreateRun,
    FailAttempt,
    FinishAttempt,
    Op,
    ParkAttempt,
    RecordCall,
    StartAttempt,
    Transition,
)
from tenantflow.errors import ConfigurationError, ConflictError, StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from tenantflow.adapters.postgres_cluster import PostgresCoordinator

__all__ = ["PostgresStore", "postgres_text"]

T = TypeVar("T")

_SCHEMES = ("postgresql", "postgres")
_STORE_OPTIONS = ("schema", "pool_size")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PG_HINT = re.compile(r"/\*pg:(.*?)\*/", re.DOTALL)
_PLACEHOLDER = re.compile(r"\?")
_SET_SCOPE = f"SELECT set_config('role', ?, true), set_config('{TENANT_SETTING}', ?, true)"
_SET_READ_SCOPE = _SET_SCOPE + ", set_config('transaction_read_only', 'on', true)"
"""A read's scope: the same, in a transaction the server keeps from writing."""
_LOCK_RUNS = (
    "SELECT r.id FROM unnest(?::text[]) AS u (id) CROSS JOIN LATERAL"
    " (SELECT id FROM runs WHERE id = u.id AND tenant_id = ? FOR NO KEY UPDATE) AS r"
)
"""Taken first, for each tenant of a batch (tenants by id), on the runs its ops write: two
processes' batches that share runs then take them in one order, and one waits for the other
instead of both deadlocking (two agents deciding branches of the same two runs did, each
locking the runs in its own batch's order). The runs are locked in the array's order (sorted
by the caller), each found by its primary key: the lateral subquery cannot be flattened (it
locks), so it runs once per id. Written as ``id = ANY(?)``, the statement's generic plan
(which a prepared statement keeps) took the tenant's index whenever ``runs`` had not been
analysed since it was small, and read all of the tenant's runs in every batch: a burst of
2,000 runs made each lock a scan of up to 2,000 rows."""
_QUERY = re.compile(r"\s*(SELECT|WITH)\b", re.IGNORECASE)
"""What a read's statements begin with (see ``PostgresStore._read``): a query, never a command
that would end its transaction and with it the tenant scope. (A ``WITH`` that writes is
refused by the server: a read's transaction is read-only.)"""


_ATTEMPTS = 5  # a batch that keeps deadlocking with other processes fails after this many
_NOTHING = Result([], 0)  # what a statement whose result is not read returns
_PIPELINE = psycopg.Pipeline.is_supported()  # libpq >= 14; else one round trip a statement


CHECK_IDLE_S = 2.0
"""A pooled connection idle longer than this is checked (a round trip) before it is lent."""

_idle_since: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = weakref.WeakKeyDictionary()


async def _check_if_idle(conn: AsyncConnection[Any]) -> None:
    """The pool's check: a connection that sat idle (the server may have restarted or dropped
    it meanwhile) answers a round trip before it is lent; one given back moments ago is lent
    as it is, unless it is known broken. Checking every one would add a round trip to every
    transaction; a connection that broke since its last use fails its transaction, which the
    callers retry (a :class:`~tenantflow.errors.StoreUnavailableError`) on a new one."""
    since = _idle_since.get(conn)
    if since is None or conn.broken or time.monotonic() - since > CHECK_IDLE_S:
        await AsyncConnectionPool.check_connection(conn)


@lru_cache(maxsize=2048)
def postgres_text(text: str) -> bytes:
    """A shared statement (:mod:`~tenantflow.adapters.sql`) in PostgreSQL's dialect: its
    ``/*pg: …*/`` additions kept, ``?`` placeholders as the server's own ``$1``, ``$2``, …

    Statements are sent as they are (:mod:`~tenantflow.adapters.postgres_wire`, or psycopg's
    raw cursors): converted once here, not parsed again at every execution."""
    numbers = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", _PG_HINT.sub(r"\1", text)).encode()


class PostgresStore(SqlStore):
    """A :class:`~tenantflow.ports.Store` on a PostgreSQL database (see the module docstring).

    Args:
        conninfo: a libpq connection string or URL (without the store's own options).
        schema: the schema holding the tables (None: the role's search path, e.g. ``public``).
        pool_size: the most connections the pool opens.
        connect_timeout_s: how long to wait for the server (to connect, or for a free connection).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str | None = None,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if schema is not None and not _IDENTIFIER.match(schema):
            raise ConfigurationError(
                f"invalid schema name {schema!r}: letters, digits and '_', not starting with a"
                " digit",
                field="schema",
                value=schema,
            )
        if pool_size < 1:
            raise ConfigurationError("pool_size must be at least 1", field="pool_size")
        options: dict[str, Any] = {}
        if "connect_timeout" not in _conninfo_dict(conninfo):
            options["connect_timeout"] = max(1, round(connect_timeout_s))
        if schema is not None:
            # The search path is fixed at connection start-up, for the owner and both roles.
            options["options"] = f"-c search_path={schema}"
        self._conninfo = make_conninfo(conninfo, **options)
        self.schema = schema
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self.url = _redacted(conninfo, schema)
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user@host:5432/db?schema=tenantflow&pool_size=20&sslmode=require``."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES or not parts.netloc:
            raise ConfigurationError(
                f"not a PostgreSQL URL: {_redacted(url, None)!r}"
                " (expected postgresql://user@host:port/dbname)",
                field="url",
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _STORE_OPTIONS}
        libpq = urlencode([(k, v) for k, v in query if k not in _STORE_OPTIONS])
        pool_size = own.get("pool_size", "10")
        if not pool_size.isdigit():
            raise ConfigurationError(f"pool_size must be a number, not {pool_size!r}", field="url")
        return cls(
            urlunsplit(parts._replace(query=libpq)),
            schema=own.get("schema") or None,
            pool_size=int(pool_size),
        )

    @property
    def exclusive(self) -> bool:
        # Other processes may execute from the same database: a RUNNING attempt is dead only
        # once its lease has expired.
        return False

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self, *, execute: bool = True) -> None:
        """Connect; with ``execute`` apply pending migrations (one transaction), else refuse a
        schema that is not this release's."""
        if self._pool is not None:
            return
        async with self._owner() as conn:
            if execute:
                await migrate(conn, self.schema)
            else:
                await self._check_version(conn)
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self.pool_size,
            # psycopg's own preparation off: its rollback deallocates every statement
            # prepared on the connection, the store's own (adapters/postgres_wire.py) too.
            kwargs={"autocommit": True, "prepare_threshold": None},
            check=_check_if_idle,
            timeout=self.connect_timeout_s,
            name="tenantflow",
            open=False,
        )
        try:
            async with self._translated():
                await pool.open(wait=True, timeout=self.connect_timeout_s)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def upgrade(self) -> int:
        """Apply pending migrations (``tenantflow db upgrade``); returns the schema version."""
        async with self._owner() as conn:
            return await migrate(conn, self.schema)

    async def schema_version(self) -> int:
        async with self._owner() as conn:
            return await schema_version(conn)

    async def _check_version(self, conn: AsyncConnection[Any]) -> None:
        found = await schema_version(conn)
        if found != len(MIGRATIONS):
            raise StoreUnavailableError(
                f"the database {self.url!r} has schema version {found}, this release needs"
                f" {len(MIGRATIONS)}: run `tenantflow db upgrade`",
                url=self.url,
            )

    @asynccontextmanager
    async def _owner(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of its own as the connecting (owner) role: migrations and versions."""
        async with self._translated():
            conn = await AsyncConnection.connect(self._conninfo, autocommit=True)
            async with conn:
                yield conn

    # -- transactions -------------------------------------------------------------------------

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        """Translate driver errors at the boundary: nothing of psycopg escapes."""
        try:
            yield
        except psycopg.Error as exc:
            if _rolled_back(exc):  # (retried, and aborted every time)
                raise StoreError(
                    f"PostgreSQL kept aborting the transaction ({exc.sqlstate}): {exc}",
                    sqlstate=exc.sqlstate,
                ) from exc
            if isinstance(exc, psycopg.OperationalError):  # also the pool's timeouts
                raise StoreUnavailableError(
                    f"PostgreSQL at {self.url!r} is unavailable: {exc}", url=self.url
                ) from exc
            raise StoreError(f"PostgreSQL error: {exc}", sqlstate=exc.sqlstate) from exc

    @asynccontextmanager
    async def _lend(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of the pool; when it goes back, the time is noted for the pool's check
        (:func:`_check_if_idle`). (Noted here, not by the pool's ``reset`` hook: with one, the
        pool hands every returned connection to a background task of its own.)"""
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("the PostgreSQL store is not open", url=self.url)
        async with pool.connection() as conn:
            try:
                yield conn
            finally:
                _idle_since[conn] = time.monotonic()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Session]:
        """One transaction on a pooled connection, its statements sent without waiting
        between them (:class:`~tenantflow.adapters.postgres_wire.Wire`): ``BEGIN`` goes out
        with the first statements and ``COMMIT`` with the last, so a transaction that reads
        nothing is one round trip, and each read adds one. A statement the server refuses makes
        it skip the rest up to the next sync, ``COMMIT`` included, and its error is raised
        there; whatever ends the block early leaves the transaction open or failed, and the
        pool's connection context rolls it back as the error passes through it (with no
        error, it finds nothing left to commit)."""
        async with self._lend() as conn, Wire(conn, piped=_PIPELINE) as wire:
            await wire.send(b"BEGIN")
            session = _Session(wire)
            yield session
            await session.release()
            await wire.send(b"COMMIT")

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        return await self._apply(ops, None)

    async def _apply_as(self, tenant_id: str, ops: Sequence[Op]) -> list[Any]:
        # Every op runs in the caller's tenant scope, whatever tenant it names: row-level
        # security refuses the rows of an op that names another.
        return await self._apply(ops, tenant_id)

    async def _apply(self, ops: Sequence[Op], scope: str | None) -> list[Any]:
        """Apply ``ops``, each as ``scope`` or (None) as the tenant it names."""
        attempt = 1
        async with self._translated():
            while True:
                try:
                    return await self._commit(ops, scope)
                except psycopg.Error as exc:
                    # A deadlock or serialization failure with another process: nothing was
                    # committed, so the whole batch is tried again, after a short random pause.
                    if not _rolled_back(exc) or attempt == _ATTEMPTS:
                        raise
                    await asyncio.sleep(random.uniform(0.0, 0.01 * 2**attempt))
                    attempt += 1

    async def _commit(self, ops: Sequence[Op], scope: str | None) -> list[Any]:
        try:
            async with self._transaction() as session:
                results: list[Any] = [None] * len(ops)
                order = _by_tenant(ops)
                to_lock = _runs_to_lock(ops)

                async def enter(tenant: str | None) -> None:
                    await session.enter(tenant if scope is None else scope)
                    if tenant is not None and tenant in to_lock:
                        await session.lock_runs(tenant, to_lock.pop(tenant))

                def query(group: list[int]) -> Gen[Any]:
                    if len(group) == 1:
                        return apply_op(ops[group[0]])
                    return start_attempts([cast(StartAttempt, ops[i]) for i in group])

                for wave in _side_by_side(ops, _claims_together(ops, order)):
                    units = [(op_tenant(ops[group[0]]), query(group)) for group in wave]
                    answers = await session.drive_side_by_side(units, enter)
                    for group, answer in zip(wave, answers, strict=True):
                        if len(group) == 1:
                            results[group[0]] = answer
                        else:
                            for i, lease in zip(group, answer, strict=True):
                                results[i] = lease
                return results
        except psycopg.errors.IntegrityError as exc:
            if len(ops) == 1:
                return [ConflictError(f"write refused: {exc}", sqlstate=exc.sqlstate)]
            return [result for op in ops for result in await self._commit([op], scope)]

    async def in_transaction(self, tenant_id: str | None, query: Gen[T]) -> T:
        """Run ``query`` (an interpreter step that may write) in one transaction acting as
        ``tenant_id`` (system scope when None): committed when it returns, rolled back when it
        raises (tenant moves, the mesh's projector)."""
        async with self._translated(), self._transaction() as session:
            await session.enter(tenant_id)
            return await session.drive(query)

    async def _read(self, tenant_id: str | None, query: Gen[T]) -> T:
        """Run a read. In pipeline mode it takes no transaction of its own: the statements up
        to each sync are one implicit transaction of the server's, so a read answered in one
        round trip costs one, not two (``BEGIN`` ... ``COMMIT`` needs a sync of its own after
        the last result). The tenant scope is transaction-local, so it is sent again at the
        head of every such segment (:class:`_Session`); each statement sees its own snapshot
        either way at read committed, PostgreSQL's default (at repeatable read, a read of
        several round trips would see one snapshot per round trip, not one in all). Its
        statements must be queries (``SELECT`` or ``WITH``), and its transactions are
        read-only."""
        if not _PIPELINE:  # every statement would be a transaction of its own
            return await self.in_transaction(tenant_id, query)
        async with self._translated(), self._lend() as conn, Wire(conn, piped=True) as wire:
            session = _Session(wire, implicit=True)
            await session.enter(tenant_id)
            return await session.drive(query)

    def coordinator(self) -> PostgresCoordinator:
        """Coordination of worker processes on this database (``tenantflow worker``)."""
        from tenantflow.adapters.postgres_cluster import PostgresCoordinator

        return PostgresCoordinator(self)

    @property
    def conninfo(self) -> str:
        """The libpq connection string (with the schema's search path), for a connection of
        one's own (listening for notifications)."""
        return self._conninfo

    @asynccontextmanager
    async def scoped(self, tenant_id: str | None) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection in one transaction, acting as ``tenant_id`` (system scope when
        None) exactly like the store's own ops, driver errors translated (for
        :mod:`~tenantflow.adapters.postgres_cluster`)."""
        async with self._translated(), self._lend() as conn, conn.transaction():
            await AsyncRawCursor(conn).execute(postgres_text(_SET_SCOPE), _scope(tenant_id))
            yield conn

    async def execute_sql(
        self, sql: str, args: Sequence[Any] = (), *, tenant: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement, with ``?`` placeholders (tests and tooling: tamper tests, purge
        proofs). As the connecting role by default; with ``tenant``, as the application role
        scoped to that tenant, exactly like the store's own tenant-scoped queries."""
        async with self._translated(), self._transaction() as session:
            if tenant is not None:
                await session.enter(tenant)
            result = await session.execute(Sql(sql, tuple(args)))
            return result.rows


class _Session:
    """The statements of one transaction on one connection (an implicit session, a read's: one
    transaction of the server's per round trip, each scoped anew), in pipeline mode: a
    statement whose result the interpreter does not read is sent without waiting for the
    server, so an op costs about one round trip per result it reads, not one per statement. (A
    failing statement fails the transaction at the next wait, with its own error.)

    Append-only rows (:attr:`Sql.merge <tenantflow.adapters.sql.Sql.merge>`: events, state
    versions, usage) are held and sent as one multi-row statement per statement text: before a
    statement naming one of their tables, before the tenant scope changes (row-level security
    checks each row against the scope it is written in) and before the commit. A batch's ops
    are taken tenant by tenant (:func:`_by_tenant`), and a tenant's consecutive step claims are
    one ``UPDATE`` (:func:`_claims_together`). A tenant's consecutive ops that write only runs
    of their own (claims, finishes, submissions; :func:`_side_by_side`) are driven side by side
    (:meth:`drive_side_by_side`): they cost the round trips of the longest, not their sum."""

    def __init__(self, wire: Wire, *, implicit: bool = False) -> None:
        self._wire = wire
        self._scope: tuple[str, str] | None = None
        self._held = Held()
        self._implicit = implicit
        self._sent_scope = False
        """In an implicit session (a read), whether the current segment has set the scope."""

    async def enter(self, tenant_id: str | None) -> None:
        """Act as ``tenant_id`` (the application role), or in system scope when None; the
        settings are transaction-local and sent only when they change (in an implicit
        session, a read, again at the head of each segment: see :meth:`_send`)."""
        scope = _scope(tenant_id)
        if scope != self._scope:
            await self.release()
            self._scope = scope
            self._sent_scope = False
            if not self._implicit:
                await self._wire.send(postgres_text(_SET_SCOPE), scope)

    async def _send(self, text: str, args: Sequence[Any], *, many: bool = False) -> Sent:
        if self._implicit:
            if not _QUERY.match(text):
                raise StoreError(f"a read runs queries only, not {text[:60]!r}")
            if not self._sent_scope:  # each segment is its own transaction: scope it
                if self._scope is None:
                    raise StoreError("a read must enter a scope first")
                await self._wire.send(postgres_text(_SET_READ_SCOPE), self._scope)
                self._sent_scope = True
        return await self._wire.send(postgres_text(text), args, many=many)

    async def _sync(self) -> None:
        await self._wire.sync()
        self._sent_scope = False

    async def lock_runs(self, tenant_id: str, run_ids: list[str]) -> None:
        """Lock ``run_ids`` (sorted) for this transaction (:data:`_LOCK_RUNS`); sent without
        waiting: the server runs it before the statements sent after it."""
        if len(run_ids) > 1:  # one run is locked by its own first write, in no other order
            await self._send(_LOCK_RUNS, (run_ids, tenant_id))

    async def release(self) -> None:
        """Send the held rows: one multi-row statement per text (a few for very many rows)."""
        if not self._held:
            return
        for text, flat in self._held.take():
            await self._send(text, flat)

    async def drive(self, query: Gen[T]) -> T:
        """Run an interpreter step to its end in this transaction; its result."""
        with closing(query):
            step = advance(query, None)
            while isinstance(step, Sql):
                step = advance(query, await self.execute(step))
            return step.value

    async def drive_side_by_side(
        self, units: Sequence[tuple[str | None, Gen[Any]]], enter: Callable[[str | None], Any]
    ) -> list[Any]:
        """Run independent interpreter steps (``units``: each with the scope it acts in) to
        their ends, side by side: each goes as far as it can without a result (its statements
        sent in its own scope, entered with ``enter``), then one wait answers every one that
        asked for a result, and so on. A batch of finishes thus costs the round trips of one,
        not one each. The units must not depend on each other's statements (different runs;
        see :func:`_side_by_side`): only their order at the server differs from driving them
        one after the other."""
        out: list[Any] = [None] * len(units)
        steps: list[Sql | Done[Any]] = []
        try:
            for _, query in units:
                steps.append(advance(query, None))
            live = list(range(len(units)))
            while live:
                asked: list[tuple[int, Callable[[], Result]]] = []
                for i in live:
                    scope, query = units[i]
                    await enter(scope)
                    step = steps[i]
                    while isinstance(step, Sql):
                        answer = await self._put(step)
                        if not isinstance(answer, Result):
                            asked.append((i, answer))
                            break
                        step = advance(query, answer)
                    steps[i] = step
                    if isinstance(step, Done):
                        out[i] = step.value
                if asked:
                    await self._sync()
                for i, answer in asked:
                    steps[i] = advance(units[i][1], answer())
                    if isinstance(steps[i], Done):
                        out[i] = cast(Done[Any], steps[i]).value
                live = [i for i, _ in asked if isinstance(steps[i], Sql)]
        finally:
            for _, query in units:
                query.close()
        return out

    async def execute(self, statement: Sql) -> Result:
        answer = await self._put(statement)
        if isinstance(answer, Result):
            return answer
        await self._sync()
        return answer()

    async def _put(self, statement: Sql) -> Result | Callable[[], Result]:
        """Send ``statement`` (or hold it): its result at once when it needs none, else a
        function that gives it after the next sync. Held rows go first when the statement (or
        one sent together) names their table, as before any other statement."""
        if isinstance(statement, Together):
            statements = statement.statements
            if self._held and any(self._held.named_by(s.text) for s in statements):
                await self.release()
            sent = [await self._send(one.text, one.args) for one in statements]
            return lambda: Result([], 0, [Result(one.rows, one.rowcount) for one in sent])
        if statement.merge is not None:
            if self._implicit:
                raise StoreError(f"a read runs queries only, not {statement.text[:60]!r}")
            self._held.hold(statement)
            return _NOTHING
        if self._held and self._held.named_by(statement.text):
            await self.release()
        single = await self._send(statement.text, statement.args, many=statement.many)
        if not statement.results:
            return _NOTHING
        return lambda: Result(single.rows, single.rowcount)


def _claims_together(ops: Sequence[Op], order: list[int]) -> list[list[int]]:
    """``order`` cut into groups applied together: one tenant's consecutive step claims
    (:class:`StartAttempt`, each of a different step) are one statement
    (:func:`~tenantflow.adapters.sql_ops.start_attempts`); every other op is alone."""
    groups: list[list[int]] = []
    claimed: set[tuple[str, str]] = set()
    for i in order:
        op = ops[i]
        if isinstance(op, StartAttempt) and groups:
            last = ops[groups[-1][-1]]
            if (
                isinstance(last, StartAttempt)
                and last.tenant_id == op.tenant_id
                and (op.run_id, op.key) not in claimed
            ):
                groups[-1].append(i)
                claimed.add((op.run_id, op.key))
                continue
        groups.append([i])
        claimed = {(op.run_id, op.key)} if isinstance(op, StartAttempt) else set()
    return groups


_ROLLED_BACK = ("40001", "40P01")
"""The SQLSTATEs of a transaction PostgreSQL aborted for a serialization failure or a deadlock:
nothing of it was committed, and the same transaction may well pass if tried again."""


def _rolled_back(exc: BaseException) -> bool:
    """Whether PostgreSQL aborted the transaction for a serialization failure or a deadlock
    (:data:`_ROLLED_BACK`). (psycopg raises them as subclasses of ``OperationalError``, not of
    its ``TransactionRollback``.)"""
    return isinstance(exc, psycopg.Error) and exc.sqlstate in _ROLLED_BACK


def _side_by_side(ops: Sequence[Op], groups: list[list[int]]) -> list[list[list[int]]]:
    """``groups`` (in their order) cut into waves driven side by side
    (:meth:`_Session.drive_side_by_side`): consecutive groups of one tenant that each write
    only runs of their own — step claims, a finish or a transition whose follow-on is its own
    run's, a submission without an idempotency key — none writing a run another of the wave
    writes, and none with audit entries (a chain read then extended) or a review to open. Any
    other op is a wave of its own, driven alone. A wave holds one tenant's ops only: a batch
    still takes its locks tenant by tenant, the order every process takes them in (a later
    tenant's op driven in the first turn would lock its rows before an earlier tenant's took
    theirs in a later one)."""
    waves: list[list[list[int]]] = []
    wave: list[list[int]] = []
    runs: set[tuple[str, str]] = set()
    tenant: str | None = None
    for group in groups:
        own = _own_runs(ops, group)
        here = op_tenant(ops[group[0]])
        if own is not None and wave and here == tenant and not (own & runs):
            wave.append(group)
            runs |= own
            continue
        if wave:
            waves.append(wave)
        wave, runs, tenant = [group], own or set(), here
        if own is None:
            waves.append(wave)
            wave, runs = [], set()
    if wave:
        waves.append(wave)
    return waves


def _own_runs(ops: Sequence[Op], group: list[int]) -> set[tuple[str, str]] | None:
    """The runs ``group`` writes if they are all it writes (see :func:`_side_by_side`), else
    None."""
    runs: set[tuple[str, str]] = set()
    for i in group:
        op = ops[i]
        if isinstance(op, StartAttempt):
            runs.add((op.tenant_id, op.run_id))
            continue
        if isinstance(op, CreateRun):
            if op.run.idempotency_key is not None:
                return None
            runs.add((op.run.tenant_id, op.run.id))
            continue
        then = op.then if isinstance(op, FinishAttempt) else op
        if not isinstance(then, Transition) or not isinstance(op, FinishAttempt | Transition):
            return None
        if (then.tenant_id, then.run_id) != (op.tenant_id, op.run_id):
            return None
        if then.audit or then.review is not None:
            return None
        runs.add((op.tenant_id, op.run_id))
    return runs


def _by_tenant(ops: Sequence[Op]) -> list[int]:
    """The order to apply a batch's ``ops`` in: each tenant's ops together, in their order,
    tenant by tenant by id.

    The ops of a batch are independent (each could have been a transaction of its own, in any
    order), except that one tenant's ops keep their order; system-scoped ops (recovery, lease
    renewal) stay where they were, between the tenant-scoped ops before and after them."""
    order: list[int] = []
    groups: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        tenant = op_tenant(op)
        if tenant is None:
            for key in sorted(groups):
                order.extend(groups[key])
            groups.clear()
            order.append(i)
        else:
            groups.setdefault(tenant, []).append(i)
    for key in sorted(groups):
        order.extend(groups[key])
    return order


_WRITES_A_RUN = (StartAttempt, FinishAttempt, FailAttempt, ParkAttempt, RecordCall, Transition)


def _runs_to_lock(ops: Sequence[Op]) -> dict[str, list[str]]:
    """Each tenant's existing runs that ``ops`` write, by id: the order a transaction locks
    them in before writing any (:data:`_LOCK_RUNS`)."""
    runs: dict[str, set[str]] = {}
    for op in ops:
        if isinstance(op, _WRITES_A_RUN):
            runs.setdefault(op.tenant_id, set()).add(op.run_id)
    return {tenant: sorted(ids) for tenant, ids in runs.items()}


def _scope(tenant_id: str | None) -> tuple[str, str]:
    """The role and tenant setting a transaction acting as ``tenant_id`` takes."""
    return (SYSTEM_ROLE, "") if tenant_id is None else (APP_ROLE, tenant_id)


def _conninfo_dict(conninfo: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"invalid PostgreSQL connection string: {exc}") from None


def _redacted(url: str, schema: str | None) -> str:
    """``url`` without its password, with the schema option (what logs and errors show)."""
    if "://" not in url:  # a key=value connection string
        shown = {k: v for k, v in _conninfo_dict(url).items() if k != "password"}
        return make_conninfo(**shown) + (f" (schema {schema})" if schema else "")
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if schema is not None and "schema=" not in parts.query:
        parts = parts._replace(query="&".join(q for q in (parts.query, f"schema={schema}") if q))
    return urlunsplit(parts)
