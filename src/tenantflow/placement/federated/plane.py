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
    ConfigurationError,
    ConflictError,
    NotFoundError,
    StoreUnavailableError,
    TenantflowError,
)
from tenantflow.placement.federated.cell import policy_for
from tenantflow.placement.federated.money import MoneyAllocator, MoneyCap
from tenantflow.placement.federated.quota import Allocator, GlobalLimit
from tenantflow.placement.federated.registry import CellRow, Registry, TenantRow
from tenantflow.placement.federated.supervisor import Supervisor

__all__ = ["PLANE_TENANT", "Plane", "PlaneOptions", "free_port", "money_period"]

log = logging.getLogger("tenantflow.plane")

PLANE_TENANT = "plane"
"""The tenant the plane's own provisioning runs belong to (in the plane's engine)."""

_STEP_RETRY = tf.Retry(max_attempts=5, initial=0.2, max_interval=2.0)


def money_period(now: float) -> str:
    """The period of the money caps at ``now``: the UTC day."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


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
    shared_size: int = 100  # tenants the shared pool (cell ``shared``) holds at most
    place_new: str = "cell"  # where new tenants go: "cell" (per --cell-size) or "shared"


class ProvisionIn(BaseModel):
    tenant: str
    org_id: str | None = None
    document: dict[str, Any]


class DeprovisionIn(BaseModel):
    tenant: str
    purge_audit: bool = True


class MoveIn(BaseModel):
    tenant: str
    to: str  # "cell" | "shared"
    drain_timeout_s: float = 30.0


SHARED_CELL = "shared"
"""The shared pool's cell id: one engine process holding many tenants (``--shared-size``), the
place tenants graduate from (``tenants move T --to cell``) and return to (``--to shared``)."""


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
        self.money = MoneyAllocator(period=money_period(time.time()))
        for name, cap_micros in self.registry.money_caps.items():
            self.money.set_cap(MoneyCap(name, cap_micros))
        for (cap, cell), (held, seq) in self.registry.money_held.items():
            self.money.restore(cap, cell, held, seq)
        self.heartbeats: dict[str, dict[str, Any]] = {}  # cell -> last status (memory only)
        self.heartbeat_at: dict[str, float] = {}
        self.engine = tf.Engine.open(f"sqlite:///{options.state_dir / 'plane-runs.db'}")
        self.engine.register(self._provision_workflow())
        self.engine.register(self._deprovision_workflow())
        self.engine.register(self._move_workflow())
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
        if self.options.place_new == "shared":
            cell = self.shared_cell()
        elif self.options.cell_size > 1:
            for candidate in sorted(self.registry.cells.values(), key=lambda c: c.created_at):
                if (
                    candidate.id != SHARED_CELL
                    and candidate.status in ("starting", "running")
                    and len(self.registry.tenants_of(candidate.id)) < candidate.max_tenants
                ):
                    cell = candidate
                    break
        if cell is None:
            cell = self._new_cell(self.options.cell_size)
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

    def _new_cell(self, max_tenants: int, cell_id: str | None = None) -> CellRow:
        """A new cell in the registry (status ``starting``; the supervisor starts it)."""
        cell_id = cell_id or f"cell-{secrets.token_hex(4)}"
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
            max_tenants=max_tenants,
            status="starting",
            pid=None,
            restarts=0,
            created_at=time.time(),
        )
        self.registry.put_cell(cell)
        return cell

    def shared_cell(self) -> CellRow:
        """The shared pool: the cell ``shared`` (made on first use, ``shared_size`` tenants)."""
        cell = self.registry.cells.get(SHARED_CELL)
        if cell is None:
            cell = self._new_cell(self.options.shared_size, SHARED_CELL)
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
                self.money.retire(cell.id)
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

    def _move_workflow(self) -> tf.Workflow:
        """``move-tenant``: target (the shared pool, or a new dedicated cell) → start it →
        release at the source cell → copy store to store (here, with both stores opened beside
        the cells' engines) → finish at the source (its keys answered 307 to the target) →
        adopt at the target → the tenant → cell map."""
        wf = tf.Workflow("move-tenant", input=MoveIn)

        @wf.step(retry=_STEP_RETRY)
        async def target(ctx: tf.StepContext, input: MoveIn) -> dict[str, str]:
            row = self.registry.tenants[input.tenant]
            assert row.cell is not None
            cell = self.shared_cell() if input.to == "shared" else self._new_cell(1)
            return {"source": row.cell, "target": cell.id}

        @wf.step(retry=_STEP_RETRY, timeout=None)
        async def start(ctx: tf.StepContext, target: dict[str, str]) -> str:
            cell = self.registry.cells[target["target"]]
            await self.supervisor.ensure(cell)
            return cell.url

        @wf.step(retry=_STEP_RETRY, timeout=None)
        async def release(
            ctx: tf.StepContext, input: MoveIn, target: dict[str, str], start: str
        ) -> dict[str, Any]:
            source = self.registry.cells[target["source"]]
            await self.supervisor.ensure(source)
            answer: dict[str, Any] = await self.call_cell(
                source,
                "POST",
                f"/cell/v1/tenants/{input.tenant}/release",
                json={"location": start, "drain_timeout_s": input.drain_timeout_s},
            )
            return answer

        @wf.step(retry=tf.Retry(max_attempts=1), timeout=None)
        async def copy(
            ctx: tf.StepContext, input: MoveIn, target: dict[str, str], start: str, release: Any
        ) -> dict[str, Any]:
            source = self.registry.cells[target["source"]]
            destination = self.registry.cells[target["target"]]
            if await self._copied_already(source, destination, input.tenant):
                raise ConflictError(  # an earlier attempt copied it and the plane lost its answer
                    f"tenant {input.tenant!r} is at {destination.id} already; finish the move"
                    " there (/cell/v1/tenants/{id}/finish at the source, /adopt at the target)",
                    tenant=input.tenant,
                )
            try:
                report = await self._copy(source, destination, input.tenant, start)
            except BaseException as exc:
                with contextlib.suppress(TenantflowError):  # the source serves it again
                    await self.call_cell(
                        source,
                        "POST",
                        f"/cell/v1/tenants/{input.tenant}/cancel",
                        json={"reason": str(exc)[:300]},
                    )
                row = self.registry.tenants[input.tenant]
                row.status = "active"
                self.registry.put_tenant(row)
                raise
            report["drained"] = bool(release.get("drained", True))
            report["stopped"] = int(release.get("stopped", 0))
            report["fenced_s"] = round(time.time() - float(release.get("fenced_at", 0.0)), 3)
            return report

        @wf.step(retry=_STEP_RETRY, timeout=None)
        async def finish(
            ctx: tf.StepContext, input: MoveIn, target: dict[str, str], copy: dict[str, Any]
        ) -> int:
            source = self.registry.cells[target["source"]]
            with contextlib.suppress(ConflictError):  # an earlier attempt finished it
                await self.call_cell(
                    source,
                    "POST",
                    f"/cell/v1/tenants/{input.tenant}/finish",
                    json={"key_ids": copy["api_keys"]},
                )
            return len(copy["api_keys"])

        @wf.step(retry=_STEP_RETRY, timeout=None)
        async def adopt(
            ctx: tf.StepContext,
            input: MoveIn,
            target: dict[str, str],
            copy: dict[str, Any],
            finish: int,
        ) -> dict[str, Any]:
            destination = self.registry.cells[target["target"]]
            policy = self.registry.latest_policy(input.tenant)
            answer = await self.call_cell(
                destination,
                "POST",
                f"/cell/v1/tenants/{input.tenant}/adopt",
                json={
                    "key_ids": copy["api_keys"],
                    "version": policy.version if policy else 0,
                    "document": policy.document if policy else {},
                },
            )
            row = self.registry.tenants[input.tenant]
            row.cell, row.status, row.info = destination.id, "active", answer["tenant_info"]
            row.updated_at = time.time()
            self.registry.put_tenant(row)
            for key_id in copy["api_keys"]:
                self.registry.put_key(key_id, input.tenant)
            return {**copy, "from": target["source"], "to": destination.id}

        return wf

    async def _copied_already(self, source: CellRow, target: CellRow, tenant: str) -> bool:
        """Whether the tenant's rows are all at the target already (a copy committed)."""
        from tenantflow.adapters import open_store  # composition
        from tenantflow.adapters.tenant_transfer import tenant_rows

        counts = []
        for row in (source, target):
            store = open_store(row.store)
            await store.open(execute=False)
            try:
                counts.append(sum((await tenant_rows(store, tenant)).values()))
            finally:
                await store.close()
        return counts[0] == 0 and counts[1] > 0

    async def _copy(
        self, source: CellRow, target: CellRow, tenant: str, location: str
    ) -> dict[str, Any]:
        """copy_tenant between the two cells' stores, opened here beside the cells' engines
        (``execute=False``: a SQLite file's executing lock stays with its cell)."""
        from tenantflow.adapters import open_store  # composition
        from tenantflow.placement.move import copy_tenant

        src, dst = open_store(source.store), open_store(target.store)
        await src.open(execute=False)
        try:
            await dst.open(execute=False)
            try:
                now = time.time()
                copied = await copy_tenant(
                    src,
                    dst,
                    tenant,
                    actor="plane:move",
                    location=location,
                    source_now=now,
                    target_now=now,
                )
            finally:
                await dst.close()
        finally:
            await src.close()
        report = copied.report().to_dict()
        return report

    async def move(self, tenant: str, to: str, *, drain_timeout_s: float = 30.0) -> dict[str, Any]:
        """Move a tenant, live, to the shared pool (``to="shared"``) or a dedicated cell of its
        own (``to="cell"``), as a durable run of the plane's engine; the move's report."""
        if to not in ("cell", "shared"):
            raise ConfigurationError(f"--to {to!r}: cell or shared", field="to", value=to)
        row = self.registry.tenants.get(tenant)
        if row is None or row.status == "deleted" or row.cell is None:
            raise NotFoundError(f"tenant {tenant!r} not found", kind="tenant", id=tenant)
        if row.status != "active":
            raise ConflictError(f"tenant {tenant!r} is {row.status}", tenant=tenant)
        if to == "shared" and row.cell == SHARED_CELL:
            raise ConflictError(f"tenant {tenant!r} is in the shared pool already", tenant=tenant)
        alone = len(self.registry.tenants_of(row.cell)) == 1
        if to == "cell" and row.cell != SHARED_CELL and alone:
            raise ConflictError(f"tenant {tenant!r} has a cell of its own already", tenant=tenant)
        row.status = "moving"
        self.registry.put_tenant(row)
        try:
            handle = await self.engine.submit(
                "move-tenant",
                tenant=PLANE_TENANT,
                input={"tenant": tenant, "to": to, "drain_timeout_s": drain_timeout_s},
                idempotency_key=f"move:{tenant}:{time.time_ns()}",
            )
            record = await self.engine.wait(PLANE_TENANT, handle.id)
        finally:
            row = self.registry.tenants[tenant]
            if row.status == "moving":  # the run failed before the map changed
                row.status = "active"
                self.registry.put_tenant(row)
        if record.status.value != "completed":
            raise ConflictError(
                f"moving {tenant!r} did not complete ({record.status.value}):"
                f" {record.error or 'see the plane run ' + handle.id}",
                run_id=handle.id,
            )
        output: dict[str, Any] = dict(await self.engine.result(PLANE_TENANT, handle.id))
        output["run_id"] = handle.id
        return output

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
        period = money_period(now)
        if period != self.money.period:
            self.money.new_period(period)
        wallets = status.get("wallets")
        money = self.money.grant(
            cell.id,
            int(status.get("backlog", 0)),
            wallets if isinstance(wallets, Mapping) else {},
        )
        for name, grant in money.items():  # durable before it is answered
            held = self.money.holders[name][cell.id].held
            self.registry.put_money_held(name, cell.id, held, grant.seq)
        answer: dict[str, Any] = {
            "leases": [lease.to_dict() for lease in leases.values()],
            "money_leases": [grant.to_dict() for grant in money.values()],
        }
        if status.get("want_cells"):  # asked for now and then: it grows with the cells
            answer["cells"] = self.cells_view()
            answer["at"] = now
        return answer

    def cells_view(self) -> list[dict[str, Any]]:
        """Every cell as the registry and the heartbeats have it, briefly (what each cell's
        dashboard shows of its peers): state, tenants, last heartbeat; never a key."""
        return [
            {
                "id": cell.id,
                "url": cell.url,
                "status": cell.status,
                "alive": self.supervisor.alive(cell),
                "tenants": self.registry.tenants_of(cell.id),
                "max_tenants": cell.max_tenants,
                "restarts": cell.restarts,
                "heartbeat_at": self.heartbeat_at.get(cell.id),
            }
            for cell in sorted(self.registry.cells.values(), key=lambda c: c.created_at)
        ]

    def set_money_cap(self, name: str, cap_micros: int | None) -> dict[str, Any]:
        """Set (or with None remove) the money cap ``name``: micros a period (a UTC day)
        across every tenant of every cell."""
        if cap_micros is None:
            if name not in self.registry.money_caps:
                raise NotFoundError(f"no money cap {name!r}", cap=name)
            self.registry.put_money_cap(name, None)
            self.money.set_cap(None, name)
            return {"name": name, "removed": True}
        cap = MoneyCap(name, cap_micros)
        self.registry.put_money_cap(name, cap_micros)
        self.money.set_cap(cap)
        return self.money_cap_status(name)

    def money_cap_status(self, name: str) -> dict[str, Any]:
        if name not in self.registry.money_caps:
            raise NotFoundError(f"no money cap {name!r}", cap=name)
        cells: dict[str, Any] = {}
        for cell, holder in sorted(self.money.holders.get(name, {}).items()):
            report = self.heartbeats.get(cell, {}).get("wallets", {}).get(name, {})
            cells[cell] = {
                "held_micros": holder.held,
                "allowance_in_force_micros": holder.in_force,
                "spent_micros": holder.spent,
                "lease_seq": holder.in_force_seq,
                "period_reported": report.get("period"),
                "retired": holder.retired_in is not None,
            }
        return {
            "name": name,
            "cap_micros": self.registry.money_caps[name],
            "period": self.money.period,
            "held_micros": self.money.held_total(name),
            "spent_micros": sum(c["spent_micros"] for c in cells.values()),
            "cells": cells,
        }

    def money_caps_status(self) -> list[dict[str, Any]]:
        return [self.money_cap_status(n) for n in sorted(self.registry.money_caps)]

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
