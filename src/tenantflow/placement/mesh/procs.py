"""Agent processes: start ``tenantflow agent`` as a child process, and stop or kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AgentProcess"]


@dataclass
class AgentProcess:
    """One ``tenantflow agent`` child process."""

    store_url: str
    nats_url: str
    creds_file: Path | None
    regions: Sequence[str]
    apps: Sequence[str]
    default_region: str = "global"
    kinds: str = "function,agent,review"
    slots: int = 8
    express_slots: int | None = None
    eager_log: bool = False
    lease_s: float = 30.0
    ack_wait_s: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "tenantflow.cli.main",
            "agent",
            "--db",
            self.store_url,
            "--nats",
            self.nats_url,
            "--region",
            ",".join(self.regions),
            "--default-region",
            self.default_region,
            "--kinds",
            self.kinds,
            "--slots",
            str(self.slots),
            "--lease",
            str(self.lease_s),
            "--ack-wait",
            str(self.ack_wait_s),
        ]
        if self.express_slots is not None:
            args += ["--express-slots", str(self.express_slots)]
        if self.eager_log:
            args.append("--eager-log")
        if self.creds_file is not None:
            args += ["--nats-creds", os.fspath(self.creds_file)]
        for app in self.apps:
            args += ["--app", app]
        return args

    def start(self) -> AgentProcess:
        env = {**os.environ, **self.env}
        out = open(self.log_file, "ab") if self.log_file is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: nothing is handed back; its items are redelivered after ack_wait."""
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time."""
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
