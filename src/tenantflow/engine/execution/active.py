"""The in-memory mirror of an unfinished run, and how it is rebuilt from the store's records.

The store is the source of truth: an :class:`ActiveRun` mirrors it for speed, is changed only
after the transition that changes it committed (see
:meth:`~tenantflow.engine.execution.driver.RunDriver.commit`), and is rebuilt from the records
after a restart or a hand-over (:meth:`ActiveRun.from_records`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tenantflow.domain.contracts import contract_for
from tenantflow.domain.progress import RunView
from tenantflow.domain.records import RunRecord, RunStatus, StepRecord, StepStatus
from tenantflow.domain.spec import WorkflowSpec, parse_key
from tenantflow.observability.events import Observers

if TYPE_CHECKING:
    from tenantflow.domain.policy import Policy
    from tenantflow.domain.tenancy import ReviewRecord

__all__ = ["ActiveRun", "RunEvents", "latest_version"]


@dataclass(slots=True, eq=False)
class ActiveRun:
    """An unfinished run as the engine holds it in memory."""

    id: str
    tenant_id: str
    lane: str
    spec: WorkflowSpec
    input: Any
    status: RunStatus
    statuses: dict[str, StepStatus]
    outputs: dict[str, Any] = field(default_factory=dict)
    jsons: dict[str, bytes] = field(default_factory=dict)
    versions: dict[str, int | None] = field(default_factory=dict)
    children: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    executing: dict[str, int] = field(default_factory=dict)  # key -> fence of the live attempt
    lost: set[str] = field(default_factory=set)
    # Steps queued before the completion that readied them committed (see execution/chain.py).
    chained: set[str] = field(default_factory=set)
    _lock: asyncio.Lock | None = field(default=None, init=False, repr=False)
    error: str | None = None
    policy: Policy | None = None
    policy_version: int = 0
    progressed: bool = False  # a step has completed: its steps go before new runs' first ones
    deferrals: dict[str, int] = field(default_factory=dict)
    submitted_at_s: float = 0.0
    released: bool = False  # handed to another worker: stop as at shutdown
    parent_id: str | None = None  # a child run (a subagent): the run that started it
    budget_run: str | None = None  # the root run whose budget a child run draws on
    meta: dict[str, Any] = field(default_factory=dict)  # as stored; its "plan" is the latest
    replaced: dict[str, str] = field(default_factory=dict)  # step -> standby running instead

    @property
    def lock(self) -> asyncio.Lock:
        """Serialises the run's transitions; made on first use (a queued run has none)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    @property
    def revisions(self) -> int:
        plan = self.meta.get("plan")
        return int(plan["version"]) - 1 if isinstance(plan, dict) else 0

    def view(self, now: float) -> RunView:
        """A read-only view for the decider (:mod:`tenantflow.domain.progress`) at ``now``."""
        return RunView(
            id=self.id,
            tenant_id=self.tenant_id,
            lane=self.lane,
            spec=self.spec,
            input=self.input,
            status=self.status,
            statuses=self.statuses,
            outputs=self.outputs,
            jsons=self.jsons,
            versions=self.versions,
            children=self.children,
            replaced=self.replaced,
            meta=self.meta,
            deferrals=self.deferrals,
            policy=self.policy,
            now=now,
        )

    @classmethod
    def from_records(
        cls, record: RunRecord, steps: list[StepRecord], spec: WorkflowSpec
    ) -> ActiveRun:
        """Rebuild the mirror of a stored run: statuses, outputs, state versions, fan-out
        sizes and the standbys its latest plan runs in place of failed steps."""
        value = contract_for(spec.input_type).load(
            record.input_json, step="<input>", direction="input"
        )
        run = cls(
            record.id,
            record.tenant_id,
            record.lane,
            spec,
            value,
            record.status,
            {s.key: s.status for s in steps},
            error=record.error,
            submitted_at_s=record.created_at,
            parent_id=record.parent_run_id,
            budget_run=record.meta.get("budget_run"),
            meta=dict(record.meta),
        )
        deferred = record.meta.get("deferrals")  # a retried run's steps: fresh retry budgets
        if isinstance(deferred, dict):
            run.deferrals = {str(k): int(v) for k, v in deferred.items()}
        plan = record.meta.get("plan")
        if isinstance(plan, dict):
            run.replaced = {str(k): str(v) for k, v in dict(plan.get("replaced") or {}).items()}
        for s in steps:
            name, index = parse_key(s.key)
            run.versions[s.key] = s.version
            if index is not None:
                run.children[name] = max(run.children.get(name, 0), index + 1)
            if s.output_json is not None and s.status in (
                StepStatus.SUCCEEDED,
                StepStatus.COMPENSATED,
            ):
                step = spec.step(name)
                annotation = step.result_type if index is None else step.item_type
                run.outputs[s.key] = contract_for(annotation).load(s.output_json, step=s.key)
                run.jsons[s.key] = s.output_json
        run.progressed = any(s == StepStatus.SUCCEEDED for s in run.statuses.values())
        return run


def latest_version(run: ActiveRun) -> int:
    """The run's latest committed state version (0: only its input)."""
    return max((v or 0 for v in run.versions.values()), default=0)


class RunEvents(Protocol):
    """What the driver asks of the engine around it."""

    controls: bool
    observers: Observers

    def refresh_policy(self, run: ActiveRun) -> None: ...

    def on_finish(self, run: ActiveRun, status: RunStatus, result: Any) -> None: ...

    def review_opened(self, review: ReviewRecord) -> None: ...

    async def start_child(
        self, parent: ActiveRun, key: str, index: int, workflow: str, task: str
    ) -> str: ...
