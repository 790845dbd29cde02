"""Tenant isolation over the REST API: a matrix of every operation × every kind of key, and a
stateful property test that plants canaries and looks for them where other tenants can read.

**The matrix.** Its rows are every operation of the app's own ``/openapi.json`` — an endpoint
added to the app is in it without anyone writing a case — and its columns five keys: tenant A's
(``own``), tenant B's on A's objects (``other``), none, B's revoked key, and an admin key. The
expected answer of each cell follows from what the document says of the operation: public (no
security requirement), admin (tagged ``admin`` or marked "(admin key)"), or a tenant's (every
other one, acting for the key's tenant):

============  ========  ================  ==========================================================
key           public    admin operation   tenant operation
============  ========  ================  ==========================================================
own           200       403               200 for a read of A's object; otherwise not 401/403/5xx
other         200       403               on A's object: 403/404, exactly the answer for a missing
                                          one; without an object: not 401/403/5xx; never A's data
none          200       401               401
revoked       200       401               401
admin         200       not 401/403/5xx   403
============  ========  ================  ==========================================================

A path parameter the scenario has no object for (a new kind of object) fails the scenario: add
it to :data:`OBJECTS`.

**The canaries.** Seeded random walks drive three tenants through the API: they submit
runs whose inputs hold canary strings (which reach the run's state, its review task and its
result), write canaries to their agent memory, and decide their reviews with canary comments;
between steps one tenant reads everything it can read — every GET operation, on its own
objects and on the others' — and at the end every tenant's view from the command line
(``runs``, ``reviews``, ``usage``, ``audit``) and the admin's ``/metrics`` (whose labels must hold
no tenant data at all) are searched too. No canary may appear in anything a tenant other than
its owner can read.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tenantflow as tf
from tenantflow.selftest.core import Context, Row, Unavailable

__all__ = [
    "KEYS",
    "OBJECTS",
    "Operation",
    "approval_workflow",
    "expected",
    "operations",
    "run_isolation",
]

T = TypeVar("T")
KEYS = ("none", "revoked", "other", "admin", "own")
OBJECTS = (
    "run_id",
    "review_id",
    "key_id",
    "tenant_id",
    "namespace",
    "key",
    "document_id",
    "server",
    "schedule",
    "name",
    "event",
)
"""The path parameters the scenario has objects for."""
OWNED = ("run_id", "review_id", "key_id", "key", "document_id", "schedule")
"""Those that name one object of a tenant (a namespace is a name within the caller's own)."""
_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/runs"): {"workflow": "approval", "input": {"applicant": "b", "amount": 5}},
    ("POST", "/v1/runs/{run_id}/cancel"): {"reason": "isolation matrix"},
    ("POST", "/v1/reviews/{review_id}/claim"): {"reviewer": "mallory"},
    ("POST", "/v1/reviews/{review_id}/decide"): {"reviewer": "mallory", "approve": True},
    ("PUT", "/v1/memory/{namespace}/entries/{key}"): {"value": "matrix"},
    ("POST", "/v1/memory/{namespace}/documents"): {"text": "matrix document"},
    ("POST", "/v1/tenants"): {"id": "tenant-new"},
    ("PATCH", "/v1/tenants/{tenant_id}"): {"policy": {"max_active_runs": 4}},
    ("POST", "/v1/tenants/{tenant_id}/keys"): {"name": "matrix"},
    ("POST", "/v1/schedules"): {"name": "matrix", "workflow": "approval", "every_s": 3600},
    ("POST", "/v1/runs/{run_id}/signals/{name}"): {"payload": {"from": "matrix"}},
    ("POST", "/v1/events/{event}"): {"id": "matrix-event", "data": {"from": "matrix"}},
}
_MISSING = {
    "run_id": "run_0123456789abcdef01234567",
    "review_id": "rev_0123456789abcdef0123",
    "key_id": "key_0123456789abcdef01234567",
    "tenant_id": "no-such-tenant",
    "namespace": "session:nobody",
    "key": "no-such-key",
    "document_id": "no-such-document",
    "server": "no-such-server",
    "schedule": "no-such-schedule",
    "name": "no-such-signal",
    "event": "no-such-event",
}
_MUTATING = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Operation:
    """One operation of the document, and what kind it is."""

    method: str
    path: str
    kind: str  # "public", "admin" or "tenant"
    params: tuple[str, ...]  # its path parameters
    query: dict[str, Any]  # values for its required query parameters

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def operations(document: dict[str, Any]) -> list[Operation]:
    """Every operation of an OpenAPI document, classified (see the module docstring)."""
    out = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if not op.get("security"):
                kind = "public"
            elif "admin" in op.get("tags", ()) or "(admin key)" in op.get("summary", ""):
                kind = "admin"
            else:
                kind = "tenant"
            params = tuple(p["name"] for p in op.get("parameters", ()) if p["in"] == "path")
            query = {
                p["name"]: _default(p.get("schema", {}))
                for p in op.get("parameters", ())
                if p["in"] == "query" and p.get("required")
            }
            out.append(Operation(method.upper(), path, kind, params, query))
    return out


def _default(schema: dict[str, Any]) -> Any:
    kind = schema.get("type") or next(
        (s.get("type") for s in schema.get("anyOf", ()) if s.get("type") != "null"), "string"
    )
    return {"integer": 0, "number": 0, "boolean": False}.get(kind, "canary")


def names_objects(op: Operation) -> bool:
    """Whether the operation names existing objects of the caller's tenant by id (a read, a
    delete or an action on one): another tenant's id must answer as a missing one does. A
    ``PUT`` writes under a name of the caller's choosing, in its own tenant."""
    return op.method != "PUT" and any(p in OWNED for p in op.params)


def expected(op: Operation, key: str, status: int) -> bool:
    """Whether ``status`` is the right answer for ``key`` on ``op`` (see the table)."""
    if op.kind == "public":
        return status == 200
    if key in ("none", "revoked"):
        return status == 401
    if key == "admin":
        return status == 403 if op.kind == "tenant" else status not in (401, 403) and status < 500
    if op.kind == "admin":
        return status == 403
    if key == "other" and names_objects(op):
        return status in (403, 404)
    if key == "own" and op.method == "GET" and op.params:
        return status == 200
    return status not in (401, 403) and status < 500


class Portal:
    """An event loop in a thread of its own, for the engine and the app under test, so that
    synchronous callers (the random walks, the command line) can use them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(_wrap(coro), self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _wrap(coro: Awaitable[T]) -> T:
    return await coro


@dataclass
class Tenant:
    """A tenant of the scenario: its key, its objects, the canaries it planted."""

    name: str
    key: str = ""
    objects: dict[str, str] = field(default_factory=dict)
    canaries: set[str] = field(default_factory=set)
    runs: list[str] = field(default_factory=list)


class World:
    """The app on a SQLite engine, its tenants and keys (see :func:`run_isolation`)."""

    def __init__(self, directory: Path, portal: Portal, seed: int) -> None:
        self.url = f"sqlite:///{directory / 'isolation.db'}?synchronous=normal"
        self.portal = portal
        self.seed = seed
        self.tenants: dict[str, Tenant] = {}
        self.admin = ""
        self.revoked = ""
        self.requests = 0
        self.ops: list[Operation] = []

    async def open(self) -> None:
        import httpx
        from prometheus_client import CollectorRegistry

        from tenantflow.api import create_app
        from tenantflow.observability.metrics import install_metrics

        self.engine = tf.Engine.open(self.url, seed=self.seed)
        self.engine.register(approval_workflow())
        registry = CollectorRegistry()
        install_metrics(self.engine, registry)
        self.app = create_app(self.engine, registry=registry, manage_engine=False)
        await self.engine.start()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(self.app), base_url="http://api", timeout=30
        )
        _, self.admin = await self.engine.keys.create(None, name="admin")

    async def close(self) -> None:
        await self.http.aclose()
        await self.engine.close()

    async def request(
        self, method: str, path: str, key: str | None, *, body: Any = None, **extra: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.requests += 1
        return await asyncio.wait_for(
            self.http.request(
                method, path, json=body, headers=headers | extra.pop("headers", {}), **extra
            ),
            10,
        )

    async def tenant(self, name: str, **policy: Any) -> Tenant:
        r = await self.request(
            "POST", "/v1/tenants", self.admin, body={"id": name, "policy": policy}
        )
        _ok(r, 201)
        r = await self.request("POST", f"/v1/tenants/{name}/keys", self.admin)
        _ok(r, 201)
        t = self.tenants[name] = Tenant(name, key=r.json()["secret"])
        t.objects["key_id"] = r.json()["key"]["id"]
        t.objects["tenant_id"] = name
        t.objects["namespace"] = "default"
        t.objects["server"] = f"server-of-{name}"  # an MCP server name (admin routes only)
        t.objects["name"] = "approved"  # a signal's name (a name, not an object)
        t.objects["event"] = "invoice.created"  # an event's name (likewise)
        if self.has("POST", "/v1/schedules"):
            body = {"name": f"nightly-{name}", "workflow": "approval", "every_s": 86400}
            body["input"] = {"applicant": name, "amount": 1}
            r = await self.request("POST", "/v1/schedules", t.key, body=body)
            _ok(r, 201)
            t.objects["schedule"] = f"nightly-{name}"
        return t

    async def plant(self, t: Tenant, canary: str) -> None:
        """Runs, memory entries and documents of ``t`` holding ``canary``."""
        t.canaries.add(canary)
        body = {"workflow": "approval", "input": {"applicant": canary, "amount": 5000}}
        r = await self.request("POST", "/v1/runs", t.key, body=body)
        _ok(r, 201)
        t.runs.append(r.json()["id"])
        if self.has("PUT", "/v1/memory/{namespace}/entries/{key}"):
            key = f"note-{len(t.canaries)}"
            r = await self.request(
                "PUT", f"/v1/memory/default/entries/{key}", t.key, body={"value": {"c": canary}}
            )
            _ok(r, 200)
            t.objects["key"] = key
        if self.has("POST", "/v1/memory/{namespace}/documents"):
            r = await self.request(
                "POST", "/v1/memory/default/documents", t.key, body={"text": f"about {canary}"}
            )
            _ok(r, 201)
            t.objects["document_id"] = r.json()["id"]

    def has(self, method: str, path: str) -> bool:
        return any(op.method == method and op.path == path for op in self.ops)

    async def until_review(self, t: Tenant, run_id: str) -> str:
        for _ in range(500):
            r = await self.request("GET", "/v1/reviews", t.key)
            for review in r.json()["items"]:
                if review["run_id"] == run_id:
                    return str(review["id"])
            await asyncio.sleep(0.01)
        raise RuntimeError(f"run {run_id} never opened its review")

    async def readable(self, reader: Tenant, owner: Tenant) -> list[str]:
        """Every answer to every GET the reader can make, on its objects and the owner's."""
        texts = []
        for op in self.ops:
            if op.method != "GET" or op.kind != "tenant" or op.path.endswith("/events"):
                continue
            for objects in (reader.objects, owner.objects):
                if not all(p in objects for p in op.params):
                    continue
                r = await self.request("GET", _fill(op.path, objects), reader.key, params=op.query)
                texts.append(r.text)
        if reader is not owner:  # one's own stream waits for the run to end
            for run_id in owner.runs[-3:]:
                r = await self.request("GET", f"/v1/runs/{run_id}/events", reader.key)
                texts.append(r.text)
        return texts


def _fill(path: str, objects: dict[str, str]) -> str:
    for name, value in objects.items():
        path = path.replace("{" + name + "}", value)
    return path


def _ok(response: Any, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: expected {status}, got"
            f" {response.status_code} {response.text[:200]}"
        )


def approval_workflow() -> tf.Workflow:
    """Assess an application; a human reviews the large ones."""
    wf = tf.Workflow("approval", input=dict)

    @wf.step
    async def assess(ctx: tf.StepContext, input: dict[str, Any]) -> dict[str, Any]:
        return {"applicant": input.get("applicant"), "large": input.get("amount", 0) >= 1000}

    @wf.review(when=lambda assess: assess["large"])
    async def review(ctx: tf.StepContext, assess: dict[str, Any]) -> dict[str, Any]:
        return {"applicant": assess["applicant"]}

    @wf.step
    async def decide(
        ctx: tf.StepContext, assess: dict[str, Any], review: tf.ReviewDecision | None = None
    ) -> str:
        return f"{assess['applicant']}: {'declined' if review and not review.approved else 'ok'}"

    return wf


def run_isolation(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring)."""
    try:
        import fastapi  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"the server extra is needed ({exc})") from None
    portal = Portal()
    world = World(directory, portal, ctx.seed)
    try:
        portal.call(world.open())
        world.ops = operations(world.app.openapi())
        portal.call(_matrix(world, row))
        _canaries(ctx, world, row, portal)
    finally:
        portal.call(world.close())
        portal.close()
    row.note(f"{world.requests} requests in all")


async def _matrix(world: World, row: Row) -> None:
    a = await world.tenant("tenant-a", reviewer_pool="pool-of-a")
    b = await world.tenant("tenant-b")
    c = await world.tenant("tenant-c")  # what the admin key's calls change or delete
    r = await world.request("POST", "/v1/tenants/tenant-b/keys", world.admin)
    world.revoked = r.json()["secret"]
    await world.request("DELETE", f"/v1/tenants/tenant-b/keys/{r.json()['key']['id']}", world.admin)
    await world.plant(a, "canary-of-tenant-a-matrix")
    waiting = a.runs[-1]
    a.objects["review_id"] = await world.until_review(a, waiting)
    done = await world.request(
        "POST",
        "/v1/runs",
        a.key,
        body={"workflow": "approval", "input": {"applicant": "x", "amount": 1}},
    )
    a.objects["run_id"] = done.json()["id"]  # a finished run: its event stream ends
    await world.engine.wait("tenant-a", a.objects["run_id"])
    markers = {
        *a.canaries,
        *a.runs,
        a.objects["run_id"],
        a.objects["review_id"],
        a.key,
        "pool-of-a",
    }
    unknown = sorted({p for op in world.ops for p in op.params} - set(OBJECTS))
    row.check(not unknown, f"path parameters without an object in the matrix: {unknown}")
    secrets = {"own": a.key, "other": b.key, "revoked": world.revoked, "admin": world.admin}
    calls = cross = 0
    # Reads first, writes last, the own key last of all: nothing is gone before it is read.
    order = sorted(
        world.ops,
        key=lambda op: (op.method in _MUTATING, op.method == "PUT", op.method == "DELETE"),
    )
    before = await world.readable(a, a)
    for key in KEYS:
        if key == "own":  # what the other keys tried changed nothing of A's
            changed = sum(x != y for x, y in zip(before, await world.readable(a, a), strict=True))
            cross += changed
            row.check(changed == 0, f"{changed} of tenant A's answers changed under other keys")
        # The admin key acts on tenant C (it may change or delete it); the others on A's objects.
        objects = {**_MISSING, **c.objects} if key == "admin" else a.objects
        seen = markers - {"pool-of-a"} if key == "admin" else markers  # the admin sees policies
        for op in order:
            if not all(p in objects for p in op.params):
                row.check(False, f"{op.label}: no object for {op.params}")
                continue
            body = _BODIES.get((op.method, op.path), {} if op.method in _MUTATING else None)
            path = _fill(op.path, objects)
            r = await world.request(op.method, path, secrets.get(key), body=body, params=op.query)
            calls += 1
            answer = _masked(r.text, objects)
            good = expected(op, key, r.status_code)
            leaked = key != "own" and any(m in answer for m in seen)
            if good and key == "other" and names_objects(op):
                twin = await world.request(
                    op.method, _fill(op.path, _MISSING), b.key, body=body, params=op.query
                )
                good = (twin.status_code, _masked(twin.text, _MISSING)) == (r.status_code, answer)
            if good and key in ("none", "revoked") and op.kind != "public":
                good = r.headers.get("www-authenticate") == "Bearer"
            if not good or leaked:
                cross += key != "own"
                row.check(False, f"{key} key, {op.label}: {r.status_code} {r.text[:160]}")
    row.cross_tenant = (row.cross_tenant or 0) + cross
    row.note(f"matrix: {len(world.ops)} operations × {len(KEYS)} keys, {calls} calls")


def _masked(text: str, ids: dict[str, str]) -> str:
    """``text`` with the ids the request named replaced by their names (an error repeats the
    id it was asked for)."""
    for name, value in sorted(ids.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(value, f"<{name}>")
    return text


_TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789"
_WALK_STEPS = 8  # operations per walk; the profile says how many walks


def _canaries(ctx: Context, world: World, row: Row, portal: Portal) -> None:
    # Seeded random walks of plant / decide / read (no test library: a user-facing command
    # must run on a plain install with the server extra).
    rng = random.Random(ctx.seed)
    names = ("ta", "tb", "tc")
    for name in names:
        portal.call(world.tenant(name))
    tenants = [world.tenants[n] for n in names]
    leaks: list[str] = []
    reads = [0]

    def token() -> str:
        return "".join(rng.choice(_TOKEN) for _ in range(rng.randint(8, 12)))

    def look(reader: Tenant, texts: list[str], where: str) -> None:
        reads[0] += len(texts)
        for other in tenants:
            if other is reader:
                continue
            found = {c for c in other.canaries for t in texts if c in t}
            if found:
                leaks.append(f"{reader.name} read {sorted(found)[:2]} of {other.name} in {where}")

    for _ in range(ctx.profile.isolation_examples):
        for _ in range(_WALK_STEPS):
            action, who = rng.randrange(3), rng.choice(tenants)
            if action == 0:  # plant a canary in the tenant's runs, memory and audit log
                portal.call(world.plant(who, f"cnry-{who.name}-{token()}"))
            elif action == 1:  # decide a review with a canary in its comment
                canary = f"cnry-{who.name}-{token()}"
                who.canaries.add(canary)
                portal.call(_decide(world, who, canary, rng.random() < 0.5))
            else:  # read everything the reader can see of an owner's objects
                owner = rng.choice(tenants)
                look(who, portal.call(world.readable(who, owner)), "the API")
    for reader in tenants:
        look(reader, _cli_views(ctx, world, reader), "the command line")
    metrics = portal.call(world.request("GET", "/metrics", world.admin)).text
    labels = [c for t in tenants for c in t.canaries if c in metrics]
    row.check(not labels, f"tenant data in metrics labels: {labels[:3]}")
    row.cross_tenant = (row.cross_tenant or 0) + len(leaks) + len(labels)
    row.check(not leaks, "; ".join(leaks[:3]))
    planted = sum(len(t.canaries) for t in tenants)
    row.runs = sum(len(t.runs) for t in world.tenants.values())
    row.note(f"canaries: {planted} planted by 3 tenants, searched for in {reads[0]} answers")


async def _decide(world: World, who: Tenant, canary: str, approve: bool) -> None:
    r = await world.request("GET", "/v1/reviews", who.key, params={"status": "pending"})
    items = r.json()["items"]
    if items:
        body = {"reviewer": "alice", "approve": approve, "comment": canary}
        r = await world.request("POST", f"/v1/reviews/{items[0]['id']}/decide", who.key, body=body)
        who.objects["review_id"] = items[0]["id"]


def _cli_views(ctx: Context, world: World, reader: Tenant) -> list[str]:
    """What the command line shows the reader from the store."""
    db = world.url
    commands = [
        ["runs", "list", "--tenant", reader.name, "--json"],
        ["reviews", "list", "--tenant", reader.name, "--all", "--json"],
        ["usage", "--tenant", reader.name, "--json"],
        ["audit", "log", "--tenant", reader.name],
    ]
    return [ctx.run_cli(["--db", db, *command]) for command in commands]
