"""What a caller holds of a run: a handle to wait on it, and a read-only snapshot of it.

:class:`RunSnapshot` is the public picture of a run an engine drives (its id, status, workflow and
lane), so that callers such as the REST API never touch the runtime's in-memory run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from tenantflow.domain.records import RunRecord, RunStatus

__all__ = ["RunHandle", "RunSnapshot"]


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run this process drives, as it is now (a copy: it does not change)."""

    id: str
    tenant_id: str
    status: RunStatus
    workflow: str
    workflow_version: str
    lane: str


class _Runs(Protocol):
    async def get_run(self, tenant: str, run_id: str) -> RunRecord: ...

    async def wait(
        self, tenant: str, run_id: str, timeout: timedelta | None = None
    ) -> RunRecord: ...

    async def result(self, tenant: str, run_id: str, timeout: timedelta | None = None) -> Any: ...


class RunHandle:
    """A submitted run: its id, and a way to wait for its result."""

    __slots__ = ("_engine", "created", "id", "tenant_id")

    def __init__(self, engine: _Runs, tenant_id: str, run_id: str, created: bool = True) -> None:
        self._engine = engine
        self.tenant_id = tenant_id
        self.id = run_id
        self.created = created

    def __repr__(self) -> str:
        return f"RunHandle(tenant_id={self.tenant_id!r}, id={self.id!r})"

    async def status(self) -> RunStatus:
        return (await self._engine.get_run(self.tenant_id, self.id)).status

    async def wait(self, timeout: timedelta | None = None) -> RunRecord:
        """Wait until the run ends; returns its record whatever the outcome."""
        return await self._engine.wait(self.tenant_id, self.id, timeout)

    async def result(self, timeout: timedelta | None = None) -> Any:
        """The run's result; :class:`RunFailedError` if it failed, compensated or was cancelled."""
        return await self._engine.result(self.tenant_id, self.id, timeout)
