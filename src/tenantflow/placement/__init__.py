"""Placements: how the engine is placed over processes, and the one protocol above them.

* :mod:`.control`: :class:`ControlPlane`, what the REST API and the CLI depend on;
* :mod:`.embedded`: one process records, executes and serves (``Engine.open(url)``);
* :mod:`.centralized`: a front serves, workers sharing one PostgreSQL database execute;
* :mod:`.hybrid`: either of those, with side effects choreographed over NATS JetStream.

The API and the CLI never ask how the engine is placed: they are given a control plane.
"""

from tenantflow.placement.control import (
    ApiKeyInfo,
    ControlPlane,
    Overview,
    Principal,
    Reason,
    RetryResult,
    RunHandle,
    RunSnapshot,
    StateVersion,
    TenantInfo,
    WorkerInfo,
)

__all__ = [
    "ApiKeyInfo",
    "ControlPlane",
    "Overview",
    "Principal",
    "Reason",
    "RetryResult",
    "RunHandle",
    "RunSnapshot",
    "StateVersion",
    "TenantInfo",
    "WorkerInfo",
]
