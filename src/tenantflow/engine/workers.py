"""The cluster's members as an operator sees them: ``tenantflow workers list``, ``GET /v1/workers``.

Workers sharing a PostgreSQL database beat into its ``workers`` table and hold leases on the
tenants they drive (``tenant_owners``; see :mod:`tenantflow.adapters.postgres_cluster`).
:func:`list_workers` reads both: who is there, since when, when each last beat (and so whether
it is still live), how many slots it runs, and which tenants it owns until when. An embedded
store (SQLite, memory) has no cluster: every run executes in the one process that opened it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tenantflow.errors import ConfigurationError
from tenantflow.ports import Store

__all__ = ["TenantLease", "WorkerInfo", "list_workers"]


@dataclass(frozen=True, slots=True)
class TenantLease:
    """A worker's lease on a tenant: it drives the tenant's runs until ``expires_at``."""

    tenant_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker of the cluster.

    Attributes:
        id: the worker's id (``host:pid:token``, as on its step leases and in its logs).
        live: whether its last beat is within the liveness window.
        started_at: when it joined (None: it has left; only its leases remain).
        beat_at: its last heartbeat (None: it has left).
        slots: step attempts it executes at once (None: unknown).
        tenants: the tenants it holds leases on.
    """

    id: str
    live: bool
    started_at: float | None
    beat_at: float | None
    slots: int | None = None
    tenants: tuple[TenantLease, ...] = field(default_factory=tuple)


async def list_workers(store: Store, now: float, alive_s: float) -> list[WorkerInfo]:
    """The workers of the cluster on ``store``'s database, by id.

    Args:
        store: the cluster's store (PostgreSQL).
        now: the time (POSIX seconds).
        alive_s: the liveness window: a worker silent for longer is not live.

    Raises:
        ConfigurationError: the store is not one workers share (SQLite, memory).
    """
    make = getattr(store, "coordinator", None)
    if make is None:
        raise ConfigurationError(
            f"{store.url!r} has no workers: an embedded store (SQLite, memory) runs every run in"
            " the one process that opened it; workers share a PostgreSQL database",
            field="db",
        )
    rows: list[dict[str, Any]] = await make().members()
    out: list[WorkerInfo] = []
    for row in rows:
        beat = row.get("beat_at")
        slots = (row.get("info") or {}).get("slots")
        out.append(
            WorkerInfo(
                id=str(row["id"]),
                live=beat is not None and now - float(beat) <= alive_s,
                started_at=row.get("started_at"),
                beat_at=beat,
                slots=int(slots) if isinstance(slots, int) else None,
                tenants=tuple(
                    TenantLease(str(t["tenant_id"]), float(t["expires_at"]))
                    for t in row.get("tenants", [])
                ),
            )
        )
    return out
