"""Shared fixtures: servers are required in CI and skipped, with a reason, elsewhere."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
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


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A store URL on the test server with a fresh schema of its own, dropped afterwards, so
    that tests can run in parallel with nothing else interfering."""
    schema = f"tf_test_{uuid.uuid4().hex[:16]}"
    with _postgres_admin() as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}schema={schema}"
    finally:
        with _postgres_admin() as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
