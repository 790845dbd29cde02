"""Sending a signal into a run: recorded in its execution log, then its waiting steps woken.

See :mod:`tenantflow.domain.signals` for how a waiting step takes a signal, and
:meth:`tenantflow.engine.context.StepContext.wait_for_signal` for the step's side.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Any

from tenantflow.domain import signals
from tenantflow.domain.records import TERMINAL_RUN, NewEvent, Transition
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.execution.driver import RunDriver
from tenantflow.errors import ConflictError
from tenantflow.ports import Clock, Store

__all__ = ["EventReceipt", "SignalReceipt", "StartedRun", "send_signal"]


@dataclass(frozen=True, slots=True)
class SignalReceipt:
    """A signal as recorded: its id, whether it repeated an earlier send (same idempotency
    key: nothing new was recorded), and the steps it woke in this process."""

    run_id: str
    name: str
    signal_id: str
    duplicate: bool = False
    woke: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StartedRun:
    """A run an event started (``created`` False: the event was seen before; its run)."""

    workflow: str
    run_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class EventReceipt:
    """An event as received: the runs of the workflows registered to its name."""

    name: str
    event_id: str
    runs: tuple[StartedRun, ...]


async def send_signal(
    store: Store,
    clock: Clock,
    tenant: str,
    run_id: str,
    name: str,
    payload: Any,
    *,
    idempotency_key: str | None = None,
    active: ActiveRun | None = None,
    runtime: RunDriver | None = None,
) -> SignalReceipt:
    """Record signal ``name`` for ``tenant``'s run ``run_id`` and wake its steps waiting for it.

    ``active``/``runtime``: the run as this process drives it (None: driven elsewhere or not at
    all; the signal is recorded and its waiting step finds it when it next looks). Raises
    NotFoundError for another tenant's run, ConflictError for a run that ended, SpecError for a
    bad name, key or payload.
    """
    name = signals.check_name(name)
    key = signals.check_key(idempotency_key)
    payload = signals.check_payload(payload)
    lock = active.lock if active is not None else contextlib.nullcontext()
    async with lock:
        record = await store.get_run(tenant, run_id)  # NotFoundError: not this tenant's
        log = await store.events(tenant, run_id)
        earlier = signals.duplicate(log, key)
        if earlier is not None:  # a repeated send answers the first, even once the run ended
            return SignalReceipt(run_id, name, str(earlier.data.get("id")), duplicate=True)
        if record.status in TERMINAL_RUN:
            raise ConflictError(
                f"run {run_id} already ended {record.status.value}: it takes no signals",
                run_id=run_id,
                status=record.status.value,
            )
        signal_id = "sig_" + secrets.token_hex(8)
        data: dict[str, Any] = {"id": signal_id, "name": name, "payload": payload}
        if key is not None:
            data["idempotency_key"] = key
        op = Transition(
            tenant, run_id, clock.now(), events=[NewEvent(signals.RECEIVED, None, None, data)]
        )
        if runtime is not None and active is not None:
            await runtime.writer.write(op)
            woke = tuple(runtime.signal_sent(active, name))
        else:
            await store.apply([op])
            woke = ()
        return SignalReceipt(run_id, name, signal_id, woke=woke)
