"""Signals: named events sent into a running run, and which one a waiting step takes.

A signal is recorded in the run's execution log as a ``signal.received`` event (its data: its
``id``, ``name``, ``payload`` and, when the sender gave one, ``idempotency_key``). A step that
waits for a name (``ctx.wait_for_signal``) takes the oldest signal of that name no wait has
taken yet, and records that with a ``signal.consumed`` event naming the signal, the step and
the wait's call index: so every signal is taken by exactly one wait, a signal sent before any
step waits is kept until one does, and a re-executed attempt finds the signal its wait already
took. Pure functions over the log; no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final

from tenantflow.domain.records import EventRecord
from tenantflow.errors import SpecError

__all__ = [
    "CONSUMED",
    "MAX_PAYLOAD_BYTES",
    "RECEIVED",
    "check_key",
    "check_name",
    "check_payload",
    "duplicate",
    "pending",
    "take",
]

RECEIVED: Final[str] = "signal.received"
CONSUMED: Final[str] = "signal.consumed"
MAX_PAYLOAD_BYTES: Final[int] = 64 * 1024
"""A signal's payload, as compact JSON, is at most this many bytes."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def check_name(name: object) -> str:
    """A signal's (or an event's) name: 1–128 of letters, digits and ``_ . : -``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(
            "a signal or event name is 1-128 letters, digits, '_', '.', ':' or '-'"
            " and starts with a letter or digit",
            field="name",
            value=name,
        )
    return name


def check_key(key: object) -> str | None:
    """An idempotency key: None, or 1–200 characters."""
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= 200:
        raise SpecError("an idempotency key is 1-200 characters", field="idempotency_key")
    return key


def check_payload(payload: Any) -> Any:
    """``payload`` as it is stored and delivered: plain JSON (no NaN or infinity), at most
    :data:`MAX_PAYLOAD_BYTES` encoded; a :class:`SpecError` otherwise."""
    try:
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SpecError(f"a signal payload must be plain JSON: {exc}", field="payload") from exc
    size = len(text.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise SpecError(
            f"a signal payload is at most {MAX_PAYLOAD_BYTES} bytes of JSON (got {size})",
            field="payload",
            limit=MAX_PAYLOAD_BYTES,
            size=size,
        )
    return json.loads(text)


def duplicate(events: Iterable[EventRecord], key: str | None) -> EventRecord | None:
    """The signal already received with idempotency key ``key`` (None: no key, no match)."""
    if key is None:
        return None
    for e in events:
        if e.kind == RECEIVED and e.data.get("idempotency_key") == key:
            return e
    return None


def take(events: Iterable[EventRecord], name: str, step: str, index: int) -> EventRecord | None:
    """The signal the wait at call ``index`` of ``step`` takes: the one it already took (a
    re-executed attempt), else the oldest untaken signal called ``name``; None: none yet."""
    received: list[EventRecord] = []
    taken: dict[str, tuple[str | None, int | None]] = {}
    for e in events:
        if e.kind == RECEIVED:
            received.append(e)
        elif e.kind == CONSUMED:
            taken[str(e.data.get("signal_id"))] = (e.data.get("step"), e.data.get("index"))
    mine = {sid for sid, by in taken.items() if by == (step, index)}
    for e in received:
        if e.data.get("id") in mine:
            return e
    for e in received:
        if e.data.get("id") not in taken and e.data.get("name") == name:
            return e
    return None


def pending(events: Iterable[EventRecord], name: str) -> bool:
    """Whether a signal called ``name`` was received and not taken yet."""
    log = list(events)
    taken = {str(e.data.get("signal_id")) for e in log if e.kind == CONSUMED}
    return any(
        e.kind == RECEIVED and e.data.get("name") == name and e.data.get("id") not in taken
        for e in log
    )
