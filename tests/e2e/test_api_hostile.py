"""Hostile numbers and values over the REST API (issue 23): integers past the store's 64-bit
columns, infinities and NaN, huge values in error bodies, oversized headers. Each test here failed
before the fix it names: a 201 that broke the tenant later, a 500, or a value stored as null."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from api_harness import Api, bearer, serving

import tenantflow as tf
from tenantflow.api.middleware import DEFAULT_MAX_HEADER_BYTES
from tenantflow.api.server import MAX_INCOMPLETE_EVENT_BYTES, config
from tenantflow.domain.limits import INT64_MAX

pytestmark = pytest.mark.timeout(60)

RANGE = f"0..{INT64_MAX}"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(tmp_path, max_body_bytes=65_536) as served:
        yield served


def refused(r: httpx.Response, code: str, field: str) -> dict[str, Any]:
    """The 422 error body of ``r``: the one JSON shape, ``code``, naming ``field``."""
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    detail: dict[str, Any] = body["error"]
    assert detail["code"] == code and detail["message"], detail
    assert detail["field"] == field, detail
    return detail


async def post(api: Api, path: str, body: str, key: str | None = None) -> httpx.Response:
    """POST ``body`` as it is (JSON numbers ``json.dumps`` cannot write), as ``key`` or admin."""
    headers = {**(bearer(key) if key else api.admin), "Content-Type": "application/json"}
    return await api.client.post(path, content=body, headers=headers)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"budget": {"period_micros": 2**80}}, "budget.period_micros"),
        ({"budget": {"run_tokens": 2**64}}, "budget.run_tokens"),
        ({"budget": {"period_tokens": 2**63}}, "budget.period_tokens"),
        ({"max_active_runs": 2**63}, "max_active_runs"),
        ({"burst_slots": 2**64}, "burst_slots"),
        ({"rate_limits": {"tool:x": {"rate": "5/hour", "burst": 2**70}}}, "rate_limits.tool:x"),
    ],
)
async def test_policy_integers_past_64_bits_are_refused_naming_the_field_and_range(
    api: Api, policy: dict[str, Any], field: str
) -> None:
    r = await post(api, "/v1/tenants", json.dumps({"id": "acme", "policy": policy}))
    detail = refused(r, "configuration_invalid", f"body.policy.{field}")
    assert "within" in detail["message"] and str(INT64_MAX) in detail["message"]
    assert (await api.client.get("/v1/tenants/acme", headers=api.admin)).status_code == 404


async def test_the_largest_budget_is_accepted_and_a_priced_run_still_works(api: Api) -> None:
    key = await api.tenant(
        "acme", budget={"period_micros": INT64_MAX, "run_tokens": INT64_MAX, "run_micros": None}
    )
    run = await api.submit(key, "approval", {"applicant": "bob", "amount": 10})
    done = await api.wait_run(key, run["id"], ("completed", "failed"))
    assert done["status"] == "completed", done


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ('{"max_running_steps": 1e309}', "max_running_steps"),
        ('{"budget": {"run_micros": 1e309}}', "budget.run_micros"),
        ('{"budget": {"run_micros": "$1e309"}}', "budget.run_micros"),
        ('{"budget": {"run_micros": -1e309}}', "budget.run_micros"),
        ('{"weight": 1e309}', "weight"),
        ('{"run_sla": 1e309}', "run_sla"),
    ],
)
async def test_infinite_policy_numbers_are_a_422_not_a_500(
    api: Api, policy: str, field: str
) -> None:
    r = await post(api, "/v1/tenants", '{"id": "acme", "policy": ' + policy + "}")
    detail = refused(r, "configuration_invalid", f"body.policy.{field}")
    assert isinstance(detail.get("value"), str | None)  # inf is echoed as text


async def test_error_bodies_never_echo_a_huge_value_in_full(api: Api) -> None:
    huge = "9" * 4000
    body = '{"id": "acme", "policy": {"budget": {"period_micros": ' + huge + "}}}"
    r = await post(api, "/v1/tenants", body)
    detail = refused(r, "configuration_invalid", "body.policy.budget.period_micros")
    assert len(r.text) < 2000, r.text
    assert huge[:300] not in r.text and detail["value"] == "<an integer of about 4001 digits>"
    long_name = "x" * 10_000
    r = await api.client.post(
        "/v1/tenants", json={"id": "acme", "tier": long_name}, headers=api.admin
    )
    detail = refused(r, "configuration_invalid", "body.tier")
    assert long_name[:300] not in r.text and len(r.text) < 2000
    assert detail["value"].endswith("…(+9800 chars)"), detail


async def test_event_cursors_past_64_bits_are_refused(api: Api) -> None:
    key = await api.tenant("acme")
    run = await api.submit(key, "approval", {"applicant": "bob", "amount": 10})
    r = await api.client.get(
        f"/v1/runs/{run['id']}/events", params={"after": 2**63}, headers=bearer(key)
    )
    refused(r, "request_invalid", "query.after")
    r = await api.client.get("/v1/audit", params={"after": 2**80}, headers=bearer(key))
    refused(r, "request_invalid", "query.after")


# -- run inputs ---------------------------------------------------------------------------------

echo = tf.Workflow("echo", input=dict[str, Any])


@echo.step
async def back(ctx: tf.StepContext, input: dict[str, Any]) -> dict[str, Any]:
    return input


class Priced(BaseModel):
    amount: float
    lines: list[float] = []


priced = tf.Workflow("priced", input=Priced)


@priced.step
async def total(ctx: tf.StepContext, input: Priced) -> float:
    return input.amount + sum(input.lines)


@pytest.mark.parametrize(
    ("workflow", "body", "field"),
    [
        ("echo", '{"amount": 1e309}', "body.input.amount"),
        ("echo", '{"deep": {"list": [1, -1e400]}}', "body.input.deep.list[1]"),
        ("priced", '{"amount": 1e309}', "body.input.amount"),
        ("priced", '{"amount": 1, "lines": [2, 1e999]}', "body.input.lines[1]"),
        ("priced", '{"amount": "inf"}', "body.input.amount"),
        ("priced", '{"amount": "NaN"}', "body.input.amount"),
        ("tally", "1e309", "body.input"),
    ],
)
async def test_non_finite_numbers_in_a_run_input_are_refused_naming_the_path(
    api: Api, workflow: str, body: str, field: str
) -> None:
    api.engine.register(echo)
    api.engine.register(priced)
    key = await api.tenant("acme")
    request = '{"workflow": "' + workflow + '", "input": ' + body + "}"
    r = await post(api, "/v1/runs", request, key)
    detail = refused(r, "contract_violation", field)
    assert "finite" in detail["message"] or "finite" in str(detail), detail
    listed = await api.client.get("/v1/runs", headers=bearer(key))
    assert listed.json()["items"] == []  # nothing stored


async def test_integers_past_64_bits_in_a_run_input_are_stored_exactly(api: Api) -> None:
    api.engine.register(echo)
    key = await api.tenant("acme")
    value = {"big": 2**80, "small": -(2**70), "list": [2**64, 1.5], "n": None}
    run = await api.submit(key, "echo", value)
    done = await api.wait_run(key, run["id"])
    assert done["input"] == value and done["result"] == value, done


# -- oversized headers --------------------------------------------------------------------------


async def test_headers_over_the_limit_get_a_json_431(api: Api) -> None:
    r = await api.client.get("/healthz", headers={"X-Big": "a" * 1_000_000})
    assert r.status_code == 431 and r.headers["content-type"] == "application/json", r.text
    error = r.json()["error"]
    assert error["code"] == "headers_too_large" and error["limit"] == DEFAULT_MAX_HEADER_BYTES
    ok = await api.client.get("/healthz", headers={"X-Big": "a" * (DEFAULT_MAX_HEADER_BYTES // 2)})
    assert ok.status_code == 200


async def test_a_served_app_answers_a_1_mb_header_in_json_and_past_its_buffer_plain_400(
    api: Api,
) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)  # connections wait in the backlog until the server accepts them
    port = listening.getsockname()[1]
    server = uvicorn.Server(config(api.app, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/healthz", headers={"X-Big": "a" * 1_000_000})
            assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
            # Past uvicorn's buffer the head cannot be parsed: its own plain 400 (docs/api.md).
            big = "a" * (2 * MAX_INCOMPLETE_EVENT_BYTES)
            try:
                r = await client.get("/healthz", headers={"X-Big": big})
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                pass  # closed while the client was still sending: the reset arrives first
            else:
                assert r.status_code == 400 and r.text == "Invalid HTTP request received."
            assert (await client.get("/healthz")).json() == {"status": "ok"}
    finally:
        server.should_exit = True
        await task
        listening.close()


@pytest.mark.parametrize(
    ("method", "policy", "field"),
    [
        ("PATCH", {"actor": "mallory"}, "actor"),
        ("PATCH", {"known_regions": ["mars-1"]}, "known_regions"),
        ("POST", {"actor": "mallory"}, "actor"),
        ("POST", {"policy": {}}, "policy"),
        ("POST", {"tier": "enterprise"}, "tier"),
        ("POST", {"org_id": "org-2"}, "org_id"),
    ],
)
async def test_policy_keys_that_name_the_calls_own_arguments_are_a_422_not_a_500(
    api: Api, method: str, policy: dict[str, Any], field: str
) -> None:
    if method == "PATCH":
        await api.tenant("acme")
        before = (await api.client.get("/v1/tenants/acme", headers=api.admin)).json()
        r = await api.client.patch("/v1/tenants/acme", json={"policy": policy}, headers=api.admin)
        refused(r, "configuration_invalid", f"body.policy.{field}")
        after = (await api.client.get("/v1/tenants/acme", headers=api.admin)).json()
        assert after == before  # nothing changed
    else:
        r = await post(api, "/v1/tenants", json.dumps({"id": "acme", "policy": policy}))
        refused(r, "configuration_invalid", f"body.policy.{field}")
        assert (await api.client.get("/v1/tenants/acme", headers=api.admin)).status_code == 404
