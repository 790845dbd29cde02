"""What happened to a run, read from the store: records, timelines, state versions, audit, usage.

:class:`RunHistory` only reads, and only from the store that holds the tenant's data; it needs
no executing engine (``Engine.open(url, execute=False)`` serves it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenantflow.domain.audit import VerifyResult, verify_chain
from tenantflow.domain.ids import check_tenant
from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord
from tenantflow.domain.state import Change, bisect_versions, diff_states, fold
from tenantflow.engine.regions import RegionRouter
from tenantflow.errors import ConfigurationError, NotFoundError

__all__ = ["HistoryReads", "RunHistory", "RunReads", "StateVersion"]


@dataclass(frozen=True, slots=True)
class StateVersion:
    """One state version, materialised."""

    run_id: str
    version: int
    parent: int | None
    step: str | None
    hash: str
    created_at: float
    state: dict[str, Any]


class RunHistory:
    """Read-only views of a tenant's runs.

    Args:
        router: which store holds a tenant's data.
        require_tenant: raises :class:`NotFoundError` for an unknown tenant.
    """

    def __init__(self, router: RegionRouter, require_tenant: Callable[[str], Awaitable[Any]]):
        self._router = router
        self._require_tenant = require_tenant

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        """The run's record; NotFoundError if this tenant has no such run."""
        return await self._router.store_for_tenant(check_tenant(tenant)).get_run(tenant, run_id)

    async def list_runs(
        self,
        tenant: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
        payloads: bool = True,
    ) -> list[RunRecord]:
        """The tenant's runs, newest first (``before``: a run id to page on from;
        ``payloads=False``: inputs and results not read)."""
        if not 1 <= limit <= 1000:
            raise ConfigurationError("limit must be within 1..1000", field="limit", value=limit)
        return await self._router.store_for_tenant(check_tenant(tenant)).list_runs(
            tenant, status=status, workflow=workflow, limit=limit, before=before, payloads=payloads
        )

    async def steps(self, tenant: str, run_id: str) -> list[StepRecord]:
        """The run's steps."""
        await self.get_run(tenant, run_id)
        return await self._router.store_for_tenant(tenant).get_steps(tenant, run_id)

    async def usage(
        self, tenant: str, *, since: str | None = None, until: str | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's usage counters per day (``YYYY-MM-DD``): steps, slot_seconds,
        tokens_in/out, cost_micros, tool_calls, model_calls, rate_limit_waits, degradations,
        reviews; ``dim`` names the tool, model or step."""
        await self._require_tenant(check_tenant(tenant))
        return await self._router.store_for_tenant(tenant).usage(tenant, since, until)

    async def budget(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's ledgers: limit, spent, reserved and overrun per scope and unit."""
        await self._require_tenant(check_tenant(tenant))
        return await self._router.store_for_tenant(tenant).ledgers(tenant)

    async def audit_log(self, tenant: str) -> list[Any]:
        """The tenant's audit rows, oldest first."""
        return await self._router.store_for_tenant(check_tenant(tenant)).audit_log(tenant)

    async def audit_verify(self, tenant: str) -> VerifyResult:
        """Check the tenant's audit hash chain; names the first tampered, missing or moved row."""
        rows = await self.audit_log(tenant)
        return verify_chain(rows, tenant_id=tenant)

    async def timeline(self, tenant: str, run_id: str) -> list[EventRecord]:
        """The run's execution log, oldest first."""
        await self.get_run(tenant, run_id)
        return await self._router.store_for_tenant(tenant).events(tenant, run_id)

    async def events_after(self, tenant: str, run_id: str, after: int) -> list[EventRecord]:
        """The run's events with ids after ``after``, oldest first (no check that the run
        exists: a follower reads it first)."""
        return await self._router.store_for_tenant(check_tenant(tenant)).events(
            tenant, run_id, after_id=after
        )

    async def state(self, tenant: str, run_id: str, version: int | None = None) -> StateVersion:
        """The run's state at ``version`` (latest when None): time travel over its history."""
        record = await self.get_run(tenant, run_id)
        target = record.state_version if version is None else version
        if target < 0 or target > record.state_version:
            raise NotFoundError(
                f"run {run_id} has state versions 0..{record.state_version}, not {target}",
                kind="state_version",
                id=str(target),
            )
        store = self._router.store_for_tenant(tenant)
        versions = await store.state_versions(tenant, run_id, upto=target)
        deltas = [{"input": json.loads(versions[0].delta_json)}] + [
            json.loads(v.delta_json) for v in versions[1:]
        ]
        last = versions[-1]
        return StateVersion(
            run_id, last.version, last.parent, last.step, last.hash, last.created_at, fold(deltas)
        )

    async def versions(self, tenant: str, run_id: str) -> list[StateVersion]:
        """Every state version of the run, materialised, in order."""
        record = await self.get_run(tenant, run_id)
        rows = await self._router.store_for_tenant(tenant).state_versions(
            tenant, run_id, upto=record.state_version
        )
        out: list[StateVersion] = []
        state: dict[str, Any] = {}
        for v in rows:
            delta = (
                {"input": json.loads(v.delta_json)} if v.version == 0 else json.loads(v.delta_json)
            )
            state = {**state, **delta}
            out.append(
                StateVersion(run_id, v.version, v.parent, v.step, v.hash, v.created_at, state)
            )
        return out

    async def diff(self, tenant: str, run_id: str, a: int, b: int) -> list[Change]:
        """What changed between state versions ``a`` and ``b``."""
        sa = await self.state(tenant, run_id, a)
        sb = await self.state(tenant, run_id, b)
        return diff_states(sa.state, sb.state)

    async def bisect(
        self, tenant: str, run_id: str, holds: Callable[[dict[str, Any]], bool]
    ) -> StateVersion | None:
        """The first state version where ``holds(state)`` is false (None if it always holds)."""
        history = await self.versions(tenant, run_id)
        found = bisect_versions(0, len(history) - 1, lambda i: bool(holds(history[i].state)))
        return None if found is None else history[found]


class RunReads:
    """A tenant's runs read back — records, steps, execution log, state history — each
    method delegated to ``self.history`` (the engine's, or a mesh's read model)."""

    history: RunHistory

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        """The run's record; NotFoundError if this tenant has no such run."""
        return await self.history.get_run(tenant, run_id)

    async def list_runs(
        self,
        tenant: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
        payloads: bool = True,
    ) -> list[RunRecord]:
        """The tenant's runs, newest first (``payloads=False``: inputs and results not read)."""
        return await self.history.list_runs(
            tenant, status=status, workflow=workflow, limit=limit, before=before, payloads=payloads
        )

    async def steps(self, tenant: str, run_id: str) -> list[StepRecord]:
        """The run's steps."""
        return await self.history.steps(tenant, run_id)

    async def timeline(self, tenant: str, run_id: str) -> list[EventRecord]:
        """The run's execution log, oldest first."""
        return await self.history.timeline(tenant, run_id)

    async def events_after(self, tenant: str, run_id: str, after: int) -> list[EventRecord]:
        """The run's events with ids after ``after``, oldest first."""
        return await self.history.events_after(tenant, run_id, after)

    async def state(self, tenant: str, run_id: str, version: int | None = None) -> StateVersion:
        """The run's state at ``version`` (latest when None): time travel over its history."""
        return await self.history.state(tenant, run_id, version)

    async def versions(self, tenant: str, run_id: str) -> list[StateVersion]:
        """Every state version of the run, materialised, in order."""
        return await self.history.versions(tenant, run_id)

    async def diff(self, tenant: str, run_id: str, a: int, b: int) -> list[Change]:
        """What changed between state versions ``a`` and ``b``."""
        return await self.history.diff(tenant, run_id, a, b)

    async def bisect(
        self, tenant: str, run_id: str, holds: Callable[[dict[str, Any]], bool]
    ) -> StateVersion | None:
        """The first state version where ``holds(state)`` is false (None if it always holds)."""
        return await self.history.bisect(tenant, run_id, holds)


class HistoryReads(RunReads):
    """The read-only part of the engine's API, each method delegated to ``self.history``:
    the runs (:class:`RunReads`), usage, budgets and the audit log."""

    async def usage(
        self, tenant: str, *, since: str | None = None, until: str | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's usage counters per day (see :meth:`RunHistory.usage`)."""
        return await self.history.usage(tenant, since=since, until=until)

    async def budget(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's ledgers: limit, spent, reserved and overrun per scope and unit."""
        return await self.history.budget(tenant)

    async def audit_log(self, tenant: str) -> list[Any]:
        """The tenant's audit rows, oldest first."""
        return await self.history.audit_log(tenant)

    async def audit_verify(self, tenant: str) -> VerifyResult:
        """Check the tenant's audit hash chain; names the first tampered, missing or moved row."""
        return await self.history.audit_verify(tenant)
