"""``tenantflow memory``, in subprocesses: on the store (``--db``, ``--tenant``) and against a
running server (``--url``, the API key's tenant), with the same output either way; one tenant
never reaches another's memory; bad input is one line on stderr and exit 2."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tenantflow as tf
from tenantflow.adapters.sqlite import SqliteStore

from .served import CliForker, cli_env, start_server

pytestmark = pytest.mark.timeout(120)

CANARY = "okapi7731"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return cli_env({"COLUMNS": "200", **(extra or {})})


def cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    # Forked from one process that imported the command line once (see served.CliForker).
    return CliForker.shared().run(cwd, *args, env=_env(env), stdin=stdin, timeout=60)


def ok(cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    proc = cli(cwd, *args, env=env, stdin=stdin)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert proc.stderr == ""
    return proc.stdout


def ok_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(ok(cwd, *args, "--json", env=env))


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@dataclass(frozen=True)
class Db:
    url: str
    cwd: Path

    def store(self, tenant: str, *args: str) -> tuple[str, ...]:
        """``args`` for tenant ``tenant``'s memory on the store."""
        return ("memory", *args, "--tenant", tenant, "--db", self.url)


async def _tenants(url: str) -> None:
    async with tf.Engine.open(url) as engine:
        await engine.tenants.create("bank-a", tier="standard", memory_retention="30d")
        await engine.tenants.create("bank-b", tier="standard")


@pytest.fixture
def db(tmp_path: Path) -> Db:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    asyncio.run(_tenants(url))
    return Db(url, tmp_path)


def test_memory_commands_on_the_store(db: Db) -> None:
    a, b, cwd = (lambda *x: db.store("bank-a", *x)), (lambda *x: db.store("bank-b", *x)), db.cwd
    stored = ok_json(cwd, *a("put", "profile", '{"risk": "low"}', "-N", "user:alice"))
    assert (stored["namespace"], stored["key"], stored["value"], stored["version"]) == (
        "user:alice",
        "profile",
        {"risk": "low"},
        1,
    )
    assert stored["expires_at"].endswith("Z")  # bank-a keeps memory 30 days
    assert "stored profile in namespace default (version 1, expires" in ok(
        cwd, *a("put", "profile", "plain words", "--string")
    )
    ok(cwd, *a("put", "note:2", "-"), stdin='[1, 2, "three"]')
    ok(cwd, *b("put", "profile", json.dumps({"secret": CANARY})))

    got = ok_json(cwd, *a("get", "profile"))
    assert (got["value"], got["namespace"]) == ("plain words", "default")
    table = ok(cwd, *a("get", "profile", "--namespace", "user:alice"))
    assert "user:alice" in table and '"risk"' in table and CANARY not in table
    listed = ok_json(cwd, *a("list"))
    assert [(e["key"], e["value"]) for e in listed] == [
        ("note:2", [1, 2, "three"]),
        ("profile", "plain words"),
    ]
    assert [e["key"] for e in ok_json(cwd, *a("list", "--prefix", "note:"))] == ["note:2"]
    assert "more: --after note:2" in ok(cwd, *a("list", "--limit", "1"))
    assert (
        ok(cwd, *a("list", "-N", "session:none")).strip() == "no entries in namespace session:none"
    )

    document = ok(cwd, *a("add", "merger talks with the okapi fund", "-m", '{"src": "memo"}'))
    ok(cwd, *b("add", f"{CANARY} confidential merger"))
    hits = ok_json(cwd, *a("search", "merger okapi"))
    assert [(h["id"], h["metadata"]) for h in hits] == [(document.strip(), {"src": "memo"})]
    assert ok_json(cwd, *a("search", CANARY)) == []
    assert "okapi fund" in ok(cwd, *a("search", "merger"))

    # bank-b's key is bank-b's; bank-a's names reach nothing of bank-b and the reverse.
    one_line_error(cli(cwd, *b("get", "note:2")), 1, "memory entry 'note:2' not found")
    one_line_error(cli(cwd, *b("delete", "note:2")), 1, "not found")
    assert ok_json(cwd, *b("get", "profile"))["value"] == {"secret": CANARY}

    assert "deleted entry note:2 from namespace default" in ok(cwd, *a("delete", "note:2"))
    one_line_error(cli(cwd, *a("get", "note:2")), 1, "not found")
    ok(cwd, *a("delete", document.strip(), "--document"))
    assert ok_json(cwd, *a("search", "merger")) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("get", "k", "-N", "team:x"), ("invalid memory namespace 'team:x'",)),
        (("get", "a/b"), ("invalid memory key 'a/b'",)),
        (("put", "k", "{not json"), ("VALUE is not JSON", "--string")),
        (("put", "k", "-", "--string"), ("at most 262144",)),  # 300,000 bytes on stdin
        (("add", "text", "-m", "[1]"), ("--metadata must be a JSON object",)),
        (("add", "..."), ("no words to index",)),
        (("search", "  "), ("the search query is empty",)),
        (("list", "--limit", "0"), ("limit must be within 1..1000",)),
        (("search", "x", "--limit", "101"), ("limit must be within 1..100",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(db: Db, args: tuple[str, ...], words: tuple[str]) -> None:
    stdin = "x" * 300_000 if "-" in args else None
    one_line_error(cli(db.cwd, *db.store("bank-a", *args), stdin=stdin), 2, *words)
    assert ok_json(db.cwd, *db.store("bank-a", "list")) == []  # nothing was written


def test_a_tenant_is_needed_and_purge_is_on_the_store_only(db: Db) -> None:
    one_line_error(cli(db.cwd, "memory", "list", "--db", db.url), 2, "--tenant")
    one_line_error(
        cli(db.cwd, "--url", "http://127.0.0.1:9", "--api-key", "k", "memory", "purge"),
        2,
        "store only",
    )
    one_line_error(
        cli(db.cwd, *db.store("nobody", "put", "k", "1")), 1, "tenant 'nobody' not found"
    )


class _Past:
    """A clock two days behind: what it writes has already expired."""

    def now(self) -> float:
        return time.time() - 2 * 86400

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float) -> Any:
        return asyncio.timeout(seconds)


async def _expired(path: Path) -> None:
    async with tf.Engine(SqliteStore(path), clock=_Past()) as engine:
        await engine.tenants.create("short", tier="standard", memory_retention="1h")
        await engine.memory.put("short", "old", 1)
        await engine.memory.add_document("short", "old words")


def test_purge_deletes_expired_memory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'purge.db'}"
    asyncio.run(_expired(tmp_path / "purge.db"))
    assert ok_json(tmp_path, "memory", "list", "--tenant", "short", "--db", url) == []
    purged = ok_json(tmp_path, "memory", "purge", "--db", url)
    assert purged == {"short": {"memory_entries": 1, "memory_documents": 1, "memory_terms": 2}}
    assert ok(tmp_path, "memory", "purge", "--db", url).strip() == "nothing expired"


# -- against a server ---------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    db: Db
    keys: dict[str, str]


@pytest.fixture
def served(db: Db) -> Iterator[Served]:
    keys = {
        t: ok_json(db.cwd, "keys", "create", "--tenant", t, "--db", db.url)["secret"]
        for t in ("bank-a", "bank-b")
    }
    proc, url = start_server(
        db.cwd, db.url, "--app", "api_workflows:setup", log=db.cwd / "server.log", env=_env()
    )
    try:
        yield Served(url, db, keys)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_remote_memory_is_the_keys_tenants_and_prints_like_the_store(served: Served) -> None:
    cwd, url = served.db.cwd, served.url
    as_a = {"TENANTFLOW_URL": url, "TENANTFLOW_API_KEY": served.keys["bank-a"]}
    as_b = {"TENANTFLOW_URL": url, "TENANTFLOW_API_KEY": served.keys["bank-b"]}
    put = ok_json(cwd, "memory", "put", "profile", '{"tier": "gold"}', "-N", "user:ann", env=as_a)
    assert (put["value"], put["version"]) == ({"tier": "gold"}, 1)
    ok(cwd, "memory", "put", "profile", json.dumps(CANARY), env=as_b)
    ok(cwd, "memory", "add", "gold tier customer since 2019", env=as_a)
    ok(cwd, "memory", "add", f"{CANARY} gold reserves", env=as_b)

    remote = {
        "get": ok_json(cwd, "memory", "get", "profile", "-N", "user:ann", env=as_a),
        "list": ok_json(cwd, "memory", "list", "-N", "user:ann", env=as_a),
        "search": ok_json(cwd, "memory", "search", "gold", env=as_a),
    }
    assert [h["text"] for h in remote["search"]] == ["gold tier customer since 2019"]
    one_line_error(
        cli(cwd, "memory", "get", "profile", env=as_a), 1, "memory entry 'profile' not found"
    )
    assert ok_json(cwd, "memory", "get", "profile", env=as_b)["value"] == CANARY
    one_line_error(
        cli(cwd, "memory", "get", "profile", "--tenant", "bank-b", env=as_a),
        2,
        "does not match the API key",
    )
    one_line_error(cli(cwd, "memory", "put", "a/b", "1", env=as_a), 2, "invalid memory key")
    table = ok(cwd, "memory", "list", "-N", "user:ann", env=as_a)

    # What the store prints for the same data (while the server runs: reads need no lock).
    db = served.db
    local = {
        "get": ok_json(cwd, *db.store("bank-a", "get", "profile", "-N", "user:ann")),
        "list": ok_json(cwd, *db.store("bank-a", "list", "-N", "user:ann")),
        "search": ok_json(cwd, *db.store("bank-a", "search", "gold")),
    }
    assert remote == local
    assert table == ok(cwd, *db.store("bank-a", "list", "-N", "user:ann"))
