"""Leases: keep this process's claims on running attempts alive, and act on lost ones.

Every attempt runs under a lease in the store (claimed by ``StartAttempt``, fenced on finish).
The keeper renews them all in one op every third of the lease; an attempt whose lease lapsed is
cancelled here (its step is claimed again elsewhere, and its late result would be refused as
STALE anyway). On start, an exclusive store's orphaned attempts are made claimable again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tenantflow.domain.records import RecoverOrphans, RenewLeases, RunRecord, StepRecord
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.errors import TenantflowError
from tenantflow.ports import Clock, OpSink, Store

__all__ = ["LeaseKeeper"]

log = logging.getLogger("tenantflow.engine")


class LeaseKeeper:
    """Renews the leases of one owner's attempts (see the module doc)."""

    def __init__(
        self,
        *,
        sink: OpSink,
        clock: Clock,
        store: Store,
        owner: str,
        lease_s: float,
        active: dict[str, ActiveRun],
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self.active = active

    async def heartbeat(self) -> None:
        """Renew the leases every third of their length, until cancelled."""
        interval = max(0.05, self.lease_s / 3.0)
        while True:
            await self.clock.sleep(interval)
            try:
                await self.renew_leases()
            except TenantflowError as exc:  # the store is down: leases will lapse; keep trying
                log.warning("lease renewal failed: %s", exc)

    async def renew_leases(self) -> list[tuple[str, str, int]]:
        """Extend our live leases; cancel the attempts whose lease had lapsed (re-queued)."""
        now = self.clock.now()
        lost: list[tuple[str, str, int]] = await self.sink.write(
            RenewLeases(self.owner, now, now + self.lease_s)
        )
        for run_id, key, fence in lost:
            run = self.active.get(run_id)
            # Only the attempt that held this very fence is affected; an attempt between
            # execution and commit will have its late write refused (STALE) and re-queue.
            if run is None or run.executing.get(key) != fence:
                continue
            run.lost.add(key)
            task = run.tasks.get(key)
            if task is not None:
                task.cancel()
        return lost

    async def recover(
        self,
        specs: Callable[[str, str], WorkflowSpec | None],
        resume: Callable[[RunRecord, list[StepRecord], WorkflowSpec], Any],
    ) -> list[RunRecord]:
        """Load every unfinished run and ``resume`` it; returns runs whose spec is not
        registered. An exclusive store first makes every orphaned attempt claimable."""
        if self.store.exclusive:
            await self.sink.write(RecoverOrphans(self.clock.now()))
        parked: list[RunRecord] = []
        for record, steps in await self.store.active_runs():
            spec = specs(record.workflow, record.workflow_version)
            if spec is None:
                parked.append(record)
                continue
            resume(record, steps, spec)
        return parked
