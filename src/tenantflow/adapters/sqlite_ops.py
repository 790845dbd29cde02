"""The SQLite driver of the op interpreter: batches in one transaction, statements in order.

Runs on the store's writer thread with a connection in autocommit mode; :func:`apply_batch`
wraps a batch in one ``BEGIN IMMEDIATE … COMMIT``. Reads run on the reader's thread, each in a
read transaction of its own (:func:`read`). What each op does is decided once, for every
SQL store, in :mod:`~tenantflow.adapters.sql_ops`; :func:`drive` executes its statements.

Within a batch, append-only rows (:attr:`Sql.merge <tenantflow.adapters.sql.Sql.merge>`:
events, state versions, usage, new steps) are held and inserted with one ``executemany`` per
statement text (usage rows of one tenant, day, metric and dimension summed first): before a
statement naming one of their tables and before the commit. That halves the calls from Python
into SQLite per step. (Multi-row ``VALUES`` statements, which PostgreSQL gets, cost SQLite more
CPU than ``executemany`` when measured.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any, TypeVar

from tenantflow.adapters.sql import Gen, Held, Result, Sql, Together, advance
from tenantflow.adapters.sql_ops import apply_op
from tenantflow.domain.records import Op

__all__ = ["apply_batch", "drive", "read"]

T = TypeVar("T")


def apply_batch(conn: sqlite3.Connection, ops: Sequence[Op]) -> list[Any]:
    """Apply ``ops`` in one transaction. If one op raises, each op is retried alone so that a
    single bad op fails only itself; its result is then the exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        held = Held()
        results = [drive(conn, apply_op(op), held) for op in ops]
        _release(conn, held)
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK")
        if len(ops) == 1:
            return [exc]
        out: list[Any] = []
        for op in ops:
            out.extend(apply_batch(conn, [op]))
        return out
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return results


def read(conn: sqlite3.Connection, query: Gen[T]) -> T:
    """Run the read ``query`` in a read transaction of its own: its statements see one
    snapshot, the last commit before it began, whatever the writer commits meanwhile."""
    conn.execute("BEGIN")
    try:
        return drive(conn, query)
    finally:
        if conn.in_transaction:  # (an I/O error may have rolled it back already)
            conn.execute("COMMIT")  # nothing to write: it ends the snapshot


def drive(conn: sqlite3.Connection, query: Gen[T], held: Held | None = None) -> T:
    """Run an interpreter step to its end on ``conn``; its result. With ``held``, rows that
    may be merged are held there (the caller sends them before its commit, :func:`_release`)
    instead of being inserted at once."""
    with closing(query):
        step = advance(query, None)
        while isinstance(step, Sql):
            step = advance(query, _execute(conn, step, held))
        return step.value


def _release(conn: sqlite3.Connection, held: Held) -> None:
    """Insert the held rows: one ``executemany`` per statement text."""
    for text, params in held.take_rows():
        conn.executemany(text, params)


_NOTHING = Result([], 0)


def _execute(conn: sqlite3.Connection, statement: Sql, held: Held | None) -> Result:
    if isinstance(statement, Together):  # one connection in one thread: one after the other
        return Result([], 0, [_execute(conn, s, held) for s in statement.statements])
    if statement.pg_only:  # one writer: nothing to serialise
        return _NOTHING
    if held is not None:
        if statement.merge is not None:
            held.hold(statement)
            return _NOTHING
        if held and held.named_by(statement.text):
            _release(conn, held)
    if statement.many:
        return Result([], conn.executemany(statement.text, statement.args).rowcount)
    cursor = conn.execute(statement.text, statement.args)
    return Result(cursor.fetchall(), cursor.rowcount)
