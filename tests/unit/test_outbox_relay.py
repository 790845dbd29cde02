"""The outbox relay skips a row whose mark is in flight, and one a read older than its mark saw."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tenantflow.domain.outbox import MarkPublished, OutboxRecord
from tenantflow.placement.hybrid.relay import OutboxRelay


class SnapshotStore:
    """Reads answer from the snapshot taken when they began, once ``answer`` is set; marks
    commit once ``commit`` is set."""

    def __init__(self, rows: list[OutboxRecord]) -> None:
        self.unpublished = {r.id: r for r in rows}
        self.answer = asyncio.Event()
        self.answer.set()
        self.commit = asyncio.Event()
        self.snapshot_taken = asyncio.Event()

    async def outbox(
        self, tenant_id: str | None = None, *, limit: int = 100, unpublished: bool = False
    ) -> list[OutboxRecord]:
        snapshot = list(self.unpublished.values())[:limit]
        self.snapshot_taken.set()
        await self.answer.wait()
        return snapshot

    def for_tenant(self, tenant_id: str) -> SnapshotStore:
        return self

    async def apply(self, ops: Sequence[Any]) -> list[Any]:
        await self.commit.wait()
        for op in ops:
            assert isinstance(op, MarkPublished)
            for row_id in op.ids:
                self.unpublished.pop(row_id, None)
        return [len(ops)]


class Broker:
    def __init__(self) -> None:
        self.published: list[str] = []

    def jetstream(self) -> Broker:
        return self

    async def publish(self, subject: str, body: bytes, **kwargs: Any) -> None:
        self.published.append(kwargs["headers"]["Nats-Msg-Id"])


async def test_a_read_begun_before_a_mark_committed_does_not_publish_the_row_again() -> None:
    row = OutboxRecord("fx_1", "t1", "run_1", "notify", {"to": "x"}, created_at=0.0)
    store = SnapshotStore([row])
    broker = Broker()
    relay = OutboxRelay(store, "nats://unused")  # type: ignore[arg-type]

    async def client() -> Broker:
        return broker

    relay._client = client  # type: ignore[method-assign,assignment]
    assert await relay.relay_once() == 1  # published; its mark waits for the store
    store.answer.clear()
    store.snapshot_taken.clear()
    second = asyncio.create_task(relay.relay_once())
    await store.snapshot_taken.wait()  # this read's snapshot still has the row unpublished
    store.commit.set()
    await asyncio.gather(*relay._marks)  # the mark committed and ended
    store.answer.set()
    assert await second == 0
    assert broker.published == ["fx_1"]
    assert relay.stats.published == 1
    assert await relay.relay_once() == 0  # and later reads no longer see it
