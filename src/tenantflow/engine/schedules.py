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
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tenantflow.domain.ids import check_tenant
from tenantflow.domain.memory import DeleteMemory, MemoryEntry, PutMemory
from tenantflow.domain.records import TERMINAL_RUN, Op, RunRecord
from tenantflow.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    StoreError,
    TenantflowError,
)
from tenantflow.ports import Clock, Store

__all__ = ["NAMESPACE", "Cron", "Fired", "Schedule", "ScheduleStore", "Schedules"]

log = logging.getLogger("tenantflow.schedules")

GRACE_S = 60.0
"""The latest due time, fired within this long after it came, is on time; every earlier due
time is missed, and only the latest ``catchup`` of those fire."""

_HORIZON_DAYS = 5 * 366
"""How far a cron expression's next or previous time is searched (February 29 included)."""

RELOAD_S = 30.0
"""How often the stored schedules are re-read (another process may have changed them)."""

NAMESPACE = "system:schedules"
"""Where a tenant's durable schedules are kept: a namespace of the agent memory table that the
memory API refuses (it takes only ``default``, ``user:<id>`` and ``session:<id>``)."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week, UTC): ``*``,
    numbers, ranges ``a-b``, lists ``a,b`` and steps ``*/n`` or ``a-b/n``; day-of-week 0-6 from
    Sunday (7 is Sunday too). When both day fields are restricted, either matching fires (as in
    Vixie cron)."""

    _BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))

    def __init__(self, expression: str) -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise ConfigurationError(
                f"cron {expression!r} needs five fields: minute hour day month weekday",
                field="cron",
            )
        sets = [
            self._field(f, lo, hi, expression)
            for f, (lo, hi) in zip(fields, self._BOUNDS, strict=True)
        ]
        self.expression = expression
        self.minutes, self.hours, self.days, self.months, weekdays = sets
        self.weekdays = {d % 7 for d in weekdays}
        self._any_day = fields[2] == "*"
        self._any_weekday = fields[4] == "*"

    @staticmethod
    def _field(text: str, lo: int, hi: int, expression: str) -> set[int]:
        out: set[int] = set()
        for part in text.split(","):
            base, _, step_text = part.partition("/")
            try:
                step = int(step_text) if step_text else 1
                if base == "*":
                    first, last = lo, hi
                elif "-" in base:
                    a, b = base.split("-", 1)
                    first, last = int(a), int(b)
                else:
                    first = last = int(base)
                    if step_text:
                        last = hi
            except ValueError:
                first, last, step = hi + 1, lo, 0
            if step < 1 or not lo <= first <= last <= hi:
                raise ConfigurationError(
                    f"cron {expression!r}: {part!r} is not within {lo}-{hi}", field="cron"
                )
            out.update(range(first, last + 1, step))
        return out

    def _day_matches(self, day: datetime) -> bool:
        weekday = (day.weekday() + 1) % 7  # Python: Monday 0; cron: Sunday 0
        in_days, in_weekdays = day.day in self.days, weekday in self.weekdays
        if self._any_day or self._any_weekday:
            return in_days and in_weekdays
        return in_days or in_weekdays

    def previous(self, now: float) -> float | None:
        """The latest time at or before ``now`` that matches (None within five years)."""
        t = datetime.fromtimestamp(now, UTC).replace(second=0, microsecond=0)
        day = t.replace(hour=0, minute=0)
        for _ in range(_HORIZON_DAYS):
            if day.month in self.months and self._day_matches(day):
                for hour in sorted(self.hours, reverse=True):
                    for minute in sorted(self.minutes, reverse=True):
                        at = day.replace(hour=hour, minute=minute)
                        if at <= t:
                            return at.timestamp()
            day -= timedelta(days=1)
        return None

    def next(self, after: float) -> float | None:
        """The earliest time strictly after ``after`` that matches (None within five years)."""
        t = datetime.fromtimestamp(after, UTC).replace(second=0, microsecond=0)
        day = t.replace(hour=0, minute=0)
        for _ in range(_HORIZON_DAYS):
            if day.month in self.months and self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        at = day.replace(hour=hour, minute=minute)
                        if at.timestamp() > after:
                            return at.timestamp()
            day += timedelta(days=1)
        return None


@dataclass(frozen=True, slots=True)
class Schedule:
    """Submit a run of ``workflow`` for ``tenant`` every ``every`` or on ``cron`` (UTC).

    Attributes:
        name: unique per tenant (lower-case letters, digits, ``_.-``); part of each run's
            idempotency key.
        tenant: the tenant the runs are submitted for.
        workflow: a registered workflow (its latest version, or ``version``).
        input: every run's input.
        every: an interval (at least one second), aligned on the epoch.
        cron: a five-field cron expression (see :class:`Cron`).
        at: a one-shot time (epoch seconds, UTC): a delayed start; exactly one of ``every``,
            ``cron`` and ``at`` is given.
        overlap: the previous run of the schedule has not ended: ``skip`` this time, ``queue``
            the new run anyway (admission orders them), or ``cancel`` the previous one first.
        catchup: after downtime, how many of the missed times to fire (the latest ones; 0: none).
        lane: the runs' lane (the tenant's default when None).
        version: the workflow version (the latest registered when None).
        paused: a paused schedule fires nothing; resumed, it makes up what it missed while
            paused, bounded by ``catchup``, like after downtime.
        created_at: when it was made (epoch seconds); a schedule that never fired makes up
            nothing from before it.
    """

    name: str
    tenant: str
    workflow: str
    input: Any = None
    every: timedelta | None = None
    cron: str | None = None
    overlap: Literal["skip", "queue", "cancel"] = "skip"
    catchup: int = 1
    lane: str | None = None
    version: str | None = None
    at: float | None = None
    paused: bool = False
    created_at: float | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"schedule name {self.name!r}: use lower-case letters, digits and _.-",
                field="name",
            )
        check_tenant(self.tenant)
        if not self.workflow or not isinstance(self.workflow, str):
            raise ConfigurationError("a schedule needs a workflow", field="workflow")
        given = sum(x is not None for x in (self.every, self.cron, self.at))
        if given != 1:
            raise ConfigurationError(
                "give a schedule exactly one of every, cron or at", field="every"
            )
        if self.every is not None:
            seconds = self.every.total_seconds()
            if not math.isfinite(seconds) or seconds < 1:
                raise ConfigurationError("every must be at least one second", field="every")
        if self.at is not None and not math.isfinite(self.at):
            raise ConfigurationError("at must be a finite time", field="at")
        if self.cron is not None:
            Cron(self.cron)
        if self.overlap not in ("skip", "queue", "cancel"):
            raise ConfigurationError(
                f"overlap {self.overlap!r}: give skip, queue or cancel", field="overlap"
            )
        if not 0 <= self.catchup <= 100:
            raise ConfigurationError("catchup must be within 0..100", field="catchup")

    @property
    def key_prefix(self) -> str:
        return f"schedule:{self.name}:"

    @property
    def one_shot(self) -> bool:
        return self.at is not None

    def to_json(self) -> dict[str, Any]:
        """What is stored (and read back by :meth:`from_json`)."""
        return {
            "workflow": self.workflow,
            "input": self.input,
            "every_s": None if self.every is None else self.every.total_seconds(),
            "cron": self.cron,
            "at": self.at,
            "overlap": self.overlap,
            "catchup": self.catchup,
            "lane": self.lane,
            "version": self.version,
            "paused": self.paused,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, tenant: str, name: str, data: Mapping[str, Any]) -> Schedule:
        every_s = data.get("every_s")
        return cls(
            name=name,
            tenant=tenant,
            workflow=str(data["workflow"]),
            input=data.get("input"),
            every=None if every_s is None else timedelta(seconds=float(every_s)),
            cron=data.get("cron"),
            at=data.get("at"),
            overlap=data.get("overlap", "skip"),
            catchup=int(data.get("catchup", 1)),
            lane=data.get("lane"),
            version=data.get("version"),
            paused=bool(data.get("paused", False)),
            created_at=data.get("created_at"),
        )

    def times(self, after: float, until: float) -> list[float]:
        """The times in ``(after, until]``, oldest first (at most 10,000)."""
        out: list[float] = []
        if self.at is not None:
            return [self.at] if after < self.at <= until else []
        if self.every is not None:
            step = self.every.total_seconds()
            at = (after // step + 1) * step
            while at <= until and len(out) < 10_000:
                out.append(at)
                at += step
            return out
        assert self.cron is not None
        cron = Cron(self.cron)
        at_or_none = cron.next(after)
        while at_or_none is not None and at_or_none <= until and len(out) < 10_000:
            out.append(at_or_none)
            at_or_none = cron.next(at_or_none)
        return out

    def next_after(self, after: float) -> float | None:
        if self.at is not None:
            return self.at if self.at > after else None
        if self.every is not None:
            step = self.every.total_seconds()
            return float((after // step + 1) * step)
        assert self.cron is not None
        return Cron(self.cron).next(after)


@dataclass(frozen=True, slots=True)
class Fired:
    """What one time of a schedule did: ``submitted`` (run_id), ``exists`` (another process
    submitted it: run_id), ``skipped`` (the previous run was going), or ``failed`` (the
    submission was refused: ``error``)."""

    schedule: str
    tenant: str
    at: float
    action: str
    run_id: str | None = None
    error: str | None = None


Submit = Callable[..., Awaitable[Any]]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


Write = Callable[[Op], Awaitable[Any]]


async def _apply(store: Store, op: Op) -> Any:
    """Apply one op in its own transaction; its result, or its error raised."""
    [result] = await store.apply([op])
    if isinstance(result, TenantflowError):
        raise result
    if isinstance(result, BaseException):
        raise StoreError(f"write refused by the store: {result}") from result
    return result


class ScheduleStore:
    """The tenants' durable schedules, in each tenant's store (namespace :data:`NAMESPACE`).

    Args:
        locate: the tenant's store and how to write there (the engine's writer, or one
            transaction per write); NotFoundError for an unknown tenant.
        tenant_ids: the tenants known here.
    """

    def __init__(
        self,
        locate: Callable[[str], Awaitable[tuple[Store, Write | None]]],
        tenant_ids: Callable[[], list[str]],
    ) -> None:
        self._locate = locate
        self.tenant_ids = tenant_ids

    async def _write(self, tenant: str, op: Op) -> Any:
        store, write = await self._locate(tenant)
        return await (write(op) if write is not None else _apply(store, op))

    async def save(self, schedule: Schedule, now: float) -> None:
        value = json.dumps(schedule.to_json(), separators=(",", ":"), allow_nan=False)
        await self._write(
            schedule.tenant, PutMemory(schedule.tenant, NAMESPACE, schedule.name, value, now, None)
        )

    async def delete(self, tenant: str, name: str, now: float) -> None:
        with contextlib.suppress(NotFoundError):  # already gone
            await self._write(tenant, DeleteMemory(tenant, NAMESPACE, name, now))

    async def load(self, tenant: str, now: float) -> list[Schedule]:
        store, _ = await self._locate(tenant)
        out: list[Schedule] = []
        after: str | None = None
        while True:
            page: list[MemoryEntry] = await store.list_memory(
                tenant, NAMESPACE, now=now, after=after, limit=100
            )
            for entry in page:
                try:
                    out.append(Schedule.from_json(tenant, entry.key, entry.value))
                except (TenantflowError, KeyError, TypeError, ValueError) as exc:
                    log.warning("schedule %s of %s unreadable: %s", entry.key, tenant, exc)
            if len(page) < 100:
                return out
            after = page[-1].key


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
            await asyncio.wait({sleep, changed}, return_when=asyncio.FIRST_COMPLETED)
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
