"""Processes under test: starting them, killing them, logs they leave, servers they open."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

__all__ = [
    "LineLog",
    "Process",
    "admin_key",
    "cli",
    "cli_env",
    "free_port",
    "progress_lines",
    "wait_ready",
]


class LineLog:
    """An append-only line log, flushed at every line: a SIGKILL loses nothing written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fh: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the process

    def line(self, text: str) -> None:
        self._fh.write(text + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def progress_lines(path: Path, pid: int) -> list[list[str]]:
    """The complete lines ``pid`` wrote to a progress log (``<pid> <event> ...``), split,
    without the pid."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    prefix = f"{pid} "
    return [ln.split()[1:] for ln in text.split("\n")[:-1] if ln.startswith(prefix)]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a ``tenantflow`` child: this one without ``TENANTFLOW_*`` (so that
    a developer's settings do not leak in), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    env.update(extra)
    return env


def cli(env: Mapping[str, str], *args: str, timeout_s: float = 120.0) -> str:
    """Run ``tenantflow ARGS`` to its end; its stdout (RuntimeError with stderr on failure)."""
    done = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tenantflow {args[0]} exited {done.returncode}: {done.stderr[-500:]}")
    return done.stdout


def admin_key(env: Mapping[str, str], db: str) -> str:
    """Create the schema and an admin key, as an operator does, from the command line."""
    cli(env, "db", "upgrade", "--db", db)
    secret: str = json.loads(cli(env, "keys", "create", "--admin", "--db", db, "--json"))["secret"]
    return secret


class Process:
    """A child process in a process group of its own (a kill reaches it and nothing else)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        output: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        with output.open("ab") as out:
            self.proc = subprocess.Popen(
                list(args),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self.killed_at: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> float:
        """SIGKILL it; the wall time of the kill."""
        self.killed_at = time.time()
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return self.killed_at

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM it and wait (SIGKILL after ``timeout_s``); its exit status."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(base_url: str, server: Process, timeout_s: float = 60.0) -> None:
    """Until ``GET /readyz`` answers 200 (RuntimeError if the server exits or never does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"the server exited with {server.proc.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the server at {base_url} did not become ready in {timeout_s:g}s")
