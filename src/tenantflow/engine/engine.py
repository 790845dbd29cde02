"""The public engine: register workflows, submit runs, read their history.

``Engine.open(url)`` picks the store from the URL (``sqlite:///path.db``, ``memory://``) and is
used as an async context manager::

    async with Engine.open("sqlite:///tenantflow.db") as engine:
        engine.register(loan)
        run = await engine.submit("loan-approval", tenant="bank-a", input={...})
        decision = await run.result()
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

from tenantflow.adapters.clock import SystemClock
from tenantflow.domain.contracts import contract_for, list_of
from tenantflow.domain.records import (
    TERMINAL_RUN,
    CreateRun,
    EventRecord,
    NewEvent,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from tenantflow.domain.run import advance, run_result
from tenantflow.domain.spec import WorkflowSpec, child_key
from tenantflow.domain.state import Change, bisect_versions, diff_states, fold
from tenantflow.engine.runtime import Active, Runtime
from tenantflow.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    RunFailedError,
    SpecError,
)
from tenantflow.ports import Clock, Store
from tenantflow.workflow import Workflow

__all__ = ["Engine", "RunHandle", "StateVersion", "open_store"]

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_LANES = ("urgent", "normal", "background")


def open_store(url: str) -> Store:
    """The store a URL names: ``sqlite:///file.db`` or ``memory://``."""
    if url.startswith("sqlite:"):
        from tenantflow.adapters.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith("memory:"):
        from tenantflow.adapters.memory import MemoryStore

        return MemoryStore()
    raise ConfigurationError(
        f"unsupported store URL {url!r}: use sqlite:///path/to/file.db or memory://",
        field="url",
        value=url,
    )


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ConfigurationError(
            f"invalid tenant id {tenant!r}: 1-64 letters, digits, '.', '_' or '-'",
            field="tenant",
            value=repr(tenant),
        )
    return tenant


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


class RunHandle:
    """A submitted run: its id, and a way to wait for its result."""

    __slots__ = ("_engine", "created", "id", "tenant_id")

    def __init__(self, engine: Engine, tenant_id: str, run_id: str, created: bool = True) -> None:
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
        record = await self.wait(timeout)
        if record.status != RunStatus.COMPLETED:
            raise RunFailedError(
                f"run {self.id} ended {record.status.value}: {record.error}",
                run_id=self.id,
                status=record.status.value,
                error=record.error,
            )
        return self._engine.decode_result(record)


class Engine:
    """Runs registered workflows durably on one store.

    Args:
        store: where runs live (see :func:`open_store`).
        clock: time source; :class:`~tenantflow.testing.FakeClock` in tests.
        slots: how many step attempts may execute at once in this process.
        lease: how long an attempt's lease lasts without renewal; an attempt whose lease lapses
            (the process stalled) can no longer commit, and the step is claimed again.
        execute: False opens the store to read (timelines, state) without running anything.
        seed: seeds retry jitter, for reproducible tests.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        slots: int = 64,
        lease: timedelta = timedelta(seconds=30),
        breaker_failures: int = 5,
        breaker_cooldown: timedelta = timedelta(seconds=30),
        execute: bool = True,
        seed: int | None = None,
    ) -> None:
        if slots < 1:
            raise ConfigurationError("slots must be at least 1", field="slots", value=slots)
        if lease <= timedelta(0):
            raise ConfigurationError("lease must be positive", field="lease", value=str(lease))
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.execute = execute
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._specs: dict[tuple[str, str], WorkflowSpec] = {}
        self._latest: dict[str, WorkflowSpec] = {}
        self._waiters: dict[str, list[asyncio.Future[tuple[RunStatus, Any]]]] = {}
        self._parked: list[RunRecord] = []
        self._started = False
        self.runtime = Runtime(
            store,
            self.clock,
            owner=self.owner,
            slots=slots,
            lease_s=lease.total_seconds(),
            breaker_threshold=breaker_failures,
            breaker_cooldown_s=breaker_cooldown.total_seconds(),
            rng=random.Random(seed),
            on_finish=self._on_finish,
        )

    @classmethod
    def open(cls, url: str, **options: Any) -> Engine:
        """An engine on the store named by ``url``; use it as ``async with Engine.open(...)``."""
        return cls(open_store(url), **options)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store and, when executing, resume every unfinished run."""
        if self._started:
            return
        await self.store.open(execute=self.execute)
        self._started = True
        if self.execute:
            self.runtime.start()
            self._parked = await self.runtime.recover(self._spec_or_none)

    async def close(self) -> None:
        """Stop executing (attempts in flight are resumed by the next start) and close the store."""
        if not self._started:
            return
        if self.execute:
            await self.runtime.close()
        await self.store.close()
        self._started = False

    # -- workflows ----------------------------------------------------------------------------

    def register(self, workflow: Workflow | WorkflowSpec) -> WorkflowSpec:
        """Make a workflow version available; runs parked on this version resume."""
        spec = workflow.spec if isinstance(workflow, Workflow) else workflow
        key = (spec.name, spec.version)
        existing = self._specs.get(key)
        if existing is not None and existing.fingerprint != spec.fingerprint:
            raise SpecError(
                f"workflow {spec.name!r} version {spec.version!r} is already registered with"
                " different steps; give the new definition a new version",
                workflow=spec.name,
                version=spec.version,
            )
        self._specs[key] = spec
        latest = self._latest.get(spec.name)
        if latest is None or _version_key(spec.version) >= _version_key(latest.version):
            self._latest[spec.name] = spec
        if self._started and self.execute and self._parked:
            self.runtime.spawn(self._resume_parked(spec), f"resume:{spec.name}")
        return spec

    async def _resume_parked(self, spec: WorkflowSpec) -> None:
        mine = [
            r for r in self._parked if (r.workflow, r.workflow_version) == (spec.name, spec.version)
        ]
        self._parked = [r for r in self._parked if r not in mine]
        for record in mine:
            steps = await self.store.get_steps(record.tenant_id, record.id)
            self.runtime.resume(record, steps, spec)

    def _spec_or_none(self, name: str, version: str) -> WorkflowSpec | None:
        return self._specs.get((name, version))

    def workflow(self, name: str, version: str | None = None) -> WorkflowSpec:
        """A registered workflow (latest version unless ``version`` is given)."""
        spec = self._latest.get(name) if version is None else self._specs.get((name, str(version)))
        if spec is None:
            known = ", ".join(sorted(self._latest)) or "none"
            raise NotFoundError(
                f"workflow {name!r}{'' if version is None else f' version {version!r}'} is not"
                f" registered (registered: {known})",
                kind="workflow",
                id=name,
            )
        return spec

    # -- runs ---------------------------------------------------------------------------------

    async def submit(
        self,
        workflow: str | Workflow,
        *,
        tenant: str,
        input: Any,
        idempotency_key: str | None = None,
        lane: str = "normal",
        version: str | None = None,
    ) -> RunHandle:
        """Start a run of ``workflow`` for ``tenant``; returns once the run is durably recorded.

        The same ``idempotency_key`` for the same tenant returns the existing run.

        Raises:
            NotFoundError: the workflow (version) is not registered.
            ContractError: ``input`` breaks the workflow's input contract.
            ConfigurationError: a bad tenant id or lane, or an engine that does not execute.
        """
        if not self.execute or not self._started:
            raise ConfigurationError(
                "this engine is not executing runs (open it with execute=True)"
            )
        tenant = check_tenant(tenant)
        if lane not in _LANES:
            raise ConfigurationError(
                f"unknown lane {lane!r}: one of {', '.join(_LANES)}", field="lane", value=lane
            )
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        spec = self.workflow(name, version)
        value, input_json = contract_for(spec.input_type).check(
            input, step="<input>", direction="input"
        )
        now = self.clock.now()
        run_id = "run_" + secrets.token_hex(12)
        pending = {s.name: StepStatus.PENDING for s in spec.steps}
        plan = advance(spec, pending, {}, value, changed=None)
        statuses = {**pending, **plan.statuses()}
        events = [
            NewEvent(
                "run.submitted",
                None,
                None,
                {"workflow": spec.name, "version": spec.version, "lane": lane},
            ),
            NewEvent("run.started"),
        ]
        events.extend(NewEvent("step.skipped", k, None, {"reason": r}) for k, r in plan.skipped)
        events.extend(NewEvent("step.mapped", k, None, {"elements": n}) for k, n in plan.mapped)
        events.extend(NewEvent("step.failed", k, None, {"error": r}) for k, r in plan.failed)
        fatal = [k for k, _ in plan.failed if not spec.step(k).optional]
        status = RunStatus.RUNNING
        result_json: bytes | None = None
        error: str | None = None
        if fatal:
            status, error = (
                RunStatus.FAILED,
                f"step {fatal[0]!r} failed: {dict(plan.failed)[fatal[0]]}",
            )
            events.append(NewEvent("run.failed", None, None, {"error": error}))
        elif plan.completed:
            status = RunStatus.COMPLETED
            result_json = self.runtime._result_json(spec, run_result(spec, {}))
            events.append(NewEvent("run.completed"))
        record = RunRecord(
            id=run_id,
            tenant_id=tenant,
            workflow=spec.name,
            workflow_version=spec.version,
            status=status,
            input_json=input_json,
            created_at=now,
            updated_at=now,
            lane=lane,
            idempotency_key=idempotency_key,
            result_json=result_json,
            error=error,
            finished_at=now if status in TERMINAL_RUN else None,
        )
        rows = [StepRecord(run_id, tenant, k, s) for k, s in statuses.items()]
        outcome = await self.runtime.writer.write(CreateRun(record, rows, events))
        if not outcome.created:
            return RunHandle(self, tenant, outcome.run_id, created=False)
        if status == RunStatus.RUNNING:
            run = Active(run_id, tenant, lane, spec, value, status, statuses)
            for key, n in plan.mapped:
                run.children[key] = n
            for key in plan.gathered:
                run.outputs[key] = []
                run.jsons[key] = b"[]"
            self.runtime.active[run_id] = run
            ready = list(plan.ready)
            for key, n in plan.mapped:
                ready.extend(child_key(key, i) for i in range(n))
            self.runtime.enqueue(run, ready)
        return RunHandle(self, tenant, run_id)

    def run(self, tenant: str, run_id: str) -> RunHandle:
        """A handle on an existing run."""
        return RunHandle(self, check_tenant(tenant), run_id)

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        return await self.store.get_run(check_tenant(tenant), run_id)

    async def list_runs(
        self,
        tenant: str,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[RunRecord]:
        if not 1 <= limit <= 1000:
            raise ConfigurationError("limit must be within 1..1000", field="limit", value=limit)
        return await self.store.list_runs(
            check_tenant(tenant), status=status, workflow=workflow, limit=limit, before=before
        )

    async def steps(self, tenant: str, run_id: str) -> list[StepRecord]:
        await self.get_run(tenant, run_id)
        return await self.store.get_steps(tenant, run_id)

    async def cancel(
        self, tenant: str, run_id: str, reason: str = "cancelled by request"
    ) -> RunRecord:
        """Cancel a run: stop its steps, compensate completed ones, end it ``cancelled``."""
        record = await self.get_run(tenant, run_id)
        if record.status in TERMINAL_RUN:
            raise ConflictError(
                f"run {run_id} already ended {record.status.value}",
                run_id=run_id,
                status=record.status.value,
            )
        active = self.runtime.active.get(run_id)
        if active is None or not self.execute:
            raise ConflictError(f"run {run_id} is not executing in this engine", run_id=run_id)
        await self.runtime.cancel(active, reason)
        return await self.store.get_run(tenant, run_id)

    async def wait(self, tenant: str, run_id: str, timeout: timedelta | None = None) -> RunRecord:
        """Wait until the run ends and return its record."""
        record = await self.get_run(tenant, run_id)
        if record.status in TERMINAL_RUN:
            return record

        async def until_done() -> RunRecord:
            while True:
                if run_id in self.runtime.active:
                    fut: asyncio.Future[tuple[RunStatus, Any]] = (
                        asyncio.get_running_loop().create_future()
                    )
                    self._waiters.setdefault(run_id, []).append(fut)
                    await fut
                else:  # executing elsewhere (or not yet resumed): poll the store
                    await asyncio.sleep(0.1)
                current = await self.store.get_run(tenant, run_id)
                if current.status in TERMINAL_RUN:
                    return current

        if timeout is None:
            return await until_done()
        return await asyncio.wait_for(until_done(), timeout.total_seconds())

    def _on_finish(self, run: Active, status: RunStatus, result: Any) -> None:
        for fut in self._waiters.pop(run.id, []):
            if not fut.done():
                fut.set_result((status, result))

    def decode_result(self, record: RunRecord) -> Any:
        """A completed run's result as the sink step's output type."""
        if record.result_json is None:
            return None
        spec = self._specs.get((record.workflow, record.workflow_version))
        if spec is None:
            return json.loads(record.result_json)
        if len(spec.sinks) == 1:
            sink = spec.step(spec.sinks[0])
            annotation = list_of(sink.output_type) if sink.fan_out else sink.output_type
            return contract_for(annotation).load(
                record.result_json, step=sink.name, direction="result"
            )
        return json.loads(record.result_json)

    # -- history ------------------------------------------------------------------------------

    async def timeline(self, tenant: str, run_id: str) -> list[EventRecord]:
        """The run's execution log, oldest first."""
        await self.get_run(tenant, run_id)
        return await self.store.events(tenant, run_id)

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
        versions = await self.store.state_versions(tenant, run_id, upto=target)
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
        rows = await self.store.state_versions(tenant, run_id, upto=record.state_version)
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


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
