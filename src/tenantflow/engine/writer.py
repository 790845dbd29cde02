"""Group commit: many transitions, one transaction.

Every transition the engine makes is an op handed to :meth:`Writer.write`, which resolves only
after the op's transaction has committed — the engine acts on a transition only after that.
While one batch commits, new ops queue; the next batch takes all of them. Under load a single
commit (and a single fsync) covers hundreds of transitions; with no load an op commits alone at
once.

Transitions of runs already in flight go first: new submissions (``CreateRun``; but for those
written ``urgent``, see below) fill what is left of a batch, so a tenant submitting thousands of
runs at once cannot put other tenants' in-flight steps behind its inserts on the commit path
either. While runs are in flight (a transition of theirs was committed in the last ``quiet_s``
seconds), a batch carries at most as many submissions as it carries transitions, and at least
``max_new`` (but see below, the short batches while tenants within their share write urgent): the
writer commits one batch at a time, so a transition that arrives during a batch waits for all of
it, and a batch of 4 transitions and 64 inserts would make every in-flight step wait for 64
inserts. A batch of 300 transitions (a database under load) may take 64 (``max_new_idle``), so
submissions keep pace with the steps. With nothing in flight (a front that only records
submissions, or an engine at rest), a batch takes up to ``max_new_idle`` and a burst is recorded at
full speed.

While a tenant borrows idle slots past its cap, the others' ops may be written ``urgent``: they
wait in a lane of their own, and the next batch takes that lane alone. A tenant within its
share then waits for the batch committing (the writer commits one at a time) and its own small
one, not for a batch full of the borrower's transitions as well. The batch after an urgent one
takes both lanes (urgent ops first, in at most half of it while other ops wait), so that
neither lane can starve the other. A run writes an op only once its last one committed, but
for a step's claim written beside the completion that readied it, which goes in the
completion's lane: a run's ops commit in the order it wrote them.

While such tenants are active (an op written ``urgent`` waits, or one was committed in the last
``yield_s``), a batch is also kept short: at most ``yield_batch`` ops besides those of the
urgent lane, one of them a new submission at least when one waits (so a batch may then carry one
submission from the round-robin queues, not ``max_new``). On SQLite a batch of 1 op commits in
about 0.4 ms, of 5–16 in 1.2 ms, of 17–64 in 1.8 ms (p50, measured under the short burst of
``benchmarks/fairness.py``): an urgent op that comes while a batch commits waits for all of it, so
every other op (mostly the borrower's) then commits in more, smaller transactions, only while the
others are there to be kept waiting; with nobody else active batches are as long as ever.

A submission written ``urgent`` goes in the urgent lane as it is, not in the round-robin queues
behind the borrower's thousands. The engine writes one so only when its tenant is within its
share while another borrows slots in the same process, and only once it passed the ingest gate
(:mod:`tenantflow.engine.ingest`), which lets 4 of a tenant's submissions be in progress while
others run (up to 64 taken before they did may still be); a child run's goes round-robin.

Maintenance (the retention purge) goes through :meth:`Writer.maintain`, the background lane:
such an op is committed in a transaction of its own, when no other op waits; an op of a running
tenant then never shares a transaction that deletes thousands of rows, and waits for one only if
it comes while one commits. On a store that is never idle, a maintenance op that has waited
``background_wait_s`` goes next, ahead of the ops queued then (they wait for all of it), so
that maintenance still gets done: at most one such transaction per ``background_wait_s``. That
is the store's ``background_wait_s`` if it has one, else 0.1 s: SQLite's is 20 ms, for there
the retention purge sizes its transactions to about 2 ms of the store's time
(:meth:`~tenantflow.engine.tenants.Tenants.purge_runs`), and what an op that meets one waits
for is its length, not how often they come.

New submissions not written ``urgent`` wait in one FIFO queue per tenant and a batch takes them
round-robin, one tenant at a time: a tenant's 5,000 queued submissions put another tenant's next
submission behind at most one of them per batch, not behind all 5,000.

A batch whose commit raised may have landed all the same (the connection dropped after the
commit): every waiter gets the error, and ``on_failed`` is told which ops were in the batch, so
that the engine reloads the runs they touched from the store (see
:mod:`~tenantflow.engine.resync`). :meth:`Writer.flush` waits for every op queued before it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from tenantflow.domain.records import CreateRun, Op
from tenantflow.errors import StoreError, StoreUnavailableError, TenantflowError
from tenantflow.ports import Store

__all__ = ["Writer"]

log = logging.getLogger("tenantflow.engine")

# How long a maintenance op waits on a store that is never idle, unless the store says.
BACKGROUND_WAIT_S = 0.1

# Upper bounds, in seconds, of the buckets of a writer's commit times (Writer.commit_counts).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        return
    error = fut.exception()
    if error is None and isinstance(fut.result(), BaseException):
        error = fut.result()
    if error is not None:
        log.warning("an op written without waiting failed: %s", error)


def _outcome(result: Any) -> Any:
    """An op's result as its writer returns it: a refusal the store reports as a typed error
    (conflict, not found) raised as it is, any other exception wrapped in a StoreError."""
    if isinstance(result, TenantflowError):
        raise result
    if isinstance(result, BaseException):
        raise StoreError(f"write refused by the store: {result}") from result
    return result


class Writer:
    """Batches ops into transactions on one store."""

    commit_bounds: tuple[float, ...] = COMMIT_BUCKETS

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 512,
        max_new: int = 8,
        max_new_idle: int = 64,
        quiet_s: float = 0.25,
        background_wait_s: float | None = None,
        yield_batch: int = 4,
        yield_s: float = 0.02,
    ) -> None:
        if not 1 <= max_new <= max_new_idle <= max_batch:
            raise ValueError(
                "need 1 <= max_new <= max_new_idle <= max_batch (new submissions must always"
                f" have room): got {max_new}, {max_new_idle}, {max_batch}"
            )
        if yield_batch < 1 or not yield_s >= 0.0:  # also refuses a NaN yield_s
            raise ValueError(
                f"need yield_batch >= 1 and yield_s >= 0: got {yield_batch}, {yield_s}"
            )
        self._yield_batch = yield_batch
        self._yield_s = yield_s
        self._urgent_at = -math.inf  # when a batch carrying urgent ops last committed
        self._store = store
        self._max_batch = max_batch
        self._max_new = max_new
        self._max_new_idle = max_new_idle
        self._quiet_s = quiet_s
        if background_wait_s is None:  # the store's own (see the module docstring)
            background_wait_s = getattr(store, "background_wait_s", BACKGROUND_WAIT_S)
        self._background_wait_s: float = background_wait_s
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._urgent: list[tuple[Op, asyncio.Future[Any]]] = []
        # Maintenance ops, each with when it was queued (loop time).
        self._background: deque[tuple[Op, asyncio.Future[Any], float]] = deque()
        # New submissions, one FIFO per tenant; the dict's order is the round-robin order.
        self._new: dict[str, deque[tuple[Op, asyncio.Future[Any]]]] = {}
        self._new_count = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.ops = 0
        # How long its group commits took, from handing a batch to the store until the store
        # answered (a wait for the store's thread included; a batch whose ops were retried one
        # by one after a refusal counts once; maintenance ops do not count): the count per
        # bucket of commit_bounds (a duration counts in the first bucket whose bound it does
        # not pass; the last entry counts those over every bound) and their sum.
        self.commit_counts = [0] * (len(self.commit_bounds) + 1)
        self.commit_seconds = 0.0
        self.on_failed: Callable[[Sequence[Op]], None] | None = None
        # Ops whose batch has not ended, each with its place in the order ops were queued (the
        # dict keeps that order, so its first value is the oldest outstanding op): new
        # submissions are taken round-robin, not in the order they came, so counting ops would
        # not tell a flush whether those queued before it have ended.
        self._outstanding: dict[asyncio.Future[Any], int] = {}
        self._seq = 0
        self._progress = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tenantflow-writer")

    async def write(self, op: Op, *, urgent: bool = False) -> Any:
        """Queue ``op``; return its result once committed (raise its error if it failed).
        ``urgent``: in the lane committed ahead of the others (see the module docstring), a
        new submission (``CreateRun``) too."""
        fut = self._queue(op, urgent=urgent, background=False)
        return _outcome(await fut)

    def write_nowait(self, op: Op) -> None:
        """Queue ``op`` and return at once (for a task being cancelled: :meth:`close` commits
        what is queued). Its failure is logged, for no one waits for it."""
        fut = self._queue(op, urgent=False, background=False)
        fut.add_done_callback(_log_failure)

    async def maintain(self, op: Op) -> tuple[Any, float]:
        """Queue the maintenance op ``op`` in the background lane: it commits in a transaction
        of its own when nothing else waits (see the module docstring). Its result once
        committed (its error raised if it failed), and the seconds its transaction took."""
        result, seconds = await self._queue(op, urgent=False, background=True)
        return _outcome(result), seconds

    def _queue(self, op: Op, *, urgent: bool, background: bool) -> asyncio.Future[Any]:
        if self._closed:
            raise StoreUnavailableError("the engine is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if background:
            self._background.append((op, fut, loop.time()))
        elif urgent:
            self._urgent.append((op, fut))
        elif isinstance(op, CreateRun):
            self._new.setdefault(op.run.tenant_id, deque()).append((op, fut))
            self._new_count += 1
        else:
            self._pending.append((op, fut))
        self._outstanding[fut] = self._seq
        self._seq += 1
        self._wake.set()
        return fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        in_flight_at = -math.inf  # when a batch last carried transitions of runs in flight
        urgent_last = False  # the last batch was the urgent lane's alone
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._urgent or self._pending or self._new_count or self._background:
                if self._background and (
                    not (self._urgent or self._pending or self._new_count)
                    or loop.time() - self._background[0][2] >= self._background_wait_s
                ):
                    op, fut, _ = self._background.popleft()
                    await self._commit([(op, fut)], timed=True)
                    continue
                carries_urgent = bool(self._urgent)
                if self._urgent and not urgent_last:
                    batch = self._urgent[: self._max_batch]
                    del self._urgent[: self._max_batch]
                    in_flight_at = loop.time()
                    urgent_last = True
                else:  # both lanes, urgent ops first (at most half of the batch while others wait)
                    urgent_last = False
                    # kept short while tenants within their share are active (module docstring)
                    yielding = carries_urgent or loop.time() - self._urgent_at < self._yield_s
                    share = self._max_batch // 2 if self._pending else self._max_batch
                    batch = self._urgent[:share]
                    del self._urgent[:share]
                    size = self._max_batch
                    if yielding:
                        size = min(size, len(batch) + self._yield_batch)
                    if len(batch) < size:
                        room = size - len(batch)
                        batch.extend(self._pending[:room])
                        del self._pending[:room]
                    taken = len(batch)
                    if taken:
                        in_flight_at = loop.time()
                    if loop.time() - in_flight_at < self._quiet_s:  # runs in flight
                        limit = min(self._max_new_idle, max(self._max_new, taken))
                    else:
                        limit = self._max_new_idle
                    room = min(limit, size - taken)
                    if yielding and room < 1 and taken < self._max_batch:
                        room = 1  # submissions keep moving, one a batch at least
                    if room > 0 and self._new_count:
                        self._take_new(batch, room)
                await self._commit(batch)
                if carries_urgent:  # the tenants it answers are writing on
                    self._urgent_at = loop.time()
            if self._closed:
                return

    async def _commit(
        self, batch: list[tuple[Op, asyncio.Future[Any]]], *, timed: bool = False
    ) -> None:
        """Apply ``batch`` in one transaction and answer its waiters (``timed``: each with the
        seconds the transaction took, ``(result, seconds)``)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await self._store.apply([op for op, _ in batch])
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreUnavailableError("the engine is closing"))
            self._progress.set()  # a flush waits no more
            raise
        except Exception as exc:  # the whole batch failed: tell every waiter
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            self._ended_batch(batch)
            if self.on_failed is not None:  # it may have committed all the same
                self.on_failed([op for op, _ in batch])
            return
        seconds = loop.time() - started
        self._ended_batch(batch)
        self.batches += 1
        self.ops += len(batch)
        if not timed:  # a group commit (a maintenance op's transaction is not one)
            self.commit_counts[bisect_left(self.commit_bounds, seconds)] += 1
            self.commit_seconds += seconds
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result((result, seconds) if timed else result)

    def _take_new(self, batch: list[tuple[Op, asyncio.Future[Any]]], room: int) -> None:
        """Move up to ``room`` new submissions into ``batch``, one per tenant in turn; a tenant
        served goes to the back of the round-robin order."""
        while room > 0 and self._new:
            tenant = next(iter(self._new))
            queue = self._new.pop(tenant)
            batch.append(queue.popleft())
            self._new_count -= 1
            room -= 1
            if queue:
                self._new[tenant] = queue  # re-inserted: now last in the order

    def _ended_batch(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        for _, fut in batch:
            self._outstanding.pop(fut, None)
        self._progress.set()
        self._progress = asyncio.Event()

    async def flush(self) -> None:
        """Wait until every op queued before this call has committed or failed (its waiter
        may have gone: a cancelled waiter does not withdraw its op)."""
        target = self._seq
        while (
            self._outstanding
            and next(iter(self._outstanding.values())) < target
            and not (self._task is None or self._task.done())
        ):
            await self._progress.wait()

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
