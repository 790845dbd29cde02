"""One tenant's rows out of one SQL store and into another: export, import, purge.

A tenant's data is every row of every tenant table (runs, steps, state versions, events,
reviews, calls, ledgers and holds, rate buckets, usage, policy versions, the audit chain, API
keys, commands, memory, and the tenant row itself). Which tables those are is read from the
schema itself (:data:`~tenantflow.adapters.sqlite_schema.MIGRATIONS`, from which PostgreSQL's is
derived): every table with a ``tenant_id`` column, or listed in
:data:`~tenantflow.adapters.sql_tenancy.TENANT_TABLES`, moves. A table of the platform's own is
named, with the reason, in :data:`NOT_TENANT_DATA`; ``tests/move/test_transfer.py`` fails when a
table is neither, so a new table cannot be forgotten.

Three transactions, each all or nothing, on SQLite and PostgreSQL alike (the statements are the
dialect-neutral interpreter steps of :mod:`~tenantflow.adapters.sql`; on PostgreSQL they run as
the application role scoped to the tenant, so row-level security holds the same line):

* :func:`export_tenant` appends a departure row to the tenant's audit chain and reads every row,
  in one transaction: the copy includes the row that says it was taken;
* :func:`import_tenant` refuses a store that holds any row of the tenant, inserts the copy, reads
  it back and compares it with the copy (a fingerprint over every value), then appends a
  ``run.moved`` event to each unfinished run and an arrival row to the audit chain, which
  continues the copied chain (it stays verifiable across the move);
* :func:`purge_tenant` deletes every row of the tenant from the source with ``DELETE …
  RETURNING`` and commits only if what it deleted is exactly what was copied (a row written,
  changed or removed since the export changes the fingerprint: nothing is deleted) and nothing
  is left.

Identity columns (the ids of events and commands) are not copied: the target numbers the rows
anew, in the source's order. Everything else is copied value for value.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenantflow.adapters.sql import Gen, append, many, one, rows
from tenantflow.adapters.sql_tenancy import TENANT_TABLES, append_audit
from tenantflow.adapters.sqlite_schema import MIGRATIONS
from tenantflow.domain.records import TERMINAL_RUN
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.errors import ConfigurationError, ConflictError, NotFoundError, StoreError
from tenantflow.ports import Store

__all__ = [
    "NOT_TENANT_DATA",
    "Column",
    "Table",
    "TenantExport",
    "export_tenant",
    "fingerprint",
    "import_tenant",
    "live_attempts",
    "purge_tenant",
    "remove_tenant",
    "schema_tables",
    "tenant_rows",
    "transfer_plan",
    "unclassified_tables",
]

T = TypeVar("T")

# Tables of the schema that hold no tenant's data, and why: they are not moved.
NOT_TENANT_DATA: dict[str, str] = {
    "workers": "the heartbeats of a cluster's worker processes: the platform's own",
    "tenant_owners": "which worker of the source's cluster drives the tenant: a lease of that"
    " cluster, not the tenant's data (the cluster drops it once the tenant is gone)",
}


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a table, as the migrations define it."""

    name: str
    type: str  # as SQLite's DDL says it (TEXT, INTEGER, REAL, BLOB)
    identity: bool = False  # numbered by the database (AUTOINCREMENT / GENERATED AS IDENTITY)


@dataclass(frozen=True, slots=True)
class Table:
    """A tenant table and how its rows move."""

    name: str
    tenant_column: str
    columns: tuple[Column, ...]

    @property
    def copied(self) -> tuple[str, ...]:
        """The columns copied (all but identity columns)."""
        return tuple(c.name for c in self.columns if not c.identity)

    @property
    def order(self) -> str:
        """``ORDER BY`` the identity column (rows keep their order when renumbered), or
        nothing (the fingerprint does not depend on the order)."""
        identity = [c.name for c in self.columns if c.identity]
        return f" ORDER BY {', '.join(identity)}" if identity else ""


_CREATE = re.compile(r"^\s*CREATE TABLE (?:IF NOT EXISTS )?(\w+)\s*\((.*)\)[^)]*$", re.S)
_ADD_COLUMN = re.compile(r"^\s*ALTER TABLE (\w+) ADD (?:COLUMN )?(\w+)(.*)$", re.S | re.I)
_DROP_TABLE = re.compile(r"^\s*DROP TABLE (?:IF EXISTS )?(\w+)", re.I)
_RENAME_TABLE = re.compile(r"^\s*ALTER TABLE (\w+) RENAME TO (\w+)", re.I)
_CONSTRAINTS = ("PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "CONSTRAINT")


def _split_top(body: str) -> list[str]:
    """``body`` cut at the commas outside parentheses."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def schema_tables(
    migrations: Sequence[Sequence[str]] = MIGRATIONS,
) -> dict[str, tuple[Column, ...]]:
    """Every table the migrations leave, with its columns in order (read from the DDL)."""
    tables: dict[str, tuple[Column, ...]] = {}
    for statements in migrations:
        for statement in statements:
            if (created := _CREATE.match(statement)) is not None:
                columns = []
                for part in _split_top(created.group(2)):
                    words = part.split()
                    if words[0].upper() in _CONSTRAINTS:
                        continue
                    kind = words[1].upper() if len(words) > 1 else ""
                    columns.append(Column(words[0], kind, "AUTOINCREMENT" in part.upper()))
                tables[created.group(1)] = tuple(columns)
            elif (added := _ADD_COLUMN.match(statement)) is not None:
                name = added.group(1)
                kind = (added.group(3).split() or [""])[0].upper()
                tables[name] = (*tables[name], Column(added.group(2), kind))
            elif (renamed := _RENAME_TABLE.match(statement)) is not None:
                tables[renamed.group(2)] = tables.pop(renamed.group(1))
            elif (dropped := _DROP_TABLE.match(statement)) is not None:
                tables.pop(dropped.group(1), None)
    return tables


def _tenant_column(name: str, columns: Sequence[Column]) -> str | None:
    if name in TENANT_TABLES:
        return TENANT_TABLES[name]
    return "tenant_id" if any(c.name == "tenant_id" for c in columns) else None


def transfer_plan(migrations: Sequence[Sequence[str]] = MIGRATIONS) -> tuple[Table, ...]:
    """The tables a tenant move copies (the tenant row first, then the schema's order)."""
    plan = [
        Table(name, column, columns)
        for name, columns in schema_tables(migrations).items()
        if name not in NOT_TENANT_DATA and (column := _tenant_column(name, columns)) is not None
    ]
    return tuple(sorted(plan, key=lambda t: t.name != "tenants"))


def unclassified_tables(migrations: Sequence[Sequence[str]] = MIGRATIONS) -> list[str]:
    """Tables that neither move (no tenant column) nor are named in :data:`NOT_TENANT_DATA`:
    each must be one or the other (the test of this module asserts there are none)."""
    moved = {t.name for t in transfer_plan(migrations)}
    return sorted(set(schema_tables(migrations)) - moved - set(NOT_TENANT_DATA))


_PLAN = transfer_plan()


# -- the copy -------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    """One value as text that is the same whichever store it was read from."""
    if value is None:
        return "n"
    if isinstance(value, bool):
        return f"b{int(value)}"
    if isinstance(value, int):
        return f"i{value}"
    if isinstance(value, float):
        return f"f{value.hex()}"
    if isinstance(value, bytes | bytearray | memoryview):
        return "x" + bytes(value).hex()
    if isinstance(value, str):
        return "s" + json.dumps(value)
    return "r" + repr(value)


def fingerprint(tables: Mapping[str, Sequence[Sequence[Any]]]) -> str:
    """A SHA-256 over every row of every table, independent of row order and of the store the
    rows were read from (tables without rows count as absent)."""
    digest = hashlib.sha256()
    for name in sorted(tables):
        found = sorted("\x1f".join(map(_canonical, row)) for row in tables[name])
        if not found:
            continue
        digest.update(f"\x1d{name}\x1e{len(found)}\x1e".encode())
        for row in found:
            digest.update(row.encode())
            digest.update(b"\x1e")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class TenantExport:
    """Every row of one tenant, as read in one transaction.

    Attributes:
        tenant_id: the tenant.
        rows: by table, its rows (the table's :attr:`Table.copied` columns, in order).
        fingerprint: :func:`fingerprint` of ``rows``.
        source: the URL of the store the rows were read from.
    """

    tenant_id: str
    rows: dict[str, list[tuple[Any, ...]]]
    fingerprint: str
    source: str
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Rows per table (every table of the plan, zero included)."""
        return {t.name: len(self.rows.get(t.name, [])) for t in _PLAN}

    def unfinished_runs(self) -> list[str]:
        """The ids of the tenant's runs that have not ended (moved in flight)."""
        index = _index("runs", "status")
        terminal = {s.value for s in TERMINAL_RUN}
        return sorted(
            str(r[_index("runs", "id")])
            for r in self.rows.get("runs", [])
            if r[index] not in terminal
        )

    def api_key_ids(self) -> list[str]:
        """The ids of the tenant's API keys (never their digests)."""
        ident = _index("api_keys", "id")
        return sorted(str(r[ident]) for r in self.rows.get("api_keys", []))

    def audit_head(self) -> tuple[int, str] | None:
        """The last audit row's (seq, hash), or None without any."""
        found = self.rows.get("audit_log", [])
        if not found:
            return None
        seq, digest = _index("audit_log", "seq"), _index("audit_log", "hash")
        last = max(found, key=lambda r: int(r[seq]))
        return int(last[seq]), str(last[digest])


def _index(table: str, column: str) -> int:
    for t in _PLAN:
        if t.name == table:
            return t.copied.index(column)
    raise ConfigurationError(f"no table {table!r} in the transfer plan")


def _read_all(tenant_id: str) -> Gen[dict[str, list[tuple[Any, ...]]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for t in _PLAN:
        found = yield from rows(
            f"SELECT {', '.join(t.copied)} FROM {t.name} WHERE {t.tenant_column} = ?{t.order}",
            tenant_id,
        )
        out[t.name] = [tuple(r) for r in found]
    return out


def _counts(tenant_id: str) -> Gen[dict[str, int]]:
    out: dict[str, int] = {}
    for t in _PLAN:
        row = yield from one(
            f"SELECT COUNT(*) FROM {t.name} WHERE {t.tenant_column} = ?", tenant_id
        )
        out[t.name] = int(row[0]) if row is not None else 0
    return out


def _export(tenant_id: str, now: float, departure: AuditEntry | None) -> Gen[Any]:
    exists = yield from one("SELECT 1 FROM tenants WHERE id = ?", tenant_id)
    if exists is None:
        raise NotFoundError(f"tenant {tenant_id!r} not found", kind="tenant", id=tenant_id)
    if departure is not None:
        yield from append_audit(tenant_id, now, [departure])
    return (yield from _read_all(tenant_id))


def _import(
    export: TenantExport, now: float, arrival: AuditEntry, moved: Mapping[str, Any]
) -> Gen[dict[str, int]]:
    tenant = export.tenant_id
    for t in _PLAN:
        found = yield from one(
            f"SELECT 1 FROM {t.name} WHERE {t.tenant_column} = ? LIMIT 1", tenant
        )
        if found is not None:
            raise ConflictError(
                f"tenant {tenant!r} already has data in the target store (table {t.name}):"
                " it is there already, or a move to it was not finished",
                tenant=tenant,
                table=t.name,
            )
    for t in _PLAN:
        columns = export.columns.get(t.name, t.copied)
        if columns != t.copied:
            raise ConfigurationError(
                f"the export's table {t.name} has columns {list(columns)}, the target's"
                f" {list(t.copied)}: both stores must be on the same release",
                table=t.name,
            )
        marks = ", ".join("?" for _ in t.copied)
        # Held and sent as multi-row statements on PostgreSQL (read back below, which sends
        # them first); executed at once on SQLite.
        yield from append(
            f"INSERT INTO {t.name} ({', '.join(t.copied)}) VALUES ({marks})",
            export.rows.get(t.name, []),
        )
    back = yield from _read_all(tenant)
    if fingerprint(back) != export.fingerprint:
        raise StoreError(
            f"the rows of tenant {tenant!r} read back from the target differ from the copy;"
            " nothing was imported",
            tenant=tenant,
        )
    data = json.dumps(dict(moved), default=str)
    events = [
        (tenant, run_id, now, "run.moved", None, None, data) for run_id in export.unfinished_runs()
    ]
    yield from many(
        "INSERT INTO events (tenant_id, run_id, ts, kind, step, attempt, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        events,
    )
    yield from append_audit(tenant, now, [arrival])
    return {name: len(found) for name, found in back.items()}


def _purge(tenant_id: str, expect: str) -> Gen[dict[str, dict[str, int]]]:
    deleted: dict[str, list[tuple[Any, ...]]] = {}
    for t in _PLAN:
        found = yield from rows(
            f"DELETE FROM {t.name} WHERE {t.tenant_column} = ? RETURNING {', '.join(t.copied)}",
            tenant_id,
        )
        deleted[t.name] = [tuple(r) for r in found]
    if fingerprint(deleted) != expect:
        raise ConflictError(
            f"tenant {tenant_id!r} changed in the source store after it was copied; nothing"
            " was deleted there",
            tenant=tenant_id,
        )
    left = yield from _counts(tenant_id)
    if any(left.values()):
        raise ConflictError(
            f"rows of tenant {tenant_id!r} appeared in the source store while it was purged;"
            " nothing was deleted there",
            tenant=tenant_id,
            left=left,
        )
    return {"deleted": {name: len(found) for name, found in deleted.items()}, "left": left}


def _remove(tenant_id: str) -> Gen[dict[str, int]]:
    out: dict[str, int] = {}
    for t in _PLAN:
        found = yield from rows(
            f"DELETE FROM {t.name} WHERE {t.tenant_column} = ? RETURNING 1", tenant_id
        )
        out[t.name] = len(found)
    return out


def _live(tenant_id: str, now: float) -> Gen[int]:
    row = yield from one(
        "SELECT COUNT(*) FROM steps WHERE tenant_id = ? AND status = 'running'"
        " AND owner IS NOT NULL AND lease_expires_at IS NOT NULL AND lease_expires_at > ?",
        tenant_id,
        now,
    )
    return int(row[0]) if row is not None else 0


# -- running a step in one transaction, on either store --------------------------------------


def _sqlite_transaction(conn: sqlite3.Connection, query: Gen[T]) -> T:
    from tenantflow.adapters.sqlite_ops import drive

    conn.execute("BEGIN IMMEDIATE")
    try:
        result = drive(conn, query)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


async def _transaction(store: Store, tenant_id: str, query: Gen[T]) -> T:
    """Run ``query`` in one transaction of ``store`` acting as ``tenant_id``: committed when it
    returns, rolled back when it raises."""
    from tenantflow.adapters.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return await store._run(lambda conn: _sqlite_transaction(conn, query))
    try:
        from tenantflow.adapters.postgres import PostgresStore
    except ImportError:  # no psycopg: it cannot be a PostgreSQL store
        pass
    else:
        if isinstance(store, PostgresStore):
            # One transaction as the application role in the tenant's scope (row-level
            # security on every statement); an exception rolls it back.
            return await store.in_transaction(tenant_id, query)
    raise ConfigurationError(
        f"tenant moves need a SQLite or PostgreSQL store, not {store.url!r}", url=store.url
    )


# -- the public steps -------------------------------------------------------------------------


async def export_tenant(
    store: Store, tenant_id: str, *, now: float, departure: AuditEntry | None = None
) -> TenantExport:
    """Every row of ``tenant_id`` in ``store``, read in one transaction that first appends
    ``departure`` (when given) to the tenant's audit chain.

    Raises:
        NotFoundError: the store has no such tenant (nothing is written).
    """
    found = await _transaction(store, tenant_id, _export(tenant_id, now, departure))
    return TenantExport(
        tenant_id,
        found,
        fingerprint(found),
        store.url,
        {t.name: t.copied for t in _PLAN},
    )


async def import_tenant(
    store: Store,
    export: TenantExport,
    *,
    now: float,
    arrival: AuditEntry,
    moved: Mapping[str, Any],
) -> dict[str, int]:
    """Insert ``export`` into ``store`` in one transaction, check it reads back the same, add a
    ``run.moved`` event (data ``moved``) to each unfinished run and append ``arrival`` to the
    audit chain; the rows copied per table.

    Raises:
        ConflictError: the store already holds rows of the tenant (nothing is written).
        StoreError: the rows read back differ from the copy (nothing is written).
    """
    return await _transaction(store, export.tenant_id, _import(export, now, arrival, moved))


async def purge_tenant(store: Store, tenant_id: str, *, expect: str) -> dict[str, dict[str, int]]:
    """Delete every row of ``tenant_id`` from ``store`` in one transaction, committed only if
    the rows deleted have the fingerprint ``expect`` (those of the export) and none is left:
    ``{"deleted": rows per table, "left": rows per table (all zero)}``.

    Raises:
        ConflictError: the tenant's rows changed since the export, or rows appeared meanwhile
            (nothing is deleted).
    """
    return await _transaction(store, tenant_id, _purge(tenant_id, expect))


async def remove_tenant(store: Store, tenant_id: str) -> dict[str, int]:
    """Delete every row of ``tenant_id`` from ``store`` (undoing an import whose move could
    not finish); the rows deleted per table."""
    return await _transaction(store, tenant_id, _remove(tenant_id))


async def tenant_rows(store: Store, tenant_id: str) -> dict[str, int]:
    """How many rows of ``tenant_id`` each tenant table of ``store`` holds (the proof that a
    purged store holds none)."""
    return await _transaction(store, tenant_id, _counts(tenant_id))


async def live_attempts(store: Store, tenant_id: str, now: float) -> int:
    """How many of the tenant's step attempts hold a lease that has not expired at ``now`` (an
    engine somewhere is executing them)."""
    return await _transaction(store, tenant_id, _live(tenant_id, now))
