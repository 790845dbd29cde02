"""Dialect-neutral SQL plumbing: what the SQLite and PostgreSQL stores share.

The op interpreter (:mod:`~tenantflow.adapters.sql_ops`, :mod:`~tenantflow.adapters.sql_tenancy`)
is written once, as generators that yield :class:`Sql` statements and receive each statement's
:class:`Result`; it never touches a connection. Each store drives those generators with its own
driver — synchronously on SQLite's writer thread, asynchronously on a psycopg connection — so one
piece of code decides what every op does on both databases.

Statements are written in SQLite's dialect with ``?`` placeholders (and no literal ``?`` or
``%``). Where PostgreSQL, with writers in other processes, needs more — a row lock, ``SKIP
LOCKED``, a null-safe comparison — the addition is a comment ``/*pg: …*/``: SQLite ignores it (it
has one writer, which serialises everything already), and the PostgreSQL driver keeps its
content. Statements that only make sense with concurrent writers (an advisory lock) are marked
``pg_only`` and skipped on SQLite.

Append-only rows (events, state versions, usage counters) are yielded with :func:`append` and
:func:`accumulate`: a driver may hold them and send them later in the same transaction, merged
with the rows of other ops into one multi-row statement (PostgreSQL does, where every statement
costs a message each way; SQLite executes them at once).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "Done",
    "Gen",
    "Result",
    "Sql",
    "accumulate",
    "advance",
    "append",
    "count",
    "execute",
    "many",
    "one",
    "rows",
    "serialize",
]

T = TypeVar("T")


@dataclass(slots=True)
class Sql:
    """One statement for a driver to execute.

    Attributes:
        text: SQLite-dialect SQL with ``?`` placeholders and ``/*pg: …*/`` PostgreSQL additions.
        args: the parameters, or with ``many`` a sequence of parameter rows.
        many: execute once per parameter row.
        pg_only: only meaningful with concurrent writers; SQLite skips it.
        results: the interpreter reads the rows or row count; when False a driver may send the
            statement without waiting for it (and return an empty :class:`Result`).
        merge: ``append`` — an ``INSERT … VALUES (…)`` of ``many`` rows that nothing later in
            the transaction reads, writes or deletes except by a statement naming its table: a
            driver may hold the rows and send them later, merged with the rows of the same
            statement from other ops, as long as it sends them before any statement naming the
            table, before the tenant scope changes and before the commit. ``add`` — the same for
            an upsert that adds its last column to the row found: rows equal in every other
            column may be summed into one first.
    """

    text: str
    args: Sequence[Any] = ()
    many: bool = False
    pg_only: bool = False
    results: bool = True
    merge: Literal["append", "add"] | None = None


@dataclass(slots=True)
class Result:
    """What a statement returned: its rows (empty without any) and the rows it changed."""

    rows: list[tuple[Any, ...]]
    rowcount: int

    def one(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None


Gen = Generator[Sql, Result, T]
"""An interpreter step: yields statements, receives their results, returns the op's result."""


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """An interpreter step has finished with ``value``."""

    value: T


def advance(query: Gen[T], result: Result | None) -> Sql | Done[T]:
    """Resume ``query`` with the last statement's ``result`` (None to start it): the next
    statement to execute, or :class:`Done`. A driver loops on this until it is done."""
    try:
        return next(query) if result is None else query.send(result)
    except StopIteration as stop:
        return Done(stop.value)


def execute(text: str, *args: Any) -> Gen[None]:
    """Execute one statement whose result is not needed."""
    yield Sql(text, args, results=False)


def one(text: str, *args: Any) -> Gen[tuple[Any, ...] | None]:
    """Execute one statement; its first row, or None."""
    return (yield Sql(text, args)).one()


def rows(text: str, *args: Any) -> Gen[list[tuple[Any, ...]]]:
    """Execute one statement; all its rows."""
    return (yield Sql(text, args)).rows


def count(text: str, *args: Any) -> Gen[int]:
    """Execute one statement; how many rows it changed."""
    return (yield Sql(text, args)).rowcount


def many(text: str, params: Sequence[Sequence[Any]]) -> Gen[None]:
    """Execute one statement once per parameter row (nothing when there are none)."""
    if params:
        yield Sql(text, params, many=True, results=False)


def append(text: str, params: Sequence[Sequence[Any]]) -> Gen[None]:
    """Insert ``params`` rows with ``text``, an ``INSERT … VALUES (…)``; a driver may hold them
    and merge them with other ops' rows (see :attr:`Sql.merge`)."""
    if params:
        yield Sql(text, params, many=True, results=False, merge="append")


def accumulate(text: str, params: Sequence[Sequence[Any]]) -> Gen[None]:
    """Upsert ``params`` rows with ``text``, which adds a row's last column to the row found;
    a driver may hold them and sum them with other ops' rows (see :attr:`Sql.merge`)."""
    if params:
        yield Sql(text, params, many=True, results=False, merge="add")


def serialize(key: str) -> Gen[None]:
    """Serialise, until the transaction ends, every transaction that names the same ``key``.

    For read-check-write sequences over rows that may not exist yet (a tenant's audit chain, a
    rate bucket): PostgreSQL takes a transaction-scoped advisory lock, SQLite needs nothing.
    """
    lock = "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))"
    yield Sql(lock, (key,), pg_only=True, results=False)
