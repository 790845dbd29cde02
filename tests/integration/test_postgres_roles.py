"""``tenantflow db upgrade`` on PostgreSQL without CREATEROLE: with roles an administrator
created and granted beforehand it works; without them it says, in one line, what to run."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

psycopg = pytest.importorskip("psycopg")

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

ADMIN_URL = os.environ.get(
    "TENANTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ROLES = ("tenantflow_app", "tenantflow_system")


def _admin(statements: list[str]) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def owner() -> Iterator[str]:
    """A login role without CREATEROLE owning a fresh schema; the platform roles exist."""
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    name = f"tf_owner_{secrets.token_hex(4)}"
    ensure = [
        f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS;"
        " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        for role in ROLES
    ]
    _admin(
        [
            *ensure,
            f"CREATE ROLE {name} LOGIN NOCREATEROLE NOSUPERUSER",
            f"CREATE SCHEMA {name} AUTHORIZATION {name}",
            f"GRANT CREATE ON DATABASE {ADMIN_URL.rsplit('/', 1)[1].split('?')[0]} TO {name}",
        ]
    )
    try:
        yield name
    finally:
        _admin([f"DROP SCHEMA {name} CASCADE", f"DROP OWNED BY {name}", f"DROP ROLE {name}"])


def _upgrade(owner: str) -> subprocess.CompletedProcess[str]:
    host = ADMIN_URL.split("@", 1)[1]
    url = f"postgresql://{owner}@{host}?schema={owner}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "db", "upgrade", "--db", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
        check=False,
    )


def test_pre_created_roles_need_no_createrole(owner: str) -> None:
    _admin([f"GRANT {role} TO {owner}" for role in ROLES])
    done = _upgrade(owner)
    assert done.returncode == 0, done.stderr
    done = _upgrade(owner)  # and again: nothing granted twice
    assert done.returncode == 0, done.stderr


def test_without_the_grant_the_error_says_what_to_run(owner: str) -> None:
    done = _upgrade(owner)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert f"GRANT tenantflow_app TO {owner}" in lines[0]
