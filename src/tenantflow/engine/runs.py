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
from tenantflow.engine.registry import decode_sink
from tenantflow.engine.submission import AdmissionGate
from tenantflow.errors import ConflictError, RunFailedError
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
        decode: a completed run's stored result as its workflow's result type.
    """

    def __init__(
        self,
        history: RunHistory,
        gate: AdmissionGate,
        clock: Clock,
        *,
        execute: bool,
        command: Callable[[str, str, str, dict[str, Any]], Awaitable[Any]],
        decode: Callable[[RunRecord], Any],
    ) -> None:
        self._history = history
        self._gate = gate
        self._clock = clock
        self._execute = execute
        self._command = command
        self._decode = decode

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
        if timeout is None:
            return await self._until_done(tenant, run_id)
        async with self._clock.timeout(timeout.total_seconds()):  # the engine's time, as all
            return await self._until_done(tenant, run_id)

    async def result(self, tenant: str, run_id: str, timeout: timedelta | None) -> Any:
        """Wait until the run ends and return its result (:class:`RunFailedError` if it did not
        complete; TimeoutError past ``timeout`` of the engine's time).

        A run this engine drives to completion answers from the sink's output it holds (as
        JSON, decoded as the stored result is), without reading the run back from the store:
        its completion committed before the run ended here. Otherwise, and for a workflow with
        several sinks (whose result is read as the stored JSON object), the completed record is
        read and decoded.
        """
        if timeout is None:
            return await self._result(tenant, run_id)
        async with self._clock.timeout(timeout.total_seconds()):
            return await self._result(tenant, run_id)

    async def _result(self, tenant: str, run_id: str) -> Any:
        run = self._gate.active_run(tenant, run_id)
        if run is not None and len(run.spec.sinks) == 1:
            status, _ = await self._gate.watch(run_id)
            data = run.jsons.get(run.spec.sinks[0])
            if status == RunStatus.COMPLETED and data is not None:
                # decoded as the stored result is, so the caller gets the same value either way
                return decode_sink(run.spec, data)
        record = await self._until_done(tenant, run_id)
        if record.status != RunStatus.COMPLETED:
            raise RunFailedError(
                f"run {run_id} ended {record.status.value}: {record.error}",
                run_id=run_id,
                status=record.status.value,
                error=record.error,
            )
        return self._decode(record)

    async def _until_done(self, tenant: str, run_id: str) -> RunRecord:
        # A run executing here is not read before it ends: its end wakes the watch.
        while True:
            if self._gate.active_run(tenant, run_id) is not None:
                await self._gate.watch(run_id)
            current = await self._history.get_run(tenant, run_id)
            if current.status in TERMINAL_RUN:
                return current
            if self._gate.active_run(tenant, run_id) is None:
                # executing elsewhere (or not yet resumed): poll the store
                await self._clock.sleep(POLL_S)

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
