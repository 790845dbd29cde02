"""Agent-to-agent requests with per-hop deadlines: a wait cycle ends in a timeout naming it.

An agent serves requests on ``tf.<r>.<t>.hop.<agent>`` (core NATS request/reply, a queue group
per agent name) with a bounded number of slots; a slot is held while the handler runs, including
while it waits on another agent's reply, as a real agent waits. Each request carries:

* ``Tf-Hops``: the chain of agents that are waiting, outermost first;
* ``Tf-Deadline``: when the caller stops waiting (epoch seconds).

A handler calling the next agent passes a deadline ``shrink`` earlier than its own, so the
innermost wait of a chain always expires first. Its agent answers
``{"error": "timeout", "chain": [..., target]}`` and every agent above passes that answer up
unchanged, so the original caller gets :class:`~tenantflow.errors.StepTimeoutError` naming the
whole chain; when an agent appears twice in it, it is a wait cycle and the message says so
(``a -> b -> c -> a``), never a silent stall. A request that cannot get a slot before its
deadline is answered the same way.

Correlation ids (tenant, run, step, attempt) ride in the ``Tf-*`` headers of every hop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region, token, untoken
from tenantflow.errors import StepTimeoutError, TenantflowError

__all__ = ["HopAgent", "HopContext", "call", "cycle_of"]

SHRINK_S = 0.2
"""How much earlier than its own deadline a hop's onward call must be answered."""


def cycle_of(chain: list[str]) -> list[str] | None:
    """The first wait cycle in ``chain`` (``[a, b, c, a]``), or None."""
    seen: dict[str, int] = {}
    for i, name in enumerate(chain):
        if name in seen:
            return chain[seen[name] : i + 1]
        seen[name] = i
    return None


def _timeout(chain: list[str], waited_s: float) -> StepTimeoutError:
    cycle = cycle_of(chain)
    path = " -> ".join(chain)
    if cycle is not None:
        message = (
            f"agent wait cycle {' -> '.join(cycle)}: timed out after {waited_s:.2f} s"
            f" (chain {path})"
        )
    else:
        message = f"hop {path} timed out after {waited_s:.2f} s"
    return StepTimeoutError(message, chain=chain, cycle=cycle)


@dataclass
class HopContext:
    """What a handler gets: the payload, who is waiting, and how to call onward."""

    agent: HopAgent
    tenant: str
    payload: dict[str, Any]
    chain: list[str]
    deadline: float
    headers: Mapping[str, str] = field(default_factory=dict)

    async def call(self, target: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Ask ``target``, answering ``SHRINK_S`` before this hop's own deadline."""
        return await call(
            self.agent.fabric,
            self.agent.region.name,
            self.tenant,
            target,
            payload,
            deadline=self.deadline - SHRINK_S,
            chain=[*self.chain, self.agent.name],
            headers={k: v for k, v in self.headers.items() if k.startswith("Tf-")},
        )


Handler = Callable[[HopContext], Awaitable[dict[str, Any]]]


class HopAgent:
    """Serves one agent name's requests in one region (see the module doc)."""

    def __init__(
        self, fabric: Fabric, region: str, name: str, handler: Handler, *, slots: int = 1
    ) -> None:
        self.fabric = fabric
        self.region = Region(region)
        self.name = name
        self.handler = handler
        self._slots = asyncio.Semaphore(slots)
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.timeouts: list[list[str]] = []

    async def start(self) -> None:
        subject = f"tf.{self.region.name}.*.hop.{token(self.name)}"
        self._sub = await self.fabric.nc.subscribe(subject, queue=f"hop-{self.name}", cb=self._on)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on(self, msg: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Any) -> None:
        headers = dict(msg.headers or {})
        chain = [c for c in headers.get("Tf-Hops", "").split(",") if c]
        deadline = float(headers.get("Tf-Deadline", time.time() + 30.0))
        tenant = untoken(msg.subject.split(".")[2])
        started = time.time()
        try:
            await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - time.time()))
        except TimeoutError:
            self.timeouts.append([*chain, self.name])
            reply = {"error": "timeout", "chain": [*chain, self.name], "waited_s": 0.0}
            await msg.respond(json.dumps(reply).encode())
            return
        try:
            ctx = HopContext(self, tenant, json.loads(msg.data), chain, deadline, headers)
            try:
                reply = {"result": await self.handler(ctx)}
            except StepTimeoutError as exc:
                reply = {
                    "error": "timeout",
                    "chain": list(exc.fields.get("chain") or []),
                    "waited_s": time.time() - started,
                }
            except TenantflowError as exc:
                reply = {"error": exc.code, "message": exc.message}
            await msg.respond(json.dumps(reply).encode())
        finally:
            self._slots.release()


async def call(
    fabric: Fabric,
    region: str,
    tenant: str,
    target: str,
    payload: dict[str, Any],
    *,
    deadline: float,
    chain: list[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Ask agent ``target`` and wait for its answer until ``deadline`` (epoch seconds).

    Raises:
        StepTimeoutError: no answer in time here or further down (the chain is named; a wait
            cycle is said to be one).
        TenantflowError: the agent answered with an error.
    """
    import nats.errors

    chain = list(chain or [])
    hdrs = {**(headers or {}), "Tf-Hops": ",".join(chain), "Tf-Deadline": f"{deadline:.6f}"}
    started = time.time()
    remaining = deadline - started
    if remaining <= 0:
        raise _timeout([*chain, target], 0.0)
    try:
        msg = await fabric.nc.request(
            Region(region).hop(tenant, target),
            json.dumps(payload).encode(),
            timeout=remaining,
            headers=hdrs,
        )
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
        raise _timeout([*chain, target], time.time() - started) from None
    reply = json.loads(msg.data)
    if reply.get("error") == "timeout":
        raise _timeout(list(reply.get("chain") or [*chain, target]), time.time() - started)
    if "error" in reply:
        raise TenantflowError(f"agent {target} failed: {reply.get('message', reply['error'])}")
    result: dict[str, Any] = reply["result"]
    return result
