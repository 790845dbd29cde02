"""Two broker drivers (as two processes would be) deciding one run's parallel branches.

The workflow is a diamond: ``start`` feeds ``left`` and ``right``, both feed ``join``. Each
branch is handled by its own :class:`BrokerDriver` on one store and one bus, and the interleaving
is forced with events (no sleeps): both branches' outcomes are decided from the same view of the
run (each sees the other still running) before either is written. The test plays the broker's
consumer loop itself (the drivers' writers run, their consumers do not), so that it decides which
driver handles which delivery.

With the run-level compare-and-set the second finish is refused (nothing written), decided again
from the run as it now is, and readies ``join``: it runs once. The control case writes the same
two decisions without their expected version: each readies nothing, since each saw the other
branch running, and the join is lost (the run never moves on).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

import tenantflow as tf
from tenantflow.domain.records import FinishAttempt, Transition, VersionConflict
from tenantflow.domain.spec import child_key
from tenantflow.engine.execution.broker import BrokerDriver
from tenantflow.testing import FakeClock, LoopbackBus, MemoryStore

T = TypeVar("T")
TENANT = "acme"
BRANCHES = ("left", "right")
ELEMENTS = (child_key("square", 0), child_key("square", 1))

ran: Counter[str] = Counter()

diamond = tf.Workflow("diamond", input=int)


@diamond.step
async def start(ctx: tf.StepContext, input: int) -> int:
    ran["start"] += 1
    return input


@diamond.step
async def left(ctx: tf.StepContext, start: int) -> int:
    ran["left"] += 1
    return start + 1


@diamond.step
async def right(ctx: tf.StepContext, start: int) -> int:
    ran["right"] += 1
    return start + 2


@diamond.step
async def join(ctx: tf.StepContext, left: int, right: int) -> int:
    ran["join"] += 1
    return left + right


fan = tf.Workflow("fan", input=list[int])


@fan.step
async def items(ctx: tf.StepContext, input: list[int]) -> list[int]:
    ran["items"] += 1
    return input


@fan.step(fan_out="items")
async def square(ctx: tf.StepContext, items: int) -> int:
    ran["square"] += 1
    return items * items


@fan.step
async def total(ctx: tf.StepContext, square: list[int]) -> int:
    ran["total"] += 1
    return sum(square)


class InlineStore(MemoryStore):
    """The in-memory store, each statement run on the event loop's thread: the drivers'
    writes then interleave only where the test's events let them."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise tf.StoreUnavailableError("the SQLite store is not open")
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise tf.StoreError(f"SQLite error: {exc}") from exc


class Gate:
    """Holds the first finish of each of two branches until both were decided, then lets the
    first commit before the second: both were decided from the same view. Later finishes
    pass."""

    def __init__(self, branches: tuple[str, str], *, cas: bool) -> None:
        self.branches = branches
        self.cas = cas
        self.decided: set[str] = set()
        self.both_decided = asyncio.Event()
        self.left_written = asyncio.Event()
        self.expected: dict[str, int | None] = {}
        self.results: list[tuple[str, Any]] = []
        self.both_written = asyncio.Event()
        self.gathers: list[tuple[int | None, Any]] = []
        self.gathers_decided = asyncio.Event()
        self.first_gather_written = asyncio.Event()
        self.hold_gathers = False

    def wrap(self, driver: BrokerDriver, *, late_gather: bool = False) -> None:
        """Gate ``driver``'s finishes; ``late_gather``: its check for a lost gather waits
        until both branches were written, and two such gathers are decided from one view."""
        for writer in driver.writers.values():
            writer.write = self._gated(writer.write)  # type: ignore[method-assign,assignment]
        if late_gather:
            self.hold_gathers = True
            check = driver._gather_if_lost

            async def late(*args: Any) -> None:
                if args[4] in self.branches:  # the key whose finish was written
                    await self.both_written.wait()
                await check(*args)

            driver._gather_if_lost = late  # type: ignore[method-assign,assignment]

    async def _gather(self, write: Callable[[Any], Any], op: Transition) -> Any:
        turn = len(self.gathers)
        self.gathers.append((op.expected_version, None))
        if self.hold_gathers and turn < 2:
            if turn == 1:
                self.gathers_decided.set()
            await self.gathers_decided.wait()
            if turn == 1:
                await self.first_gather_written.wait()
        result = await write(op)
        self.gathers[turn] = (op.expected_version, result)
        self.first_gather_written.set()
        return result

    def _gated(self, write: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def gated(op: Any, *, urgent: bool = False) -> Any:  # (the lane is not tested here)
            if isinstance(op, Transition) and op.expected_version is not None:
                return await self._gather(write, op)
            if not isinstance(op, FinishAttempt):
                return await write(op)
            if op.key in self.branches and op.key not in self.decided:
                self.decided.add(op.key)
                self.expected[op.key] = op.expected_version
                if self.decided == set(self.branches):
                    self.both_decided.set()
                await self.both_decided.wait()
                if op.key == self.branches[1]:
                    await self.left_written.wait()
            if not self.cas:
                op = dataclasses.replace(op, expected_version=None)
            result = await write(op)
            self.results.append((op.key, result))
            if op.key == self.branches[0]:
                self.left_written.set()
            if all(any(k == b for k, _ in self.results) for b in self.branches):
                self.both_written.set()
            return result

        return gated


@dataclasses.dataclass
class Outcome:
    """What the race left in the store and on the bus."""

    run_id: str
    record: tf.RunRecord
    succeeded: Counter[str | None]
    kinds: Counter[str]
    versions: list[tuple[int, str | None]]
    steps: dict[str, tf.StepStatus]
    bus: LoopbackBus
    gate: Gate


async def race(
    workflow: tf.Workflow = diamond,
    input: Any = 1,
    branches: tuple[str, str] = BRANCHES,
    *,
    cas: bool = True,
    gather_check: bool = True,
    late_gather: bool = False,
) -> Outcome:
    """Submit a run and handle its two parallel ``branches`` on two drivers, both decided from
    one view; every other delivery is handled by the second driver, until none is left.
    ``gather_check=False`` turns off the drivers' check for a gather lost that way."""
    ran.clear()
    clock, store = FakeClock(), InlineStore()
    async with tf.Engine(store, clock=clock) as control:
        await control.tenants.create(TENANT)
        bus = LoopbackBus(clock)
        drivers = [
            BrokerDriver(
                {"local": store},
                home="local",
                bus=bus,
                clock=clock,
                gateway=control.gateway,
                workflows=[workflow.spec],
                owner=owner,
                seed=1,
            )
            for owner in ("p1", "p2")
        ]
        gate = Gate(branches, cas=cas)
        for driver in drivers:
            gate.wrap(driver, late_gather=late_gather)
            if not gather_check:
                driver._gather_if_lost = _nothing  # type: ignore[method-assign,assignment]
            for writer in driver.writers.values():
                writer.start()
        try:
            run_id = await drivers[0].submit(TENANT, workflow.spec.name, input)
            first = await bus.next()
            assert first is not None
            await drivers[0]._handle(first)
            out = [await bus.next(), await bus.next()]
            by_key = {d.data["key"]: d for d in out if d is not None}
            assert set(by_key) == set(branches)
            await asyncio.gather(
                drivers[0]._handle(by_key[branches[0]]), drivers[1]._handle(by_key[branches[1]])
            )
            while bus.pending:  # what the branches readied: let the other process run it
                nxt = await bus.next()
                assert nxt is not None
                await drivers[1]._handle(nxt)
        finally:
            for driver in drivers:
                await driver.close()
            await bus.close()
        events = await store.events(TENANT, run_id)
        return Outcome(
            run_id,
            await store.get_run(TENANT, run_id),
            Counter(e.step for e in events if e.kind == "step.succeeded"),
            Counter(e.kind for e in events),
            [(v.version, v.step) for v in await store.state_versions(TENANT, run_id)],
            {s.key: s.status for s in await store.get_steps(TENANT, run_id)},
            bus,
            gate,
        )


async def _nothing(*args: Any) -> None:
    return None


@pytest.mark.asyncio
async def test_two_drivers_deciding_parallel_branches_run_the_join_once() -> None:
    out = await race()
    gate, run_id = out.gate, out.run_id
    assert out.record.status == tf.RunStatus.COMPLETED, out.record.error
    assert ran == {"start": 1, "left": 1, "right": 1, "join": 1}
    assert out.succeeded == {"start": 1, "left": 1, "right": 1, "join": 1}
    # Both branches were decided from the run at start's version; right's finish was refused
    # (nothing written), decided again at left's version, and committed.
    assert gate.expected == {"left": 1, "right": 1}
    assert gate.results == [
        ("start", 1),
        ("left", 2),
        ("right", VersionConflict(run_id, 1, 2)),
        ("right", 3),
        ("join", 4),
    ]
    assert [v for v, _ in out.versions] == list(range(len(out.versions)))
    assert [step for _, step in out.versions[1:]] == ["start", "left", "right", "join"]
    assert out.record.state_version == out.versions[-1][0] == 4
    assert out.bus.pending == 0 and out.bus.acked == out.bus.delivered == 4


@pytest.mark.asyncio
async def test_without_the_version_check_the_same_interleaving_loses_the_join() -> None:
    out = await race(cas=False)
    # Each branch saw the other running, so neither readied the join: it never runs.
    assert out.gate.results == [("start", 1), ("left", 2), ("right", 3)]
    assert ran == {"start": 1, "left": 1, "right": 1}
    assert out.succeeded == {"start": 1, "left": 1, "right": 1}
    assert out.record.status == tf.RunStatus.RUNNING
    assert out.steps["join"] == tf.StepStatus.PENDING
    assert out.bus.pending == 0


@pytest.mark.asyncio
async def test_fan_out_elements_finished_from_one_view_are_still_gathered_once() -> None:
    # An element's finish moves no state version, so both elements' finishes pass the check
    # and neither gathers; the driver's read after its finish finds every element done and
    # gathers, checked against the version (the gather moves it).
    out = await race(fan, [2, 3], ELEMENTS)
    assert out.record.status == tf.RunStatus.COMPLETED, out.record.error
    assert ran == {"items": 1, "square": 2, "total": 1}
    assert out.gate.expected == dict.fromkeys(ELEMENTS, 1)
    assert [key for key, _ in out.gate.results] == ["items", *ELEMENTS, "total"]
    assert out.succeeded == {"items": 1, **dict.fromkeys(ELEMENTS, 1), "total": 1}
    assert [v for v, _ in out.versions] == list(range(len(out.versions)))
    assert [step for _, step in out.versions[1:]] == ["items", "square", "total"]
    assert out.record.state_version == 3


@pytest.mark.asyncio
async def test_the_version_check_alone_would_lose_the_gather() -> None:
    # The control for the test above: the same interleaving, the version check on, the check
    # for a lost gather off. Both finishes commit, neither gathers: the run is stuck.
    out = await race(fan, [2, 3], ELEMENTS, gather_check=False)
    assert [key for key, _ in out.gate.results] == ["items", *ELEMENTS]
    assert out.record.status == tf.RunStatus.RUNNING
    assert out.steps["square"] == tf.StepStatus.MAPPED
    assert out.steps["total"] == tf.StepStatus.PENDING
    assert ran == {"items": 1, "square": 2}


@pytest.mark.asyncio
async def test_two_drivers_finding_one_lost_gather_write_it_once() -> None:
    # Both elements' finishes commit before either driver looks for a lost gather; both then
    # find it and decide it from one view. The first gather commits (and moves the version),
    # the second is refused; read again, the step is gathered and nothing is left to do.
    out = await race(fan, [2, 3], ELEMENTS, late_gather=True)
    assert out.record.status == tf.RunStatus.COMPLETED, out.record.error
    assert out.gate.gathers == [(1, True), (1, VersionConflict(out.run_id, 1, 2))]
    assert out.kinds["step.gathered"] == 1
    assert ran == {"items": 1, "square": 2, "total": 1}
    assert [step for _, step in out.versions[1:]] == ["items", "square", "total"]
    assert out.record.state_version == 3
