"""The PostgreSQL server the scenarios use: reaching it, a scratch schema per scenario, and
restarting it (the database-restart scenario)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tenantflow.selftest.core import Unavailable

__all__ = ["default_restart_command", "restart", "scratch_schema", "wait_up"]


def _connect(url: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the postgres extra is part of dev
        raise Unavailable(f"the postgres extra is not installed ({exc})") from None
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"PostgreSQL is not reachable at {url}: {first}") from None


@contextmanager
def scratch_schema(url: str, tag: str) -> Iterator[str]:
    """A store URL on the server with a fresh schema of its own, dropped afterwards."""
    schema = f"tf_selftest_{tag}_{uuid.uuid4().hex[:10]}"
    with _connect(url) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}schema={schema}"
    finally:
        for _ in range(30):  # the server may be restarting
            try:
                with _connect(url) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
                break
            except Unavailable:
                time.sleep(1.0)


def wait_up(url: str, timeout_s: float = 60.0) -> float:
    """Until the server accepts a connection and answers; the wall time it first did."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with _connect(url) as conn:
                conn.execute("SELECT 1")
            return time.time()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def default_restart_command() -> list[str] | None:
    """``pg_ctlcluster --skip-systemctl-redirect VERSION main restart`` when the server is a
    Debian-style cluster this machine manages (one version under ``/etc/postgresql``)."""
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir())
    if tool is None or len(versions) != 1:
        return None
    return [tool, "--skip-systemctl-redirect", versions[0], "main", "restart"]  # mode: fast


def restart(command: Sequence[str]) -> None:
    """Restart the server with ``command`` (RuntimeError with its output if it fails)."""
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"restarting PostgreSQL ({' '.join(command)}) failed with {done.returncode}:"
            f" {(done.stderr or done.stdout).strip()[-300:]}"
        )
