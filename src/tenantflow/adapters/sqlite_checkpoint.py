"""WAL checkpoints off the commit path.

SQLite in WAL mode appends every commit to ``<db>-wal``; a *checkpoint* copies those pages back
into the database file and fsyncs it. By default the connection that commits runs one whenever
the WAL passes 1,000 pages, inside that commit: every so often one group commit pays for copying
and fsyncing megabytes, and every transition queued behind it waits. Under a burst of
submissions that is several times a second, and it is the largest single cost on the embedded
commit path.

Here a thread of its own, with a connection of its own, runs ``PRAGMA wal_checkpoint(PASSIVE)``
every ``interval`` seconds. A passive checkpoint never takes the write lock: the writer keeps
committing while pages are copied (SQLite releases the GIL while it works, so the event loop
runs too). When a checkpoint has caught up with the log, the writer's next transaction starts
the WAL file over from its beginning, so the file stays small.

The writer's own automatic checkpoint stays on, at ``fallback_pages``, as a bound: if this
thread falls behind (a slow disk under sustained load), the WAL still cannot grow without end.
Durability is unchanged: what a commit fsyncs is decided by ``synchronous``, not by who
checkpoints.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

__all__ = ["Checkpointer"]

log = logging.getLogger("tenantflow.store")


class Checkpointer:
    """Checkpoints one SQLite database's WAL from a background thread."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        *,
        interval: float = 0.2,
        fallback_pages: int = 16_384,
    ) -> None:
        self._path = path
        self._interval = interval
        self._fallback_pages = fallback_pages
        self._stop = threading.Event()
        writer.execute(f"PRAGMA wal_autocheckpoint={int(fallback_pages)}")
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=1000")
        self._thread = threading.Thread(
            target=self._loop, name="tenantflow-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        failing: str | None = None  # logged once until a checkpoint succeeds again
        while not self._stop.wait(self._interval):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                if str(exc) != failing:
                    log.warning(
                        "WAL checkpoint of %s failed (the writer's own checkpoint at %d pages"
                        " still bounds the WAL): %s",
                        self._path,
                        self._fallback_pages,
                        exc,
                    )
                failing = str(exc)
            else:
                failing = None

    def close(self) -> None:
        """Stop the thread and close its connection (the writer's close checkpoints last)."""
        self._stop.set()
        self._thread.join(timeout=30)
        self._conn.close()
