"""Schedules: runs submitted on an interval or a cron expression, per tenant.

A :class:`Schedule` is registered in code, like a workflow (``engine.schedules.add(...)`` in the
app's ``setup``): which tenant, which workflow and input, when (``every`` or ``cron``), what to
do when the previous run of the schedule is still going (``overlap``) and how many missed times
to make up after downtime (``catchup``). Each time it fires it *submits* a run — so the run goes
through admission, budgets and rate limits like any other — with the idempotency key
``schedule:<name>:<time>``: a time fires at most once per tenant, across restarts and across the
processes of a cluster (the store refuses a second run with that key). What fired last is read
back from the store at start (the tenant's latest run with the schedule's key), so downtime is
made up, bounded by ``catchup``, and a new schedule makes up nothing.

Schedules can also be made at run time, per tenant (``engine.schedules.create(...)``, ``POST
/v1/schedules``, ``tenantflow schedules add``): those are *durable* — kept in the tenant's store
(agent memory's table, in the reserved namespace ``system:schedules`` that no memory call can
name, so deleting or moving the tenant takes them along), loaded at start and re-read every
``RELOAD_S`` by the process driving the tenant — and can be paused, resumed and deleted. A
*delayed start* (``engine.submit(..., start_at=...)``) is a durable one-shot schedule (``at``):
it fires once, at its time or after downtime, through admission like any run, and is deleted
once its run is submitted (a refused submission — a spent budget, an unknown workflow — is
logged in ``fired`` and the one-shot kept: it is tried again at the next start).

The loop runs in the process that drives the schedule's tenant (every tenant in an embedded
engine; the tenant's owner in a cluster) and sleeps on the engine's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tenantflow.domain.records import TERMINAL_RUN, RunRecord
from tenantflow.engine.schedule_store import (
    NAMESPACE,
    Cron,
    Fired,
    Schedule,
    ScheduleStore,
    Write,
    _iso,
)
from tenantflow.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    TenantflowError,
)
from tenantflow.ports import Clock

__all__ = ["NAMESPACE", "Cron", "Fired", "Schedule", "ScheduleStore", "Schedules", "Write"]

log = logging.getLogger("tenantflow.schedules")

GRACE_S = 60.0
"""The latest due time, fired within this long after it came, is on time; every earlier due
time is missed, and only the latest ``catchup`` of those fire."""

RELOAD_S = 30.0
"""How often the stored schedules are re-read (another process may have changed them)."""

Submit = Callable[..., Awaitable[Any]]


class Schedules:
    """The schedules of one engine, and the loop that fires them.

    Args:
        clock: the engine's clock.
        submit: ``engine.submit``.
        list_runs: ``engine.list_runs``.
        cancel: ``engine.cancel``.
        drives: whether this process drives a tenant.
        store: where the tenants' durable schedules are kept (None: code-registered only).
        check_workflow: raises NotFoundError for a workflow (version) not registered.
        poll: re-read the stored schedules every ``RELOAD_S`` (another process may change
            them: a cluster); else they are read at start and changed only through here.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        submit: Submit,
        list_runs: Callable[..., Awaitable[list[RunRecord]]],
        cancel: Callable[..., Awaitable[Any]],
        drives: Callable[[str], bool],
        store: ScheduleStore | None = None,
        check_workflow: Callable[[str, str | None], Any] | None = None,
        poll: bool = False,
    ) -> None:
        self._clock = clock
        self._submit = submit
        self._list_runs = list_runs
        self._cancel = cancel
        self._drives = drives
        self._schedules: dict[tuple[str, str], Schedule] = {}
        self._last: dict[tuple[str, str], tuple[float, str | None]] = {}  # fired time, run
        self._added: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._ticking = asyncio.Lock()
        self.fired: list[Fired] = []  # the latest 1,000, for tests and operators
        self._store = store
        self._check_workflow = check_workflow
        self._poll = poll
        self._stored: set[tuple[str, str]] = set()  # the durable ones among _schedules
        self._loaded_at: float | None = None

    def add(self, schedule: Schedule) -> Schedule:
        """Register a schedule (replacing one of the same tenant and name)."""
        self._schedules[(schedule.tenant, schedule.name)] = schedule
        self._last.pop((schedule.tenant, schedule.name), None)
        self._added[(schedule.tenant, schedule.name)] = self._clock.now()
        self._changed.set()
        return schedule

    def remove(self, tenant: str, name: str) -> None:
        self._schedules.pop((tenant, name), None)
        self._last.pop((tenant, name), None)
        self._stored.discard((tenant, name))

    def get(self, tenant: str, name: str) -> Schedule:
        """The tenant's schedule ``name``; NotFoundError if the tenant has none of that name."""
        found = self._schedules.get((tenant, name))
        if found is None:
            raise NotFoundError(f"schedule {name!r} not found", kind="schedule", id=name)
        return found

    def describe(self, schedule: Schedule) -> dict[str, Any]:
        """A JSON-ready view (times ISO-8601), as ``GET /v1/schedules`` lists it."""
        last = self.last(schedule)
        return {
            "name": schedule.name,
            "workflow": schedule.workflow,
            "every_s": None if schedule.every is None else schedule.every.total_seconds(),
            "cron": schedule.cron,
            "at": _iso(schedule.at),
            "overlap": schedule.overlap,
            "catchup": schedule.catchup,
            "paused": schedule.paused,
            "durable": schedule.created_at is not None,
            "next_at": None if schedule.paused else _iso(self.next_time(schedule)),
            "last_at": _iso(last[0] if last else None),
            "last_run_id": last[1] if last else None,
        }

    def durable(self, schedule: Schedule) -> bool:
        """Whether it is kept in the tenant's store (made at run time, not in code)."""
        return (schedule.tenant, schedule.name) in self._stored

    # -- durable schedules --------------------------------------------------------------------

    def _require_store(self) -> ScheduleStore:
        if self._store is None:
            raise ConfigurationError("this engine keeps no schedules: it has no store")
        return self._store

    async def _stored_of(self, tenant: str) -> dict[str, Schedule]:
        store = self._require_store()
        return {s.name: s for s in await store.load(tenant, self._clock.now())}

    async def read(self, tenant: str) -> list[Schedule]:
        """The tenant's schedules, registered in code and durable (read from its store), by
        name."""
        found = {s.name: s for s in self.all(tenant) if not self.durable(s)}
        if self._store is not None:
            for name, schedule in (await self._stored_of(tenant)).items():
                found.setdefault(name, schedule)
                if self._drives(tenant):
                    self._sync(schedule)
        return [found[name] for name in sorted(found)]

    def _sync(self, schedule: Schedule) -> None:
        """Take the stored version of a durable schedule here (its tenant is driven here)."""
        key = (schedule.tenant, schedule.name)
        if key in self._schedules and key not in self._stored:
            return  # registered in code: that one wins
        if self._schedules.get(key) == schedule:
            return
        self._stored.add(key)
        previous = self._schedules.get(key)
        if previous is not None and replace(previous, paused=schedule.paused) == schedule:
            self._schedules[key] = schedule  # paused or resumed: what fired is kept
            self._changed.set()
            return
        self._install(schedule)

    async def create(self, schedule: Schedule, *, check: bool = True) -> Schedule:
        """Make a durable schedule for its tenant (kept in the tenant's store, loaded at start).

        Raises:
            ConfigurationError: the workflow (version) is not registered, or the engine has
                no store.
            NotFoundError: the tenant is not registered.
            ConflictError: the tenant has a schedule of that name.

        ``check=False`` skips the workflow check (a CLI on the store, with no workflows
        registered: the serving process refuses an unknown workflow when it fires).
        """
        store = self._require_store()
        if check and self._check_workflow is not None:
            try:
                self._check_workflow(schedule.workflow, schedule.version)
            except NotFoundError as exc:
                raise ConfigurationError(exc.message, field="workflow") from exc
        key = (schedule.tenant, schedule.name)
        code = key in self._schedules and key not in self._stored
        if code or schedule.name in await self._stored_of(schedule.tenant):
            raise ConflictError(
                f"schedule {schedule.name!r} exists: delete it first", kind="schedule"
            )
        now = self._clock.now()
        made = schedule if schedule.created_at is not None else replace(schedule, created_at=now)
        await store.save(made, now)
        if self._drives(made.tenant):
            self._sync(made)
        return made

    async def start_at(
        self,
        workflow: str,
        *,
        tenant: str,
        input: Any,
        at: float,
        idempotency_key: str | None = None,
        lane: str | None = None,
        version: str | None = None,
    ) -> tuple[Schedule, bool]:
        """A delayed start: a durable one-shot schedule that submits the run at ``at``; it and
        whether it is new.

        Its name is ``at-`` and 16 hex digits: derived from ``idempotency_key`` when given (the
        same key returns the same delayed start while it waits), else random. The run's
        idempotency key is ``schedule:<name>:<time>``, so it is submitted once.
        """
        if idempotency_key is not None:
            digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()[:16]
            name = "at-" + digest
            existing = (await self._stored_of(tenant)).get(name)
            if existing is not None:
                return existing, False
        else:
            name = "at-" + secrets.token_hex(8)
        schedule = Schedule(
            name=name,
            tenant=tenant,
            workflow=workflow,
            input=input,
            at=at,
            overlap="queue",
            catchup=1,
            lane=lane,
            version=version,
        )
        return await self.create(schedule), True

    async def _durable(self, tenant: str, name: str) -> Schedule:
        key = (tenant, name)
        if key in self._schedules and key not in self._stored:
            raise ConflictError(
                f"schedule {name!r} is registered in code: change it there", kind="schedule"
            )
        found = (await self._stored_of(tenant)).get(name)
        if found is None:
            raise NotFoundError(f"schedule {name!r} not found", kind="schedule", id=name)
        return found

    async def _set_paused(self, tenant: str, name: str, paused: bool) -> Schedule:
        store = self._require_store()
        schedule = await self._durable(tenant, name)
        changed = replace(schedule, paused=paused)
        if changed != schedule:
            await store.save(changed, self._clock.now())
        if self._drives(tenant):
            self._sync(changed)
        return changed

    async def pause(self, tenant: str, name: str) -> Schedule:
        """Stop firing the schedule (kept; :meth:`resume` makes up, bounded by catch-up).

        Raises:
            NotFoundError: the tenant has no such schedule.
            ConflictError: it is registered in code.
        """
        return await self._set_paused(tenant, name, True)

    async def resume(self, tenant: str, name: str) -> Schedule:
        return await self._set_paused(tenant, name, False)

    async def delete(self, tenant: str, name: str) -> None:
        """Delete a durable schedule (its runs are left as they are)."""
        store = self._require_store()
        await self._durable(tenant, name)
        await store.delete(tenant, name, self._clock.now())
        if (tenant, name) in self._stored:
            self.remove(tenant, name)

    def _install(self, schedule: Schedule) -> None:
        key = (schedule.tenant, schedule.name)
        self._schedules[key] = schedule
        self._last.pop(key, None)
        created = schedule.created_at
        self._added[key] = self._clock.now() if created is None else created
        self._changed.set()

    async def load(self) -> None:
        """Read the durable schedules of the tenants driven here from their stores (replacing
        what was read before)."""
        if self._store is None:
            return
        now = self._clock.now()
        self._loaded_at = now
        seen: set[tuple[str, str]] = set()
        for tenant in self._store.tenant_ids():
            if not self._drives(tenant):
                continue
            for schedule in await self._store.load(tenant, now):
                seen.add((schedule.tenant, schedule.name))
                self._sync(schedule)
        for key in self._stored - seen:  # deleted elsewhere, or the tenant left
            self.remove(*key)

    async def _ensure_loaded(self) -> None:
        now = self._clock.now()
        if self._loaded_at is None or (self._poll and now - self._loaded_at >= RELOAD_S):
            await self.load()

    def all(self, tenant: str | None = None) -> list[Schedule]:
        """The registered schedules (of ``tenant``, when given), by tenant and name."""
        return sorted(
            (s for s in self._schedules.values() if tenant is None or s.tenant == tenant),
            key=lambda s: (s.tenant, s.name),
        )

    def next_time(self, schedule: Schedule) -> float | None:
        """When the schedule fires next (None: never within five years)."""
        return schedule.next_after(self._clock.now())

    def last(self, schedule: Schedule) -> tuple[float, str | None] | None:
        """When it last fired here and the run it submitted (None: not since this start)."""
        found = self._last.get((schedule.tenant, schedule.name))
        return None if found is None or found[1] is None else found

    # -- the loop -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="tenantflow-schedules")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            if not self._schedules and not self._poll and self._loaded_at is not None:
                # nothing to fire: no timer on the clock until one is added
                self._changed.clear()
                await self._changed.wait()
            try:
                await self.tick()
            except TenantflowError as exc:  # the store is down: try again at the next tick
                log.warning("schedules: %s", exc)
            now = self._clock.now()
            upcoming = [s.next_after(now) for s in self._schedules.values() if not s.paused]
            longest = RELOAD_S if self._poll else 60.0
            due = min((t for t in upcoming if t is not None), default=now + longest)
            self._changed.clear()
            sleep = asyncio.ensure_future(self._clock.sleep(max(0.0, min(due - now, longest))))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({sleep, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when this loop is cancelled (the engine closes): none is left behind
                for task in (sleep, changed):
                    task.cancel()

    async def tick(self) -> list[Fired]:
        """Fire every due time of the schedules of the tenants driven here (one tick at a
        time)."""
        async with self._ticking:
            return await self._tick()

    async def _tick(self) -> list[Fired]:
        out: list[Fired] = []
        await self._ensure_loaded()
        now = self._clock.now()
        for key, schedule in list(self._schedules.items()):
            if schedule.paused or not self._drives(schedule.tenant):
                continue
            last = self._last.get(key)
            if last is None:
                last = await self._last_fired(schedule, now)
                self._last[key] = last
            due = schedule.times(last[0], now)
            if not due:
                fired_before = last[1] is not None and last[0] >= (schedule.at or 0)
                if schedule.one_shot and key in self._stored and fired_before:
                    await self._finish_one_shot(schedule)  # its run was submitted before
                continue
            # The latest time is on time if it came within the grace; every other is missed.
            on_time = due[-1:] if now - due[-1] <= GRACE_S else []
            missed = due[: len(due) - len(on_time)]
            chosen = (missed[-schedule.catchup :] if schedule.catchup else []) + on_time
            fired = [await self._fire(schedule, at) for at in chosen]
            out.extend(fired)
            self._last[key] = (due[-1], self._last.get(key, last)[1])
            if schedule.one_shot and key in self._stored and any(f.run_id for f in fired):
                await self._finish_one_shot(schedule)  # refused: kept, tried again at start
        self.fired.extend(out)
        del self.fired[:-1000]
        return out

    async def _finish_one_shot(self, schedule: Schedule) -> None:
        """A delayed start has submitted its run: delete it."""
        if self._store is not None:
            await self._store.delete(schedule.tenant, schedule.name, self._clock.now())
        self.remove(schedule.tenant, schedule.name)

    async def _last_fired(self, schedule: Schedule, now: float) -> tuple[float, str | None]:
        """The latest time the schedule fired (from its runs' keys); if never, when it was
        added (a new schedule makes up nothing)."""
        runs = await self._list_runs(
            schedule.tenant, workflow=schedule.workflow, limit=500, payloads=False
        )
        for run in runs:  # newest first
            key = run.idempotency_key or ""
            if key.startswith(schedule.key_prefix):
                try:
                    at = datetime.fromisoformat(key[len(schedule.key_prefix) :]).timestamp()
                except ValueError:
                    continue
                return at, run.id
        return min(now, self._added.get((schedule.tenant, schedule.name), now)), None

    async def _fire(self, schedule: Schedule, at: float) -> Fired:
        key = (schedule.tenant, schedule.name)
        previous = self._last.get(key, (0.0, None))[1]
        if previous is not None and schedule.overlap != "queue":
            with contextlib.suppress(TenantflowError):
                runs = await self._list_runs(
                    schedule.tenant, workflow=schedule.workflow, limit=50, payloads=False
                )
                going = [r for r in runs if r.id == previous and r.status not in TERMINAL_RUN]
                if going and schedule.overlap == "skip":
                    log.info("schedule %s: %s still running; skipped", schedule.name, previous)
                    return Fired(schedule.name, schedule.tenant, at, "skipped", previous)
                if going:
                    await self._cancel(
                        schedule.tenant, previous, f"schedule {schedule.name}: a newer run"
                    )
        stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
        try:
            handle = await self._submit(
                schedule.workflow,
                tenant=schedule.tenant,
                input=schedule.input,
                idempotency_key=schedule.key_prefix + stamp,
                lane=schedule.lane,
                version=schedule.version,
            )
        except TenantflowError as exc:
            log.warning("schedule %s at %s: %s", schedule.name, stamp, exc.message)
            return Fired(schedule.name, schedule.tenant, at, "failed", error=exc.message)
        self._last[key] = (at, handle.id)
        action = "submitted" if getattr(handle, "created", True) else "exists"
        return Fired(schedule.name, schedule.tenant, at, action, handle.id)
