"""The embedded store: SQLite in WAL mode, one writer thread, group commit.

Durability settings (``sqlite:///path.db?synchronous=full``):

* ``journal_mode=WAL`` always: readers never block the writer, and a crash (even SIGKILL in the
  middle of a commit) leaves the database at its last committed transaction.
* ``synchronous=full`` (the default) fsyncs the WAL at every commit: a committed transition
  survives power loss. ``synchronous=normal`` fsyncs only at checkpoints: committed transitions
  survive a process crash but the last few may be lost on power loss; it is faster on slow disks.

The engine batches many transitions into one transaction (see ``engine/writer.py``), so one
fsync covers many steps. Every write runs on one dedicated thread, so a commit's fsync never
blocks the event loop. An executing engine's reads (a run's record, its events, a tenant's
list) run on a second thread with a connection of its own, each in a read transaction of its
own: in WAL mode a reader sees the last commit and never waits for the writer, so reading a
finished run does not queue behind a batch of other tenants' transitions. A read sees every
transaction committed before it began (a write awaited before it, for one).

An executing engine holds an exclusive ``flock`` on ``<db>.lock``: a second engine on the same
file is refused with a clear error, and after a crash the new engine knows every RUNNING attempt
in the file belongs to a dead process and may take it over at once instead of waiting for its
lease to expire. Readers (``execute=False``, e.g. the CLI's ``runs timeline``) take no lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

from tenantflow.adapters import sqlite_ops
from tenantflow.adapters.sql import Gen
from tenantflow.adapters.sql_store import SqlStore
from tenantflow.adapters.sqlite_checkpoint import Checkpointer
from tenantflow.adapters.sqlite_schema import MIGRATIONS, migrate, schema_version_readonly
from tenantflow.domain.records import Op
from tenantflow.domain.tenancy import PURGE_TARGET_S
from tenantflow.errors import ConfigurationError, StoreError, StoreUnavailableError

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SYNC_MODES = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA", "off": "OFF"}


class SqliteStore(SqlStore):
    """A :class:`~tenantflow.ports.Store` on one SQLite file."""

    in_memory = False
    # Every write waits for the transaction committing on the one writer thread: the retention
    # purge sizes its transactions to about this long, and the engine's writer lets one that
    # waits through after ``background_wait_s`` on a store that is never idle.
    purge_target_s = PURGE_TARGET_S
    background_wait_s = 0.02

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        self.path = Path(path)
        if synchronous.lower() not in _SYNC_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(_SYNC_MODES)}, not {synchronous!r}",
                field="synchronous",
                value=synchronous,
            )
        self.synchronous = _SYNC_MODES[synchronous.lower()]
        self.url = f"sqlite:///{self.path}"
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self._exclusive = False
        self._checkpointer: Checkpointer | None = None
        # An executing engine's reads: a connection and a thread of their own (the module doc).
        self._reader: sqlite3.Connection | None = None
        self._read_executor: ThreadPoolExecutor | None = None
        self._calls_in_flight = 0

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, with ``?synchronous=normal``."""
        parsed = urlparse(url)
        if parsed.scheme != "sqlite" or not parsed.path or parsed.path == "/":
            raise ConfigurationError(
                f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)",
                field="url",
                value=url,
            )
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        params = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(params) - {"synchronous"}
        if unknown:
            raise ConfigurationError(
                f"unknown SQLite URL option(s): {', '.join(sorted(unknown))}",
                field="url",
                value=url,
            )
        return cls(path, synchronous=params.get("synchronous", "full"))

    async def upgrade(self) -> int:
        """Apply pending migrations (``tenantflow db upgrade``); returns the schema version."""
        return await self._run(migrate)

    async def schema_version(self) -> int:
        return await self._run(schema_version_readonly)

    @property
    def exclusive(self) -> bool:
        return self._exclusive or self.in_memory

    async def open(self, *, execute: bool = True) -> None:
        if self._conn is not None:
            return
        if not execute and not self.in_memory and not self.path.is_file():
            raise StoreUnavailableError(
                f"no tenantflow database at {str(self.path)!r}", path=str(self.path)
            )
        if execute and not self.in_memory:
            self._take_lock()
        try:
            if not self.in_memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
            if execute or self.in_memory:
                migrate(conn)
            elif schema_version_readonly(conn) != len(MIGRATIONS):
                found = schema_version_readonly(conn)
                conn.close()
                raise StoreUnavailableError(
                    f"the database {str(self.path)!r} has schema version {found}, this release"
                    f" needs {len(MIGRATIONS)}: run `tenantflow db upgrade`",
                    path=str(self.path),
                )
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            self._release_lock()
            raise StoreUnavailableError(
                f"cannot open SQLite database {str(self.path)!r}: {exc}", path=str(self.path)
            ) from exc
        if execute and not self.in_memory:
            purpose = "checkpoints"
            try:
                self._checkpointer = Checkpointer(self.path, conn)
                purpose = "reads"
                self._reader = self._connect(query_only=True)
            except sqlite3.Error as exc:
                if self._checkpointer is not None:
                    self._checkpointer.close()
                    self._checkpointer = None
                conn.close()
                self._release_lock()
                raise StoreUnavailableError(
                    f"cannot open SQLite database {str(self.path)!r} for {purpose}: {exc}",
                    path=str(self.path),
                ) from exc
            self._read_executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tenantflow-sqlite-read"
            )
        self._conn = conn
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantflow-sqlite")

    def _connect(self, *, query_only: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(
            ":memory:" if self.in_memory else self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=10.0,
            # the merged inserts add a few texts per table (1, 2, 4, … 256 rows)
            cached_statements=256,
        )
        if query_only:  # the reader: a write through it would be refused, not made
            try:
                conn.execute("PRAGMA query_only=ON")
            except sqlite3.Error:
                conn.close()
                raise
        return conn

    def _take_lock(self) -> None:
        lock_path = f"{self.path}.lock"
        try:
            Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot open SQLite database {str(self.path)!r}: {exc}", path=str(self.path)
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreUnavailableError(
                f"another tenantflow engine is executing runs from {str(self.path)!r}; open it"
                " read-only (execute=False) or use PostgreSQL to run several workers",
                path=str(self.path),
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        self._exclusive = True

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        self._exclusive = False

    async def close(self) -> None:
        if self._conn is None:
            return
        executor, conn = self._executor, self._conn
        reads, reader = self._read_executor, self._reader
        self._conn = self._reader = None
        self._executor = self._read_executor = None
        if reads is not None:
            reads.shutdown(wait=True)
        if reader is not None:
            reader.close()
        if executor is not None:
            executor.shutdown(wait=True)
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        conn.close()
        self._release_lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, read: bool = False) -> T:
        """``fn(conn)`` on the writer's thread, or (``read``) on the reader's if there is one."""
        conn, executor = self._conn, self._executor
        if read and self._reader is not None:
            conn, executor = self._reader, self._read_executor
        if conn is None or executor is None:
            raise StoreUnavailableError("the SQLite store is not open")
        loop = asyncio.get_running_loop()
        self._calls_in_flight += 1
        try:
            return await loop.run_in_executor(executor, fn, conn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc
        finally:
            self._calls_in_flight -= 1

    @property
    def busy(self) -> bool:
        """Whether a call is on one of the store's threads, or its result not yet taken up by its
        caller (a test on a fake clock waits for this before moving time on)."""
        return self._calls_in_flight > 0

    # -- writes and reads (every read scoped by tenant: see SqlStore) ---------------------------

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        return await self._run(lambda conn: sqlite_ops.apply_batch(conn, ops))

    async def _read(self, tenant_id: str | None, query: Gen[T]) -> T:
        # No row-level security: every query names its tenant itself.
        if self._reader is None:  # a reading process: its one connection
            return await self._run(lambda conn: sqlite_ops.drive(conn, query))
        return await self._run(lambda conn: sqlite_ops.read(conn, query), read=True)

    async def ping(self) -> None:
        """A round trip on the writer's thread (reads go past it: readiness asks here)."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchall())

    async def execute_sql(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (tests and tooling: tamper tests, purge proofs)."""

        def q(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in c.execute(sql, tuple(args)).fetchall()]

        return await self._run(q)
