"""Schedules as records: what a schedule is, and where the durable ones are kept.

A :class:`Schedule` says which tenant, workflow and input, when (``every``, ``cron`` or a
one-shot ``at``), and what to do on overlap and after downtime; :class:`Cron` is the cron
expression it may carry; :class:`Fired` is what one of its times did. A tenant's durable
schedules are kept in the tenant's store by :class:`ScheduleStore` (agent memory's table, in the
reserved namespace :data:`NAMESPACE`). The loop that fires them is
:class:`tenantflow.engine.schedules.Schedules`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tenantflow.domain.ids import check_tenant
from tenantflow.domain.memory import DeleteMemory, MemoryEntry, PutMemory
from tenantflow.domain.records import Op
from tenantflow.engine.direct import apply_one
from tenantflow.errors import (
    ConfigurationError,
    NotFoundError,
    TenantflowError,
)
from tenantflow.ports import Store

__all__ = ["NAMESPACE", "Cron", "Fired", "Schedule", "ScheduleStore", "Write"]

log = logging.getLogger("tenantflow.schedules")

_HORIZON_DAYS = 5 * 366
"""How far a cron expression's next or previous time is searched (February 29 included)."""

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


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


Write = Callable[[Op], Awaitable[Any]]


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
        return await (write(op) if write is not None else apply_one(store, op))

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
