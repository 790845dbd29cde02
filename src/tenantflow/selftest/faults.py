"""Fault injection at the store boundary: commits that land but report a failure.

:class:`LostAcks` wraps a store: for a seeded share of ``apply`` calls (one call is one group
commit) it lets the transaction commit, then raises the error a dropped connection raises
(:class:`~tenantflow.errors.StoreUnavailableError`). The caller sees a failed write although
the write happened — the case a retry must not turn into a duplicate. Reads pass through.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from tenantflow.domain.records import Op
from tenantflow.errors import StoreUnavailableError
from tenantflow.ports import Store

__all__ = ["LOST_ACKS", "LostAcks", "lost_acks"]

LOST_ACKS = "lost acks"
"""How the tables name the faults :class:`LostAcks` injects."""


class LostAcks:
    """A store whose commits, for ``share`` of them, land and then raise (see module doc)."""

    def __init__(
        self,
        inner: Store,
        share: float,
        seed: int,
        on_fault: Callable[[int], None] | None = None,
    ) -> None:
        if not 0.0 <= share < 1.0:
            raise ValueError("share must be in [0, 1)")
        self.inner = inner
        self.share = share
        self.injected = 0
        self._rng = random.Random(seed)
        self._on_fault = on_fault

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def exclusive(self) -> bool:
        return self.inner.exclusive

    async def apply(self, ops: Sequence[Op]) -> list[Any]:
        results = await self.inner.apply(ops)
        if self._rng.random() < self.share:
            self.injected += 1
            if self._on_fault is not None:
                self._on_fault(len(ops))
            raise StoreUnavailableError(
                "the connection was lost after the commit (injected by the selftest)"
            )
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def lost_acks(
    inner: Store, share: float, seed: int, on_fault: Callable[[int], None] | None = None
) -> Store:
    """``inner`` wrapped in :class:`LostAcks`, typed as the store it stands for."""
    return cast(Store, LostAcks(inner, share, seed, on_fault))
