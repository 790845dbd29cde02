"""The outbox relay and the outcome recorder: the engine's side of the hybrid placement.

:class:`OutboxRelay` reads the outbox rows not yet published (system scope, across tenants),
publishes each to ``tf.<region>.<tenant>.fx.<step>`` with the outbox id as ``Nats-Msg-Id``,
waits for the broker's acknowledgement and only then marks the rows published (as their
tenant). A relay killed between the two republishes the rows when it comes back; the server
drops the copies inside its duplicate window, and agents skip an outbox id they have done.

:class:`OutcomeRecorder` consumes the agents' outcomes and writes each into the run's
timeline (``fx.delivered``, ``fx.failed``, ``fx.dead_lettered``) with
:class:`~tenantflow.domain.outbox.RecordFxOutcome`, as the tenant named by the subject. A
final outcome removes the outbox row in the same transaction, so it is written once however
often it is redelivered.

Neither ever changes a run's status: a side effect is off the critical path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tenantflow.domain.outbox import FX_OUTCOMES, MarkPublished, OutboxRecord, RecordFxOutcome
from tenantflow.placement.hybrid.fabric import Fabric, connect, tenant_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nats.aio.client import Client

__all__ = ["OutboxRelay", "OutboxStore", "OutcomeRecorder", "RelayStats"]

log = logging.getLogger("tenantflow.hybrid")


class _Scoped(Protocol):
    async def apply(self, ops: Sequence[Any]) -> list[Any]: ...


class OutboxStore(Protocol):
    """What the relay needs of a store (the SQL stores have it)."""

    async def outbox(
        self, tenant_id: str | None = None, *, limit: int = 100, unpublished: bool = False
    ) -> list[OutboxRecord]: ...

    def for_tenant(self, tenant_id: str) -> _Scoped: ...


class RelayStats:
    """What a relay has done: rows published, and each row's lag (publish ack − commit)."""

    def __init__(self) -> None:
        self.published = 0
        self.lags_s: list[float] = []
        self.errors = 0


def message_body(row: OutboxRecord) -> bytes:
    """What an agent receives: the outbox payload and the row's identity (no tenant: the
    subject carries it)."""
    return json.dumps(
        {
            **row.payload,
            "outbox_id": row.id,
            "run_id": row.run_id,
            "step": row.step,
            "created_at": row.created_at,
        }
    ).encode()


class OutboxRelay:
    """Publishes a store's outbox to JetStream (see the module doc).

    Args:
        store: the store whose outbox is relayed.
        nats_url: the JetStream server.
        region: the store's region (the subjects' first token after ``tf``).
        batch: rows read and published at a time.
        idle_s: the poll interval while the outbox is empty.
        clock: the time rows are marked published at (wall clock by default).
    """

    def __init__(
        self,
        store: OutboxStore,
        nats_url: str,
        *,
        region: str = "default",
        batch: int = 256,
        idle_s: float = 0.01,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.nats_url = nats_url
        self.fabric = Fabric(region)
        self.batch = batch
        self.idle_s = idle_s
        self.clock = clock
        self.stats = RelayStats()
        self._nc: Client | None = None
        self._marking: set[str] = set()
        self._marks: set[asyncio.Task[None]] = set()
        # Rows whose mark committed, each with the number of the last read begun before: a
        # read begun before a mark committed may still return the row (its snapshot is older)
        # after the mark has ended; a read begun after cannot.
        self._reads = 0
        self._marked: dict[str, int] = {}

    async def _client(self) -> Client:
        if self._nc is None or self._nc.is_closed:
            self._nc = await connect(self.nats_url, name="tenantflow-relay")
            await self.fabric.ensure(self._nc.jetstream())
        return self._nc

    async def relay_once(self) -> int:
        """Publish one batch of unpublished rows; how many were published.

        Their marks are written in the background (the next batch need not wait for them):
        until a row's mark commits, its id is remembered as in flight and skipped, and so it is
        by a read begun before its mark committed (the store may answer reads from a snapshot
        taken then). A mark that fails forgets the ids, so the rows are published again (the
        server drops the copies).
        """
        self._reads += 1
        began = self._reads
        skip = len(self._marking) + len(self._marked)
        found = await self.store.outbox(None, limit=self.batch + skip, unpublished=True)
        rows = [r for r in found if r.id not in self._marking and r.id not in self._marked]
        rows = rows[: self.batch]
        # marks that committed before this read began can be in no later read
        self._marked = {i: n for i, n in self._marked.items() if n >= began}
        if not rows:
            return 0
        js = (await self._client()).jetstream()

        async def publish(row: OutboxRecord) -> OutboxRecord:
            await js.publish(
                self.fabric.work(row.tenant_id, row.step),
                message_body(row),
                timeout=5,
                headers={"Nats-Msg-Id": row.id},
            )
            return row

        done = await asyncio.gather(*(publish(r) for r in rows), return_exceptions=True)
        acked = [r for r in done if isinstance(r, OutboxRecord)]
        failures = [r for r in done if isinstance(r, BaseException)]
        now = self.clock()
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for row in acked:
            by_tenant[row.tenant_id].append(row.id)
            self.stats.lags_s.append(max(0.0, now - row.created_at))
        for tenant, ids in by_tenant.items():
            self._marking.update(ids)
            task = asyncio.create_task(self._mark(tenant, ids, now))
            self._marks.add(task)
            task.add_done_callback(self._marks.discard)
        self.stats.published += len(acked)
        if failures:
            self.stats.errors += len(failures)
            raise failures[0]
        return len(acked)

    async def _mark(self, tenant: str, ids: list[str], now: float) -> None:
        try:
            await self.store.for_tenant(tenant).apply([MarkPublished(tenant, ids, now)])
        except Exception as exc:  # published again later; the server drops the copies
            log.warning("outbox relay: marking %d rows failed: %s", len(ids), exc)
        else:
            self._marked.update(dict.fromkeys(ids, self._reads))
        finally:
            self._marking.difference_update(ids)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; a broker or store failure is logged and retried."""
        backoff = 0.1
        while not stop.is_set():
            try:
                published = await self.relay_once()
                backoff = 0.1
            except Exception as exc:  # the broker is down or restarting: keep the rows, retry
                log.warning("outbox relay: %s: %s (retrying)", type(exc).__name__, exc)
                published = 0
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if published < self.batch:
                await _wait(stop, self.idle_s)

    async def close(self) -> None:
        await asyncio.gather(*self._marks, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


class OutcomeRecorder:
    """Writes the agents' outcomes into the runs' timelines (see the module doc)."""

    def __init__(
        self,
        store: OutboxStore,
        nats_url: str,
        *,
        region: str = "default",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.nats_url = nats_url
        self.fabric = Fabric(region)
        self.clock = clock
        self.recorded = 0
        self._nc: Client | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Record outcomes until ``stop`` is set."""
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig

        sub: Any = None
        while not stop.is_set():
            try:
                if sub is None:
                    if self._nc is None or self._nc.is_closed:
                        self._nc = await connect(self.nats_url, name="tenantflow-recorder")
                    js = self._nc.jetstream()
                    await self.fabric.ensure(js)
                    name = "recorder"
                    sub = await js.pull_subscribe(
                        self.fabric.all_outcomes,
                        durable=name,
                        stream=self.fabric.outcome_stream,
                        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
                    )
                try:
                    msgs = await sub.fetch(64, timeout=0.5)
                except (TimeoutError, NatsTimeout):
                    continue
                for msg in msgs:
                    await self._record(msg)
            except Exception as exc:
                log.warning("outcome recorder: %s: %s (retrying)", type(exc).__name__, exc)
                await _wait(stop, 0.5)

    async def _record(self, msg: Any) -> None:
        try:
            tenant, _ = tenant_of(msg.subject)
            body = json.loads(msg.data)
            kind = body["kind"]
            if kind not in FX_OUTCOMES:
                raise ValueError(f"unknown outcome {kind!r}")
            op = RecordFxOutcome(
                tenant,
                str(body["run_id"]),
                str(body["outbox_id"]),
                str(body["step"]),
                kind,
                self.clock(),
                {k: body[k] for k in ("attempt", "error", "agent") if k in body},
            )
        except (ValueError, KeyError, TypeError) as exc:  # not ours to record: drop it
            log.warning("outcome recorder: dropping a malformed outcome: %s", exc)
            await msg.term()
            return
        try:
            await self.store.for_tenant(tenant).apply([op])
        except Exception:
            await msg.nak(delay=1.0)
            raise
        self.recorded += 1
        await msg.ack()

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
