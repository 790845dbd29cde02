"""Tenant isolation over HTTP: every operation of the app's OpenAPI document, called with
tenant B's key on tenant A's objects (A's real run, review and key ids), answers 403 or 404 —
exactly like an object that does not exist — and never carries A's data; without a key or with
a revoked one, every /v1 operation answers 401.

The list of operations comes from ``/openapi.json``: an operation added to the app without a
case here fails the walk, so no endpoint can escape it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from api_harness import Api, bearer, serving

pytestmark = pytest.mark.timeout(60)

MISSING = {
    "run_id": "run_0123456789abcdef01234567",
    "review_id": "rev_0123456789abcdef0123",
    "key_id": "key_0123456789abcdef01234567",
    "tenant_id": "no-such-tenant",
    "namespace": "user:nobody-at-all",
    "key": "no-such-memory-key",
    "document_id": "no-such-document",
    "name": "approved",
    "event": "tally.requested",
    "server": "no-such-server",
    "schedule": "no-such-schedule",
}
SECRET_APPLICANT = "applicant-of-tenant-a-7f3c"
A_POOL = "tenant-a-private-pool"
A_IDEMPOTENCY_KEY = "order-of-tenant-a"
# A's memory: names B may choose too (so B's own answers may repeat them), and A's content.
A_NAMESPACE = "user:alice-at-acorp"
A_MEMORY_KEY = "profile-at-acorp"
A_DOCUMENT_ID = "document-at-acorp"
A_MEMORY_SECRET = "memorycanary5b1d"
A_SCHEDULE = "a-schedule-canary"
NAMES = ("namespace", "key", "document_id", "name", "event")
A_EVENT_ID = "invoice-0042"  # an id B may send too

Expect = Literal["denied", "own", "public"]


@dataclass(frozen=True)
class Case:
    """How to call one operation as tenant B: ``denied`` must answer 403/404 exactly as for a
    missing object; ``own`` acts on B's own tenant (2xx allowed) and must show none of A."""

    expect: Expect
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


SUBMIT = {"workflow": "tally", "input": 1}
CASES: dict[tuple[str, str], list[Case]] = {
    ("GET", "/healthz"): [Case("public")],
    ("GET", "/readyz"): [Case("public")],
    ("GET", "/metrics"): [Case("denied")],  # admin only: labelled by tenant
    # admin
    ("POST", "/v1/tenants"): [Case("denied", body={"id": "tenant-c"})],
    ("GET", "/v1/tenants"): [Case("denied")],
    ("GET", "/v1/tenants/{tenant_id}"): [Case("denied")],
    ("PATCH", "/v1/tenants/{tenant_id}"): [Case("denied", body={"policy": {"max_active_runs": 0}})],
    ("DELETE", "/v1/tenants/{tenant_id}"): [Case("denied", params={"purge_audit": True})],
    ("POST", "/v1/tenants/{tenant_id}/keys"): [Case("denied", body={"name": "stolen"})],
    ("GET", "/v1/tenants/{tenant_id}/keys"): [Case("denied")],
    ("POST", "/v1/tenants/{tenant_id}/keys/{key_id}/rotate"): [Case("denied")],
    ("DELETE", "/v1/tenants/{tenant_id}/keys/{key_id}"): [Case("denied")],
    ("GET", "/v1/workers"): [Case("denied")],  # the cluster: admin only
    ("GET", "/v1/operator/overview"): [Case("denied"), Case("denied", params={"top": 100})],
    ("POST", "/v1/admin/tenants/{tenant_id}/mcp-servers"): [
        Case("denied", body={"name": "evil", "command": "sh", "args": ["-c", "id"]})
    ],
    ("GET", "/v1/admin/tenants/{tenant_id}/mcp-servers"): [Case("denied")],
    ("DELETE", "/v1/admin/tenants/{tenant_id}/mcp-servers/{server}"): [Case("denied")],
    # B's own tenant: collections, never A's rows
    ("GET", "/v1/tenant"): [Case("own")],
    ("GET", "/v1/workflows"): [Case("own")],  # the platform's definitions, no tenant's data
    ("GET", "/v1/schedules"): [Case("own")],
    ("POST", "/v1/schedules"): [
        Case("own", body={"name": "b-own", "workflow": "tally", "input": 1, "cron": "0 0 1 1 *"})
    ],
    # A's schedule by name: B has none of that name
    ("POST", "/v1/schedules/{schedule}/pause"): [Case("denied")],
    ("POST", "/v1/schedules/{schedule}/resume"): [Case("denied")],
    ("DELETE", "/v1/schedules/{schedule}"): [Case("denied")],
    ("GET", "/v1/usage"): [Case("own")],
    ("GET", "/v1/budget"): [Case("own")],
    ("GET", "/v1/audit"): [Case("own"), Case("own", params={"after": 0, "limit": 1000})],
    ("GET", "/v1/audit/verify"): [Case("own")],
    ("GET", "/v1/reviews"): [
        Case("own"),
        Case("own", params={"pool": A_POOL}),
        Case("own", params={"status": ["pending", "claimed", "approved", "rejected"]}),
    ],
    ("GET", "/v1/runs"): [
        Case("own"),
        Case("own", params={"workflow": "approval"}),
        Case("denied", params={"cursor": "{run_id}"}),  # A's run as a paging cursor
    ],
    # Reusing A's idempotency key creates B's own run; it never returns A's.
    ("POST", "/v1/runs"): [
        Case("own", body=SUBMIT, headers={"Idempotency-Key": A_IDEMPOTENCY_KEY}),
        # A delayed start under A's key is B's own one-shot schedule.
        Case(
            "own", body={**SUBMIT, "delay_s": 3600}, headers={"Idempotency-Key": A_IDEMPOTENCY_KEY}
        ),
    ],
    # An event with A's event id starts B's own run; it never answers A's.
    ("POST", "/v1/events/{event}"): [Case("own", body={"id": A_EVENT_ID, "data": 2})],
    # A's objects by id
    ("GET", "/v1/runs/{run_id}"): [Case("denied")],
    ("GET", "/v1/runs/{run_id}/steps"): [Case("denied")],
    ("POST", "/v1/runs/{run_id}/cancel"): [Case("denied", body={"reason": "sabotage"})],
    ("POST", "/v1/runs/{run_id}/resume"): [Case("denied")],
    ("POST", "/v1/runs/{run_id}/retry"): [
        Case("denied"),
        Case("denied", body={"from_start": True, "reason": "sabotage"}),
    ],
    ("GET", "/v1/runs/{run_id}/why"): [Case("denied")],
    # A signal into A's run (a name A's step may wait for), with and without a key.
    ("POST", "/v1/runs/{run_id}/signals/{name}"): [
        Case("denied"),
        Case("denied", body={"payload": {"approved": True}, "idempotency_key": "b-1"}),
    ],
    # A bulk retry acts on B's own runs only (it finds none of A's).
    ("POST", "/v1/runs/retry"): [
        Case("own"),
        Case("own", body={"status": "cancelled", "since": "2000-01-01T00:00:00Z", "limit": 500}),
    ],
    ("GET", "/v1/runs/{run_id}/timeline"): [Case("denied")],
    ("GET", "/v1/runs/{run_id}/state"): [Case("denied"), Case("denied", params={"version": 0})],
    ("GET", "/v1/runs/{run_id}/state/versions"): [Case("denied")],
    ("GET", "/v1/runs/{run_id}/state/diff"): [Case("denied", params={"a": 0, "b": 1})],
    ("GET", "/v1/runs/{run_id}/events"): [
        Case("denied"),
        Case("denied", headers={"Last-Event-ID": "0"}),
    ],
    # Memory: A's namespace and key name B's own (empty) memory; A's document id, reused,
    # makes B's own document.
    ("GET", "/v1/memory/{namespace}/entries"): [
        Case("own"),
        Case("own", params={"prefix": "profile"}),
        Case("own", params={"cursor": "a", "limit": 500}),
    ],
    ("GET", "/v1/memory/{namespace}/entries/{key}"): [Case("denied")],
    ("DELETE", "/v1/memory/{namespace}/entries/{key}"): [Case("denied")],
    ("PUT", "/v1/memory/{namespace}/entries/{key}"): [Case("own", body={"value": "b's own"})],
    ("POST", "/v1/memory/{namespace}/documents"): [
        Case("own", body={"text": "b's own note"}),
        Case("own", body={"text": "b's own copy", "id": A_DOCUMENT_ID}),
    ],
    ("DELETE", "/v1/memory/{namespace}/documents/{document_id}"): [Case("denied")],
    ("GET", "/v1/memory/{namespace}/search"): [
        Case("own", params={"q": A_MEMORY_SECRET}),
        Case("own", params={"q": f"own {A_MEMORY_SECRET} merger", "limit": 100}),
    ],
    ("GET", "/v1/reviews/{review_id}"): [Case("denied")],
    ("POST", "/v1/reviews/{review_id}/claim"): [Case("denied", body={"reviewer": "mallory"})],
    ("POST", "/v1/reviews/{review_id}/decide"): [
        Case("denied", body={"reviewer": "mallory", "approve": True}),
        Case("denied", body={"reviewer": "mallory", "approve": False, "fail_step": True}),
    ],
}


@dataclass
class World:
    api: Api
    a_key: str
    b_key: str
    revoked_key: str
    ids: dict[str, str]  # A's objects: run_id, review_id, key_id, tenant_id
    a_runs: list[str]

    def markers(self) -> set[str]:
        """Strings that only A's data contains (not the memory names B may use as well)."""
        ids = {v for k, v in self.ids.items() if k not in NAMES}
        return {*self.a_runs, *ids, SECRET_APPLICANT, A_POOL, self.a_key, A_MEMORY_SECRET}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with serving(tmp_path) as api:
        a_key = await api.tenant("tenant-a", reviewer_pool=A_POOL)
        b_key = await api.tenant("tenant-b")
        r = await api.client.post(
            "/v1/runs",
            json={"workflow": "approval", "input": {"applicant": SECRET_APPLICANT, "amount": 9000}},
            headers=bearer(a_key) | {"Idempotency-Key": A_IDEMPOTENCY_KEY},
        )
        assert r.status_code == 201, r.text
        waiting = r.json()["id"]
        review = await api.wait_review(a_key, waiting)
        done = (await api.submit(a_key, "tally", 5))["id"]
        await api.wait_run(a_key, done)
        r = await api.client.post(
            "/v1/events/tally.requested",
            json={"id": A_EVENT_ID, "data": 7},
            headers=bearer(a_key),
        )
        assert r.status_code == 202 and r.json()["runs"][0]["created"], r.text
        evented = r.json()["runs"][0]["run_id"]
        keys = (await api.client.get("/v1/tenants/tenant-a/keys", headers=api.admin)).json()
        memory = f"/v1/memory/{A_NAMESPACE}"
        r = await api.client.put(
            f"{memory}/entries/{A_MEMORY_KEY}",
            json={"value": {"secret": A_MEMORY_SECRET}},
            headers=bearer(a_key),
        )
        assert r.status_code == 200, r.text
        r = await api.client.post(
            f"{memory}/documents",
            json={"text": f"merger notes {A_MEMORY_SECRET}", "id": A_DOCUMENT_ID},
            headers=bearer(a_key),
        )
        assert r.status_code == 201, r.text
        r = await api.client.post(
            "/v1/schedules",
            json={"name": A_SCHEDULE, "workflow": "tally", "input": 2, "cron": "0 0 1 1 *"},
            headers=bearer(a_key),
        )
        assert r.status_code == 201, r.text
        r = await api.client.post("/v1/tenants/tenant-b/keys", headers=api.admin)
        revoked = r.json()["secret"]
        await api.client.delete(
            f"/v1/tenants/tenant-b/keys/{r.json()['key']['id']}", headers=api.admin
        )
        ids = {
            "run_id": waiting,
            "review_id": review["id"],
            "key_id": keys["items"][0]["id"],
            "tenant_id": "tenant-a",
            "namespace": A_NAMESPACE,
            "key": A_MEMORY_KEY,
            "document_id": A_DOCUMENT_ID,
            "name": "approved",
            "event": "tally.requested",
            "server": "a-servers-name",
            "schedule": A_SCHEDULE,
        }
        yield World(api, a_key, b_key, revoked, ids, [waiting, done, evented])


async def operations(client: httpx.AsyncClient) -> set[tuple[str, str]]:
    spec = (await client.get("/openapi.json")).json()
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete", "head", "options"}
    }


def _fill(text: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        text = text.replace("{" + name + "}", value)
    assert "{" not in text, f"no id for {text}: add it to the walk"
    return text


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    case: Case,
    ids: dict[str, str],
    key: str | None,
) -> httpx.Response:
    params = {k: (_fill(v, ids) if isinstance(v, str) else v) for k, v in case.params.items()}
    headers = dict(case.headers) | (bearer(key) if key is not None else {})
    return await client.request(
        method,
        _fill(path, ids),
        params=params,
        json=case.body,
        headers=headers,
    )


async def test_every_operation_of_the_app_has_a_case(world: World) -> None:
    spec_ops = await operations(world.api.client)
    assert spec_ops == set(CASES), (
        f"operations without a case: {sorted(spec_ops - set(CASES))};"
        f" cases for no operation: {sorted(set(CASES) - spec_ops)}"
    )


async def test_tenant_b_never_reaches_tenant_a(world: World) -> None:
    api = world.api
    assert await operations(api.client) == set(CASES)
    markers = world.markers()
    for (method, path), cases in sorted(CASES.items()):
        for case in cases:
            r = await call(api.client, method, path, case, world.ids, world.b_key)
            where = f"{method} {path} {case}: {r.status_code} {r.text[:300]}"
            if case.expect == "denied":
                assert r.status_code in (403, 404), where
                # Exactly the answer for an object that does not exist, but for the id asked.
                twin = await call(api.client, method, path, case, MISSING, world.b_key)
                assert twin.status_code == r.status_code, where
                assert _masked(r.text, world.ids) == _masked(twin.text, MISSING), where
                assert not {m for m in markers if m in twin.text}, where
            else:
                assert r.status_code < 300, where
                leaked = {m for m in markers if m in r.text}
                assert not leaked, f"{where}: shows {leaked}"

    # Nothing B tried changed anything of A.
    h = bearer(world.a_key)
    run = (await api.client.get(f"/v1/runs/{world.ids['run_id']}", headers=h)).json()
    assert run["status"] == "running"
    assert "review" in {w["kind"] for w in run["waiting"]}  # why it waits, embedded
    schedules = (await api.client.get("/v1/schedules", headers=h)).json()["items"]
    assert [(s["name"], s["paused"], s["durable"]) for s in schedules] == [
        (A_SCHEDULE, False, True)
    ]
    timeline = await api.client.get(f"/v1/runs/{world.ids['run_id']}/timeline", headers=h)
    assert timeline.status_code == 200 and "signal.received" not in timeline.text
    review = (await api.client.get(f"/v1/reviews/{world.ids['review_id']}", headers=h)).json()
    assert review["status"] == "pending" and review["claimed_by"] is None
    tenant = (await api.client.get("/v1/tenant", headers=h)).json()
    assert tenant["policy_version"] == 1
    keys = (await api.client.get("/v1/tenants/tenant-a/keys", headers=api.admin)).json()
    assert [k["revoked_at"] for k in keys["items"]] == [None]
    assert (await api.client.get("/v1/audit/verify", headers=h)).json()["ok"] is True
    memory = f"/v1/memory/{A_NAMESPACE}"
    entry = (await api.client.get(f"{memory}/entries/{A_MEMORY_KEY}", headers=h)).json()
    assert (entry["value"], entry["version"]) == ({"secret": A_MEMORY_SECRET}, 1)
    found = await api.client.get(f"{memory}/search", params={"q": "merger"}, headers=h)
    assert [(d["id"], d["text"]) for d in found.json()["items"]] == [
        (A_DOCUMENT_ID, f"merger notes {A_MEMORY_SECRET}")
    ]
    # B's memory under the same names is B's own.
    b = bearer(world.b_key)
    mine = (await api.client.get(f"{memory}/entries/{A_MEMORY_KEY}", headers=b)).json()
    assert mine["value"] == "b's own"
    found = await api.client.get(f"{memory}/search", params={"q": "copy"}, headers=b)
    assert [d["id"] for d in found.json()["items"]] == [A_DOCUMENT_ID]


def _masked(text: str, ids: dict[str, str]) -> str:
    """``text`` with the ids the request named replaced by their names (an error message
    repeats the id it was asked for)."""
    for name, value in sorted(ids.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(value, f"<{name}>")
    return text


async def test_without_a_valid_key_every_operation_is_401(world: World) -> None:
    api = world.api
    for (method, path), cases in sorted(CASES.items()):
        case = cases[0]
        for key in (None, world.revoked_key, "tfk_garbage"):
            r = await call(api.client, method, path, case, world.ids, key)
            where = f"{method} {path} key={key is not None}: {r.status_code} {r.text[:200]}"
            if case.expect == "public":
                assert r.status_code == 200, where
                assert not {m for m in world.markers() if m in r.text}, where
                continue
            assert r.status_code == 401, where
            assert r.headers["www-authenticate"] == "Bearer", where
            assert r.json()["error"]["code"] == "unauthenticated", where
            assert json.dumps(r.json()).count("tenant-a") == 0, where


# -- /mcp: the same scoping over MCP (tools/list gives the walk its operations) ---------------

MCP_CASES: dict[str, list[Case]] = {
    "list_runs": [Case("own"), Case("own", params={"workflow": "approval"})],
    "get_run": [Case("denied", params={"run_id": "{run_id}"})],
    "get_run_timeline": [Case("denied", params={"run_id": "{run_id}"})],
    "cancel_run": [Case("denied", params={"run_id": "{run_id}", "reason": "sabotage"})],
    "start_run": [
        Case("own", params={"workflow": "tally", "input": 1, "idempotency_key": A_IDEMPOTENCY_KEY})
    ],
    "list_reviews": [Case("own"), Case("own", params={"pool": A_POOL})],
    "decide_review": [
        Case("denied", params={"review_id": "{review_id}", "approve": True, "reviewer": "m"})
    ],
    "get_usage": [Case("own")],
}


@asynccontextmanager
async def mcp_session(api: Api, key: str) -> AsyncIterator[Any]:
    """An MCP client session on the app's /mcp, authenticated by ``key``."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(api.app), base_url="http://api", headers=bearer(key)
    )
    async with http, Client(streamable_http_client("http://api/mcp", http_client=http)) as c:
        yield c


def _mcp_args(case: Case, ids: dict[str, str]) -> dict[str, Any]:
    return {k: (_fill(v, ids) if isinstance(v, str) else v) for k, v in case.params.items()}


def _mcp_text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def test_mcp_tenant_b_never_reaches_tenant_a(world: World) -> None:
    pytest.importorskip("mcp")
    markers = world.markers()
    async with mcp_session(world.api, world.b_key) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        assert listed == set(MCP_CASES), f"MCP tools without a case: {listed ^ set(MCP_CASES)}"
        for name, cases in sorted(MCP_CASES.items()):
            for case in cases:
                result = await client.call_tool(name, _mcp_args(case, world.ids))
                text = _mcp_text(result)
                where = f"mcp {name} {case}: {text[:300]}"
                if case.expect == "denied":
                    assert result.is_error and text.startswith("not_found: "), where
                    twin = await client.call_tool(name, _mcp_args(case, MISSING))
                    assert _masked(text, world.ids) == _masked(_mcp_text(twin), MISSING), where
                else:
                    assert not result.is_error, where
                    assert not {m for m in markers if m in text}, where
    h = bearer(world.a_key)
    run = (await world.api.client.get(f"/v1/runs/{world.ids['run_id']}", headers=h)).json()
    assert run["status"] == "running"
    review = await world.api.client.get(f"/v1/reviews/{world.ids['review_id']}", headers=h)
    assert review.json()["status"] == "pending"


async def test_mcp_refuses_admin_keys_and_requests_without_a_valid_key(world: World) -> None:
    pytest.importorskip("mcp")
    async with mcp_session(world.api, world.api.admin_key) as client:
        for name, cases in sorted(MCP_CASES.items()):
            result = await client.call_tool(name, _mcp_args(cases[0], world.ids))
            assert result.is_error, name
            assert _mcp_text(result).startswith("permission_denied: "), name
            assert not {m for m in world.markers() if m in _mcp_text(result)}, name
    for key in (None, world.revoked_key, "tfk_garbage"):
        r = await world.api.client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers=bearer(key) if key is not None else {},
        )
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthenticated"
