"""What the dashboard reads of a mesh deployment: agents, their breakers, the queues' load.

No process of the mesh schedules, so there is no scheduler to ask. :class:`MeshPlane` answers
the :class:`~tenantflow.placement.control.ControlPlane`'s plane reads from the fabric itself:

* **health**: this API process, and every agent whose heartbeat it heard
  (``tf.<region>._agents.<owner>``, see :mod:`.driver`) as a member of kind ``agent``: ``up``
  while its beats come, ``late`` after three missed beats, ``down`` after ten (and forgotten
  after :data:`FORGET_S`).
* **load**: per tenant, the steps *running* (the work items its consumers have delivered and
  not yet acknowledged: ``num_ack_pending``, which the server caps at the tenant's
  ``max_ack_pending`` across every agent) and *queued* (the items waiting on the work stream),
  read every :data:`REFRESH_S` seconds from the server; the slots are the agents' (from their
  beats); shares and Jain's index as :class:`~tenantflow.engine.plane.PlaneReads` computes
  them.
* **breakers**: each agent's circuit breakers as its last beat reported them, named
  ``<dependency> @ <agent>`` (every agent keeps its own).
* **latency**: run latency per tenant (submitted to finished), fed by the API's submissions
  and the projector's finished runs (:mod:`.projector`), as the engine's tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from tenantflow.adapters.nats.fabric import Fabric
from tenantflow.adapters.nats.subjects import Region, untoken
from tenantflow.domain.fairness import jain_index, max_min_shares
from tenantflow.engine.plane import (
    BreakerView,
    LatencyTracker,
    MemberHealth,
    PlacementInfo,
    PlaneLoad,
    TenantLatency,
    TenantLoad,
)
from tenantflow.engine.tenants import TenantInfo
from tenantflow.observability.events import RunFinished, RunSubmitted
from tenantflow.placement.mesh.driver import beat_subject
from tenantflow.ports import Clock

__all__ = ["FORGET_S", "REFRESH_S", "MeshPlane"]

log = logging.getLogger("tenantflow.mesh")

REFRESH_S = 1.0
"""How often the queues' counts are read from the server."""

FORGET_S = 600.0
"""How long an agent that stopped beating is still listed (as ``down``)."""


class MeshPlane:
    """The plane reads of a mesh deployment (see the module doc)."""

    def __init__(
        self,
        fabric: Fabric,
        regions: Sequence[str],
        *,
        clock: Clock,
        process: str,
        stores: Sequence[str],
        policy_of: Callable[[str], TenantInfo | None],
    ) -> None:
        self.fabric = fabric
        self.regions = list(dict.fromkeys(regions))
        self.clock = clock
        self.process = process
        self.stores = sorted(stores)
        self._policy_of = policy_of
        self.agents: dict[str, dict[str, Any]] = {}
        """The last beat of each agent heard, by owner (with ``heard``: this clock's time)."""
        self.running: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self.refreshed_at: float | None = None
        self.latencies = LatencyTracker(clock, self._others_queued)
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.fabric.nc.subscribe(beat_subject("*", "*"), cb=self._heard)
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _heard(self, msg: Any) -> None:
        try:
            beat = json.loads(msg.data)
            owner = str(beat["owner"])
        except (ValueError, KeyError, TypeError):
            return
        beat["heard"] = self.clock.now()
        beat["region_subject"] = msg.subject.split(".")[1]
        self.agents[owner] = beat

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception as exc:  # the server is away: the last counts stay
                log.debug("mesh load not refreshed: %s", exc)

    async def refresh(self) -> None:
        """Read every region's per-tenant running and queued counts from the server."""
        running: dict[str, int] = {}
        queued: dict[str, int] = {}
        for region in self.regions:
            r = Region(region)
            info = await self.fabric.js.stream_info(
                r.work_stream, subjects_filter=f"tf.{r.name}.*.run.*.cmd.*"
            )
            for subject, n in (info.state.subjects or {}).items():
                tenant = untoken(subject.split(".")[2])
                queued[tenant] = queued.get(tenant, 0) + int(n)
            for consumer in await self.fabric.js.consumers_info(r.work_stream):
                subject = consumer.config.filter_subject or ""
                parts = subject.split(".")
                if len(parts) < 3 or parts[2] in ("*", ">"):
                    continue
                tenant = untoken(parts[2])
                pending = int(consumer.num_ack_pending or 0)
                running[tenant] = running.get(tenant, 0) + pending
        # A delivered item is still on the work stream until acked: queued counts it once.
        self.queued = {t: max(0, n - running.get(t, 0)) for t, n in queued.items()}
        self.running = running
        self.refreshed_at = self.clock.now()

    # -- the reads ----------------------------------------------------------------------------

    def _others_queued(self, tenant: str) -> int:
        return sum(n for t, n in self.queued.items() if t != tenant)

    def _policy(self, tenant: str) -> tuple[float, float]:
        info = self._policy_of(tenant)
        if info is None:
            return 1.0, math.inf
        return info.policy.weight, float(info.policy.max_running_steps)

    def _live_agents(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        return [a for a in self.agents.values() if now - a["heard"] <= 3 * a["every_s"]]

    def load(self) -> PlaneLoad:
        running, queued = dict(self.running), dict(self.queued)
        demand: dict[str, float] = {}
        weight: dict[str, float] = {}
        cap: dict[str, float] = {}
        for tenant in running.keys() | queued.keys():
            total = running.get(tenant, 0) + queued.get(tenant, 0)
            if total == 0:
                continue
            demand[tenant] = float(total)
            weight[tenant], cap[tenant] = self._policy(tenant)
        slots = sum(int(a.get("slots", 0)) for a in self._live_agents())
        shares = max_min_shares(demand, weight, cap, float(slots)) if demand else {}
        ratios = [running.get(t, 0) / s for t, s in shares.items() if s > 1e-9]
        rows = [
            TenantLoad(
                t,
                running.get(t, 0),
                queued.get(t, 0),
                None,
                None,
                weight[t],
                cap[t],
                shares.get(t, 0.0),
            )
            for t in sorted(demand, key=lambda t: (-running.get(t, 0), t))
        ]
        return PlaneLoad(
            self.clock.now(),
            jain_index(ratios) if ratios else 1.0,
            slots,
            sum(running.values()),
            sum(queued.values()),
            0,
            0,
            rows,
        )

    def tenant_load(self, tenant: str) -> TenantLoad:
        weight, cap = self._policy(tenant)
        return TenantLoad(
            tenant,
            self.running.get(tenant, 0),
            self.queued.get(tenant, 0),
            None,
            None,
            weight,
            cap,
            0.0,
        )

    def placement(self) -> PlacementInfo:
        return PlacementInfo("mesh", self.process, self.stores, False)

    async def health(self) -> list[MemberHealth]:
        now = self.clock.now()
        me = {
            "mode": "mesh",
            "regions": ",".join(self.regions),
            "agents": len(self._live_agents()),
            "running": sum(self.running.values()),
            "queued": sum(self.queued.values()),
        }
        members = [MemberHealth("process", self.process, "up", now, me)]
        for owner, beat in sorted(self.agents.items()):
            age = now - float(beat["heard"])
            every = float(beat.get("every_s") or 2.0)
            if age > FORGET_S:
                del self.agents[owner]
                continue
            state = "up" if age <= 3 * every else "late" if age <= 10 * every else "down"
            detail = {
                "pid": beat.get("pid"),
                "regions": ",".join(beat.get("regions") or ()),
                "kinds": ",".join(beat.get("kinds") or ()),
                "slots": beat.get("slots"),
                "in_flight": beat.get("in_flight"),
                "delivered": (beat.get("queue") or {}).get("delivered"),
                "acked": (beat.get("queue") or {}).get("acked"),
            }
            members.append(MemberHealth("agent", owner, state, float(beat["heard"]), detail))
        return members

    def breakers(self) -> list[BreakerView]:
        out = []
        for owner, beat in sorted(self.agents.items()):
            for b in beat.get("breakers") or ():
                out.append(
                    BreakerView(
                        f"{b['name']} @ {owner}",
                        str(b["state"]),
                        int(b["failures"]),
                        int(b["threshold"]),
                        float(b["cooldown_s"]),
                        float(b["retry_after_s"]),
                        None if b.get("last_change_s") is None else float(b["last_change_s"]),
                        int(b["changes"]),
                    )
                )
        return out

    def latency(self, tenants: Sequence[str] | None = None) -> list[TenantLatency]:
        wanted = self.latencies.tenants() if tenants is None else list(tenants)
        return [self.latencies.of(t) for t in wanted]

    def submitted(self, tenant: str, run_id: str, workflow: str) -> None:
        self.latencies.on_run_submitted(
            RunSubmitted(
                tenant_id=tenant,
                run_id=run_id,
                at_s=self.clock.now(),
                workflow=workflow,
                lane="normal",
                queued=False,
            )
        )

    def finished(self, tenant: str, run: dict[str, Any]) -> None:
        """A run the projector saw end (its snapshot's record)."""
        self.latencies.on_run_finished(
            RunFinished(
                tenant_id=tenant,
                run_id=str(run["id"]),
                at_s=float(run.get("finished_at") or run["updated_at"]),
                workflow=str(run["workflow"]),
                status=str(run["status"]),
                submitted_at_s=float(run["created_at"]),
                state_version=int(run["state_version"]),
                run_sla_s=None,
            )
        )
