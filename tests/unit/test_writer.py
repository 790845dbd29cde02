"""The group-commit writer: in-flight transitions first, new submissions fair across tenants."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import pytest

from tenantflow.domain.records import CreateRun, Op, RunRecord, RunStatus, Transition
from tenantflow.engine.writer import Writer
from tenantflow.errors import ConflictError, StoreError, StoreUnavailableError


class RecordingStore:
    """Records each batch; a batch commits only when the test lets it (a gate)."""

    def __init__(self) -> None:
        self.batches: list[list[Op]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        await self.gate.wait()
        await asyncio.sleep(0)  # a commit takes time: other tasks run meanwhile
        self.batches.append(list(ops))
        return [None] * len(ops)


def _new(tenant: str, n: int) -> CreateRun:
    run = RunRecord(
        id=f"run_{tenant}_{n}",
        tenant_id=tenant,
        workflow="wf",
        workflow_version="1",
        status=RunStatus.QUEUED,
        input_json=b"{}",
        created_at=0.0,
        updated_at=0.0,
    )
    return CreateRun(run, [], [])


def _tenants(batch: list[Op]) -> list[str]:
    return [op.run.tenant_id for op in batch if isinstance(op, CreateRun)]


async def _start(store: RecordingStore, **kwargs: Any) -> Writer:
    writer = Writer(store, **kwargs)  # type: ignore[arg-type]
    writer.start()
    return writer


async def test_a_burst_does_not_queue_other_tenants_submissions_behind_it() -> None:
    store = RecordingStore()
    writer = await _start(store, max_new=4, max_new_idle=4)
    store.gate.clear()  # hold the first batch open while everything queues
    burst = [asyncio.create_task(writer.write(_new("x", i))) for i in range(100)]
    await asyncio.sleep(0)
    quiet = [asyncio.create_task(writer.write(_new(t, 0))) for t in ("a", "b", "c")]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*burst, *quiet)
    await writer.close()
    # The first batch was taken before a, b and c queued; the next one holds all three.
    assert _tenants(store.batches[0]) == ["x"] * 4
    assert sorted(_tenants(store.batches[1])) == ["a", "b", "c", "x"]
    assert sum(len(b) for b in store.batches) == 103
    # Each tenant's submissions keep their order (all in one lane here).
    xs = [op.run.id for b in store.batches for op in b if op.run.tenant_id == "x"]  # type: ignore[attr-defined]
    assert xs == [f"run_x_{i}" for i in range(100)]


async def test_in_flight_transitions_limit_new_submissions_per_batch() -> None:
    store = RecordingStore()
    writer = await _start(store, max_new=2, max_new_idle=50, quiet_s=60.0)
    store.gate.clear()
    first = asyncio.create_task(writer.write(Transition("a", "run_a", 0.0)))
    await asyncio.sleep(0)
    new = [asyncio.create_task(writer.write(_new("x", i))) for i in range(10)]
    more = asyncio.create_task(writer.write(Transition("a", "run_a", 1.0)))
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, *new, more)
    await writer.close()
    # In flight: the transition first, then at most max_new submissions a batch, even in the
    # batches that carry no transition (runs were in flight a moment ago).
    assert isinstance(store.batches[0][0], Transition)
    assert all(len(_tenants(b)) <= 2 for b in store.batches)
    assert sum(len(_tenants(b)) for b in store.batches) == 10


async def test_at_rest_a_burst_is_recorded_in_large_batches() -> None:
    store = RecordingStore()
    writer = await _start(store, max_new=2, max_new_idle=50)
    store.gate.clear()
    new = [asyncio.create_task(writer.write(_new("x", i))) for i in range(120)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*new)
    await writer.close()
    assert [len(b) for b in store.batches] == [50, 50, 20]


@pytest.mark.parametrize("bad", [0, -1])
async def test_writer_needs_room_for_submissions(bad: int) -> None:
    with pytest.raises(ValueError, match="max_new"):
        Writer(RecordingStore(), max_new=bad)  # type: ignore[arg-type]


async def test_a_batch_of_many_transitions_takes_as_many_submissions() -> None:
    store = RecordingStore()
    writer = await _start(store, max_new=2, max_new_idle=8, quiet_s=60.0)
    store.gate.clear()
    hold = asyncio.create_task(writer.write(Transition("a", "run_a", 0.0)))
    await asyncio.sleep(0)  # the first batch (one transition) is open
    moves = [asyncio.create_task(writer.write(Transition("a", "run_a", 1.0))) for _ in range(5)]
    new = [asyncio.create_task(writer.write(_new("x", i))) for i in range(20)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(hold, *moves, *new)
    await writer.close()
    # The second batch: 5 transitions, so 5 submissions (between max_new=2 and max_new_idle=8).
    assert len(store.batches[1]) == 10 and len(_tenants(store.batches[1])) == 5


async def test_flush_waits_for_every_op_queued_before_it_whatever_the_round_robin() -> None:
    store = RecordingStore()
    writer = await _start(store, max_new=1, max_new_idle=1)
    store.gate.clear()
    x = [asyncio.create_task(writer.write(_new("x", i))) for i in range(3)]
    await asyncio.sleep(0)  # batch 1: x0 (held at the gate)
    y = asyncio.create_task(writer.write(_new("y", 0)))

    async def flush_and_look() -> list[str]:
        await writer.flush()
        return [op.run.id for b in store.batches for op in b]  # type: ignore[attr-defined]

    flushed = asyncio.create_task(flush_and_look())
    later = asyncio.create_task(writer.write(_new("z", 0)))  # queued after the flush
    store.gate.set()
    committed = await flushed
    # Round-robin committed y0 and z0 (z0 queued after the flush) before x2; the flush still
    # waited for x2.
    assert committed[:4] == ["run_x_0", "run_x_1", "run_y_0", "run_z_0"]
    assert "run_x_2" in committed
    await asyncio.gather(*x, y, later)
    await writer.close()


async def test_urgent_ops_commit_in_a_batch_of_their_own_ahead_of_those_queued_before() -> None:
    store = RecordingStore()
    writer = await _start(store)
    store.gate.clear()  # a batch of the borrower's commits while the rest queue
    first = asyncio.create_task(writer.write(Transition("x", "run_x_0", 0.0)))
    await asyncio.sleep(0)
    borrower = [
        asyncio.create_task(writer.write(Transition("x", f"run_x_{i}", 0.0))) for i in (1, 2, 3)
    ]
    quiet = [
        asyncio.create_task(writer.write(Transition(t, f"run_{t}", 0.0), urgent=True))
        for t in ("a", "b")
    ]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, *borrower, *quiet)
    await writer.close()
    runs = [[op.run_id for op in batch] for batch in store.batches]  # type: ignore[attr-defined]
    assert runs == [["run_x_0"], ["run_a", "run_b"], ["run_x_1", "run_x_2", "run_x_3"]]


async def test_ops_queued_behind_an_urgent_batch_go_next_whatever_their_lane() -> None:
    store = RecordingStore()
    writer = await _start(store)
    store.gate.clear()
    first = asyncio.create_task(writer.write(Transition("a", "run_a_0", 0.0), urgent=True))
    await asyncio.sleep(0)  # the urgent lane's batch commits; both lanes queue behind it
    normal = asyncio.create_task(writer.write(Transition("x", "run_x_0", 0.0)))
    urgent = asyncio.create_task(writer.write(Transition("a", "run_a_1", 0.0), urgent=True))
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, normal, urgent)
    await writer.close()
    runs = [[op.run_id for op in batch] for batch in store.batches]  # type: ignore[attr-defined]
    assert runs == [["run_a_0"], ["run_a_1", "run_x_0"]]  # the normal op is not passed over


async def test_urgent_ops_take_at_most_half_of_a_batch_while_other_ops_wait() -> None:
    store = RecordingStore()
    writer = await _start(store, max_batch=4, max_new=1, max_new_idle=4)
    store.gate.clear()
    first = asyncio.create_task(writer.write(Transition("a", "u0", 0.0), urgent=True))
    await asyncio.sleep(0)
    urgent = [
        asyncio.create_task(writer.write(Transition("a", f"u{i}", 0.0), urgent=True))
        for i in range(1, 7)
    ]
    normal = [asyncio.create_task(writer.write(Transition("x", f"n{i}", 0.0))) for i in range(3)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, *urgent, *normal)
    await writer.close()
    runs = [[op.run_id for op in batch] for batch in store.batches]  # type: ignore[attr-defined]
    assert runs == [["u0"], ["u1", "u2", "n0", "n1"], ["u3", "u4", "u5", "u6"], ["n2"]]


async def test_a_maintenance_op_commits_alone_once_the_ops_that_wait_are_written() -> None:
    store = RecordingStore()
    writer = await _start(store, background_wait_s=math.inf)  # however slow the machine
    store.gate.clear()
    first = asyncio.create_task(writer.write(Transition("a", "run_a_0", 0.0)))
    await asyncio.sleep(0)
    purge = asyncio.create_task(writer.maintain(Transition("ops", "purge", 0.0)))
    await asyncio.sleep(0)
    later = [
        asyncio.create_task(writer.write(Transition(t, f"run_{t}_1", 0.0))) for t in ("a", "b")
    ]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, *later)
    result, _ = await purge
    await writer.close()
    runs = [[op.run_id for op in batch] for batch in store.batches]  # type: ignore[attr-defined]
    # Queued before the two ops, the purge still goes after them, and in a batch of its own.
    assert runs == [["run_a_0"], ["run_a_1", "run_b_1"], ["purge"]]
    assert result is None


async def test_a_maintenance_op_reports_its_own_transactions_time_not_its_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]  # the loop's clock, moved by the store alone

    class Timed(RecordingStore):
        async def apply(self, ops: Sequence[Op]) -> list[Any]:
            result = await super().apply(ops)
            now[0] += 2.0 if ops[0].run_id == "purge" else 5.0  # type: ignore[attr-defined]
            return result

    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])
    store = Timed()
    writer = await _start(store, background_wait_s=math.inf)
    store.gate.clear()
    first = asyncio.create_task(writer.write(Transition("a", "run_a_0", 0.0)))
    await asyncio.sleep(0)
    purge = asyncio.create_task(writer.maintain(Transition("ops", "purge", 0.0)))
    await asyncio.sleep(0)
    store.gate.set()
    await first
    _, seconds = await purge
    await writer.close()
    assert seconds == 2.0  # its own commit; not the 5 s it waited behind the batch before it


class Impatient(RecordingStore):
    """A store whose maintenance ops go ahead at once (its own ``background_wait_s``)."""

    background_wait_s = 0.0


@pytest.mark.parametrize("own", [False, True], ids=["given", "the-stores-own"])
async def test_a_maintenance_op_that_waited_long_enough_goes_before_the_others(own: bool) -> None:
    # A store that is never idle: the wait is given to the writer, or the store's own.
    store = Impatient() if own else RecordingStore()
    writer = await (_start(store) if own else _start(store, background_wait_s=0.0))
    store.gate.clear()
    first = asyncio.create_task(writer.write(Transition("a", "run_a_0", 0.0)))
    await asyncio.sleep(0)
    purge = asyncio.create_task(writer.maintain(Transition("ops", "purge", 0.0)))
    later = asyncio.create_task(writer.write(Transition("a", "run_a_1", 0.0)))
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, later, purge)
    await writer.close()
    runs = [[op.run_id for op in batch] for batch in store.batches]  # type: ignore[attr-defined]
    assert runs == [["run_a_0"], ["purge"], ["run_a_1"]]


async def test_a_maintenance_op_refused_by_the_store_raises_as_a_write_does() -> None:
    class Refusing(RecordingStore):
        refusal: BaseException = ConflictError("not now")

        async def apply(self, ops: Sequence[Op]) -> list[Any]:
            await super().apply(ops)
            return [self.refusal for _ in ops]

    store = Refusing()
    writer = await _start(store)
    with pytest.raises(ConflictError, match="not now"):  # a typed refusal, as it is
        await writer.maintain(Transition("ops", "purge", 0.0))
    store.refusal = ValueError("bad row")
    with pytest.raises(StoreError, match="bad row"):
        await writer.maintain(Transition("ops", "purge", 0.0))
    await writer.close()


async def test_an_op_written_without_waiting_is_committed_by_close() -> None:
    store = RecordingStore()
    writer = await _start(store)
    store.gate.clear()
    first = asyncio.create_task(writer.write(Transition("a", "run_a_0", 0.0)))
    await asyncio.sleep(0)
    writer.write_nowait(Transition("a", "run_a_1", 0.0))
    store.gate.set()
    await writer.close()
    await first
    runs = [op.run_id for batch in store.batches for op in batch]  # type: ignore[attr-defined]
    assert runs == ["run_a_0", "run_a_1"]
    with pytest.raises(StoreUnavailableError):
        writer.write_nowait(Transition("a", "run_a_2", 0.0))


async def test_commit_times_are_counted_in_the_first_bucket_whose_bound_they_do_not_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]  # the loop's clock, moved by the store alone (from 0: a bound's float is exact)
    durations = iter([0.0005, 0.003, 2.0])  # on a bound, between two, over every bound

    class Timed(RecordingStore):
        async def apply(self, ops: Sequence[Op]) -> list[Any]:
            result = await super().apply(ops)
            now[0] += next(durations)
            return result

    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])
    writer = await _start(Timed())
    for n in range(3):
        await writer.write(Transition("a", f"run_a_{n}", 0.0))
    await writer.close()
    bounds = writer.commit_bounds
    expected = [0] * (len(bounds) + 1)
    expected[bounds.index(0.0005)] += 1
    expected[bounds.index(0.005)] += 1  # 3 ms: over 2.5 ms, within 5 ms
    expected[-1] += 1
    assert writer.commit_counts == expected
    assert writer.commit_seconds == pytest.approx(2.0035)
    assert writer.batches == 3


async def _behind(
    writer: Writer, store: RecordingStore, first: tuple[Op, bool], *ops: tuple[Op, bool]
) -> None:
    """``first`` (with its lane) commits while ``ops`` (each with its lane) queue; then
    everything commits and the writer closes."""
    store.gate.clear()
    head = asyncio.create_task(writer.write(first[0], urgent=first[1]))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(writer.write(op, urgent=urgent)) for op, urgent in ops]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(head, *rest)
    await writer.close()


async def _borrower_then(writer: Writer, store: RecordingStore, *ops: tuple[Op, bool]) -> None:
    """A batch of the borrower's commits while nine more of its transitions and ``ops``
    (each with its lane) queue; then everything commits."""
    borrower = [(Transition("x", f"x{i}", 0.0), False) for i in range(1, 10)]
    await _behind(writer, store, (Transition("x", "x0", 0.0), False), *borrower, *ops)


def _ids(store: RecordingStore) -> list[list[str]]:
    return [
        [op.run.id if isinstance(op, CreateRun) else op.run_id for op in batch]  # type: ignore[attr-defined]
        for batch in store.batches
    ]


async def test_batches_are_kept_short_while_a_tenant_within_its_share_writes_urgent() -> None:
    store = RecordingStore()
    writer = await _start(store, yield_batch=4, yield_s=3600.0)
    await _borrower_then(writer, store, (Transition("a", "a0", 0.0), True))
    assert _ids(store) == [
        ["x0"],
        ["a0"],  # the urgent lane alone, then the borrower's ops four at a time
        ["x1", "x2", "x3", "x4"],
        ["x5", "x6", "x7", "x8"],
        ["x9"],
    ]


async def test_batches_are_as_long_as_ever_once_nobody_wrote_urgent_within_yield_s() -> None:
    store = RecordingStore()
    writer = await _start(store, yield_batch=4, yield_s=0.0)
    await _borrower_then(writer, store, (Transition("a", "a0", 0.0), True))
    assert _ids(store) == [["x0"], ["a0"], [f"x{i}" for i in range(1, 10)]]


async def test_an_urgent_submission_goes_in_the_urgent_lane_and_keeps_the_batches_short() -> None:
    store = RecordingStore()
    writer = await _start(store, yield_batch=4, yield_s=3600.0)
    await _borrower_then(writer, store, (_new("a", 0), True), (_new("x", 0), False))
    # ahead of the borrower's queued submission and transitions; then batches of four
    # transitions and one submission: submissions keep moving while batches are short
    assert _ids(store) == [
        ["x0"],
        ["run_a_0"],
        ["x1", "x2", "x3", "x4", "run_x_0"],
        ["x5", "x6", "x7", "x8"],
        ["x9"],
    ]


@pytest.mark.parametrize("kwargs", [{"yield_batch": 0}, {"yield_s": -1.0}, {"yield_s": math.nan}])
async def test_writer_refuses_a_yield_that_cannot_work(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="yield_batch >= 1 and yield_s >= 0"):
        Writer(RecordingStore(), **kwargs)  # type: ignore[arg-type]


async def test_a_batch_is_short_while_urgent_ops_or_submissions_wait_whatever_the_window() -> None:
    store = RecordingStore()
    writer = await _start(
        store, max_batch=8, max_new=1, max_new_idle=8, yield_batch=1, yield_s=0.0
    )  # no window: only the urgent ops waiting cut a batch
    ops: list[tuple[Op, bool]] = [(Transition("a", f"u{i}", 0.0), True) for i in range(1, 5)]
    ops += [(_new("a", 0), True), (_new("b", 0), True)]  # submissions, in the urgent lane
    ops += [(Transition("x", f"n{i}", 0.0), False) for i in range(8)]
    await _behind(writer, store, (Transition("a", "u0", 0.0), True), *ops)
    assert _ids(store) == [
        ["u0"],
        ["u1", "u2", "u3", "u4", "n0"],  # half the batch urgent, then one op; two more wait
        ["run_a_0", "run_b_0"],  # the urgent lane alone, submissions as they are
        [f"n{i}" for i in range(1, 8)],  # nothing urgent waits, no window: as long as ever
    ]


async def test_a_short_batch_never_exceeds_max_batch_for_a_waiting_submission() -> None:
    store = RecordingStore()
    writer = await _start(
        store, max_batch=4, max_new=1, max_new_idle=4, yield_batch=4, yield_s=3600.0
    )
    ops: list[tuple[Op, bool]] = [(Transition("a", f"u{i}", 0.0), True) for i in range(1, 7)]
    ops += [(Transition("x", f"n{i}", 0.0), False) for i in range(3)]
    ops.append((_new("x", 0), False))
    await _behind(writer, store, (Transition("a", "u0", 0.0), True), *ops)
    assert _ids(store) == [
        ["u0"],
        ["u1", "u2", "n0", "n1"],  # full: the submission waits for the next batch with room
        ["u3", "u4", "u5", "u6"],
        ["n2", "run_x_0"],
    ]


async def test_the_short_batches_last_yield_s_from_an_urgent_ops_commit_not_its_queueing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a slow store (each commit takes a second of the loop's time here) an urgent op queued
    more than ``yield_s`` ago is still being answered: its tenant writes on after its commit."""
    now = [0.0]

    class SlowStore(RecordingStore):
        async def apply(self, ops: Sequence[Op]) -> list[Any]:
            result = await super().apply(ops)
            now[0] += 1.0
            return result

    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])
    store = SlowStore()
    writer = await _start(store, yield_batch=4, yield_s=0.5)
    await _borrower_then(writer, store, (Transition("a", "a0", 0.0), True))
    assert _ids(store) == [
        ["x0"],
        ["a0"],  # queued at 0 s, committed at 2 s: the next batches are short until 2.5 s
        ["x1", "x2", "x3", "x4"],
        ["x5", "x6", "x7", "x8", "x9"],  # built at 3 s
    ]
