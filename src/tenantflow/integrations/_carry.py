"""Gateway errors carried through an SDK's agent loop unchanged.

An SDK hands an ``Exception`` raised by a tool to the model as the tool's answer (or wraps it in
its own error type). A gateway error must instead end the step attempt as itself: a rate limit
parks the step holding no slot, an exhausted budget or an open breaker is decided by the engine.
So the integrations raise it inside the SDK as :class:`Carried` (a ``BaseException``, which the
SDKs let through) and unwrap it when the SDK's run returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Carried", "carry", "unwrap"]


class Carried(BaseException):
    """Wraps an error raised by the gateway inside an SDK's agent loop."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@contextmanager
def carry() -> Iterator[None]:
    """Inside an SDK callback: raise any ``Exception`` as :class:`Carried`."""
    try:
        yield
    except Exception as exc:
        raise Carried(exc) from exc


@contextmanager
def unwrap() -> Iterator[None]:
    """Around an SDK's run: re-raise a :class:`Carried` error as itself."""
    try:
        yield
    except Carried as carried:
        raise carried.error from None
