"""The SQLite store's reads: a thread and a connection of their own, each read one snapshot."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tenantflow.adapters import sqlite_ops
from tenantflow.adapters.sql import Gen, rows
from tenantflow.adapters.sqlite import SqliteStore
from tenantflow.errors import StoreError


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "reads.db")
    await s.open()
    yield s
    await s.close()


async def test_a_read_does_not_wait_for_the_writer(store: SqliteStore) -> None:
    held = threading.Event()
    release = threading.Event()

    def long_write(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(30)
        conn.execute("COMMIT")

    writing = asyncio.create_task(store._run(long_write))
    try:
        assert await asyncio.to_thread(held.wait, 30)
        # the writer's thread is inside a transaction until released: the read goes past it
        assert await asyncio.wait_for(store.list_tenants(), timeout=30) == []
        assert not writing.done()
    finally:
        release.set()
        await writing


async def test_the_reader_cannot_write(store: SqliteStore) -> None:
    with pytest.raises(StoreError, match="attempt to write a readonly database"):
        await store._run(lambda conn: conn.execute("DELETE FROM runs"), read=True)


def test_a_read_sees_one_snapshot_whatever_commits_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (n INTEGER)")
    writer.execute("INSERT INTO t VALUES (1)")
    reader = sqlite3.connect(path, isolation_level=None)

    def two_statements() -> Gen[tuple[int, int]]:
        first = yield from rows("SELECT count(*) FROM t")
        writer.execute("INSERT INTO t VALUES (2)")  # committed between the read's statements
        second = yield from rows("SELECT count(*) FROM t")
        return first[0][0], second[0][0]

    assert sqlite_ops.read(reader, two_statements()) == (1, 1)
    assert sqlite_ops.drive(reader, two_statements()) == (2, 3)  # without: two snapshots
    writer.close()
    reader.close()


async def test_a_ping_goes_through_the_writer(store: SqliteStore) -> None:
    """Readiness asks the writer's thread: reads going past it say nothing of a stuck writer."""
    held = threading.Event()
    release = threading.Event()

    def long_write(conn: sqlite3.Connection) -> None:
        held.set()
        release.wait(30)

    writing = asyncio.create_task(store._run(long_write))
    ping = asyncio.create_task(store.ping())
    try:
        assert await asyncio.to_thread(held.wait, 30)
        await store.list_tenants()  # the reader answers meanwhile
        assert not ping.done()  # queued behind the held writer: it cannot have run
    finally:
        release.set()
        await writing
    await ping
