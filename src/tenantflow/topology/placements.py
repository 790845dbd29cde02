"""The placements the comparison knows, each a :class:`~tenantflow.topology.runner.PlacementRunner`.

* ``embedded``: one ``tenantflow serve`` process on a SQLite file records, executes and serves
  every tenant's runs.
* ``centralized``: a ``tenantflow serve --workers external`` front and ``workers``
  ``tenantflow worker`` processes on one PostgreSQL database (a private schema, dropped after).
* ``federated``, ``mesh``, ``hybrid``: their runners are added here once those placements
  exist (see :mod:`tenantflow.topology.runner` for the protocol); until then
  :meth:`unavailable` says why, and the report prints that line instead of figures.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tenantflow import __version__
from tenantflow.selftest.procs import admin_key, cli_env
from tenantflow.topology.runner import (
    APP,
    Component,
    Deployment,
    PlacementRunner,
    ProcessSet,
    free_port,
    tenantflow_command,
)
from tenantflow.topology.workload import Workload

__all__ = ["DEFAULT_PG", "PLACEMENTS", "runners", "versions"]

PLACEMENTS = ("embedded", "centralized", "federated", "mesh", "hybrid")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


# -- embedded ----------------------------------------------------------------------------------


class EmbeddedDeployment:
    """One ``tenantflow serve`` process on a SQLite file."""

    placement = "embedded"

    def __init__(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.db = f"sqlite:///{workdir / 'embedded.db'}"
        self.procs = ProcessSet(workdir, cli_env(**env), Path(env["TF_TOPOLOGY_EXEC_LOG"]))
        self.admin_key = admin_key(self.procs.env, self.db)
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        command = tenantflow_command(
            "serve", "--db", self.db, "--app", APP, "--port", str(port), "--slots"
        )
        command += [str(workload.slots), "--log-level", "warning", "--dashboard", "off"]
        self.procs.start_server("engine", command, self.base_url)

    def components(self) -> list[Component]:
        return [
            Component(
                "engine",
                "engine",
                shared=True,
                faults=("kill", "stop"),
                how="SIGKILL then restart on the same SQLite file; SIGSTOP then SIGCONT",
            )
        ]

    def serves(self, component: str, since: float) -> set[str] | None:
        return None

    def inject(self, component: str, fault: str) -> float:
        return self.procs.kill(component) if fault == "kill" else self.procs.sigstop(component)

    def recover(self, component: str, fault: str) -> None:
        if fault == "kill":
            self.procs.start_server(component, self.procs.commands[component], self.base_url)
        else:
            self.procs.sigcont(component)

    def processes(self) -> dict[int, str]:
        return self.procs.pids()

    def connections(self) -> dict[str, int]:
        return {}

    def enforcement_points(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        return {
            "store": "SQLite (one file, WAL)",
            "durability": "synchronous=full (fsync of the WAL at every commit: the default)",
            "processes": "1 x tenantflow serve (API + engine)",
        }

    def stop(self) -> None:
        self.procs.stop_all()


class EmbeddedRunner:
    name = "embedded"
    summary = "one process records, executes and serves every tenant (SQLite)"

    def unavailable(self) -> str | None:
        return None

    def start(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> Deployment:
        return EmbeddedDeployment(workload, workdir, env)


# -- centralized -------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


class CentralizedDeployment:
    """A front and ``workers`` worker processes on a private schema of one PostgreSQL server."""

    placement = "centralized"

    def __init__(
        self, workload: Workload, workdir: Path, env: Mapping[str, str], server_url: str
    ) -> None:
        self.workdir = workdir
        self.server_url = server_url
        self.schema = f"tf_topology_{uuid.uuid4().hex[:10]}"
        with _connect(self.server_url) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
            self.pg_version = str(conn.execute("SHOW server_version").fetchone()[0])
            self.fsync = str(conn.execute("SHOW fsync").fetchone()[0])
            self.sync_commit = str(conn.execute("SHOW synchronous_commit").fetchone()[0])
        sep = "&" if "?" in self.server_url else "?"
        self.db = f"{self.server_url}{sep}schema={self.schema}"
        self.procs = ProcessSet(workdir, cli_env(**env), Path(env["TF_TOPOLOGY_EXEC_LOG"]))
        try:
            self.admin_key = admin_key(self.procs.env, self.db)
            port = free_port()
            self.base_url = f"http://127.0.0.1:{port}"
            front = tenantflow_command(
                "serve", "--db", self.db, "--app", APP, "--workers", "external"
            )
            front += ["--port", str(port), "--log-level", "warning", "--dashboard", "off"]
            self.procs.start_server("front", front, self.base_url)
            self.workers = [f"worker-{i + 1}" for i in range(workload.settings.workers)]
            for name in self.workers:
                command = tenantflow_command("worker", "--db", self.db, "--app", APP)
                command += ["--slots", str(workload.slots)]
                command += ["--lease", str(workload.settings.lease)]
                self.procs.spawn(name, command)
        except BaseException:
            self.stop()
            raise

    def components(self) -> list[Component]:
        out = [
            Component(
                "front",
                "api",
                shared=True,
                faults=("kill", "stop"),
                how="SIGKILL then restart (same port); SIGSTOP then SIGCONT",
            )
        ]
        out += [
            Component(
                name,
                "worker",
                shared=False,
                faults=("kill", "stop"),
                how="SIGKILL then a replacement worker; SIGSTOP then SIGCONT",
            )
            for name in self.workers
        ]
        out.append(
            Component(
                "database",
                "database",
                shared=True,
                faults=("kill",),
                how="pg_terminate_backend on every connection to the private schema's database"
                " (the shared PostgreSQL server itself is not restarted on this machine)",
            )
        )
        return out

    def serves(self, component: str, since: float) -> set[str] | None:
        if component.startswith("worker-"):
            return self.procs.served_by_pid(component, since)
        return None

    def _schema_backends(self) -> list[int]:
        # Backends whose client is one of this deployment's processes (by client port owner
        # is not visible across users): match on the clients' local ports instead.
        ports = _local_ports(self.procs.pids())
        with _connect(self.server_url) as conn:
            rows = conn.execute(
                "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
        return [int(pid) for pid, port in rows if port is not None and int(port) in ports]

    def inject(self, component: str, fault: str) -> float:
        import time

        if component == "database":
            when = time.time()
            with _connect(self.server_url) as conn:
                for pid in self._schema_backends():
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            return when
        return self.procs.kill(component) if fault == "kill" else self.procs.sigstop(component)

    def recover(self, component: str, fault: str) -> None:
        if component == "database":
            return  # the processes reconnect by themselves
        if fault == "stop":
            self.procs.sigcont(component)
        elif component == "front":
            self.procs.start_server(component, self.procs.commands[component], self.base_url)
        else:
            self.procs.respawn(component)

    def processes(self) -> dict[int, str]:
        out = self.procs.pids()
        with contextlib.suppress(Exception):
            for pid in self._schema_backends():
                out[pid] = "postgres-backend"
        return out

    def connections(self) -> dict[str, int]:
        try:
            return {"database": len(self._schema_backends())}
        except Exception:
            return {}

    def enforcement_points(self) -> int:
        return len(self.workers)

    def describe(self) -> dict[str, Any]:
        return {
            "store": f"PostgreSQL {self.pg_version} (private schema {self.schema})",
            "durability": f"fsync={self.fsync}, synchronous_commit={self.sync_commit}",
            "processes": f"1 x tenantflow serve --workers external + {len(self.workers)} x"
            " tenantflow worker, + their PostgreSQL backends",
        }

    def stop(self) -> None:
        if hasattr(self, "procs"):
            self.procs.stop_all()
        with contextlib.suppress(Exception), _connect(self.server_url) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def _local_ports(pids: Mapping[int, str]) -> set[int]:
    """The local TCP ports of every socket the processes ``pids`` hold (from /proc/net/tcp*)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for name in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd_dir / name)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


class CentralizedRunner:
    name = "centralized"
    summary = "a front and worker processes sharing one PostgreSQL database"

    def __init__(self, server_url: str = DEFAULT_PG) -> None:
        self.server_url = server_url

    def unavailable(self) -> str | None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "the postgres extra is not installed (pip install 'tenantflow[postgres]')"
        try:
            with _connect(self.server_url) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"PostgreSQL is not reachable at {redact(self.server_url)} (--pg): {first}"
        return None

    def start(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> Deployment:
        return CentralizedDeployment(workload, workdir, env, self.server_url)


# -- placements still to come ------------------------------------------------------------------


class NotYetRunner:
    """A placement whose runner is not written yet: it says why, and never starts."""

    def __init__(self, name: str, summary: str, why: str) -> None:
        self.name = name
        self.summary = summary
        self.why = why

    def unavailable(self) -> str | None:
        return self.why

    def start(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> Deployment:
        raise RuntimeError(f"{self.name}: not available: {self.why}")


def runners(pg_url: str = DEFAULT_PG) -> dict[str, PlacementRunner]:
    """Every placement's runner (the centralized one on the PostgreSQL server ``pg_url``)."""
    return {
        "embedded": EmbeddedRunner(),
        "centralized": CentralizedRunner(pg_url),
        "federated": NotYetRunner(
            "federated",
            "a cell (embedded engine) per tenant or per pool of tenants under a thin plane",
            "its runner is not written yet: the federated placement (tenantflow plane / cell,"
            " issue 16) landed as this comparison was finished; the runner must start the plane,"
            " follow its 307 to each tenant's cell and read the cells from /plane/v1/cells"
            " (protocol: topology/runner.py)",
        ),
        "mesh": NotYetRunner(
            "mesh",
            "agents on NATS JetStream, no central scheduler",
            "the mesh placement (NATS JetStream agents, issue 17) is not on this branch yet;"
            " its runner goes in tenantflow/topology/placements.py (protocol: topology/runner.py)",
        ),
        "hybrid": NotYetRunner(
            "hybrid",
            "orchestrated critical path, choreographed side effects through an outbox",
            "the hybrid placement (outbox + side-effect agents, issue 17) is not on this branch"
            " yet; its runner goes in tenantflow/topology/placements.py (protocol:"
            " topology/runner.py)",
        ),
    }


def versions() -> dict[str, str]:
    """What ran: tenantflow's and Python's versions."""
    import platform

    return {
        "tenantflow": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
