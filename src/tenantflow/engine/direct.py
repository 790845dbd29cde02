"""One op, one transaction: writing where no writer runs.

An engine that does not execute (``EngineConfig(execute=False)``: the CLI or a reader next to a
server on the same database) starts no group-commit writer (:mod:`tenantflow.engine.writer`);
its tenant registry, agent memory, durable schedules and API keys write each op in a
transaction of its own, through :func:`apply_one`.
"""

from __future__ import annotations

from typing import Any

from tenantflow.domain.records import Op
from tenantflow.errors import StoreError, TenantflowError
from tenantflow.ports import Store

__all__ = ["apply_one"]


async def apply_one(store: Store, op: Op) -> Any:
    """Apply one op in its own transaction; its result, or its error raised."""
    [result] = await store.apply([op])
    if isinstance(result, TenantflowError):
        raise result
    if isinstance(result, BaseException):
        raise StoreError(f"write refused by the store: {result}") from result
    return result
