"""The REST API in-process (``httpx.ASGITransport``, lifespan running) on a SQLite engine: every
endpoint's happy path and its error answers, idempotency, body limits, authentication and the
run event stream."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from api_harness import Api, bearer, serving

from tenantflow.api.errors import install_error_handlers, status_for
from tenantflow.errors import (
    AuthenticationError,
    BackpressureError,
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    ConflictError,
    ContractError,
    NotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ResidencyError,
    RunFailedError,
    SpecError,
    StaleAttemptError,
    StoreError,
    StoreUnavailableError,
    TenantflowError,
)

pytestmark = pytest.mark.timeout(60)

BIG = {"applicant": "ada", "amount": 5000}  # needs a human review
SMALL = {"applicant": "bob", "amount": 10}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(tmp_path, max_body_bytes=4096) as served:
        yield served


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error body of ``r``, checked: the status, the one JSON shape, the code."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    detail: dict[str, Any] = body["error"]
    return detail


# -- health -----------------------------------------------------------------------------------


async def test_health_readiness_and_admin_only_metrics_by_route_template(api: Api) -> None:
    c = api.client
    assert (await c.get("/healthz")).json() == {"status": "ok"}
    assert (await c.get("/readyz")).json() == {"status": "ok"}
    key = await api.tenant("acme")
    await c.get("/v1/runs/run_0123456789abcdef01234567", headers=bearer(key))
    await c.get("/v1/no/such/path")
    error(await c.get("/metrics"), 401, "unauthenticated")
    error(await c.get("/metrics", headers=bearer(key)), 403, "permission_denied")
    metrics = await c.get("/metrics", headers=api.admin)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert (
        'tenantflow_http_requests_total{method="GET",route="/v1/runs/{run_id}",status_class="4xx"}'
        " 1.0" in text
    )
    assert 'tenantflow_http_request_duration_seconds_bucket{le="0.001",method="POST"' in text
    assert 'route="<unmatched>"' in text
    # Bounded labels: no raw path, no tenant id, no key.
    assert "run_0123456789abcdef01234567" not in text
    assert "acme" not in text and "/v1/no/such/path" not in text


async def test_readyz_answers_503_when_the_store_is_gone(api: Api) -> None:
    await api.engine.store.close()
    r = await api.client.get("/readyz")
    detail = error(r, 503, "store_unavailable")
    assert r.headers["retry-after"] == "5"
    assert detail["store"] == "default"
    assert (await api.client.get("/healthz")).status_code == 200


# -- admin: tenants -------------------------------------------------------------------------------


async def test_tenants_create_read_update_delete(api: Api) -> None:
    c, admin = api.client, api.admin
    r = await c.post(
        "/v1/tenants",
        json={"id": "acme", "tier": "free", "org_id": "acme-org", "policy": {"max_active_runs": 4}},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"] == "acme" and created["org_id"] == "acme-org"
    assert created["policy"]["tier"] == "free" and created["policy"]["max_active_runs"] == 4
    assert created["policy_version"] == 1
    error(await c.post("/v1/tenants", json={"id": "acme"}, headers=admin), 409, "conflict")

    r = await c.get("/v1/tenants/acme", headers=admin)
    assert r.status_code == 200 and r.json()["policy"]["max_active_runs"] == 4
    r = await c.patch("/v1/tenants/acme", json={"policy": {"max_active_runs": 9}}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["max_active_runs"] == 9 and r.json()["policy_version"] == 2

    r = await c.delete("/v1/tenants/acme", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["tenant_id"] == "acme" and not any(r.json()["left"].values())
    error(await c.get("/v1/tenants/acme", headers=admin), 404, "not_found")
    error(await c.delete("/v1/tenants/acme", headers=admin), 404, "not_found")
    error(await c.patch("/v1/tenants/acme", json={"policy": {}}, headers=admin), 404, "not_found")


async def test_tenant_errors_name_the_field(api: Api) -> None:
    c, admin = api.client, api.admin
    detail = error(
        await c.post("/v1/tenants", json={"id": "bad id"}, headers=admin), 422, "request_invalid"
    )
    assert detail["field"] == "body.id"
    detail = error(
        await c.post("/v1/tenants", json={"id": "acme", "tier": "gold"}, headers=admin),
        422,
        "configuration_invalid",
    )
    assert detail["field"] == "body.tier"
    detail = error(
        await c.post(
            "/v1/tenants",
            json={"id": "acme", "policy": {"budget": {"run_micros": "lots"}}},
            headers=admin,
        ),
        422,
        "configuration_invalid",
    )
    assert detail["field"] == "body.policy.budget.run_micros"
    detail = error(
        await c.post("/v1/tenants", json={"id": "acme", "colour": "red"}, headers=admin),
        422,
        "request_invalid",
    )
    assert detail["field"] == "body.colour"
    await api.tenant("acme")
    detail = error(
        await c.patch("/v1/tenants/acme", json={"policy": {"max_active_runs": -1}}, headers=admin),
        422,
        "configuration_invalid",
    )
    assert detail["field"] == "body.policy.max_active_runs"


async def test_tenants_list_pages(api: Api) -> None:
    for name in ("t-a", "t-b", "t-c"):
        await api.tenant(name)
    r = await api.client.get("/v1/tenants", params={"limit": 2}, headers=api.admin)
    page = r.json()
    assert [t["id"] for t in page["items"]] == ["t-a", "t-b"] and page["next"] == "t-b"
    r = await api.client.get(
        "/v1/tenants", params={"limit": 2, "cursor": page["next"]}, headers=api.admin
    )
    assert [t["id"] for t in r.json()["items"]] == ["t-c"] and r.json()["next"] is None
    detail = error(
        await api.client.get("/v1/tenants", params={"limit": 0}, headers=api.admin),
        422,
        "request_invalid",
    )
    assert detail["field"] == "query.limit"


async def test_a_tenant_with_unfinished_runs_is_not_deleted(api: Api) -> None:
    key = await api.tenant("acme")
    run = await api.submit(key, "approval", BIG)
    await api.wait_review(key, run["id"])
    error(await api.client.delete("/v1/tenants/acme", headers=api.admin), 409, "conflict")


# -- admin: keys ----------------------------------------------------------------------------------


async def test_keys_create_list_rotate_revoke(api: Api) -> None:
    c, admin = api.client, api.admin
    await api.tenant("acme")
    r = await c.post("/v1/tenants/acme/keys", json={"name": "ci"}, headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    key_id, secret = created["key"]["id"], created["secret"]
    assert created["key"]["tenant_id"] == "acme" and created["key"]["name"] == "ci"
    assert secret.startswith(created["key"]["prefix"])
    assert (await c.get("/v1/tenant", headers=bearer(secret))).json()["id"] == "acme"

    listed = (await c.get("/v1/tenants/acme/keys", headers=admin)).json()["items"]
    assert key_id in {k["id"] for k in listed}
    assert secret not in json.dumps(listed)  # the secret is shown once

    r = await c.post(f"/v1/tenants/acme/keys/{key_id}/rotate", headers=admin)
    assert r.status_code == 200, r.text
    new_secret = r.json()["secret"]
    assert r.json()["key"]["name"] == "ci" and r.json()["key"]["id"] != key_id
    error(await c.get("/v1/tenant", headers=bearer(secret)), 401, "unauthenticated")
    assert (await c.get("/v1/tenant", headers=bearer(new_secret))).status_code == 200
    error(await c.post(f"/v1/tenants/acme/keys/{key_id}/rotate", headers=admin), 409, "conflict")

    new_id = r.json()["key"]["id"]
    r = await c.delete(f"/v1/tenants/acme/keys/{new_id}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    error(await c.get("/v1/tenant", headers=bearer(new_secret)), 401, "unauthenticated")

    missing = "key_0123456789abcdef01234567"
    error(await c.delete(f"/v1/tenants/acme/keys/{missing}", headers=admin), 404, "not_found")
    error(await c.post("/v1/tenants/nobody/keys", headers=admin), 404, "not_found")
    error(await c.get("/v1/tenants/nobody/keys", headers=admin), 404, "not_found")
    detail = error(
        await c.post("/v1/tenants/acme/keys", json={"name": ""}, headers=admin),
        422,
        "request_invalid",
    )
    assert detail["field"] == "body.name"


async def test_a_key_of_one_tenant_is_not_found_under_another(api: Api) -> None:
    await api.tenant("acme")
    await api.tenant("other")
    r = await api.client.post("/v1/tenants/acme/keys", headers=api.admin)
    key_id = r.json()["key"]["id"]
    for method, path in (
        ("DELETE", f"/v1/tenants/other/keys/{key_id}"),
        ("POST", f"/v1/tenants/other/keys/{key_id}/rotate"),
    ):
        error(await api.client.request(method, path, headers=api.admin), 404, "not_found")
    assert (
        await api.client.get("/v1/tenant", headers=bearer(r.json()["secret"]))
    ).status_code == 200


# -- authentication and permissions ----------------------------------------------------------------


async def test_requests_without_a_valid_key_get_401(api: Api) -> None:
    c = api.client
    key = await api.tenant("acme")
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Basic {key}"},
        {"Authorization": f"Bearer {key[:-2]}xx"},  # well-formed, wrong secret
    ):
        for path in ("/v1/runs", "/v1/tenants"):
            r = await c.get(path, headers=headers)
            error(r, 401, "unauthenticated")
            assert r.headers["www-authenticate"] == "Bearer"
    listed = (await c.get("/v1/tenants/acme/keys", headers=api.admin)).json()["items"]
    await c.delete(f"/v1/tenants/acme/keys/{listed[0]['id']}", headers=api.admin)
    error(await c.get("/v1/runs", headers=bearer(key)), 401, "unauthenticated")


async def test_tenant_keys_are_refused_on_admin_routes_and_admin_keys_on_tenant_routes(
    api: Api,
) -> None:
    c = api.client
    key = await api.tenant("acme")
    for method, path in (
        ("GET", "/v1/tenants"),
        ("GET", "/v1/tenants/acme"),
        ("POST", "/v1/tenants/acme/keys"),
        ("DELETE", "/v1/tenants/acme"),
    ):
        error(await c.request(method, path, headers=bearer(key)), 403, "permission_denied")
    for path in ("/v1/tenant", "/v1/runs", "/v1/reviews", "/v1/usage", "/v1/audit"):
        detail = error(await c.get(path, headers=api.admin), 403, "permission_denied")
        assert "tenant's API key" in detail["message"]
    # The tenant is still there: the refused DELETE changed nothing.
    assert (await c.get("/v1/tenants/acme", headers=api.admin)).status_code == 200


# -- runs ---------------------------------------------------------------------------------------


async def test_submit_read_and_history_of_a_run(api: Api) -> None:
    c = api.client
    key = await api.tenant("acme")
    h = bearer(key)
    r = await c.post("/v1/runs", json={"workflow": "tally", "input": 20}, headers=h)
    assert r.status_code == 201, r.text
    submitted = r.json()
    assert submitted["created"] is True and submitted["workflow"] == "tally"
    assert submitted["status"] in ("running", "queued", "completed")
    run_id = submitted["id"]
    run = await api.wait_run(key, run_id)
    assert run["result"] == 41 and run["input"] == 20 and run["tenant_id"] == "acme"
    assert run["finished_at"] is not None

    steps = (await c.get(f"/v1/runs/{run_id}/steps", headers=h)).json()["items"]
    assert [(s["key"], s["status"], s["output"]) for s in steps] == [
        ("double", "succeeded", 40),
        ("total", "succeeded", 41),
    ]
    events = (await c.get(f"/v1/runs/{run_id}/timeline", headers=h)).json()["items"]
    assert events[0]["kind"] == "run.submitted" and events[-1]["kind"] == "run.completed"
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)

    latest = (await c.get(f"/v1/runs/{run_id}/state", headers=h)).json()
    assert latest["version"] == 2 and latest["state"] == {"input": 20, "double": 40, "total": 41}
    first = (await c.get(f"/v1/runs/{run_id}/state", params={"version": 0}, headers=h)).json()
    assert first["state"] == {"input": 20}
    versions = (await c.get(f"/v1/runs/{run_id}/state/versions", headers=h)).json()["items"]
    assert [v["version"] for v in versions] == [0, 1, 2]
    diff = (await c.get(f"/v1/runs/{run_id}/state/diff", params={"a": 0, "b": 2}, headers=h)).json()
    assert {(ch["path"], ch["kind"], ch["after"]) for ch in diff["items"]} == {
        ("double", "added", 40),
        ("total", "added", 41),
    }

    error(
        await c.get(f"/v1/runs/{run_id}/state", params={"version": 7}, headers=h),
        404,
        "not_found",
    )
    detail = error(
        await c.get(f"/v1/runs/{run_id}/state/diff", params={"a": 0}, headers=h),
        422,
        "request_invalid",
    )
    assert detail["field"] == "query.b"
    missing = "run_0123456789abcdef01234567"
    for suffix in ("", "/steps", "/timeline", "/state", "/state/versions", "/events"):
        error(await c.get(f"/v1/runs/{missing}{suffix}", headers=h), 404, "not_found")
    error(await c.post(f"/v1/runs/{missing}/cancel", headers=h), 404, "not_found")


async def test_submission_errors(api: Api) -> None:
    c = api.client
    h = bearer(await api.tenant("acme"))
    detail = error(
        await c.post("/v1/runs", json={"workflow": "nope", "input": 1}, headers=h),
        404,
        "not_found",
    )
    assert detail["kind"] == "workflow"
    detail = error(
        await c.post(
            "/v1/runs",
            json={"workflow": "approval", "input": {"applicant": "ada", "amount": -5}},
            headers=h,
        ),
        422,
        "contract_violation",
    )
    assert detail["field"] == "body.input.amount"
    for body, field in (
        ({"workflow": "tally"}, "body.input"),
        ({"workflow": "tally", "input": 1, "lane": "fast"}, "body.lane"),
        ({"workflow": "tally", "input": 1, "tenant": "other"}, "body.tenant"),
        ({"workflow": "", "input": 1}, "body.workflow"),
        ([1, 2], "body"),
    ):
        detail = error(await c.post("/v1/runs", json=body, headers=h), 422, "request_invalid")
        assert detail["field"] == field, detail
    detail = error(
        await c.post(
            "/v1/runs",
            content=b'{"workflow": "tally", "input": ',
            headers=h | {"Content-Type": "application/json"},
        ),
        422,
        "request_invalid",
    )
    assert detail["field"] == "body"
    error(
        await c.post(
            "/v1/runs", content=b"workflow=tally", headers=h | {"Content-Type": "text/plain"}
        ),
        415,
        "unsupported_media_type",
    )
    r = await c.put("/v1/runs", json={}, headers=h)
    error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]
    error(await c.get("/v1/nothing-here", headers=h), 404, "not_found")


async def test_idempotency_key_returns_the_same_run_and_refuses_another_request(api: Api) -> None:
    c = api.client
    h = bearer(await api.tenant("acme"))
    body = {"workflow": "tally", "input": 3}
    first = await c.post("/v1/runs", json=body, headers=h | {"Idempotency-Key": "order-1"})
    assert first.status_code == 201, first.text
    again = await c.post("/v1/runs", json=body, headers=h | {"Idempotency-Key": "order-1"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False
    for other in ({"workflow": "tally", "input": 4}, {"workflow": "approval", "input": SMALL}):
        detail = error(
            await c.post("/v1/runs", json=other, headers=h | {"Idempotency-Key": "order-1"}),
            409,
            "conflict",
        )
        assert detail["run_id"] == first.json()["id"]
    fresh = await c.post("/v1/runs", json=body, headers=h | {"Idempotency-Key": "order-2"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
    runs = (await c.get("/v1/runs", headers=h)).json()["items"]
    assert len(runs) == 2
    assert {r["idempotency_key"] for r in runs} == {"order-1", "order-2"}


async def test_list_runs_filters_and_pages(api: Api) -> None:
    c = api.client
    key = await api.tenant("acme")
    h = bearer(key)
    ids = [(await api.submit(key, "tally", n))["id"] for n in range(5)]
    waiting = (await api.submit(key, "approval", BIG))["id"]
    for run_id in ids:
        await api.wait_run(key, run_id)
    await api.wait_review(key, waiting)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await c.get("/v1/runs", params=params, headers=h)).json()
        assert len(page["items"]) <= 2
        seen += [r["id"] for r in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([*ids, waiting]) and len(seen) == 6
    by_workflow = (await c.get("/v1/runs", params={"workflow": "approval"}, headers=h)).json()
    assert [r["id"] for r in by_workflow["items"]] == [waiting]
    completed = (await c.get("/v1/runs", params={"status": "completed"}, headers=h)).json()
    assert sorted(r["id"] for r in completed["items"]) == sorted(ids)
    detail = error(
        await c.get("/v1/runs", params={"status": "sleeping"}, headers=h), 422, "request_invalid"
    )
    assert detail["field"] == "query.status"
    error(
        await c.get("/v1/runs", params={"cursor": "run_0123456789abcdef01234567"}, headers=h),
        404,
        "not_found",
    )


async def test_cancel_a_run(api: Api) -> None:
    c = api.client
    key = await api.tenant("acme")
    h = bearer(key)
    run_id = (await api.submit(key, "approval", BIG))["id"]
    await api.wait_review(key, run_id)
    r = await c.post(f"/v1/runs/{run_id}/cancel", json={"reason": "customer withdrew"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("cancelled", "cancelling")
    run = await api.wait_run(key, run_id, ("cancelled",))
    assert run["finished_at"] is not None
    error(await c.post(f"/v1/runs/{run_id}/cancel", headers=h), 409, "conflict")


# -- reviews ------------------------------------------------------------------------------------


async def test_review_claim_and_decide(api: Api) -> None:
    c = api.client
    key = await api.tenant("acme")
    h = bearer(key)
    run_id = (await api.submit(key, "approval", BIG))["id"]
    task = await api.wait_review(key, run_id)
    assert task["status"] == "pending" and task["payload"]["request"]["amount"] == 5000
    review_id = task["id"]
    r = await c.get("/v1/reviews", params={"pool": task["pool"]}, headers=h)
    assert [t["id"] for t in r.json()["items"]] == [review_id]
    assert (await c.get("/v1/reviews", params={"pool": "elsewhere"}, headers=h)).json() == {
        "items": []
    }
    assert (await c.get(f"/v1/reviews/{review_id}", headers=h)).json()["run_id"] == run_id

    r = await c.post(f"/v1/reviews/{review_id}/claim", json={"reviewer": "alice"}, headers=h)
    assert r.status_code == 200 and r.json()["claimed_by"] == "alice"
    error(
        await c.post(f"/v1/reviews/{review_id}/claim", json={"reviewer": "bob"}, headers=h),
        409,
        "conflict",
    )
    detail = error(
        await c.post(f"/v1/reviews/{review_id}/decide", json={"reviewer": "alice"}, headers=h),
        422,
        "request_invalid",
    )
    assert detail["field"] == "body.approve"
    r = await c.post(
        f"/v1/reviews/{review_id}/decide",
        json={"reviewer": "alice", "approve": True, "comment": "income checked"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["decided_by"] == "alice"
    run = await api.wait_run(key, run_id)
    assert run["result"] == "approved"
    error(
        await c.post(
            f"/v1/reviews/{review_id}/decide",
            json={"reviewer": "alice", "approve": False},
            headers=h,
        ),
        409,
        "conflict",
    )
    assert (await c.get("/v1/reviews", headers=h)).json() == {"items": []}
    decided = (await c.get("/v1/reviews", params={"status": "approved"}, headers=h)).json()
    assert [t["id"] for t in decided["items"]] == [review_id]
    missing = "rev_0123456789abcdef0123"
    error(await c.get(f"/v1/reviews/{missing}", headers=h), 404, "not_found")
    error(
        await c.post(f"/v1/reviews/{missing}/claim", json={"reviewer": "x"}, headers=h),
        404,
        "not_found",
    )


# -- tenant: usage, budget, audit ----------------------------------------------------------------


async def test_own_tenant_usage_budget_and_audit(api: Api) -> None:
    c = api.client
    key = await api.tenant("acme", budget={"run_micros": 500_000})
    h = bearer(key)
    assert (await c.get("/v1/tenant", headers=h)).json()["policy"]["budget"][
        "run_micros"
    ] == 500_000
    await api.wait_run(key, (await api.submit(key, "tally", 1))["id"])

    usage = (await c.get("/v1/usage", headers=h)).json()["items"]
    steps = [u for u in usage if u["metric"] == "steps"]
    assert sum(u["value"] for u in steps) == 2
    day = usage[0]["day"]
    assert (await c.get("/v1/usage", params={"since": day, "until": day}, headers=h)).json()[
        "items"
    ] == usage
    assert (await c.get("/v1/usage", params={"since": "2999-01-01"}, headers=h)).json() == {
        "items": []
    }
    error(
        await c.get("/v1/usage", params={"since": "2030-01-02", "until": "2030-01-01"}, headers=h),
        422,
        "configuration_invalid",
    )
    detail = error(
        await c.get("/v1/usage", params={"since": "yesterday"}, headers=h), 422, "request_invalid"
    )
    assert detail["field"] == "query.since"

    budget = await c.get("/v1/budget", headers=h)
    assert budget.status_code == 200
    assert all({"scope", "unit", "spent", "reserved"} <= set(b) for b in budget.json()["items"])

    audit = (await c.get("/v1/audit", headers=h)).json()
    actions = [row["action"] for row in audit["items"]]
    assert actions[0] == "tenant.created" and "api_key.created" in actions
    assert all(row["actor"].startswith("api:key_") for row in audit["items"][:2])
    page = (await c.get("/v1/audit", params={"limit": 1}, headers=h)).json()
    assert len(page["items"]) == 1 and page["next"] == 1
    rest = (await c.get("/v1/audit", params={"after": page["next"]}, headers=h)).json()
    assert [r["seq"] for r in rest["items"]] == [r["seq"] for r in audit["items"][1:]]
    verify = (await c.get("/v1/audit/verify", headers=h)).json()
    assert verify["ok"] is True and verify["checked"] == len(audit["items"])


async def test_audit_verify_names_the_tampered_row(api: Api) -> None:
    key = await api.tenant("acme")
    await api.client.patch(
        "/v1/tenants/acme", json={"policy": {"max_active_runs": 3}}, headers=api.admin
    )
    await api.engine.store.execute_sql(  # type: ignore[attr-defined]
        "UPDATE audit_log SET actor = 'mallory' WHERE tenant_id = 'acme' AND seq = 2"
    )
    verify = (await api.client.get("/v1/audit/verify", headers=bearer(key))).json()
    assert verify["ok"] is False and verify["first_bad_seq"] == 2


# -- limits and failures --------------------------------------------------------------------------


async def test_bodies_over_the_limit_get_413(api: Api) -> None:
    h = bearer(await api.tenant("acme"))
    big = {"workflow": "tally", "input": 1, "pad": "x" * 5000}
    detail = error(await api.client.post("/v1/runs", json=big, headers=h), 413, "payload_too_large")
    assert detail["limit"] == 4096

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"workflow": "tally", "input": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    r = await api.client.post(
        "/v1/runs", content=chunks(), headers=h | {"Content-Type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    error(r, 413, "payload_too_large")
    assert (await api.client.get("/v1/runs", headers=h)).json()["items"] == []


async def test_over_capacity_gets_429_with_retry_after(tmp_path: Path) -> None:
    async with serving(tmp_path, engine_options={"max_queued_runs": 1}) as api:
        key = await api.tenant("acme", max_active_runs=1)
        await api.submit(key, "approval", BIG)  # admitted: waits for its review
        await api.submit(key, "approval", BIG)  # queued
        r = await api.client.post(
            "/v1/runs", json={"workflow": "approval", "input": BIG}, headers=bearer(key)
        )
        detail = error(r, 429, "backpressure")
        assert int(r.headers["retry-after"]) >= 1
        assert detail["retry_after_s"] >= 1

        gate = api.app.state.submissions  # the per-process cap on submissions in flight
        gate.in_flight = gate.limit
        r = await api.client.post(
            "/v1/runs", json={"workflow": "tally", "input": 1}, headers=bearer(key)
        )
        error(r, 429, "backpressure")
        assert r.headers["retry-after"] == "1"
        gate.in_flight = 0
        metrics = (await api.client.get("/metrics", headers=api.admin)).text
        assert "tenantflow_api_submissions_refused_total 1.0" in metrics


async def test_unexpected_errors_are_500_without_details(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = await api.tenant("acme")

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(api.engine, "get_run", broken)
    with caplog.at_level(logging.ERROR, logger="tenantflow.api"):
        r = await api.client.get("/v1/runs/run_x", headers=bearer(key) | {"X-Request-ID": "req-42"})
    assert r.status_code == 500
    assert r.json() == {
        "error": {"code": "internal_error", "message": "internal error", "request_id": "req-42"}
    }
    assert r.headers["x-request-id"] == "req-42"
    assert "hunter2" not in r.text
    assert any("req-42" in rec.getMessage() and rec.exc_info for rec in caplog.records)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (AuthenticationError(), 401),
        (BudgetExceededError(), 402),
        (PermissionDeniedError(), 403),
        (NotAllowedError(), 403),
        (ResidencyError(), 403),
        (NotFoundError(), 404),
        (ConflictError(), 409),
        (StaleAttemptError(), 409),
        (ContractError(), 422),
        (ConfigurationError(), 422),
        (SpecError(), 422),
        (RateLimitedError(), 429),
        (BackpressureError(), 429),
        (StoreUnavailableError(), 503),
        (CircuitOpenError(), 503),
        (StoreError(), 500),
        (RunFailedError(), 500),
        (TenantflowError(), 500),
    ],
)
def test_every_error_has_its_status(exc: TenantflowError, status: int) -> None:
    assert status_for(exc) == status


async def test_retry_after_is_whole_seconds_rounded_up() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/limited")
    async def limited() -> None:
        raise RateLimitedError("slow down", resource="tool:x", retry_after_s=2.1)

    @app.get("/down")
    async def down() -> None:
        raise StoreUnavailableError("down", retry_after_s=0.2)

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        r = await c.get("/limited")
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["error"] == {
            "code": "rate_limited",
            "message": "slow down",
            "resource": "tool:x",
            "retry_after_s": 2.1,
        }
        r = await c.get("/down")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


# -- the event stream ------------------------------------------------------------------------------


def sse(text: str) -> list[dict[str, Any]]:
    """The messages of an event stream: id, event and data (JSON) of each."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            out.append(
                {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return out


async def test_event_stream_follows_the_run_until_it_ends(api: Api) -> None:
    c = api.client
    key = await api.tenant("acme")
    h = bearer(key)
    run_id = (await api.submit(key, "approval", BIG))["id"]
    review = await api.wait_review(key, run_id)
    # The stream stays open while the run waits for its review, and ends once it completes.
    stream = asyncio.create_task(c.get(f"/v1/runs/{run_id}/events", headers=h))
    await asyncio.sleep(0.5)
    assert not stream.done()
    r = await c.post(
        f"/v1/reviews/{review['id']}/decide", json={"reviewer": "alice", "approve": True}, headers=h
    )
    assert r.status_code == 200
    r = await asyncio.wait_for(stream, 10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    messages = sse(r.text)
    timeline = (await c.get(f"/v1/runs/{run_id}/timeline", headers=h)).json()["items"]
    assert [m["id"] for m in messages] == [e["id"] for e in timeline]
    assert [m["event"] for m in messages] == [e["kind"] for e in timeline]
    assert messages[0]["event"] == "run.submitted" and messages[-1]["event"] == "run.completed"
    assert "review.requested" in [m["event"] for m in messages]
    assert messages[-1]["data"]["kind"] == "run.completed"

    # Last-Event-ID resumes after that event; ?after= does the same.
    middle = messages[len(messages) // 2]["id"]
    r = await c.get(f"/v1/runs/{run_id}/events", headers=h | {"Last-Event-ID": str(middle)})
    assert [m["id"] for m in sse(r.text)] == [m["id"] for m in messages if m["id"] > middle]
    r = await c.get(f"/v1/runs/{run_id}/events", params={"after": middle}, headers=h)
    assert [m["id"] for m in sse(r.text)] == [m["id"] for m in messages if m["id"] > middle]
