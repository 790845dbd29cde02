"""When a write's outcome is unknown: reload the runs it touched from the store.

A batch whose commit raised — the connection dropped, the server restarted — may have landed
all the same: the error does not say. Acting on either guess breaks the durability rule (every
transition commits before it is acted on): guessing "lost" re-runs a step whose completion is
stored and whose follow-on steps the store already made ready; guessing "landed" waits forever
for a claim that never happened. So for every run such a batch touched, the engine does what a
restart does, for that one run: it stops driving it (its attempts and timers are cancelled),
waits until every write queued before has ended and the store answers, hands back the attempts
of the run this process still holds (fenced, so a live claim elsewhere is untouched; their
budget holds are released), and loads the run again from the store, which is the truth. What
the lost batch did is kept if it landed and done again if not: execution stays at-least-once,
and a step's completion is still recorded once (fenced writes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tenantflow.domain.records import (
    CreateRun,
    Op,
    ParkAttempt,
    RunStatus,
    StepRecord,
    StepStatus,
    Transition,
)
from tenantflow.errors import NotFoundError, StoreError, TenantflowError

if TYPE_CHECKING:
    from tenantflow.domain.records import RunRecord
    from tenantflow.engine.admission import AdmissionGate
    from tenantflow.engine.execution.active import ActiveRun as Active
    from tenantflow.engine.execution.driver import RunDriver as Runtime
    from tenantflow.ports import Clock

__all__ = ["Resync", "runs_of"]

log = logging.getLogger("tenantflow.engine")

_MAX_DELAY_S = 1.0
UNKNOWN = "the store failed while this attempt's outcome was being written"


def runs_of(ops: Sequence[Op]) -> Iterator[tuple[str, str]]:
    """(tenant, run id) of every run an op of ``ops`` changes (each once)."""
    seen: set[tuple[str, str]] = set()
    for op in ops:
        if isinstance(op, CreateRun):
            found = (op.run.tenant_id, op.run.id)
        else:
            carrier = op if getattr(op, "run_id", None) else getattr(op, "then", None)
            run_id = getattr(carrier, "run_id", None)
            tenant = getattr(carrier, "tenant_id", None)
            if not run_id or not isinstance(tenant, str):
                continue  # not a run's transition (ledgers, rate buckets, keys, tenants)
            found = (tenant, str(run_id))
        if found not in seen:
            seen.add(found)
            yield found


class Resync:
    """Reloads runs whose writes failed (see the module docstring); one at a time per run.

    Args:
        gate: admission and the runs held here (the runs being reloaded are held there too).
        clock: the engine's clock.
        owner: this process's owner id (on the attempts it claimed).
        drives_runs: False for a cluster's front, which drives no run.
        on_finish: what the engine does when a run ends (a lost commit may have ended it).
    """

    def __init__(
        self,
        gate: AdmissionGate,
        clock: Clock,
        owner: str,
        *,
        drives_runs: bool,
        on_finish: Callable[[Active, RunStatus, Any], None],
    ) -> None:
        self._gate = gate
        self._clock = clock
        self._owner = owner
        self._drives_runs = drives_runs
        self._on_finish = on_finish
        self._busy = gate.reloading

    def holds(self, run_id: str) -> bool:
        """Whether this run is being reloaded here (no one else may load it meanwhile)."""
        return run_id in self._busy

    def failed(self, runtime: Runtime, ops: Sequence[Op]) -> None:
        """The writer's hook: a batch with ``ops`` failed, and may have committed."""
        if not self._drives_runs:
            return  # it drives no run: the submitter sees the error and retries
        for tenant, run_id in runs_of(ops):
            if run_id not in self._busy:
                self._busy.add(run_id)
                runtime.spawn(self._resync(runtime, tenant, run_id), f"resync:{run_id}")

    async def _resync(self, runtime: Runtime, tenant: str, run_id: str) -> None:
        try:
            run = runtime.active.get(run_id)
            if run is not None and run.tenant_id == tenant:
                await runtime.drop([run])
            else:
                run = None
            delay_s = 0.02
            while True:
                try:
                    found, record = await self._settle(runtime, tenant, run_id)
                    break
                except StoreError as exc:
                    log.warning("run %s: waiting for the store to reload it (%s)", run_id, exc)
                    await self._clock.sleep(delay_s)
                    delay_s = min(_MAX_DELAY_S, delay_s * 2)
            self._busy.discard(run_id)  # from here on, loading it is ours or the next owner's
            self._reload(runtime, run, found, record)
        finally:
            self._busy.discard(run_id)

    async def _settle(
        self, runtime: Runtime, tenant: str, run_id: str
    ) -> tuple[tuple[RunRecord, list[StepRecord]] | None, RunRecord | None]:
        """Once nothing of the run is in flight: the run as stored, with the attempts this
        process held handed back; or (None, its record) when it has ended (None, None: it was
        never created)."""
        store, owner = runtime.store, self._owner
        await runtime.writer.flush()
        rows = await store.unfinished_runs(tenant, [run_id])
        if not rows:
            try:
                return None, await store.get_run(tenant, run_id)
            except NotFoundError:
                return None, None
        ours = [s for s in rows[0][1] if s.status == StepStatus.RUNNING and s.owner == owner]
        if ours:
            now = self._clock.now()
            for step in ours:  # STALE when its lease had lapsed: claimable then anyway
                release = Transition(tenant, run_id, now, release_prefix=f"{run_id}:{step.key}:")
                park = ParkAttempt(
                    tenant,
                    run_id,
                    step.key,
                    step.fence,
                    now,
                    StepStatus.READY,
                    now,
                    UNKNOWN,
                    release,
                )
                await runtime.writer.write(park)
            rows = await store.unfinished_runs(tenant, [run_id])
            if not rows:
                return None, await store.get_run(tenant, run_id)
        return rows[0], rows[0][0]

    def _reload(
        self,
        runtime: Runtime,
        run: Active | None,
        found: tuple[RunRecord, list[StepRecord]] | None,
        record: RunRecord | None,
    ) -> None:
        gate = self._gate
        if found is None:
            if run is not None and record is not None:  # a lost commit had ended it
                self._on_finish(run, record.status, None)
            return
        tenant, run_id = found[0].tenant_id, found[0].id
        if not gate.drives(tenant) or gate.holds_run(tenant, run_id):
            if run is not None:  # handed to another worker, or loaded again meanwhile
                self._forget(run)
            return
        if run is None:  # never held here (a submission whose commit raised)
            gate.take_over(runtime, *found)
            return
        fresh = runtime.resume(found[0], found[1], run.spec)
        gate.attach_policy(fresh)
        if fresh.status == RunStatus.QUEUED and not gate.withdraw(
            tenant, run_id
        ):  # it had been admitted: the write that started it is what failed
            runtime.spawn(runtime.set_running(fresh, "run.admitted"), f"admit:{run_id}")
        elif fresh.status == RunStatus.QUEUED:  # still waiting: back in its tenant's queue
            gate.admit_recovered(runtime, fresh)

    def _forget(self, run: Active) -> None:
        """Give back the admission place of a run this process no longer drives."""
        gate = self._gate
        adm = gate.adm(run.tenant_id)
        if gate.admission.withdraw(adm, run.id):
            return
        with contextlib.suppress(TenantflowError):  # it held no place
            admitted = gate.admission.finished(adm, run.id, self._clock.now())
            gate.admit_keys(run.tenant_id, admitted)
