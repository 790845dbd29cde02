"""Acting on one run from outside it: cancel, resume, wait, and a read-only view of it.

:class:`RunControl` decides where the act happens: on the run this process drives, or as a
command for the cluster's worker that drives it (see :mod:`tenantflow.engine.cluster`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from tenantflow.domain.records import TERMINAL_RUN, RunRecord, RunStatus
from tenantflow.engine.handle import RunSnapshot
from tenantflow.engine.history import RunHistory
from tenantflow.engine.submission import AdmissionGate
from tenantflow.errors import ConflictError
from tenantflow.ports import Clock

__all__ = ["RunControl"]

POLL_S = 0.1
"""How often a run driven elsewhere is read again while waiting for it (engine time)."""


class RunControl:
    """Cancel, resume and wait on runs.

    Args:
        history: reads runs from the store.
        gate: the runs held here.
        clock: the engine's clock.
        execute: whether this engine executes runs.
        command: passes a command to the worker that drives a tenant (a cluster's).
    """

    def __init__(
        self,
        history: RunHistory,
        gate: AdmissionGate,
        clock: Clock,
        *,
        execute: bool,
        command: Callable[[str, str, str, dict[str, Any]], Awaitable[Any]],
    ) -> None:
        self._history = history
        self._gate = gate
        self._clock = clock
        self._execute = execute
        self._command = command

    def view(self, tenant: str, run_id: str) -> RunSnapshot | None:
        """A run this engine drives, as it is now (None: it is not executing here)."""
        run = self._gate.active_run(tenant, run_id)
        if run is None:
            return None
        spec = run.spec
        return RunSnapshot(run.id, run.tenant_id, run.status, spec.name, spec.version, run.lane)

    async def cancel(self, tenant: str, run_id: str, reason: str) -> RunRecord:
        """Cancel a run: stop its steps, compensate completed ones, end it ``cancelled``."""
        record = await self._history.get_run(tenant, run_id)
        if record.status in TERMINAL_RUN:
            raise ConflictError(
                f"run {run_id} already ended {record.status.value}",
                run_id=run_id,
                status=record.status.value,
            )
        if not self._gate.drives(tenant):
            await self._command(tenant, "cancel", run_id, {"reason": reason})
            return await self._history.get_run(tenant, run_id)
        active = self._gate.active_run(tenant, run_id)
        if active is None or not self._execute:
            raise ConflictError(f"run {run_id} is not executing in this engine", run_id=run_id)
        if active.status == RunStatus.QUEUED:
            self._gate.withdraw(tenant, run_id)
            active.status = RunStatus.RUNNING  # so that cancel() unwinds it like any run
        await self._gate.runtime_for_tenant(tenant).cancel(active, reason)
        return await self._history.get_run(tenant, run_id)

    async def wait(self, tenant: str, run_id: str, timeout: timedelta | None) -> RunRecord:
        """Wait until the run ends and return its record (TimeoutError past ``timeout`` of
        the engine's time)."""
        record = await self._history.get_run(tenant, run_id)
        if record.status in TERMINAL_RUN:
            return record

        async def until_done() -> RunRecord:
            while True:
                if self._gate.active_run(tenant, run_id) is not None:
                    await self._gate.watch(run_id)
                else:  # executing elsewhere (or not yet resumed): poll the store
                    await self._clock.sleep(POLL_S)
                current = await self._history.get_run(tenant, run_id)
                if current.status in TERMINAL_RUN:
                    return current

        if timeout is None:
            return await until_done()
        async with self._clock.timeout(timeout.total_seconds()):  # the engine's time, as all
            return await until_done()

    async def resume(self, tenant: str, run_id: str) -> RunRecord:
        """Resume a run the budget ladder paused (after its budget was raised or reset)."""
        run = self._gate.active_run(tenant, run_id)
        if run is None or run.status != RunStatus.PAUSED:
            record = await self._history.get_run(tenant, run_id)
            raise ConflictError(f"run {run_id} is {record.status.value}, not paused", run_id=run_id)
        await self._gate.runtime_for_tenant(tenant).set_running(
            run, "run.resumed", {"reason": "resumed by request"}
        )
        return await self._history.get_run(tenant, run_id)
