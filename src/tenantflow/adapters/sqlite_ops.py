"""The SQLite driver of the op interpreter: batches in one transaction, statements in order.

Runs on the store's writer thread with a connection in autocommit mode; :func:`apply_batch`
wraps a batch in one ``BEGIN IMMEDIATE … COMMIT``. What each op does is decided once, for every
SQL store, in :mod:`~tenantflow.adapters.sql_ops`; :func:`drive` executes its statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any, TypeVar

from tenantflow.adapters.sql import Gen, Result, Sql, advance
from tenantflow.adapters.sql_ops import apply_op
from tenantflow.domain.records import Op

__all__ = ["apply_batch", "drive"]

T = TypeVar("T")


def apply_batch(conn: sqlite3.Connection, ops: Sequence[Op]) -> list[Any]:
    """Apply ``ops`` in one transaction. If one op raises, each op is retried alone so that a
    single bad op fails only itself; its result is then the exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [drive(conn, apply_op(op)) for op in ops]
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


def drive(conn: sqlite3.Connection, query: Gen[T]) -> T:
    """Run an interpreter step to its end on ``conn``; its result."""
    with closing(query):
        step = advance(query, None)
        while isinstance(step, Sql):
            step = advance(query, _execute(conn, step))
        return step.value


def _execute(conn: sqlite3.Connection, statement: Sql) -> Result:
    if statement.pg_only:  # one writer: nothing to serialise
        return Result([], 0)
    if statement.many:
        return Result([], conn.executemany(statement.text, statement.args).rowcount)
    cursor = conn.execute(statement.text, statement.args)
    return Result(cursor.fetchall(), cursor.rowcount)
