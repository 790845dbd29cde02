"""Closing an engine leaves no task of its own behind: the schedules loop, cancelled while it
waited for its next timer or a change, used to leave both waits pending (destroyed later with
"Task was destroyed but it is pending!")."""

from __future__ import annotations

import asyncio

import tenantflow as tf
from tenantflow.adapters.memory import MemoryStore


def _others() -> list[str]:
    """What the other tasks run (their coroutines' names)."""
    mine = asyncio.current_task()
    return [
        getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks() if t is not mine
    ]


async def test_closing_an_engine_leaves_no_pending_task() -> None:
    async with tf.Engine(MemoryStore()):
        async with asyncio.timeout(30.0):
            while "Event.wait" not in _others():  # noqa: ASYNC110 - no event says it waits
                await asyncio.sleep(0)
    await asyncio.sleep(0)  # let cancelled tasks finish
    assert _others() == []
