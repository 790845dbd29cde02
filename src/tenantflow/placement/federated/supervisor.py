"""The supervisor: starts cell processes, waits until they are ready, restarts dead ones, stops
and purges them.

Each cell is ``python -m tenantflow.cli.main cell ...`` on its own port (kept across restarts,
so cached routes stay right), with its admin key in the environment. A cell that exits, or
whose process is gone (one started by an earlier plane process, adopted by pid), is started
again on the same store: its runs resume from it (the store's lock keeps a second copy from
executing the same runs). A cell started in its own session outlives the plane: killing the
plane does not stop the tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tenantflow.errors import StoreUnavailableError
from tenantflow.placement.federated.cell import ADMIN_KEY_ENV, QUOTAS_ENV
from tenantflow.placement.federated.registry import CellRow, Registry

__all__ = ["Supervisor", "pid_alive"]

log = logging.getLogger("tenantflow.plane")


def pid_alive(pid: int | None) -> bool:
    """Whether a process ``pid`` exists (and is not a zombie of ours)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child of ours that ended but was not reaped yet
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


class Supervisor:
    """See the module docstring.

    Args:
        registry: the plane's store (cells, pids, restarts).
        apps: the ``--app`` references every cell loads.
        plane_url: where cells send heartbeats.
        slots: step attempts executing at once in each cell.
        python: the interpreter that runs the cells.
        ready_timeout_s: how long a starting cell may take to answer ``/readyz``.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        apps: Sequence[str],
        plane_url: str,
        slots: int = 16,
        heartbeat_s: float = 1.0,
        python: str = sys.executable,
        ready_timeout_s: float = 60.0,
        env: dict[str, str] | None = None,
        hung_after_s: float | None = None,
    ) -> None:
        self.registry = registry
        self.apps = list(apps)
        self.plane_url = plane_url
        self.slots = slots
        self.heartbeat_s = heartbeat_s
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.env = dict(env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self.paused = False  # tests: stop restarting for a while
        # A live process whose heartbeats stopped for this long is hung: killed and restarted
        # (None: never). Only heartbeats seen by this plane count (see ``beat``).
        self.hung_after_s = hung_after_s
        self.last_beat: dict[str, float] = {}
        self.hung_kills = 0

    def _lock(self, cell_id: str) -> asyncio.Lock:
        return self._locks.setdefault(cell_id, asyncio.Lock())

    def alive(self, cell: CellRow) -> bool:
        proc = self.procs.get(cell.id)
        if proc is not None:
            return proc.poll() is None
        return pid_alive(cell.pid)

    def spawn(self, cell: CellRow) -> None:
        """Start the cell's process (it is not running)."""
        command = [
            self.python,
            "-m",
            "tenantflow.cli.main",
            "cell",
            "--id",
            cell.id,
            "--port",
            str(cell.port),
            "--db",
            cell.store,
            "--state-dir",
            cell.state_dir,
            "--plane",
            self.plane_url,
            "--max-tenants",
            str(cell.max_tenants),
            "--slots",
            str(self.slots),
            "--heartbeat-s",
            str(self.heartbeat_s),
            "--log-level",
            "warning",
        ]
        for app in self.apps:
            command += ["--app", app]
        env = {
            **os.environ,
            **self.env,
            ADMIN_KEY_ENV: cell.admin_key,
            QUOTAS_ENV: ",".join(sorted(self.registry.quotas)),
            "PYTHONUNBUFFERED": "1",
        }
        Path(cell.state_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(cell.state_dir) / "cell.log", "ab") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives the plane
            )
        self.procs[cell.id] = proc
        cell.pid = proc.pid
        cell.status = "running"
        self.registry.put_cell(cell)
        log.info("cell %s started (pid %d, %s)", cell.id, proc.pid, cell.url)

    async def wait_ready(self, cell: CellRow) -> None:
        """Return once the cell answers ``/readyz``.

        Raises:
            StoreUnavailableError: it exited or did not answer within ``ready_timeout_s``.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive(cell):
                    raise StoreUnavailableError(
                        f"cell {cell.id} exited while starting (see {cell.state_dir}/cell.log)",
                        cell=cell.id,
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{cell.url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise StoreUnavailableError(
            f"cell {cell.id} was not ready within {self.ready_timeout_s:g} s", cell=cell.id
        )

    async def ensure(self, cell: CellRow) -> None:
        """The cell is running and ready (started if it was not)."""
        async with self._lock(cell.id):
            if not self.alive(cell):
                self.spawn(cell)
            await self.wait_ready(cell)

    def beat(self, cell_id: str, at: float) -> None:
        """A heartbeat of the cell arrived (monotonic time ``at``)."""
        self.last_beat[cell_id] = at

    def _kill_if_hung(self, cell: CellRow) -> None:
        seen = self.last_beat.get(cell.id)
        if self.hung_after_s is None or seen is None:
            return
        if time.monotonic() - seen > self.hung_after_s:
            log.warning(
                "cell %s (pid %s) sent no heartbeat for %.0f s: killing it",
                cell.id,
                cell.pid,
                time.monotonic() - seen,
            )
            self.last_beat.pop(cell.id, None)
            self.hung_kills += 1
            if cell.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(cell.pid, signal.SIGKILL)

    async def check(self) -> list[str]:
        """Restart every cell that should run and does not (killing a hung one first); the
        ids restarted."""
        if self.paused:
            return []
        restarted = []
        for cell in list(self.registry.cells.values()):
            if cell.status == "running" and not self._lock(cell.id).locked():
                self._kill_if_hung(cell)
            if cell.status != "running" or self.alive(cell):
                continue
            lock = self._lock(cell.id)
            if lock.locked():
                continue
            async with lock:
                if self.alive(cell) or cell.id not in self.registry.cells:
                    continue
                log.warning("cell %s (pid %s) is gone: restarting it", cell.id, cell.pid)
                cell.restarts += 1
                self.restarts += 1
                proc = self.procs.pop(cell.id, None)
                if proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
                self.spawn(cell)
                self.last_beat.pop(cell.id, None)
                restarted.append(cell.id)
        return restarted

    async def watch(self, interval_s: float = 0.25) -> None:
        """Check every ``interval_s`` until cancelled."""
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("supervisor check failed")
            await asyncio.sleep(interval_s)

    async def stop(self, cell: CellRow, *, timeout_s: float = 20.0) -> None:
        """Stop the cell's process (SIGTERM, then SIGKILL after ``timeout_s``)."""
        async with self._lock(cell.id):
            cell.status = "stopped"
            self.registry.put_cell(cell)
            pid = cell.pid
            proc = self.procs.pop(cell.id, None)
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    if not pid_alive(pid):
                        break
                    await asyncio.sleep(0.05)
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def purge(self, cell: CellRow) -> list[str]:
        """Delete the stopped cell's local files and SQLite store; what is left (empty: all)."""
        leftovers: list[str] = []
        state = Path(cell.state_dir)
        if state.exists():
            shutil.rmtree(state, ignore_errors=True)
        if cell.store.startswith("sqlite:///"):
            db = Path(cell.store.removeprefix("sqlite:///"))
            for path in (db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", ".lock"))):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                if path.exists():
                    leftovers.append(str(path))
        if state.exists():
            leftovers.append(str(state))
        return leftovers

    async def close(self) -> None:
        """Leave the cells running (they are their own failure domains); forget the handles."""
        self.procs.clear()
