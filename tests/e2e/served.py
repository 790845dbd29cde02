"""What the end-to-end tests share to run the command line and ``tenantflow serve`` as a user
does: in processes of their own, with the test apps (``tests/e2e/apps``) importable and no
``TENANTFLOW_*`` setting of the outer environment leaking in.

* :func:`cli_env`, :func:`run_cli`, :func:`cli_ok` — one CLI command in a subprocess;
* :func:`free_port`, :func:`start_server` — ``tenantflow serve`` on a loopback port, ready;
* :class:`CliForker` — many CLI commands, each in a process of its own, without paying for an
  interpreter start and the imports each time (a loaded machine spends seconds on those).

The e2e tests import it relatively (``from .served import …``); the browser tests put this
directory on ``sys.path`` (see ``tests/browser/browser_harness.py``).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

import httpx

__all__ = [
    "APPS",
    "CliForker",
    "cli_env",
    "cli_ok",
    "free_port",
    "run_cli",
    "start_server",
    "wait_ready",
]

APPS = Path(__file__).parent / "apps"
CLI = (sys.executable, "-m", "tenantflow.cli.main")
FORK_SERVER = Path(__file__).parent / "cli_fork_server.py"

_shared: CliForker | None = None
_shared_lock = threading.Lock()


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test apps importable; ``TENANTFLOW_*`` from the outer environment never leaks in;
    then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **(extra or {})}


def run_cli(
    cwd: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``tenantflow ARGS`` in a subprocess in ``cwd`` (``env``: the whole environment, by
    default :func:`cli_env`)."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env) if env is not None else cli_env(),
        input=stdin,
        timeout=timeout,
        check=False,
    )


def cli_ok(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """:func:`run_cli`, which must exit 0; its stdout."""
    proc = run_cli(cwd, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Until ``url``/readyz answers 200; AssertionError (with the log) if the process exits
    first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the server exited: {log.read_text(errors='replace')}"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, (
            f"the server is not ready: {log.read_text(errors='replace')}"
        )
        time.sleep(0.1)


def start_server(
    cwd: Path,
    db: str,
    *options: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> tuple[subprocess.Popen[bytes], str]:
    """``tenantflow serve --db DB OPTIONS… --port P`` in ``cwd``, its output in ``log``; the
    process and its URL once it is ready (killed, and AssertionError, if it never is)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--db", db, *options, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else cli_env(),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


class CliForker:
    """Runs CLI commands as :func:`run_cli` does — each in a process of its own, with its own
    arguments, environment and working directory, its stdout, stderr and exit code — but forked
    from one process that imported the command line once (``cli_fork_server.py``).

    Thread-safe: commands sent from several threads run at the same time.
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(FORK_SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=cli_env(),
            text=True,
        )
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[dict[str, Any]]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out: IO[str] | None = self._proc.stdout
        assert out is not None
        for line in out:
            answer = json.loads(line)
            with self._lock:
                future = self._waiting.pop(answer["id"], None)
            if future is not None:
                future.set_result(answer)
        with self._lock:  # the fork server is gone: nobody answers the rest
            for future in self._waiting.values():
                future.set_exception(RuntimeError("the CLI fork server exited"))
            self._waiting.clear()

    def run(
        self,
        cwd: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Like :func:`run_cli`."""
        future: Future[dict[str, Any]] = Future()
        request = {
            "args": list(args),
            "env": dict(env) if env is not None else cli_env(),
            "cwd": str(cwd),
            "stdin": stdin,
            "timeout": timeout,
        }
        with self._lock:
            n = next(self._ids)
            self._waiting[n] = future
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"id": n, **request}) + "\n")
            self._proc.stdin.flush()
        answer = future.result(timeout=timeout + 30)
        if answer.get("timed_out"):
            raise subprocess.TimeoutExpired([*CLI, *args], timeout)
        return subprocess.CompletedProcess(
            [*CLI, *args], answer["rc"], answer["stdout"], answer["stderr"]
        )

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    @classmethod
    def shared(cls) -> CliForker:
        """One fork server for the whole test session (started on first use, closed at exit)."""
        with _shared_lock:
            global _shared
            if _shared is None:
                _shared = cls()
                atexit.register(_shared.close)
            return _shared

    def __enter__(self) -> CliForker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
