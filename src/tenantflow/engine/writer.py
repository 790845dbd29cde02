"""Group commit: many transitions, one transaction.

Every transition the engine makes is an op handed to :meth:`Writer.write`, which resolves only
after the op's transaction has committed — the engine acts on a transition only after that.
While one batch commits, new ops queue; the next batch takes all of them. Under load a single
commit (and a single fsync) covers hundreds of transitions; with no load an op commits alone at
once.

Transitions of runs already in flight go first: new submissions (``CreateRun``) fill what is left
of a batch, at most ``max_new`` of them, so a tenant submitting thousands of runs at once cannot
put other tenants' in-flight steps behind its inserts on the commit path either.

A batch whose commit raised may have landed all the same (the connection dropped after the
commit): every waiter gets the error, and ``on_failed`` is told which ops were in the batch, so
that the engine reloads the runs they touched from the store (see
:mod:`~tenantflow.engine.resync`). :meth:`Writer.flush` waits for every op queued before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from tenantflow.domain.records import CreateRun, Op
from tenantflow.errors import StoreError, StoreUnavailableError, TenantflowError
from tenantflow.ports import Store

__all__ = ["Writer"]


class Writer:
    """Batches ops into transactions on one store."""

    def __init__(self, store: Store, *, max_batch: int = 512, max_new: int = 64) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_new = max_new
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._new: list[tuple[Op, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.ops = 0
        self.on_failed: Callable[[Sequence[Op]], None] | None = None
        # Ops ever queued, and ops whose batch has ended, by queue (each queue is FIFO).
        self._queued = [0, 0]
        self._ended = [0, 0]
        self._progress = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tenantflow-writer")

    async def write(self, op: Op) -> Any:
        """Queue ``op``; return its result once committed (raise its error if it failed)."""
        if self._closed:
            raise StoreUnavailableError("the engine is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        new = isinstance(op, CreateRun)
        (self._new if new else self._pending).append((op, fut))
        self._queued[new] += 1
        self._wake.set()
        result = await fut
        if isinstance(result, TenantflowError):
            raise result  # a refusal the store reports as a typed error (conflict, not found)
        if isinstance(result, BaseException):
            raise StoreError(f"write refused by the store: {result}") from result
        return result

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending or self._new:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                room = min(self._max_new, self._max_batch - len(batch))
                taken = len(batch)
                if room > 0 and self._new:
                    batch.extend(self._new[:room])
                    del self._new[:room]
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
                    self._ended_batch(taken, len(batch) - taken)
                    if self.on_failed is not None:  # it may have committed all the same
                        self.on_failed([op for op, _ in batch])
                    continue
                self._ended_batch(taken, len(batch) - taken)
                self.batches += 1
                self.ops += len(batch)
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
            if self._closed:
                return

    def _ended_batch(self, pending: int, new: int) -> None:
        self._ended[0] += pending
        self._ended[1] += new
        self._progress.set()
        self._progress = asyncio.Event()

    async def flush(self) -> None:
        """Wait until every op queued before this call has committed or failed (its waiter
        may have gone: a cancelled waiter does not withdraw its op)."""
        target = list(self._queued)
        while (self._ended[0] < target[0] or self._ended[1] < target[1]) and not (
            self._task is None or self._task.done()
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
