"""The runner protocol: how ``tenantflow topology compare`` starts, faults and measures a placement.

A placement joins the comparison with a :class:`PlacementRunner` registered in
:data:`tenantflow.topology.placements.RUNNERS`. The runner starts the placement's real
processes for a workload and hands back a :class:`Deployment`; the comparison then talks to it
only through this protocol and the REST API at ``base_url``:

1. ``runner.unavailable()`` — ``None`` when the runner can run here, else one line saying why
   not (the report prints it in the placement's column: never a figure);
2. ``runner.start(workload, workdir, env)`` — start every process, wait until the API answers,
   and return a :class:`Deployment` whose ``admin_key`` can create tenants over the API. The
   processes must load ``tenantflow.topology.app:setup`` with ``env`` (which names the workload
   file, its profile and the executions log every step appends to);
3. ``deployment.components()`` — what can fail: each :class:`Component` with its kind, whether
   every tenant depends on it, and which faults it takes (``kill``: SIGKILL then what a
   supervisor does, ``stop``: SIGSTOP for a while then SIGCONT); ``deployment.serves(name,
   since)`` — the tenants it served since a time (``None``: every tenant);
4. ``deployment.inject(name, fault)`` / ``deployment.recover(name, fault)`` — do the fault (its
   wall time is returned), then undo it (restart a killed process, SIGCONT a stopped one);
5. ``deployment.processes()`` (pid → role, for ``/proc``), ``deployment.connections()`` (extra
   connection counts the processes' own sockets do not show, e.g. database backends),
   ``deployment.enforcement_points()`` (processes that apply a tenant's policy),
   ``deployment.describe()`` (versions, durability settings, stores);
6. optionally ``deployment.idempotency_keys = False``: its API refuses ``Idempotency-Key``, so
   the driver submits without one and retries a submission only when its connection was
   refused (see :class:`~tenantflow.topology.driver.Driver`);
7. ``deployment.stop()`` — stop everything and drop what it created (a private database
   schema, files).

Everything else — tenants, load, latency, faults' effects, policy lag, cost, timelines — the
comparison measures the same way for every placement, through the API and the executions log.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tenantflow.selftest.procs import Process, free_port, wait_ready
from tenantflow.topology.execlog import read_exec_log
from tenantflow.topology.workload import Workload

__all__ = [
    "FAULTS",
    "Component",
    "Deployment",
    "PlacementRunner",
    "ProcessSet",
    "tenantflow_command",
]

FAULTS = ("kill", "stop")
"""``kill``: SIGKILL, then the supervisor's restart; ``stop``: SIGSTOP, then SIGCONT."""

APP = "tenantflow.topology.app:setup"


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a placement that can fail on its own.

    Attributes:
        name: Unique within the deployment (``front``, ``worker-1``, ``engine``, ``cell-3``).
        kind: ``api``, ``worker``, ``engine``, ``database``, ``cell``, ``plane``, ``agent`` or
            ``broker``.
        shared: Every tenant depends on it.
        faults: The faults it takes (of :data:`FAULTS`).
        how: How the faults are done, in words (for the report).
    """

    name: str
    kind: str
    shared: bool
    faults: tuple[str, ...]
    how: str


class Deployment(Protocol):
    """A placement's processes, running (see the module docstring)."""

    placement: str
    base_url: str
    admin_key: str

    def components(self) -> list[Component]: ...

    def serves(self, component: str, since: float) -> set[str] | None: ...

    def inject(self, component: str, fault: str) -> float: ...

    def recover(self, component: str, fault: str) -> None: ...

    def processes(self) -> dict[int, str]: ...

    def connections(self) -> dict[str, int]: ...

    def enforcement_points(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class PlacementRunner(Protocol):
    """Starts a placement for a workload (see the module docstring)."""

    name: str
    summary: str

    def unavailable(self) -> str | None: ...

    def start(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> Deployment: ...


def tenantflow_command(*args: str) -> list[str]:
    """``python -m tenantflow.cli.main ARGS`` with this interpreter."""
    return [sys.executable, "-m", "tenantflow.cli.main", *args]


class ProcessSet:
    """Named child processes, each restartable with the command it was started with; the base
    of the runners whose components are processes."""

    def __init__(self, workdir: Path, env: Mapping[str, str], exec_log: Path) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.exec_log = exec_log
        self.procs: dict[str, Process] = {}
        self.commands: dict[str, list[str]] = {}
        self.stopped: set[str] = set()
        self.restarts: dict[str, int] = {}

    def spawn(self, name: str, command: Sequence[str]) -> Process:
        self.commands[name] = list(command)
        proc = Process(command, output=self.workdir / f"{name}.out", env=self.env)
        self.procs[name] = proc
        return proc

    def respawn(self, name: str) -> Process:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        return self.spawn(name, self.commands[name])

    def kill(self, name: str) -> float:
        return self.procs[name].kill()

    def sigstop(self, name: str) -> float:
        when = time.time()
        self.procs[name].signal(signal.SIGSTOP)
        self.stopped.add(name)
        return when

    def sigcont(self, name: str) -> None:
        self.procs[name].signal(signal.SIGCONT)
        self.stopped.discard(name)

    def pids(self) -> dict[int, str]:
        from tenantflow.topology.procfs import children

        out: dict[int, str] = {}
        for name, proc in self.procs.items():
            if proc.alive():
                role = name.rstrip("0123456789-")
                out[proc.pid] = role
                for kid in children(proc.pid):
                    out[kid] = role
        return out

    def served_by_pid(self, name: str, since: float) -> set[str]:
        """The tenants whose steps the process ``name`` started since ``since`` (from the
        executions log)."""
        proc = self.procs.get(name)
        if proc is None:
            return set()
        lines, _ = read_exec_log(self.exec_log)
        return {x.tenant for x in lines if x.pid == proc.pid and x.kind == "S" and x.at >= since}

    def stop_all(self) -> None:
        for name in list(self.stopped):
            self.sigcont(name)
        # SIGTERM to all, then wait for each: they shut down side by side.
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.signal(signal.SIGTERM)
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.stop(timeout_s=15.0)

    def start_server(self, name: str, command: Sequence[str], base_url: str) -> None:
        self.spawn(name, command)
        self.wait_server(name, base_url)

    def wait_server(self, name: str, base_url: str) -> None:
        """Until the process ``name`` (spawned already) answers ``/readyz`` at ``base_url``."""
        proc = self.procs[name]
        try:
            wait_ready(base_url, proc, timeout_s=90.0)
        except RuntimeError as exc:
            tail = (self.workdir / f"{name}.out").read_text(errors="replace")[-600:]
            raise RuntimeError(f"{exc}; its output ends: {tail}") from None


__all__ += ["APP", "free_port"]
