"""Times as people and other programs read them: ISO-8601 in UTC.

The stores keep POSIX timestamps (floats); whatever is shown — tables, JSON, the API — gives
``2026-01-02T03:04:05.678901Z``. Execution-log entries carry some times inside their data (a
deferred step's ``until``, a retry's ``retry_at``, a lease's ``expires_at``): those are
converted too, by name, where the entry leaves the library.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["TIME_FIELDS", "event_times_iso", "iso"]

TIME_FIELDS = frozenset(
    {"until", "retry_at", "expires_at", "wake_at", "due_at", "sla_due", "logged_at"}
)
"""Keys of execution-log data that hold a POSIX timestamp."""


def iso(ts: float | None, *, timespec: str = "microseconds") -> str | None:
    """A POSIX timestamp as ISO-8601 UTC (``2026-01-02T03:04:05.678901Z``); None stays None."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec)
    return text.removesuffix("+00:00") + "Z"


def event_times_iso(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``data`` with every timestamp in :data:`TIME_FIELDS` as ISO-8601 (other values, and
    times already given as text, unchanged)."""
    if data is None:
        return None
    return {
        key: iso(float(value))
        if key in TIME_FIELDS and isinstance(value, int | float) and not isinstance(value, bool)
        else value
        for key, value in data.items()
    }
