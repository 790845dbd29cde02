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

The loop runs in the process that drives the schedule's tenant (every tenant in an embedded
engine; the tenant's owner in a cluster) and sleeps on the engine's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tenantflow.domain.ids import check_tenant
from tenantflow.domain.records import TERMINAL_RUN, RunRecord
from tenantflow.errors import ConfigurationError, TenantflowError
from tenantflow.ports import Clock

__all__ = ["Cron", "Fired", "Schedule", "Schedules"]

log = logging.getLogger("tenantflow.schedules")

GRACE_S = 60.0
"""The latest due time, fired within this long after it came, is on time; every earlier due
time is missed, and only the latest ``catchup`` of those fire."""

_HORIZON_DAYS = 5 * 366
"""How far a cron expression's next or previous time is searched (February 29 included)."""

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
        overlap: the previous run of the schedule has not ended: ``skip`` this time, ``queue``
            the new run anyway (admission orders them), or ``cancel`` the previous one first.
        catchup: after downtime, how many of the missed times to fire (the latest ones; 0: none).
        lane: the runs' lane (the tenant's default when None).
        version: the workflow version (the latest registered when None).
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

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"schedule name {self.name!r}: use lower-case letters, digits and _.-",
                field="name",
            )
        check_tenant(self.tenant)
        if (self.every is None) == (self.cron is None):
            raise ConfigurationError("give a schedule exactly one of every or cron", field="every")
        if self.every is not None and self.every.total_seconds() < 1:
            raise ConfigurationError("every must be at least one second", field="every")
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

    def times(self, after: float, until: float) -> list[float]:
        """The times in ``(after, until]``, oldest first (at most 10,000)."""
        out: list[float] = []
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


class Schedules:
    """The schedules of one engine, and the loop that fires them.

    Args:
        clock: the engine's clock.
        submit: ``engine.submit``.
        list_runs: ``engine.list_runs``.
        cancel: ``engine.cancel``.
        drives: whether this process drives a tenant.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        submit: Submit,
        list_runs: Callable[..., Awaitable[list[RunRecord]]],
        cancel: Callable[..., Awaitable[Any]],
        drives: Callable[[str], bool],
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
            if not self._schedules:  # nothing to fire: no timer on the clock until one is added
                self._changed.clear()
                await self._changed.wait()
            try:
                await self.tick()
            except TenantflowError as exc:  # the store is down: try again at the next tick
                log.warning("schedules: %s", exc)
            now = self._clock.now()
            upcoming = [s.next_after(now) for s in self._schedules.values()]
            due = min((t for t in upcoming if t is not None), default=now + 60.0)
            self._changed.clear()
            sleep = asyncio.ensure_future(self._clock.sleep(max(0.0, min(due - now, 60.0))))
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
        now = self._clock.now()
        for key, schedule in list(self._schedules.items()):
            if not self._drives(schedule.tenant):
                continue
            last = self._last.get(key)
            if last is None:
                last = await self._last_fired(schedule, now)
                self._last[key] = last
            due = schedule.times(last[0], now)
            if not due:
                continue
            # The latest time is on time if it came within the grace; every other is missed.
            on_time = due[-1:] if now - due[-1] <= GRACE_S else []
            missed = due[: len(due) - len(on_time)]
            chosen = (missed[-schedule.catchup :] if schedule.catchup else []) + on_time
            for at in chosen:
                out.append(await self._fire(schedule, at))
            self._last[key] = (due[-1], self._last.get(key, last)[1])
        self.fired.extend(out)
        del self.fired[:-1000]
        return out

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
