"""The global plane: tenant registry and map, provisioning, policies, quotas, health.

It never touches execution state. It holds (in :class:`~.registry.Registry`) which cell serves
which tenant and where each cell listens, the key ids of tenant keys (to route a request by
its key), versioned policy documents and their acknowledgements, global limits and the leases
the cells hold. Provisioning and deprovisioning are **durable runs on tenantflow's own engine**
(an embedded engine on the plane's SQLite file, tenant ``plane``): a plane killed half-way
resumes them when it starts again, and every step is idempotent.

The HTTP API (see :func:`build_plane_app`) speaks the admin part of the ordinary REST API —
``/v1/tenants`` and their keys, with the plane's admin keys — so ``tenantflow --url PLANE
tenants ...`` and ``Client(PLANE, admin_key)`` work unchanged; every tenant request
(``/v1/runs``, ``/v1/tenant``, SSE, ...) is answered ``307`` to the tenant's cell, found from
the key's id. Clients follow and keep using the cell (see :class:`tenantflow.client.Client`):
the plane is not in the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

import tenantflow as tf
from tenantflow.domain.keys import format_key, key_id_for, parse_key
from tenantflow.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    StoreUnavailableError,
    TenantflowError,
)
from tenantflow.placement.federated.cell import policy_for
from tenantflow.placement.federated.quota import Allocator, GlobalLimit
from tenantflow.placement.federated.registry import CellRow, Registry, TenantRow
from tenantflow.placement.federated.supervisor import Supervisor

__all__ = ["PLANE_TENANT", "Plane", "PlaneOptions", "free_port"]

log = logging.getLogger("tenantflow.plane")

PLANE_TENANT = "plane"
"""The tenant the plane's own provisioning runs belong to (in the plane's engine)."""

_STEP_RETRY = tf.Retry(max_attempts=5, initial=0.2, max_interval=2.0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def new_key() -> str:
    """A fresh key string (for a cell's admin key)."""
    return format_key(key_id_for(secrets.token_hex(12)), secrets.token_urlsafe(32))


@dataclass(frozen=True)
class PlaneOptions:
    """How the plane runs (``tenantflow plane``'s options)."""

    state_dir: Path
    url: str  # where cells reach the plane
    apps: tuple[str, ...] = ()
    cell_size: int = 1  # tenants per cell: 1 = a dedicated cell each
    cell_slots: int = 16
    cell_host: str = "127.0.0.1"
    heartbeat_s: float = 1.0
    lease_ttl_s: float = 10.0
    drain_timeout_s: float = 60.0
    cell_store: str | None = None  # a store URL template with {cell}; None: a SQLite file each
    hung_after_s: float | None = 30.0  # no heartbeat for this long: the cell is killed, restarted


class ProvisionIn(BaseModel):
    tenant: str
    org_id: str | None = None
    document: dict[str, Any]


class DeprovisionIn(BaseModel):
    tenant: str
    purge_audit: bool = True


class Plane:
    """The plane's state and operations (the HTTP app is a thin layer over this)."""

    def __init__(self, options: PlaneOptions) -> None:
        self.options = options
        options.state_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(options.state_dir / "plane.db")
        self.supervisor = Supervisor(
            self.registry,
            apps=options.apps,
            plane_url=options.url,
            slots=options.cell_slots,
            heartbeat_s=options.heartbeat_s,
            hung_after_s=options.hung_after_s,
        )
        self.allocator = Allocator(options.lease_ttl_s)
        for resource, (rate, burst) in self.registry.quotas.items():
            self.allocator.set_limit(resource, GlobalLimit(rate, burst))
        for (cell, resource), lease in self.registry.leases.items():
            self.allocator.held.setdefault(resource, {})[cell] = lease
        self.heartbeats: dict[str, dict[str, Any]] = {}  # cell -> last status (memory only)
        self.heartbeat_at: dict[str, float] = {}
        self.engine = tf.Engine.open(f"sqlite:///{options.state_dir / 'plane-runs.db'}")
        self.engine.register(self._provision_workflow())
        self.engine.register(self._deprovision_workflow())
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pushing: set[tuple[str, int]] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "the plane is not started"
        return self._http

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=30.0)
        await self.engine.start()
        if self.engine.tenants.cached(PLANE_TENANT) is None:
            await self.engine.tenants.create(
                PLANE_TENANT, tier="enterprise", actor="plane", max_active_runs=10_000
            )
        loop = asyncio.get_running_loop()
        # Cells that should run and do not (the machine restarted, say) are started again.
        self._tasks.append(loop.create_task(self.supervisor.watch()))
        self._tasks.append(loop.create_task(self._reconcile_forever()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.supervisor.close()
        await self.engine.close()
        if self._http is not None:
            await self._http.aclose()
        self.registry.close()

    async def admin_key(self) -> str | None:
        """A new admin key of the plane, if it has none yet (the first start); else None."""
        if await self.engine.keys.list(None):
            return None
        _, secret = await self.engine.keys.create(None, name="plane-admin", actor="plane")
        return secret

    # -- the map ------------------------------------------------------------------------------

    def cell_of(self, tenant: str) -> CellRow:
        row = self.registry.tenants.get(tenant)
        if row is None or row.status == "deleted" or row.cell is None:
            raise NotFoundError(f"tenant {tenant!r} not found", kind="tenant", id=tenant)
        cell = self.registry.cells.get(row.cell)
        if cell is None:
            raise NotFoundError(f"tenant {tenant!r} has no cell", kind="tenant", id=tenant)
        return cell

    def route(self, key: str) -> tuple[str, str]:
        """(tenant, cell URL) for a tenant key string; AuthenticationError if unknown."""
        key_id = parse_key(key)
        tenant = self.registry.keys.get(key_id) if key_id else None
        if tenant is None:
            raise AuthenticationError("invalid API key")
        return tenant, self.cell_of(tenant).url

    # -- calls to a cell ----------------------------------------------------------------------

    async def call_cell(
        self, cell: CellRow, method: str, path: str, *, json: Any = None, **params: Any
    ) -> Any:
        try:
            response = await self.http.request(
                method,
                f"{cell.url}{path}",
                json=json,
                params={k: v for k, v in params.items() if v is not None},
                headers={"Authorization": f"Bearer {cell.admin_key}"},
            )
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(
                f"cell {cell.id} at {cell.url} did not answer: {exc}", cell=cell.id
            ) from exc
        if not response.is_success:
            from tenantflow.client import error_from_response

            raise error_from_response(response)
        return response.json()

    # -- placement ----------------------------------------------------------------------------

    def _assign(self, tenant: str) -> CellRow:
        """The cell for a new tenant: one with room (pooled cells), else a new one."""
        row = self.registry.tenants.get(tenant)
        if row is not None and row.cell is not None and row.cell in self.registry.cells:
            return self.registry.cells[row.cell]
        cell = None
        if self.options.cell_size > 1:
            for candidate in sorted(self.registry.cells.values(), key=lambda c: c.created_at):
                if (
                    candidate.status in ("starting", "running")
                    and len(self.registry.tenants_of(candidate.id)) < candidate.max_tenants
                ):
                    cell = candidate
                    break
        if cell is None:
            cell_id = f"cell-{secrets.token_hex(4)}"
            port = free_port(self.options.cell_host)
            state = self.options.state_dir / "cells" / cell_id
            cell = CellRow(
                id=cell_id,
                url=f"http://{self.options.cell_host}:{port}",
                port=port,
                store=(
                    self.options.cell_store.format(cell=cell_id.replace("-", "_"))
                    if self.options.cell_store
                    else f"sqlite:///{state / 'cell.db'}"
                ),
                state_dir=str(state),
                admin_key=new_key(),
                max_tenants=self.options.cell_size,
                status="starting",
                pid=None,
                restarts=0,
                created_at=time.time(),
            )
            self.registry.put_cell(cell)
        now = time.time()
        previous = self.registry.tenants.get(tenant)
        self.registry.put_tenant(
            TenantRow(
                tenant,
                cell.id,
                "provisioning",
                previous.info if previous else None,
                None,
                previous.created_at if previous else now,
                now,
            )
        )
        return cell

    def _provision_workflow(self) -> tf.Workflow:
        wf = tf.Workflow("provision-tenant", input=ProvisionIn)

        @wf.step(retry=_STEP_RETRY)
        async def place(ctx: tf.StepContext, input: ProvisionIn) -> str:
            return self._assign(input.tenant).id

        @wf.step(retry=_STEP_RETRY, timeout=None)
        async def start(ctx: tf.StepContext, place: str) -> str:
            cell = self.registry.cells[place]
            await self.supervisor.ensure(cell)
            return cell.url

        @wf.step(retry=_STEP_RETRY)
        async def create(ctx: tf.StepContext, input: ProvisionIn, place: str, start: str) -> int:
            cell = self.registry.cells[place]
            policy = self.registry.latest_policy(input.tenant)
            if policy is None:
                policy = self.registry.publish(input.tenant, input.document)
            answer = await self.call_cell(
                cell,
                "POST",
                "/cell/v1/tenants",
                json={
                    "id": input.tenant,
                    "org_id": input.org_id,
                    "document": policy.document,
                    "version": policy.version,
                },
            )
            self.registry.ack(input.tenant, policy.version, at=time.time())
            row = self.registry.tenants[input.tenant]
            row.info, row.status = answer["tenant_info"], "active"
            self.registry.put_tenant(row)
            return int(answer["version"])

        return wf

    def _deprovision_workflow(self) -> tf.Workflow:
        wf = tf.Workflow("deprovision-tenant", input=DeprovisionIn)

        @wf.step(retry=_STEP_RETRY)
        async def drain(ctx: tf.StepContext, input: DeprovisionIn) -> str:
            row = self.registry.tenants[input.tenant]
            if row.status == "deleted" or row.cell is None:
                return ""
            row.status = "draining"
            self.registry.put_tenant(row)
            cell = self.registry.cells[row.cell]
            await self.supervisor.ensure(cell)
            with contextlib.suppress(NotFoundError):  # already purged by an earlier attempt
                await self.call_cell(cell, "POST", f"/cell/v1/tenants/{input.tenant}/drain")
            return cell.id

        @wf.step(retry=tf.Retry(max_attempts=3, initial=0.5), timeout=None)
        async def drained(ctx: tf.StepContext, drain: str, input: DeprovisionIn) -> int:
            if not drain:
                return 0
            cell = self.registry.cells[drain]
            deadline = time.monotonic() + self.options.drain_timeout_s
            while True:
                try:
                    state = await self.call_cell(cell, "GET", f"/cell/v1/tenants/{input.tenant}")
                except NotFoundError:
                    return 0
                if state["unfinished_runs"] == 0:
                    return 0
                if time.monotonic() > deadline:
                    raise ConflictError(
                        f"tenant {input.tenant!r} still has {state['unfinished_runs']} unfinished"
                        f" runs after {self.options.drain_timeout_s:g} s of draining",
                        tenant=input.tenant,
                    )
                await asyncio.sleep(0.2)

        @wf.step(retry=_STEP_RETRY)
        async def purge(
            ctx: tf.StepContext, drain: str, drained: int, input: DeprovisionIn
        ) -> dict[str, Any]:
            row = self.registry.tenants[input.tenant]
            if not drain:
                return row.proof or {}
            cell = self.registry.cells[drain]
            try:
                result = await self.call_cell(
                    cell,
                    "DELETE",
                    f"/v1/tenants/{input.tenant}",
                    purge_audit=str(input.purge_audit).lower(),
                )
                proof: dict[str, Any] = {
                    "deleted": result["deleted"],
                    "left": result["left"],
                }
            except NotFoundError:  # an earlier attempt purged it and died before recording
                proof = dict(row.proof or {"deleted": {}, "left": {}})
            proof["cell"] = cell.id
            remaining = [t for t in self.registry.tenants_of(cell.id) if t != input.tenant]
            if not remaining:  # a dedicated cell: stop it and delete its store
                await self.supervisor.stop(cell)
                proof["files_left"] = self.supervisor.purge(cell)
                proof["cell_stopped"] = True
                self.allocator.forget(cell.id)
                self.registry.drop_cell(cell.id)
                self.heartbeats.pop(cell.id, None)
            else:
                proof["cell_stopped"] = False
                proof["files_left"] = []
            row.status, row.cell, row.proof = "deleted", None, proof
            self.registry.put_tenant(row)
            self.registry.drop_keys(input.tenant)
            self.registry.drop_policies(input.tenant)
            return proof

        return wf

    async def provision(
        self, tenant: str, *, tier: str, org_id: str | None, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Create a tenant: a cell is placed, started and ready, and holds the tenant; its
        TenantOut. Runs as a durable run of the plane's engine."""
        document = {"tier": tier, "fields": dict(fields)}
        policy_for(document)  # refused here, before anything is placed
        row = self.registry.tenants.get(tenant)
        if row is not None and row.status in ("active", "draining"):
            raise ConflictError(f"tenant {tenant!r} already exists", tenant=tenant)
        if row is not None and row.status == "deleted":
            self.registry.drop_policies(tenant)
        handle = await self.engine.submit(
            "provision-tenant",
            tenant=PLANE_TENANT,
            input={"tenant": tenant, "org_id": org_id, "document": document},
            idempotency_key=f"provision:{tenant}:{time.time_ns()}",
        )
        record = await self.engine.wait(PLANE_TENANT, handle.id)
        if record.status.value != "completed":
            raise StoreUnavailableError(
                f"provisioning {tenant!r} did not complete ({record.status.value}):"
                f" {record.error or 'see the plane run ' + handle.id}",
                run_id=handle.id,
            )
        info = self.registry.tenants[tenant].info
        assert info is not None
        return info

    async def deprovision(self, tenant: str, *, purge_audit: bool = True) -> dict[str, Any]:
        """Delete a tenant: drained, purged, and its cell stopped and deleted when it was the
        cell's only tenant; the proof (rows deleted, rows and files left)."""
        row = self.registry.tenants.get(tenant)
        if row is None or row.status == "deleted":
            raise NotFoundError(f"tenant {tenant!r} not found", kind="tenant", id=tenant)
        handle = await self.engine.submit(
            "deprovision-tenant",
            tenant=PLANE_TENANT,
            input={"tenant": tenant, "purge_audit": purge_audit},
            idempotency_key=f"deprovision:{tenant}:{time.time_ns()}",
        )
        record = await self.engine.wait(PLANE_TENANT, handle.id)
        if record.status.value != "completed":
            raise ConflictError(
                f"deleting {tenant!r} did not complete ({record.status.value}):"
                f" {record.error or 'see the plane run ' + handle.id}",
                run_id=handle.id,
            )
        proof = self.registry.tenants[tenant].proof
        assert proof is not None
        return proof

    # -- policies -----------------------------------------------------------------------------

    async def change_policy(self, tenant: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Publish the next version of the tenant's policy document (its fields changed) and
        push it; the cell's answer (``tenant_info`` and the version), or ``pending``."""
        cell = self.cell_of(tenant)
        latest = self.registry.latest_policy(tenant)
        assert latest is not None
        merged = dict(latest.document.get("fields", {}))
        for name, value in fields.items():
            if name == "budget" and isinstance(value, Mapping):
                merged["budget"] = {**dict(merged.get("budget") or {}), **value}
            elif name == "tier":
                continue
            else:
                merged[name] = value
        document = {
            "tier": fields.get("tier", latest.document.get("tier", "standard")),
            "fields": merged,
        }
        policy_for(document)  # validated before it is published
        row = self.registry.publish(tenant, document)
        return await self.push(tenant, cell, row.version)

    async def push(self, tenant: str, cell: CellRow, version: int) -> dict[str, Any]:
        rows = [r for r in self.registry.policies.get(tenant, []) if r.version == version]
        if not rows:
            raise NotFoundError(f"no policy version {version} of {tenant!r}", tenant=tenant)
        row = rows[0]
        try:
            answer = await self.call_cell(
                cell,
                "PUT",
                f"/cell/v1/tenants/{tenant}/policy",
                json={"version": version, "document": row.document},
            )
        except StoreUnavailableError:
            return {"tenant": tenant, "version": version, "pending": True}
        except TenantflowError as exc:
            self.registry.ack(tenant, version, at=time.time(), error=f"{exc.code}: {exc}")
            raise
        self.registry.ack(tenant, version, at=time.time())
        trow = self.registry.tenants[tenant]
        trow.info = answer["tenant_info"]
        self.registry.put_tenant(trow)
        return {"tenant": tenant, "version": version, "tenant_info": answer["tenant_info"]}

    def policy_status(self) -> list[dict[str, Any]]:
        """Per tenant: the latest version, the one its cell reports applied, the lag."""
        now = time.time()
        out = []
        for tenant, rows in sorted(self.registry.policies.items()):
            latest = rows[-1]
            row = self.registry.tenants.get(tenant)
            cell = row.cell if row else None
            beat = self.heartbeats.get(cell or "", {}).get("tenants", {}).get(tenant, {})
            out.append(
                {
                    "tenant": tenant,
                    "cell": cell,
                    "version": latest.version,
                    "applied": beat.get("policy_version"),
                    "acked_at": latest.acked_at,
                    "lag_s": (latest.acked_at - latest.published_at)
                    if latest.acked_at is not None
                    else None,
                    "pending_s": None if latest.acked_at is not None else now - latest.published_at,
                    "error": latest.error,
                }
            )
        return out

    async def _reconcile_forever(self) -> None:
        """Push policy versions a cell missed (it was down, or the plane was)."""
        while True:
            await asyncio.sleep(self.options.heartbeat_s)
            try:
                await self.reconcile()
            except Exception:
                log.exception("policy reconcile failed")

    async def reconcile(self) -> None:
        for tenant, rows in list(self.registry.policies.items()):
            latest = rows[-1]
            if latest.acked_at is not None or latest.error is not None:
                continue
            key = (tenant, latest.version)
            if key in self._pushing:
                continue
            try:
                cell = self.cell_of(tenant)
            except NotFoundError:
                continue
            if cell.id not in self.heartbeats:
                continue
            self._pushing.add(key)
            try:
                with contextlib.suppress(TenantflowError):
                    await self.push(tenant, cell, latest.version)
            finally:
                self._pushing.discard(key)

    # -- health and leases --------------------------------------------------------------------

    def heartbeat(self, key: str, status: Mapping[str, Any]) -> dict[str, Any]:
        cell = self.registry.cells.get(str(status.get("cell", "")))
        if cell is None or not hmac.compare_digest(cell.admin_key, key):
            raise AuthenticationError("unknown cell or wrong cell key")
        now = time.time()
        self.heartbeats[cell.id] = dict(status)
        self.heartbeat_at[cell.id] = now
        self.supervisor.beat(cell.id, time.monotonic())
        leases = self.allocator.grant(cell.id, int(status.get("backlog", 0)), now)
        for resource, lease in leases.items():
            self.registry.put_lease(cell.id, resource, (lease.rate_per_s, lease.burst))
        return {"leases": [lease.to_dict() for lease in leases.values()]}

    def set_quota(self, resource: str, rate: str | None, burst: int | None) -> dict[str, Any]:
        if rate is None:
            self.registry.put_quota(resource, None)
            self.allocator.set_limit(resource, None)
            return {"resource": resource, "removed": True}
        limit = tf.RateLimit.parse(rate, burst)
        self.registry.put_quota(resource, (limit.rate_per_s, limit.burst))
        self.allocator.set_limit(resource, GlobalLimit(limit.rate_per_s, limit.burst))
        return {"resource": resource, "rate_per_s": limit.rate_per_s, "burst": limit.burst}

    def quota_status(self) -> list[dict[str, Any]]:
        out = []
        for resource, (rate, burst) in sorted(self.registry.quotas.items()):
            held_rate, held_burst = self.allocator.held_total(resource)
            out.append(
                {
                    "resource": resource,
                    "rate_per_s": rate,
                    "burst": burst,
                    "held_rate_per_s": held_rate,
                    "held_burst": held_burst,
                    "cells": {
                        c: {"rate_per_s": r, "burst": b}
                        for c, (r, b) in sorted(self.allocator.held.get(resource, {}).items())
                    },
                }
            )
        return out

    def cells_status(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for cell in sorted(self.registry.cells.values(), key=lambda c: c.created_at):
            beat = self.heartbeats.get(cell.id)
            at = self.heartbeat_at.get(cell.id)
            out.append(
                {
                    **cell.public(),
                    "alive": self.supervisor.alive(cell),
                    "tenants": self.registry.tenants_of(cell.id),
                    "heartbeat_age_s": None if at is None else now - at,
                    "heartbeat": beat,
                }
            )
        return out
