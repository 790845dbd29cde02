"""Shared fixtures: servers are required in CI and skipped, with a reason, elsewhere."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_server(name: str, reachable: bool, how: str) -> None:
    """Skip (locally) or fail (in CI) when a server the test needs is not reachable."""
    if reachable:
        return
    message = f"{name} is not reachable ({how})"
    if IN_CI:
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(message)


# -- PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get(
    "TENANTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_postgres_down: list[str] = []  # the first failure to connect: later tests skip at once


def _postgres_admin() -> Any:
    """An autocommit connection to the test server (skips, or fails in CI, when unreachable)."""
    psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    if not _postgres_down:
        try:
            return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as exc:
            _postgres_down.append(str(exc).strip())
    require_server("PostgreSQL", False, f"{POSTGRES_URL}: {_postgres_down[0]}")
    raise AssertionError("unreachable")  # require_server skipped or failed


def _fresh_schema(admin: Any) -> str:
    schema = f"tf_test_{uuid.uuid4().hex[:16]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    return schema


def _url(schema: str) -> str:
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}schema={schema}"


class _MigratedSchemas:
    """This process's migrated test schemas: each is migrated once, lent to one test at a time
    and emptied when it comes back, instead of created, migrated and dropped per test.

    Emptying is one transaction of a ``DELETE`` per table but ``tf_schema`` and a restart of
    every sequence, so the next test finds what a freshly migrated schema holds (``DELETE`` of
    a test's few rows is far cheaper than ``TRUNCATE``, which makes new files for every table
    and index; the tables have no foreign keys and no delete triggers). A schema that comes
    back changed in any other way (its version rows or its tables), or that cannot be emptied
    at once (a connection the test left open holds a lock), is dropped and never lent again."""

    def __init__(self) -> None:
        self.free: list[tuple[str, str]] = []  # (schema, the statements that empty it)
        self.made: list[str] = []
        self.expected: tuple[list[tuple[int]], list[tuple[str]]] | None = None

    def take(self) -> tuple[str, str]:
        if self.free:
            return self.free.pop()
        with _postgres_admin() as admin:
            schema = _fresh_schema(admin)
        self.made.append(schema)
        _migrate(_url(schema))
        with _postgres_admin() as admin:
            shape = self._shape(admin, schema)
        if self.expected is None:
            self.expected = shape
        with _postgres_admin() as admin:
            sequences = admin.execute(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = %s", (schema,)
            ).fetchall()
        empty = [f"DELETE FROM {schema}.{t}" for (t,) in shape[1] if t != "tf_schema"]
        empty += [f"ALTER SEQUENCE {schema}.{q} RESTART" for (q,) in sequences]
        return schema, "; ".join(empty)

    def give_back(self, schema: str, empty: str) -> None:
        psycopg = pytest.importorskip("psycopg")
        with _postgres_admin() as admin:
            try:
                admin.execute("SET lock_timeout = '2s'")
                if self._shape(admin, schema) != self.expected:
                    raise LookupError(schema)
                with admin.transaction():
                    admin.execute(empty.encode())
            except (LookupError, psycopg.Error):  # changed, gone, or locked by a leftover
                admin.execute("SET lock_timeout = 0")
                admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                self.made.remove(schema)
                return
        self.free.append((schema, empty))

    @staticmethod
    def _shape(admin: Any, schema: str) -> tuple[list[tuple[int]], list[tuple[str]]]:
        versions = admin.execute(f"SELECT version FROM {schema}.tf_schema ORDER BY version")
        tables = admin.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,)
        )
        return versions.fetchall(), tables.fetchall()

    def drop_all(self) -> None:
        if not self.made:
            return
        with _postgres_admin() as admin:
            for schema in self.made:
                admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.made.clear()
        self.free.clear()


def _migrate(url: str) -> None:
    """Migrate the schema of ``url`` (on a thread of its own: the caller may be a fixture of an
    async test, inside a running event loop)."""
    from tenantflow.adapters.postgres import PostgresStore

    def upgrade() -> int:
        return asyncio.run(PostgresStore.from_url(url).upgrade())

    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(upgrade).result()


@pytest.fixture(scope="session")
def _migrated_schemas() -> Iterator[_MigratedSchemas]:
    schemas = _MigratedSchemas()
    try:
        yield schemas
    finally:
        schemas.drop_all()


@pytest.fixture
def postgres_url(_migrated_schemas: _MigratedSchemas) -> Iterator[str]:
    """A store URL on the test server with a migrated schema that only this test uses and
    that holds no rows, so that tests can run in parallel with nothing else interfering.

    The schema is migrated once per session and emptied after each test (see
    :class:`_MigratedSchemas`)."""
    schema, empty = _migrated_schemas.take()
    try:
        yield _url(schema)
    finally:
        _migrated_schemas.give_back(schema, empty)


@pytest.fixture
def postgres_empty_url() -> Iterator[str]:
    """A store URL on the test server with a fresh, empty (unmigrated) schema of its own,
    dropped afterwards: for the tests of migrations themselves."""
    with _postgres_admin() as admin:
        schema = _fresh_schema(admin)
    try:
        yield _url(schema)
    finally:
        with _postgres_admin() as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


# -- NATS JetStream (the mesh and hybrid placements) ---------------------------------------------


@pytest.fixture(scope="session")
def nats_server_binary() -> Any:
    """The nats-server (>= 2.10) the project's launcher would run: skips locally, fails in CI,
    when the ``mesh`` extra is not installed."""
    pytest.importorskip("nats", reason="the mesh extra (nats-py) is not installed")
    from tenantflow.adapters.nats.server import find_nats_server
    from tenantflow.errors import ConfigurationError

    try:
        return find_nats_server()
    except ConfigurationError as exc:
        require_server("nats-server >= 2.10", False, str(exc))


@pytest.fixture
def nats_server(nats_server_binary: Any, tmp_path: Any) -> Any:
    """A private JetStream server on a free port with its own store, stopped after the test."""
    from tenantflow.adapters.nats.server import NatsServer

    server = NatsServer(store_dir=tmp_path / "nats", binary=nats_server_binary).start()
    try:
        yield server
    finally:
        server.close()
