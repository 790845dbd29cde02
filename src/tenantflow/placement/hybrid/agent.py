"""Side-effect agents: run the side effects the hybrid engine choreographs.

An agent process (``tenantflow hybrid agent --app MODULE:FUNCTION``) loads the same app as the
engine (its workflows give it the step code), and consumes ``tf.<region>.<tenant>.fx.>``
through one durable pull consumer per tenant, shared by every agent process (the server hands
each message to one of them; ``max_ack_pending`` caps a tenant's side effects in flight across
all of them). Tenants take turns: each turn takes at most ``per_turn`` messages of one tenant,
so a tenant with a backlog cannot starve a quiet one.

For each message it:

1. skips an outbox id it has already done (a ``TF_FXDONE_<R>`` key-value entry, created once
   the step code returned), re-announcing ``fx.delivered``;
2. runs the step's code with a :class:`SideEffectContext` whose ``idempotency_key`` is the
   outbox id — pass it to the receiving system, which then applies the effect once even if a
   crash makes the agent run it again;
3. announces the outcome on ``tf.<region>.<tenant>.fxo.<step>``: ``fx.delivered``, or
   ``fx.failed`` and a redelivery after a backoff, or after ``max_deliveries`` failures the
   message goes to ``tf.<region>.<tenant>.fxdlq.<step>`` and ``fx.dead_lettered`` is announced.

Nothing an agent does touches a run's status: a side effect that fails, or an agent that is
down, fails no run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tenantflow.domain.contracts import contract_for
from tenantflow.domain.outbox import FX_DEAD_LETTERED, FX_DELIVERED, FX_FAILED
from tenantflow.domain.spec import WorkflowSpec
from tenantflow.placement.hybrid.fabric import Fabric, connect, tenant_of

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["FxAgent", "SideEffectContext", "SpecLookup"]

log = logging.getLogger("tenantflow.hybrid")

SpecLookup = Callable[[str, str], WorkflowSpec]
"""(workflow, version) → its spec; raises if the agent's app does not have it."""


class SideEffectContext:
    """What a side-effect step gets under the hybrid placement, in place of a
    :class:`~tenantflow.engine.context.StepContext`: the attempt's identity and its
    idempotency key (the outbox id), the time and a log. It has no tools, models or memory:
    a side effect reaches the outside world itself (a webhook, a CRM, an analytics sink)."""

    __slots__ = ("_log", "attempt", "idempotency_key", "run_id", "step", "tenant_id", "workflow")

    def __init__(
        self, *, tenant_id: str, run_id: str, workflow: str, step: str, attempt: int, key: str
    ) -> None:
        self.tenant_id = tenant_id
        self.run_id = run_id
        self.workflow = workflow
        self.step = step
        self.attempt = attempt
        self.idempotency_key = key
        self._log: list[tuple[str, dict[str, Any]]] = []

    def __repr__(self) -> str:
        return f"SideEffectContext(run_id={self.run_id!r}, step={self.step!r})"

    def now(self) -> datetime:
        return datetime.now(UTC)

    def log(self, message: str, **data: Any) -> None:
        self._log.append((message, data))
        log.info("%s/%s: %s %s", self.run_id, self.step, message, data or "")


def backoff_s(delivery: int, base_s: float, cap_s: float) -> float:
    """The delay before redelivery after failed delivery ``delivery`` (1-based)."""
    return float(min(cap_s, base_s * 2 ** max(0, delivery - 1)))


class FxAgent:
    """One side-effect agent process's consumer loop (see the module doc).

    Args:
        nats_url: the JetStream server.
        specs: finds a workflow version's spec (the app's registry).
        region: the region whose side effects it runs.
        tenants: only these tenants (None: every tenant with side effects).
        max_deliveries: failed deliveries before a side effect is dead-lettered.
        backoff_base_s, backoff_cap_s: the redelivery delay grows from base to cap.
        per_turn: messages of one tenant taken per turn.
        concurrency: side effects this agent runs at once (over all tenants).
        max_in_flight: side effects of one tenant in flight across all agents.
        step_timeout_s: a step without its own timeout is cancelled after this long.
        ack_wait_s: a message an agent took and never answered (it died) is delivered again
            after this long.
    """

    def __init__(
        self,
        nats_url: str,
        specs: SpecLookup,
        *,
        region: str = "default",
        tenants: Sequence[str] | None = None,
        max_deliveries: int = 5,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        per_turn: int = 8,
        concurrency: int = 64,
        max_in_flight: int = 32,
        step_timeout_s: float = 60.0,
        ack_wait_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.specs = specs
        self.fabric = Fabric(region)
        self.only = None if tenants is None else frozenset(tenants)
        self.max_deliveries = max_deliveries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.per_turn = per_turn
        self.concurrency = concurrency
        self.max_in_flight = max_in_flight
        self.step_timeout_s = step_timeout_s
        self.ack_wait_s = ack_wait_s
        self.name = name or f"fx-agent-{os.getpid()}"
        self.delivered = 0
        self.failed = 0
        self.dead_lettered = 0
        self._nc: Client | None = None
        self._subs: dict[str, Any] = {}
        self._done: KeyValue | None = None

    # -- connection and consumers --------------------------------------------------------------

    async def _js(self) -> JetStreamContext:
        if self._nc is None or self._nc.is_closed:
            self._nc = await connect(self.nats_url, name=self.name)
            self._subs.clear()
            self._done = None
        js = self._nc.jetstream()
        if self._done is None:
            await self.fabric.ensure(js)
            self._done = await js.key_value(self.fabric.done_bucket)
        return js

    async def _tenants_with_work(self, js: JetStreamContext) -> list[str]:
        info = await js.stream_info(self.fabric.work_stream, subjects_filter=self.fabric.all_work)
        found = {tenant_of(s)[0] for s in (info.state.subjects or {})}
        if self.only is not None:
            found &= self.only
        return sorted(found)

    async def _sub(self, js: JetStreamContext, tenant: str) -> Any:
        sub = self._subs.get(tenant)
        if sub is None:
            from nats.js.api import AckPolicy, ConsumerConfig

            sub = await js.pull_subscribe(
                self.fabric.tenant_work(tenant),
                durable=self.fabric.consumer_for(tenant),
                stream=self.fabric.work_stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait_s,
                    max_deliver=-1,  # dead-lettering is ours: the server would drop silently
                    max_ack_pending=self.max_in_flight,
                ),
            )
            self._subs[tenant] = sub
        return sub

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; a broker failure is logged and retried."""
        from nats.errors import TimeoutError as NatsTimeout

        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task[None]] = set()

        async def handle(js: JetStreamContext, msg: Any) -> None:
            try:
                await self._handle(js, msg)
            except Exception as exc:  # unacknowledged: delivered again after ack_wait
                log.warning("fx agent %s: %s: %s", self.name, type(exc).__name__, exc)
            finally:
                slots.release()

        try:
            while not stop.is_set():
                try:
                    js = await self._js()
                    tenants = await self._tenants_with_work(js)
                    took = 0
                    for tenant in tenants:  # a turn each: a backlog cannot starve a quiet tenant
                        if stop.is_set():
                            break
                        await slots.acquire()  # at least one free slot before taking any
                        free = 1
                        while free < self.per_turn and not slots.locked():
                            await slots.acquire()
                            free += 1
                        sub = await self._sub(js, tenant)
                        try:
                            msgs = await sub.fetch(free, timeout=0.02)
                        except (TimeoutError, NatsTimeout):
                            msgs = []
                        for _ in range(free - len(msgs)):
                            slots.release()
                        took += len(msgs)
                        for msg in msgs:  # runs while the next tenants take their turns
                            task = asyncio.create_task(handle(js, msg))
                            running.add(task)
                            task.add_done_callback(running.discard)
                    if not took:
                        await _wait(stop, 0.02)
                except Exception as exc:
                    log.warning(
                        "fx agent %s: %s: %s (retrying)", self.name, type(exc).__name__, exc
                    )
                    self._subs.clear()
                    await _wait(stop, 0.25)
        finally:
            await asyncio.gather(*running, return_exceptions=True)

    async def _handle(self, js: JetStreamContext, msg: Any) -> None:
        tenant, kind = tenant_of(msg.subject)
        try:
            body = json.loads(msg.data)
            key = str(body["outbox_id"])
        except (ValueError, KeyError, TypeError) as exc:  # not a relay's: never runnable
            log.warning(
                "fx agent %s: dropping a malformed message on %s: %s", self.name, msg.subject, exc
            )
            await js.publish(
                self.fabric.dead(tenant, kind), msg.data, headers={"Tf-Error": "malformed"}
            )
            await msg.term()
            return
        delivery = int(msg.metadata.num_delivered)
        base = {"outbox_id": key, "run_id": body["run_id"], "step": body["step"]}
        done_key = hashlib.sha256(key.encode()).hexdigest()[:40]
        assert self._done is not None
        if await _exists(self._done, done_key):  # done before a crash: announce, don't redo
            await self._announce(js, tenant, kind, {**base, "kind": FX_DELIVERED}, f"{key}:ok")
            await msg.ack()
            return
        if delivery > self.max_deliveries:  # crashed on it every time: stop trying
            await self._dead_letter(js, msg, tenant, kind, base, delivery, "too many deliveries")
            return
        error = await self._run_step(tenant, body, delivery, msg)
        if error is None:
            await self._done.put(done_key, str(time.time()).encode())
            await self._announce(
                js, tenant, kind, {**base, "kind": FX_DELIVERED, "attempt": delivery}, f"{key}:ok"
            )
            await msg.ack()
            self.delivered += 1
            return
        self.failed += 1
        await self._announce(
            js,
            tenant,
            kind,
            {**base, "kind": FX_FAILED, "attempt": delivery, "error": error, "agent": self.name},
            f"{key}:failed:{delivery}",
        )
        if delivery >= self.max_deliveries:
            await self._dead_letter(js, msg, tenant, kind, base, delivery, error)
        else:
            await msg.nak(delay=backoff_s(delivery, self.backoff_base_s, self.backoff_cap_s))

    async def _run_step(self, tenant: str, body: dict[str, Any], delivery: int, msg: Any) -> Any:
        """Run the step's code; None on success, else the error's text."""
        try:
            spec = self.specs(str(body["workflow"]), str(body["version"]))
            step = spec.step(str(body["step"]))
            args: dict[str, Any] = {}
            raw_args: dict[str, Any] = body.get("args") or {}
            for param in step.params:
                if param.name not in raw_args:
                    if param.has_default:
                        args[param.name] = param.default
                        continue
                    raise ValueError(f"argument {param.name!r} is missing")
                if param.source == "step" and param.step is not None:
                    kind = spec.step(param.step).result_type
                else:
                    kind = spec.input_type
                args[param.name] = contract_for(kind).load(
                    json.dumps(raw_args[param.name]), step=step.name, direction="side effect"
                )
            ctx = SideEffectContext(
                tenant_id=tenant,
                run_id=str(body["run_id"]),
                workflow=spec.name,
                step=step.name,
                attempt=delivery,
                key=str(body["outbox_id"]),
            )
            timeout = step.timeout_s or self.step_timeout_s
            await asyncio.wait_for(step.fn(ctx, **args), timeout=timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            return text if len(text) <= 1000 else text[:999] + "…"
        return None

    async def _dead_letter(
        self,
        js: JetStreamContext,
        msg: Any,
        tenant: str,
        kind: str,
        base: dict[str, Any],
        delivery: int,
        error: str,
    ) -> None:
        key = base["outbox_id"]
        await js.publish(
            self.fabric.dead(tenant, kind),
            msg.data,
            headers={"Nats-Msg-Id": key, "Tf-Error": error[:200], "Tf-Deliveries": str(delivery)},
        )
        await self._announce(
            js,
            tenant,
            kind,
            {**base, "kind": FX_DEAD_LETTERED, "attempt": delivery, "error": error},
            f"{key}:dead",
        )
        await msg.ack()
        self.dead_lettered += 1

    async def _announce(
        self, js: JetStreamContext, tenant: str, kind: str, outcome: dict[str, Any], msg_id: str
    ) -> None:
        await js.publish(
            self.fabric.outcome(tenant, kind),
            json.dumps(outcome).encode(),
            headers={"Nats-Msg-Id": msg_id},
        )

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


async def _exists(kv: KeyValue, key: str) -> bool:
    from nats.js.errors import KeyNotFoundError

    try:
        await kv.get(key)
    except KeyNotFoundError:
        return False
    return True


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
