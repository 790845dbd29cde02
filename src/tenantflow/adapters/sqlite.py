"""The embedded store: SQLite in WAL mode, one writer thread, group commit.

Durability settings (``sqlite:///path.db?synchronous=full``):

* ``journal_mode=WAL`` always: readers never block the writer, and a crash (even SIGKILL in the
  middle of a commit) leaves the database at its last committed transaction.
* ``synchronous=full`` (the default) fsyncs the WAL at every commit: a committed transition
  survives power loss. ``synchronous=normal`` fsyncs only at checkpoints: committed transitions
  survive a process crash but the last few may be lost on power loss; it is faster on slow disks.

The engine batches many transitions into one transaction (see ``engine/writer.py``), so one
fsync covers many steps. All SQL runs on one dedicated thread, so a commit's fsync never blocks
the event loop.

An executing engine holds an exclusive ``flock`` on ``<db>.lock``: a second engine on the same
file is refused with a clear error, and after a crash the new engine knows every RUNNING attempt
in the file belongs to a dead process and may take it over at once instead of waiting for its
lease to expire. Readers (``execute=False``, e.g. the CLI's ``runs timeline``) take no lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

from tenantflow.adapters import sqlite_ops
from tenantflow.adapters import sqlite_tenancy as tq
from tenantflow.adapters.sqlite_schema import MIGRATIONS, migrate, schema_version_readonly
from tenantflow.domain.audit import AuditRecord
from tenantflow.domain.records import (
    EventRecord,
    Op,
    RunRecord,
    RunStatus,
    StateVersionRecord,
    StepRecord,
)
from tenantflow.domain.tenancy import ReviewRecord, TenantRecord
from tenantflow.errors import ConfigurationError, StoreError, StoreUnavailableError

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SYNC_MODES = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA", "off": "OFF"}


class SqliteStore:
    """A :class:`~tenantflow.ports.Store` on one SQLite file."""

    in_memory = False

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
            conn = sqlite3.connect(
                ":memory:" if self.in_memory else self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=10.0,
            )
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
        self._conn = conn
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantflow-sqlite")

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
        self._conn = None
        self._executor = None
        if executor is not None:
            executor.shutdown(wait=True)
        conn.close()
        self._release_lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise StoreUnavailableError("the SQLite store is not open")
        loop = asyncio.get_running_loop()

        try:
            return await loop.run_in_executor(executor, fn, conn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc

    # -- writes -------------------------------------------------------------------------------

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        return await self._run(lambda conn: sqlite_ops.apply_batch(conn, ops))

    # -- reads (every one scoped by tenant) ---------------------------------------------------

    async def get_run(self, tenant_id: str, run_id: str) -> RunRecord:
        return await self._run(lambda c: sqlite_ops.get_run(c, tenant_id, run_id))

    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[RunRecord]:
        return await self._run(
            lambda c: sqlite_ops.list_runs(c, tenant_id, status, workflow, limit, before)
        )

    async def get_steps(self, tenant_id: str, run_id: str) -> list[StepRecord]:
        return await self._run(lambda c: sqlite_ops.get_steps(c, tenant_id, run_id))

    async def events(self, tenant_id: str, run_id: str, after_id: int = 0) -> list[EventRecord]:
        def q(c: sqlite3.Connection) -> list[EventRecord]:
            rows = c.execute(
                "SELECT id, tenant_id, run_id, ts, kind, step, attempt, data FROM events"
                " WHERE tenant_id = ? AND run_id = ? AND id > ? ORDER BY id",
                (tenant_id, run_id, after_id),
            ).fetchall()
            return [
                EventRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}"))
                for r in rows
            ]

        return await self._run(q)

    async def state_versions(
        self, tenant_id: str, run_id: str, upto: int | None = None
    ) -> list[StateVersionRecord]:
        def q(c: sqlite3.Connection) -> list[StateVersionRecord]:
            rows = c.execute(
                "SELECT run_id, tenant_id, version, parent, step, delta, hash, created_at"
                " FROM state_versions WHERE tenant_id = ? AND run_id = ? AND version <= ?"
                " ORDER BY version",
                (tenant_id, run_id, upto if upto is not None else 2**62),
            ).fetchall()
            return [StateVersionRecord(*r) for r in rows]

        return await self._run(q)

    async def active_runs(self) -> list[tuple[RunRecord, list[StepRecord]]]:
        return await self._run(sqlite_ops.active_runs)

    # -- tenancy reads ------------------------------------------------------------------------

    async def get_tenant(self, tenant_id: str) -> TenantRecord:
        return await self._run(lambda c: tq.get_tenant(c, tenant_id))

    async def list_tenants(self) -> list[TenantRecord]:
        return await self._run(tq.list_tenants)

    async def audit_log(self, tenant_id: str) -> list[AuditRecord]:
        return await self._run(lambda c: tq.audit_rows(c, tenant_id))

    async def get_review(self, tenant_id: str, review_id: str) -> ReviewRecord:
        return await self._run(lambda c: tq.get_review(c, tenant_id, review_id))

    async def list_reviews(
        self,
        tenant_id: str,
        *,
        pool: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        return await self._run(lambda c: tq.list_reviews(c, tenant_id, pool, statuses, limit))

    async def ledgers(self, tenant_id: str, scope: str | None = None) -> list[dict[str, Any]]:
        return await self._run(lambda c: tq.read_ledgers(c, tenant_id, scope))

    async def usage(
        self, tenant_id: str, since_day: str | None = None, until_day: str | None = None
    ) -> list[dict[str, Any]]:
        return await self._run(lambda c: tq.read_usage(c, tenant_id, since_day, until_day))

    async def execute_sql(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (tests and tooling: tamper tests, purge proofs)."""

        def q(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in c.execute(sql, tuple(args)).fetchall()]

        return await self._run(q)

    async def recorded_calls(
        self, tenant_id: str, run_id: str, key: str
    ) -> dict[int, tuple[str, str, str]]:
        """Results of a step's recorded model and tool calls, by call index."""
        return await self._run(lambda c: tq.recorded_calls(c, tenant_id, run_id, key))

    async def pending_reviews(self) -> list[ReviewRecord]:
        return await self._run(tq.pending_reviews)
