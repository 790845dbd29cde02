"""``tenantflow keys …`` driven in a subprocess against a real SQLite database; the keys it
prints are then checked by an engine in this process, as a server would check them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.engine.keys import ApiKeys, Principal

pytestmark = pytest.mark.timeout(90)

_SECRET = re.compile(r"^tfk_[0-9a-f]{24}_[A-Za-z0-9_-]{43}$")
_NOTICE = "This key is shown once: it is not stored and cannot be shown again."


def cli(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI on ``url``; ``TENANTFLOW_*`` from the outer environment never leaks in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *args, "--db", url],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, "COLUMNS": "200"},
        timeout=30,
        check=False,
    )


def ok(url: str, cwd: Path, *args: str) -> str:
    proc = cli(url, cwd, *args)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stderr == ""
    return proc.stdout


def ok_json(url: str, cwd: Path, *args: str) -> Any:
    return json.loads(ok(url, cwd, *args, "--json"))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A database with tenants ``acme`` and ``globex``, registered through the CLI."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    for tenant in ("acme", "globex"):
        ok(url, tmp_path, "tenants", "create", tenant, "--tier", "free")
    return url


async def authenticate(url: str, secret: str) -> Principal:
    """Check a key as a server on the same database would (a fresh engine, nothing cached)."""
    async with tf.Engine.open(url, execute=False) as engine:
        return await engine.keys.authenticate(secret)


def test_a_key_is_shown_once_then_listed_rotated_and_revoked(db: str, tmp_path: Path) -> None:
    out = ok(db, tmp_path, "keys", "create", "--tenant", "acme", "--name", "ci").splitlines()
    assert out[0].startswith("created API key key_") and "of tenant acme (name ci)" in out[0]
    secret = out[1]
    assert _SECRET.match(secret) and out[2] == _NOTICE
    [listed] = ok_json(db, tmp_path, "keys", "list", "--tenant", "acme")
    assert (listed["name"], listed["tenant_id"], listed["active"]) == ("ci", "acme", True)
    assert listed["prefix"] == secret[:12] and listed["created_at"].endswith("Z")
    assert listed["id"] == "key_" + secret[4:28]
    assert asyncio.run(authenticate(db, secret)) == Principal(listed["id"], "acme")
    table = ok(db, tmp_path, "keys", "list", "--tenant", "acme")
    assert listed["id"] in table and "active" in table and secret not in table
    assert ok_json(db, tmp_path, "keys", "list", "--tenant", "globex") == []
    assert "no keys" in ok(db, tmp_path, "keys", "list", "--tenant", "globex")

    rotated = ok_json(db, tmp_path, "keys", "rotate", listed["id"], "--tenant", "acme")
    assert rotated["replaces"] == listed["id"] and rotated["name"] == "ci"
    assert _SECRET.match(rotated["secret"]) and rotated["notice"] == _NOTICE
    with pytest.raises(tf.AuthenticationError):
        asyncio.run(authenticate(db, secret))
    assert asyncio.run(authenticate(db, rotated["secret"])).tenant_id == "acme"

    revoked = ok(db, tmp_path, "keys", "revoke", rotated["id"], "--tenant", "acme")
    assert revoked.startswith(f"revoked API key {rotated['id']} of tenant acme at ")
    with pytest.raises(tf.AuthenticationError):
        asyncio.run(authenticate(db, rotated["secret"]))
    keys = ok_json(db, tmp_path, "keys", "list", "--tenant", "acme")
    assert [(k["id"], k["active"]) for k in keys] == [
        (listed["id"], False),
        (rotated["id"], False),
    ]
    # Only digests are stored: neither key string is anywhere in the database.
    path = db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY seq")]
    assert len(rows) == 2
    for text in (secret, rotated["secret"]):
        assert all(text not in str(column) for row in rows for column in row)
    assert actions.count("api_key.created") == 1 and actions.count("api_key.rotated") == 1
    assert actions.count("api_key.revoked") == 1


def test_admin_keys_are_kept_apart_from_tenant_keys(db: str, tmp_path: Path) -> None:
    made = ok_json(db, tmp_path, "keys", "create", "--admin", "--name", "ops")
    assert (made["admin"], made["tenant_id"], made["name"]) == (True, None, "ops")
    assert asyncio.run(authenticate(db, made["secret"])).is_admin
    assert [k["id"] for k in ok_json(db, tmp_path, "keys", "list", "--admin")] == [made["id"]]
    assert ok_json(db, tmp_path, "keys", "list", "--tenant", "acme") == []
    refused = cli(db, tmp_path, "keys", "revoke", made["id"], "--tenant", "acme")
    assert_one_line_error(refused, 1, "not found")  # an admin key is no tenant's
    out = ok(db, tmp_path, "keys", "rotate", made["id"], "--admin").splitlines()
    assert out[0] == f"revoked {made['id']}; its replacement:"
    assert out[1].startswith("created admin API key key_") and out[2].startswith("tfk_")
    assert out[3] == _NOTICE
    revoked = ok_json(db, tmp_path, "keys", "revoke", made["id"], "--admin")
    assert revoked["active"] is False and revoked["revoked_at"].endswith("Z")


async def test_keys_are_managed_while_an_engine_runs_on_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    async with tf.Engine.open(url) as engine:  # holds the file's lock, like a running server
        await engine.tenants.create("acme")
        made = json.loads(
            await asyncio.to_thread(ok, url, tmp_path, "keys", "create", "-t", "acme", "--json")
        )
        assert await engine.keys.authenticate(made["secret"]) == Principal(made["id"], "acme")
        await asyncio.to_thread(ok, url, tmp_path, "keys", "revoke", made["id"], "-t", "acme")
        # This engine still trusts its cached verification for up to its TTL; a check that
        # reads the store sees the revocation at once.
        fresh = ApiKeys(engine.router, engine.clock, cache_ttl=timedelta(0))
        with pytest.raises(tf.AuthenticationError, match="invalid API key"):
            await fresh.authenticate(made["secret"])
        actions = [r.action for r in await engine.audit_log("acme")]
        assert actions[-2:] == ["api_key.created", "api_key.revoked"]


def test_bad_input_is_one_line_and_a_nonzero_exit(db: str, tmp_path: Path) -> None:
    assert_one_line_error(cli(db, tmp_path, "keys", "create"), 2, "--tenant", "--admin")
    both = cli(db, tmp_path, "keys", "list", "--tenant", "acme", "--admin")
    assert_one_line_error(both, 2, "exactly one")
    assert_one_line_error(cli(db, tmp_path, "keys", "create", "-t", "no pe"), 2, "tenant id")
    bad_name = cli(db, tmp_path, "keys", "create", "-t", "acme", "--name", "a;b")
    assert_one_line_error(bad_name, 2, "key name")
    assert_one_line_error(cli(db, tmp_path, "keys", "create", "-t", "nope"), 1, "tenant 'nope'")
    missing = cli(db, tmp_path, "keys", "rotate", "key_" + "0" * 24, "-t", "acme")
    assert_one_line_error(missing, 1, "not found")
    made = ok_json(db, tmp_path, "keys", "create", "-t", "acme")
    other = cli(db, tmp_path, "keys", "revoke", made["id"], "-t", "globex")
    assert_one_line_error(other, 1, "not found")  # another tenant's key is not found
    ok(db, tmp_path, "keys", "revoke", made["id"], "-t", "acme")
    again = cli(db, tmp_path, "keys", "rotate", made["id"], "-t", "acme")
    assert_one_line_error(again, 1, "revoked")
    nowhere = f"sqlite:///{tmp_path / 'missing.db'}"
    assert_one_line_error(cli(nowhere, tmp_path, "keys", "list", "--admin"), 1, "no tenantflow")
    assert not (tmp_path / "missing.db").exists()
