"""The in-memory store: the SQLite store on a private ``:memory:`` database.

Same SQL and semantics as the embedded store (it passes the same contract suite), nothing
durable and no file lock: for unit tests and throwaway demos.
"""

from __future__ import annotations

from tenantflow.adapters.sqlite import SqliteStore

__all__ = ["MemoryStore"]


class MemoryStore(SqliteStore):
    """A :class:`~tenantflow.ports.Store` that lives and dies with the process."""

    in_memory = True

    def __init__(self) -> None:
        super().__init__(":memory:", synchronous="off")
        self.url = "memory://"
