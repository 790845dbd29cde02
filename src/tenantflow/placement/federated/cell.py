"""A cell: one process, the embedded engine and the REST API of the tenants assigned to it.

A cell holds every bit of its tenants' execution state in its own store (one SQLite file by
default, or a PostgreSQL database/schema of its own), with its own slots, queues, review pools
and budgets. It serves the ordinary REST API (``/v1/...``: runs, reviews, audit, SSE, metrics)
for its tenants' keys, the web dashboard at ``/ui`` (its tenants' pages; for the cell's admin
key, its slots, breakers and placement: this cell, its plane, and every cell as the plane's
registry had it at the last heartbeat), and a small internal API for the plane under
``/cell/v1`` that needs the cell's admin key:

* ``POST /cell/v1/tenants`` places a tenant here (refused with 409 once the cell holds
  ``max_tenants``; placing a tenant that is already here answers it again: provisioning steps
  are retried);
* ``PUT /cell/v1/tenants/{id}/policy`` applies a versioned policy document: validated, applied
  to new admissions at once and to running runs at their next step boundary, written to a local
  file (the last good copy), and acknowledged ``{tenant, version}`` — or refused with a 422 and
  the error, the last good copy staying in force; an older version than the one applied is
  refused with 409, the same version is acknowledged again;
* ``POST /cell/v1/tenants/{id}/drain`` refuses the tenant's new submissions (409), and
  ``GET /cell/v1/tenants/{id}`` says how many of its runs are unfinished;
* ``PUT /cell/v1/moved`` leaves a redirect marker: requests with a key of a moved tenant are
  answered ``307`` to where it lives now;
* ``GET /cell/v1/status`` is the heartbeat's body.

Every ``heartbeat_s`` the cell posts that status to the plane (queue depth, running steps,
unfinished runs, the policy version of each tenant, its leases) and applies the leases the
plane answers with (see :mod:`.quota`), and the wallets of the money caps: it reports each
(spent, allowance in force, lease seq) and takes the allowances answered (see
:mod:`.wallets`). The plane is not in the data path: when it does not answer, the cell goes on
— its policies are in its store and its local files, its leases decay, its wallets keep the
allowance they hold (never more).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantflow.api.auth import Admin
from tenantflow.api.errors import error_response
from tenantflow.domain.keys import (
    ApiKeyRecord,
    CreateApiKey,
    parse_key,
    secret_digest,
    shown_prefix,
)
from tenantflow.domain.policy import Policy, RateLimit
from tenantflow.domain.records import RunStatus
from tenantflow.engine.plane import MemberHealth
from tenantflow.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    TenantflowError,
)
from tenantflow.placement.federated.quota import Lease, decayed
from tenantflow.placement.federated.wallets import Wallets

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from tenantflow.engine.engine import Engine

__all__ = [
    "ADMIN_KEY_ENV",
    "QUOTAS_ENV",
    "Cell",
    "CellOptions",
    "build_cell_app",
    "install_admin_key",
    "policy_for",
]

log = logging.getLogger("tenantflow.cell")

ADMIN_KEY_ENV = "TENANTFLOW_CELL_ADMIN_KEY"
"""The cell's admin key (a key string the plane made), passed in the environment, never argv."""

QUOTAS_ENV = "TENANTFLOW_CELL_QUOTAS"
"""Comma-separated resources under a global limit: denied here until the plane leases a share."""

PEERS_EVERY_S = 5.0
"""How often a cell asks the plane, in a heartbeat, for its view of every cell."""

_UNFINISHED = ("queued", "running", "paused", "compensating", "cancelling")
_SUBMIT = "/v1/runs"


def policy_for(document: Mapping[str, Any], known_regions: Sequence[str] = ()) -> Policy:
    """The policy a document describes: ``{"tier": ..., "fields": {...}}`` (a tier preset with
    fields overridden).

    Raises:
        ConfigurationError: an unknown tier or an invalid field.
    """
    tier = document.get("tier", "standard")
    fields = document.get("fields", {})
    if not isinstance(tier, str) or not isinstance(fields, Mapping):
        raise ConfigurationError(
            "a policy document is {'tier': <name>, 'fields': {<policy field>: <value>}}",
            field="policy",
        )
    return Policy.for_tier(tier, known_regions=known_regions or None, **dict(fields))


async def install_admin_key(engine: Engine, key: str) -> str:
    """Store ``key`` (a key string) as an admin key of the started ``engine``, once; its id.

    Raises:
        ConfigurationError: ``key`` is not a key string.
    """
    key_id = parse_key(key)
    if key_id is None:
        raise ConfigurationError(f"{ADMIN_KEY_ENV} is not a tenantflow key string", field="key")
    try:
        await engine.store.get_api_key(key_id)
        return key_id
    except NotFoundError:
        pass
    record = ApiKeyRecord(
        id=key_id,
        tenant_id=None,
        name="plane",
        prefix=shown_prefix(key),
        secret_sha256=secret_digest(key),
        created_at=engine.clock.now(),
        created_by="plane",
    )
    [result] = await engine.store.apply([CreateApiKey(record)])
    if isinstance(result, BaseException):
        raise result
    return key_id


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


@dataclass(frozen=True)
class CellOptions:
    """How a cell runs (``tenantflow cell``'s options)."""

    cell_id: str
    url: str  # where clients reach it (sent to the plane)
    state_dir: Path  # policies, leases and redirect markers: the cell's local copies
    max_tenants: int = 1
    plane_url: str | None = None
    heartbeat_s: float = 1.0
    quota_resources: tuple[str, ...] = ()


@dataclass
class Cell:
    """The cell's local state: applied policy versions, drains, redirect markers, leases."""

    options: CellOptions
    engine: Engine
    admin_key: str
    versions: dict[str, int] = field(default_factory=dict)
    draining: set[str] = field(default_factory=set)
    moved: dict[str, str] = field(default_factory=dict)  # key id -> new base URL
    released: dict[str, dict[str, Any]] = field(default_factory=dict)  # tenants being moved away
    leases: dict[str, Lease] = field(default_factory=dict)
    wallets: Wallets | None = None  # the money caps' wallets (loaded by :meth:`load`)
    plane_ok: bool = False
    last_beat: float = 0.0
    started_at: float = field(default_factory=time.time)
    peers: list[dict[str, Any]] = field(default_factory=list)  # the plane's view of the cells
    peers_at: float | None = None  # the plane's time of that view
    _peers_asked: float = 0.0

    # -- local files --------------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        return self.options.state_dir

    def load(self) -> None:
        """Read the local copies (after a restart, with or without the plane)."""
        self.versions = {
            t: int(v["version"])
            for t, v in _read_json(self._dir / "policies.json", {}).items()
            if isinstance(v, dict)
        }
        self.draining = set(_read_json(self._dir / "draining.json", []))
        self.moved = dict(_read_json(self._dir / "moved.json", {}))
        self.leases = {
            r: Lease.from_dict(d) for r, d in _read_json(self._dir / "leases.json", {}).items()
        }
        self.wallets = Wallets(self._dir / "wallets.json")
        self.engine.gateway.spend_guard = self.wallets

    def _save_policies(self, documents: dict[str, Any]) -> None:
        _write_json(self._dir / "policies.json", documents)

    def policies(self) -> dict[str, Any]:
        data: dict[str, Any] = _read_json(self._dir / "policies.json", {})
        return data

    # -- leases -------------------------------------------------------------------------------

    def apply_leases(self, now: float | None = None) -> None:
        """Set the gateway's platform limits from the leases (decayed when expired); a resource
        under a global limit without a lease is denied (burst 0)."""
        now = time.time() if now is None else now
        limits = self.engine.gateway.platform_limits
        if not isinstance(limits, LeasedLimits):
            limits = LeasedLimits(limits, self.options.heartbeat_s)
            self.engine.gateway.platform_limits = limits
        for resource in self.options.quota_resources:
            if resource not in self.leases:
                limits[resource] = _limit(0.0, 0)
        for resource, lease in self.leases.items():
            rate, burst = decayed(lease, now)
            limits[resource] = _limit(rate, burst)

    def take_leases(self, granted: Sequence[Mapping[str, Any]]) -> None:
        self.leases = {str(d["resource"]): Lease.from_dict(d) for d in granted}
        _write_json(self._dir / "leases.json", {r: x.to_dict() for r, x in self.leases.items()})
        self.apply_leases()

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        engine = self.engine
        active: dict[str, int] = {}
        for runtime in engine.runtimes.values():
            for run in runtime.active.values():
                active[run.tenant_id] = active.get(run.tenant_id, 0) + 1
        tenants = {
            info.id: {
                "queued_steps": engine.dispatcher.queued_by.get(info.id, 0),
                "running_steps": engine.dispatcher.running_by.get(info.id, 0),
                "active_runs": active.get(info.id, 0),
                "policy_version": self.versions.get(info.id, 0),
                "draining": info.id in self.draining,
            }
            for info in engine.tenants.list()
        }
        now = time.time()
        return {
            "cell": self.options.cell_id,
            "url": self.options.url,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "at": now,
            "max_tenants": self.options.max_tenants,
            "tenants": tenants,
            "backlog": sum(t["queued_steps"] + t["running_steps"] for t in tenants.values()),
            "leases": {
                r: {**x.to_dict(), "in_force": list(decayed(x, now))}
                for r, x in self.leases.items()
            },
            "plane_reachable": self.plane_ok,
            "wallets": self.wallets.reports() if self.wallets is not None else {},
            "money_refused": self.wallets.refused if self.wallets is not None else 0,
        }

    # -- heartbeat ----------------------------------------------------------------------------

    async def heartbeat(self, client: httpx.AsyncClient) -> None:
        """Post the status to the plane once; take the leases it answers with."""
        assert self.options.plane_url is not None
        try:
            # The plane's view of the cells (for the dashboard) is asked for now and then only:
            # it grows with the number of cells, and every cell beats.
            want = self.peers_at is None or time.time() - self._peers_asked >= PEERS_EVERY_S
            if want:
                self._peers_asked = time.time()
            answer = await client.post(
                f"{self.options.plane_url}/plane/v1/heartbeat",
                json={**self.status(), "want_cells": want},
                headers={"Authorization": f"Bearer {self.admin_key}"},
            )
        except httpx.HTTPError:
            self.plane_ok = False
        else:
            self.plane_ok = answer.is_success
            if answer.is_success:
                self.last_beat = time.time()
                body = answer.json()
                cells = body.get("cells")
                if isinstance(cells, list):
                    self.peers = [c for c in cells if isinstance(c, dict)]
                    at = body.get("at")
                    self.peers_at = float(at) if isinstance(at, int | float) else self.last_beat
                self.take_leases(body.get("leases", []))
                if self.wallets is not None:
                    self.wallets.take(body.get("money_leases", []))
        self.apply_leases()  # expired leases decay even while the plane is away

    # -- what the dashboard shows of the placement ------------------------------------------

    def describe(self) -> dict[str, Any]:
        """This cell and its plane (the dashboard's placement facts)."""
        o = self.options
        return {
            "cell": o.cell_id,
            "cell url": o.url,
            "plane": o.plane_url or "none (not placed by a plane)",
            "tenants here": f"{len(self.engine.tenants.list())} of {o.max_tenants}",
            "plane reachable": "yes" if self.plane_ok else "no",
            "last heartbeat answered (UTC)": _utc(self.last_beat or None),
            "plane's view of the cells as of (UTC)": _utc(self.peers_at),
        }

    async def members(self) -> list[MemberHealth]:
        """The plane, and every cell as the plane's registry had it at the last heartbeat
        (this cell from its own facts until the plane has answered)."""
        o = self.options
        late_s = max(3 * o.heartbeat_s, 2.0)
        out: list[MemberHealth] = []
        if o.plane_url:
            state = "up" if self.plane_ok else "down"
            every: dict[str, Any] = {"heartbeat every (s)": o.heartbeat_s}
            out.append(MemberHealth("plane", o.plane_url, state, self.last_beat or None, every))
        seen_self = False
        view_at = self.peers_at if self.peers_at is not None else time.time()
        for peer in self.peers:
            beat = peer.get("heartbeat_at")
            beat_at = float(beat) if isinstance(beat, int | float) else None
            if not peer.get("alive") or peer.get("status") == "stopped":
                state = "down"
            elif beat_at is None or view_at - beat_at > late_s:
                state = "late"
            else:
                state = "up"
            tenants = [str(t) for t in peer.get("tenants") or ()]
            cell_id = str(peer.get("id"))
            seen_self = seen_self or cell_id == o.cell_id
            detail: dict[str, Any] = {
                "url": str(peer.get("url")),
                "status": str(peer.get("status")),
                "tenants": ", ".join(tenants) or "-",
                "held": f"{len(tenants)} of {peer.get('max_tenants')}",
                "restarts": peer.get("restarts", 0),
                **({"this cell": "yes"} if cell_id == o.cell_id else {}),
            }
            out.append(MemberHealth("cell", cell_id, state, beat_at, detail))
        if not seen_self:
            tenants = [t.id for t in self.engine.tenants.list()]
            detail = {
                "url": o.url,
                "tenants": ", ".join(tenants) or "-",
                "held": f"{len(tenants)} of {o.max_tenants}",
                "this cell": "yes",
            }
            out.append(MemberHealth("cell", o.cell_id, "up", time.time(), detail))
        return out

    async def beat_forever(self) -> None:
        async with httpx.AsyncClient(timeout=max(1.0, 2 * self.options.heartbeat_s)) as client:
            while True:
                try:
                    await self.heartbeat(client)
                except Exception:  # a heartbeat never brings the cell down
                    log.exception("heartbeat failed")
                await asyncio.sleep(self.options.heartbeat_s)


def _utc(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


_DENIED = RateLimit.model_construct(count=1, window_s=1e9, burst=0)
"""A lease of nothing: :class:`LeasedLimits` refuses the resource before any bucket is asked."""


def _limit(rate_per_s: float, burst: int) -> RateLimit:
    """The platform limit a lease of ``rate_per_s`` and ``burst`` stands for (validation is
    skipped: a lease's rate need not be a whole count per window)."""
    if rate_per_s <= 0 or burst < 1:
        return _DENIED
    return RateLimit.model_construct(count=1, window_s=1.0 / rate_per_s, burst=burst)


class LeasedLimits(dict[str, RateLimit]):
    """The gateway's platform limits in a cell: a resource whose lease is nothing (none yet,
    or a zero share) is refused as rate-limited, to be retried once a lease arrives."""

    def __init__(self, base: Mapping[str, RateLimit], retry_after_s: float) -> None:
        super().__init__(base)
        self.retry_after_s = retry_after_s

    def get(self, resource: str, default: Any = None) -> Any:
        limit = super().get(resource, default)
        if limit is _DENIED:
            raise RateLimitedError(
                f"this cell holds no lease of the global limit on {resource!r} yet",
                resource=resource,
                retry_after_s=self.retry_after_s,
            )
        return limit


# -- the internal API -------------------------------------------------------------------------


class PlaceIn(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    org_id: str | None = None
    document: dict[str, Any] = Field(default_factory=dict)
    version: int = Field(default=1, ge=1)


class PolicyIn(BaseModel):
    version: int = Field(ge=1)
    document: dict[str, Any]


class MovedIn(BaseModel):
    tenant: str
    url: str
    key_ids: list[str]


class ReleaseIn(BaseModel):
    location: str  # where the tenant will be served (the target cell's URL)
    drain_timeout_s: float = Field(default=30.0, gt=0, le=3600)


class FinishIn(BaseModel):
    key_ids: list[str]  # the tenant's keys, answered 307 to ``location`` from now on


class CancelIn(BaseModel):
    reason: str = ""


class AdoptIn(BaseModel):
    key_ids: list[str] = Field(default_factory=list)  # redirect markers to lift
    version: int = Field(default=0, ge=0)  # the policy version that moved with the tenant
    document: dict[str, Any] = Field(default_factory=dict)


async def _cell_of(request: Request) -> Cell:
    cell: Cell = request.app.state.cell
    return cell


CellDep = Annotated[Cell, Depends(_cell_of)]


def cell_router() -> APIRouter:
    router = APIRouter(prefix="/cell/v1", tags=["cell"], include_in_schema=False)

    @router.get("/status")
    async def status(cell: CellDep, admin: Admin) -> dict[str, Any]:
        return cell.status()

    @router.post("/tenants", status_code=201)
    async def place(body: PlaceIn, cell: CellDep, admin: Admin) -> dict[str, Any]:
        engine = cell.engine
        existing = engine.tenants.cached(body.id)
        if existing is None:
            if len(engine.tenants.list()) >= cell.options.max_tenants:
                raise ConflictError(
                    f"cell {cell.options.cell_id!r} is full ({cell.options.max_tenants} tenants)",
                    cell=cell.options.cell_id,
                )
            policy = policy_for(body.document, sorted(engine.tenants.known_regions))
            await engine.tenants.create(
                body.id, org_id=body.org_id, policy=policy, actor="plane:provision"
            )
            await _record_version(cell, body.id, body.version, body.document)
        info = await engine.tenants.get(body.id)
        return {
            "tenant": info.id,
            "version": cell.versions.get(info.id, 0),
            "tenant_info": _tenant_json(info),
        }

    @router.put("/tenants/{tenant_id}/policy")
    async def push_policy(
        tenant_id: str, body: PolicyIn, cell: CellDep, admin: Admin
    ) -> dict[str, Any]:
        engine = cell.engine
        info = await engine.tenants.get(tenant_id)
        current = cell.versions.get(tenant_id, 0)
        if body.version < current:
            raise ConflictError(
                f"policy version {body.version} of {tenant_id!r} is older than the one applied"
                f" ({current})",
                tenant=tenant_id,
                version=current,
            )
        if body.version > current:
            policy = policy_for(body.document, sorted(engine.tenants.known_regions))
            fields = policy.model_dump()
            fields.pop("tier", None)
            info = await engine.tenants.update(
                tenant_id, actor=f"plane:policy:v{body.version}", tier=policy.tier, **fields
            )
            await _record_version(cell, tenant_id, body.version, body.document)
        return {
            "tenant": tenant_id,
            "version": body.version,
            "applied_at": time.time(),
            "tenant_info": _tenant_json(info),
        }

    @router.post("/tenants/{tenant_id}/drain")
    async def drain(tenant_id: str, cell: CellDep, admin: Admin) -> dict[str, Any]:
        engine = cell.engine
        await engine.tenants.get(tenant_id)
        cell.draining.add(tenant_id)
        _write_json(cell._dir / "draining.json", sorted(cell.draining))
        return await _tenant_state(cell, tenant_id)

    @router.get("/tenants/{tenant_id}")
    async def tenant_state(tenant_id: str, cell: CellDep, admin: Admin) -> dict[str, Any]:
        await cell.engine.tenants.get(tenant_id)
        return await _tenant_state(cell, tenant_id)

    # -- a live move (tenantflow.placement.move's four calls, each where its part lives) -----

    @router.post("/tenants/{tenant_id}/release")
    async def release(
        tenant_id: str, body: ReleaseIn, cell: CellDep, admin: Admin
    ) -> dict[str, Any]:
        """Fence the tenant, let its running attempts finish, stop driving it: its rows are at
        rest in this cell's store for the copy. Asked again (the plane retried), the same
        answer."""
        from datetime import timedelta

        from tenantflow.placement.move import release_tenant

        done = cell.released.get(tenant_id)
        if done is None:
            released = await release_tenant(
                cell.engine,
                tenant_id,
                location=body.location,
                drain_timeout=timedelta(seconds=body.drain_timeout_s),
            )
            done = {
                "tenant": tenant_id,
                "store": released.store.url,
                "drained": released.drained,
                "stopped": released.stopped,
                "fenced_at": released.fenced_at,
            }
            cell.released[tenant_id] = done
        return done

    @router.post("/tenants/{tenant_id}/finish")
    async def finish(tenant_id: str, body: FinishIn, cell: CellDep, admin: Admin) -> dict[str, Any]:
        """The copy committed: forget the tenant, and answer its keys with 307 to where it
        lives now."""
        from tenantflow.placement.move import finish_release, moved_to

        fence = moved_to(cell.engine, tenant_id)
        if fence is None or fence.location is None:
            raise ConflictError(f"tenant {tenant_id!r} is not being moved", tenant=tenant_id)
        await finish_release(cell.engine, tenant_id)
        cell.released.pop(tenant_id, None)
        for key_id in body.key_ids:
            cell.moved[key_id] = fence.location.rstrip("/")
        _write_json(cell._dir / "moved.json", cell.moved)
        documents = cell.policies()
        if documents.pop(tenant_id, None) is not None:
            cell._save_policies(documents)
        cell.versions.pop(tenant_id, None)
        return {"tenant": tenant_id, "location": fence.location, "keys": len(body.key_ids)}

    @router.post("/tenants/{tenant_id}/cancel")
    async def cancel(tenant_id: str, body: CancelIn, cell: CellDep, admin: Admin) -> dict[str, Any]:
        """The copy did not commit (it was undone): serve the tenant again."""
        from tenantflow.placement.move import cancel_release

        await cancel_release(
            cell.engine, tenant_id, actor="plane:move", reason=body.reason or "cancelled"
        )
        cell.released.pop(tenant_id, None)
        return {"tenant": tenant_id, "serving": True}

    @router.post("/tenants/{tenant_id}/adopt")
    async def adopt(tenant_id: str, body: AdoptIn, cell: CellDep, admin: Admin) -> dict[str, Any]:
        """The copy committed into this cell's store: load the tenant, its unfinished runs and
        open reviews, and lift the redirect markers of an earlier move away."""
        from tenantflow.placement.move import adopt_tenant

        engine = cell.engine
        others = [t for t in engine.tenants.list() if t.id != tenant_id]
        if len(others) >= cell.options.max_tenants:
            raise ConflictError(
                f"cell {cell.options.cell_id!r} is full ({cell.options.max_tenants} tenants)",
                cell=cell.options.cell_id,
            )
        await adopt_tenant(engine, tenant_id)
        for key_id in body.key_ids:
            cell.moved.pop(key_id, None)
        _write_json(cell._dir / "moved.json", cell.moved)
        if body.version:
            await _record_version(cell, tenant_id, body.version, body.document)
        info = await engine.tenants.get(tenant_id)
        return {"tenant": tenant_id, "tenant_info": _tenant_json(info)}

    @router.put("/moved")
    async def moved(body: MovedIn, cell: CellDep, admin: Admin) -> dict[str, Any]:
        for key_id in body.key_ids:
            cell.moved[key_id] = body.url.rstrip("/")
        _write_json(cell._dir / "moved.json", cell.moved)
        return {"tenant": body.tenant, "keys": len(body.key_ids)}

    return router


async def _record_version(cell: Cell, tenant: str, version: int, document: Any) -> None:
    documents = cell.policies()
    documents[tenant] = {"version": version, "document": document}
    cell._save_policies(documents)  # the last good copy, after it applied
    cell.versions[tenant] = version


async def _tenant_state(cell: Cell, tenant_id: str) -> dict[str, Any]:
    store = cell.engine.store_for_tenant(tenant_id)
    unfinished = 0
    for status in _UNFINISHED:
        unfinished += len(await store.list_runs(tenant_id, status=RunStatus(status), limit=1000))
    return {
        "tenant": tenant_id,
        "unfinished_runs": unfinished,
        "draining": tenant_id in cell.draining,
        "policy_version": cell.versions.get(tenant_id, 0),
    }


def _tenant_json(info: Any) -> dict[str, Any]:
    from tenantflow.api.schemas import TenantOut

    return TenantOut.of(info).model_dump(mode="json")


class CellGuard:
    """Answers for a cell before routing: a moved tenant's key gets ``307`` to its new place; a
    draining tenant's submission gets 409."""

    def __init__(self, app: ASGIApp, *, cell: Callable[[], Cell | None]) -> None:
        self.app = app
        self.cell = cell

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cell = self.cell() if scope["type"] == "http" else None
        if cell is None or not (cell.moved or cell.draining):
            await self.app(scope, receive, send)
            return
        auth = Headers(scope=scope).get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        key_id = parse_key(key) if key else None
        target = cell.moved.get(key_id) if key_id else None
        if target is not None:
            query = scope.get("query_string", b"").decode("latin-1")
            location = target + scope["path"] + (f"?{query}" if query else "")
            response = error_response(
                307,
                "moved",
                f"this tenant now lives at {target}",
                headers={"Location": location},
                location=location,
            )
            await response(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"] == _SUBMIT and key:
            try:
                principal = await cell.engine.keys.authenticate(key)
            except TenantflowError:
                principal = None
            if principal is not None and principal.tenant_id in cell.draining:
                response = error_response(
                    409,
                    "conflict",
                    f"tenant {principal.tenant_id!r} is being drained: it takes no new runs",
                    tenant=principal.tenant_id,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_cell_app(
    engine: Engine,
    options: CellOptions,
    *,
    admin_key: str,
    setups: Sequence[Callable[[Any], Any]] = (),
    registry: CollectorRegistry | None = None,
    max_body_bytes: int = 1_048_576,
    started: Sequence[Callable[[Any], None]] = (),
) -> FastAPI:
    """The cell's ASGI app: the REST API of ``engine`` (embedded, executing) and its dashboard
    at ``/ui`` (for its tenants' keys and the cell's admin key), the internal API under
    ``/cell/v1``, and the heartbeat to the plane while it runs."""
    from tenantflow.api import create_app

    cell = Cell(options, engine, admin_key)
    app = create_app(
        engine,
        registry=registry,
        setup=setups,
        max_body_bytes=max_body_bytes,
        dashboard=True,
        started=started,
    )
    app.include_router(cell_router())
    app.add_middleware(CellGuard, cell=lambda: cell)
    app.state.cell = cell
    # The dashboard (/ui) reads the engine; the cell says what it is and who its peers are.
    engine.plane.extend(mode="federated cell", describe=cell.describe, members=cell.members)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        async with inner(app_):
            await install_admin_key(engine, admin_key)
            cell.load()
            cell.apply_leases()
            beat: asyncio.Task[None] | None = None
            if options.plane_url:
                beat = asyncio.get_running_loop().create_task(cell.beat_forever())
            try:
                yield
            finally:
                if beat is not None:
                    beat.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beat

    app.router.lifespan_context = lifespan
    return app
