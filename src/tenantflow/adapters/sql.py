"""Dialect-neutral SQL plumbing: what the SQLite and PostgreSQL stores share.

The op interpreter (:mod:`~tenantflow.adapters.sql_ops`, :mod:`~tenantflow.adapters.sql_tenancy`)
is written once, as generators that yield :class:`Sql` statements and receive each statement's
:class:`Result`; it never touches a connection. Each store drives those generators with its own
driver — synchronously on SQLite's writer (or reader) thread, asynchronously on a psycopg
connection — so one piece of code decides what every op does on both databases.

Statements are written in SQLite's dialect with ``?`` placeholders (and no literal ``?`` or
``%``). Where PostgreSQL, with writers in other processes, needs more — a row lock, ``SKIP
LOCKED``, a null-safe comparison — the addition is a comment ``/*pg: …*/``: SQLite ignores it (it
has one writer, which serialises everything already), and the PostgreSQL driver keeps its
content. Statements that only make sense with concurrent writers (an advisory lock) are marked
``pg_only`` and skipped on SQLite.

Append-only rows (events, state versions, usage counters) are yielded with :func:`append` and
:func:`accumulate`: a driver may hold them and send them later in the same transaction, merged
with the rows of other ops (:class:`Held`). Both stores do: PostgreSQL as one multi-row
statement per text, where every statement costs a message each way; SQLite as one
``executemany`` per text, where every statement costs a call into the library from the writer
thread.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, Literal, TypeVar

from tenantflow.errors import StoreError

__all__ = [
    "Done",
    "Gen",
    "Held",
    "Result",
    "Sql",
    "Together",
    "accumulate",
    "advance",
    "append",
    "chunk_sizes",
    "count",
    "execute",
    "insert_table",
    "many",
    "merged_insert",
    "one",
    "rows",
    "serialize",
    "summed",
    "together",
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
class Together(Sql):
    """Statements whose rows the interpreter reads, none of which needs another's result: a
    driver may send them all before waiting for any (PostgreSQL: one round trip for all), and
    executes them in order (a later one may rely on what an earlier one locked or wrote).
    Their results come back in :attr:`Result.parts`, in order (:func:`together`)."""

    statements: Sequence[Sql] = ()


@dataclass(slots=True)
class Result:
    """What a statement returned: its rows (empty without any) and the rows it changed; for
    :class:`Together`, each statement's own result in ``parts``."""

    rows: list[tuple[Any, ...]]
    rowcount: int
    parts: list[Result] | None = None

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


def together(*statements: Sql) -> Gen[list[Result]]:
    """Execute ``statements`` (none needing another's result) at once, in order; their
    results, in order."""
    result = yield Together("", statements=statements)
    if result.parts is None or len(result.parts) != len(statements):
        raise StoreError("a driver answered statements sent together with no result each")
    return result.parts


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


# -- held rows (Sql.merge) ------------------------------------------------------------------

MERGED_ROWS = 256  # the most rows in one merged statement (a power of two)
_MAX_PARAMS = 32_766  # SQLite's limit on a statement's parameters (PostgreSQL's is 65,535)
_INSERT = re.compile(r"^\s*INSERT INTO (\w+)")
_VALUES = re.compile(r"VALUES\s*(\([^()]*\))")


@lru_cache(maxsize=64)
def insert_table(text: str) -> str:
    """The table ``text``, an ``INSERT … VALUES (…)`` whose rows may be merged, inserts into."""
    found, values = _INSERT.match(text), _VALUES.search(text)
    if found is None or values is None:
        raise StoreError(f"not an INSERT … VALUES (…) statement: {text!r}")
    if values.group(1).count("?") * MERGED_ROWS > _MAX_PARAMS:
        raise StoreError(f"too many columns to merge rows of: {text!r}")
    return found.group(1)


def chunk_sizes(n: int) -> list[int]:
    """``n`` rows as statements of powers of two rows, largest first (13: 8, 4, 1): a few
    statement texts per table, each prepared once on a connection and parsed once."""
    sizes = [MERGED_ROWS] * (n // MERGED_ROWS)
    n %= MERGED_ROWS
    while n:
        size = 1 << (n.bit_length() - 1)
        sizes.append(size)
        n -= size
    return sizes


@lru_cache(maxsize=256)
def merged_insert(text: str, n: int) -> str:
    """``text``, an ``INSERT … VALUES (…)``, inserting ``n`` rows (still SQLite's dialect)."""
    found = _VALUES.search(text)
    if found is None:
        raise StoreError(f"not an INSERT … VALUES (…) statement: {text!r}")
    rows = ", ".join([found.group(1)] * n)
    return f"{text[: found.start(1)]}{rows}{text[found.end(1) :]}"


def summed(params: list[Sequence[Any]]) -> list[Sequence[Any]]:
    """Rows equal but for their last column, as one row with the sum of the last columns."""
    totals: dict[tuple[Any, ...], Any] = {}
    for row in params:
        key = tuple(row[:-1])
        totals[key] = totals[key] + row[-1] if key in totals else row[-1]
    return [(*key, total) for key, total in totals.items()]


class Held:
    """Rows of :attr:`Sql.merge` statements a driver holds within one transaction: one list
    per statement text, in the order they came, to be sent as multi-row statements (see
    :attr:`Sql.merge` for when they must be)."""

    __slots__ = ("_added", "_rows", "_tables")

    def __init__(self) -> None:
        self._rows: dict[str, list[Sequence[Any]]] = {}  # statement text -> rows, in order
        self._added: set[str] = set()  # held texts whose rows are summed (Sql.merge == "add")
        self._tables: set[str] = set()  # the tables held rows go to

    def __bool__(self) -> bool:
        return bool(self._rows)

    def hold(self, statement: Sql) -> None:
        """Hold ``statement``'s rows (a statement with :attr:`Sql.merge` set)."""
        self._rows.setdefault(statement.text, []).extend(statement.args)
        self._tables.add(insert_table(statement.text))
        if statement.merge == "add":
            self._added.add(statement.text)

    def named_by(self, text: str) -> bool:
        """Whether ``text`` names a table that held rows go to (they must be sent first)."""
        return any(table in text for table in self._tables)

    def take_rows(self) -> Iterator[tuple[str, list[Sequence[Any]]]]:
        """Empty the held rows, in order: each statement text with its rows (added rows
        summed), to execute once per row."""
        held, self._rows = self._rows, {}
        added, self._added = self._added, set()
        self._tables = set()
        for text, params in held.items():
            yield text, summed(params) if text in added else params

    def take(self) -> Iterator[tuple[str, list[Any]]]:
        """Empty the held rows as multi-row statements, in order: each a statement text (in
        SQLite's dialect) and its flat parameters."""
        for text, params in self.take_rows():
            start = 0
            for size in chunk_sizes(len(params)):
                chunk = params[start : start + size]
                start += size
                flat = [value for row in chunk for value in row] if size > 1 else list(chunk[0])
                yield merged_insert(text, size), flat
