"""The REST API client on ``httpx.MockTransport``: error answers become the error tree, records
come back as the engine returns them, long lists are read page by page; and the settings that
configure it keep the API key secret."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tenantflow.cli import render
from tenantflow.cli.common import EXIT_FAILURE, EXIT_USAGE, exit_code
from tenantflow.client import Client
from tenantflow.domain.records import RunStatus
from tenantflow.domain.tenancy import ReviewStatus
from tenantflow.errors import (
    AuthenticationError,
    BackpressureError,
    BudgetExceededError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    StaleAttemptError,
    StoreUnavailableError,
    TenantflowError,
)
from tenantflow.settings import Settings

URL = "http://tf.test"
KEY = "tfk_" + "1" * 24 + "_" + "s" * 43

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> Client:
    return Client(URL, KEY, transport=httpx.MockTransport(handler))


def answering(status: int, body: Any = None, *, text: str | None = None) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return client(handler)


def error(code: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **fields}}


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "unauthenticated", AuthenticationError),
        (403, "permission_denied", PermissionDeniedError),
        (404, "not_found", NotFoundError),
        (409, "conflict", ConflictError),
        (409, "stale_attempt", StaleAttemptError),
        (402, "budget_exceeded", BudgetExceededError),
        (422, "configuration_invalid", ConfigurationError),
        (503, "store_unavailable", StoreUnavailableError),
    ],
)
def test_an_error_answer_is_the_class_with_its_code(
    status: int, code: str, expected: type[TenantflowError]
) -> None:
    api = answering(status, error(code, f"it went wrong ({code})", run_id="run_1"))
    with pytest.raises(TenantflowError) as caught:
        api.get_run("run_1")
    assert type(caught.value) is expected
    assert caught.value.code == code
    assert caught.value.message == f"it went wrong ({code})"
    assert caught.value.fields == {"run_id": "run_1", "http_status": status}


def test_structured_fields_survive_even_one_named_status() -> None:
    limited = answering(429, error("rate_limited", "slow down", retry_after_s=7.5))
    with pytest.raises(RateLimitedError) as caught:
        limited.list_runs()
    assert caught.value.retry_after_s == 7.5
    ended = answering(409, error("conflict", "run run_1 already ended", status="completed"))
    with pytest.raises(ConflictError) as conflict:
        ended.get_run("run_1")
    assert conflict.value.fields["status"] == "completed"
    assert conflict.value.fields["http_status"] == 409


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (422, "request_invalid", ConfigurationError),
        (413, "payload_too_large", ConfigurationError),
        (429, "too_many_requests", BackpressureError),
        (404, "no_such_code_yet", NotFoundError),
        (500, "internal_error", TenantflowError),
    ],
)
def test_a_code_no_class_has_is_mapped_by_status(
    status: int, code: str, expected: type[TenantflowError]
) -> None:
    api = answering(status, error(code, "the API said so", field="query.limit"))
    with pytest.raises(TenantflowError) as caught:
        api.list_runs()
    assert type(caught.value) is expected
    assert caught.value.message == "the API said so"
    assert caught.value.fields["field"] == "query.limit"


def test_an_answer_not_in_the_error_shape_names_the_status() -> None:
    proxy = answering(502, text="<html>Bad Gateway</html>")
    with pytest.raises(StoreUnavailableError, match=r"answered 502 Bad Gateway"):
        proxy.get_run("run_1")
    odd = answering(418, {"detail": "teapot"})
    with pytest.raises(TenantflowError, match=r"answered 418") as caught:
        odd.get_run("run_1")
    assert type(caught.value) is TenantflowError


def test_a_success_that_is_not_json_is_an_error() -> None:
    with pytest.raises(TenantflowError, match="not JSON"):
        answering(200, text="<html>welcome</html>").get_run("run_1")


def test_an_unreachable_server_is_store_unavailable_naming_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(StoreUnavailableError) as caught:
        client(refuse).tenant()
    assert caught.value.message == (
        f"cannot reach the tenantflow server at {URL}: [Errno 111] Connection refused"
    )
    assert "\n" not in caught.value.message


def test_exit_codes_are_2_for_credentials_and_bad_input_1_otherwise() -> None:
    assert exit_code(AuthenticationError("no key")) == EXIT_USAGE
    assert exit_code(PermissionDeniedError("admin only")) == EXIT_USAGE
    assert exit_code(ConfigurationError("bad")) == EXIT_USAGE
    assert exit_code(NotFoundError("gone")) == EXIT_FAILURE
    assert exit_code(StoreUnavailableError("down")) == EXIT_FAILURE


# -- requests and records ------------------------------------------------------------------------

RUN = {
    "id": "run_1",
    "tenant_id": "acme",
    "workflow": "loan",
    "workflow_version": "1",
    "status": "completed",
    "lane": "normal",
    "input": {"amount": 5000, "name": "Zoë"},
    "result": None,
    "error": None,
    "state_version": 2,
    "state_hash": "ab" * 32,
    "idempotency_key": "k1",
    "parent_run_id": None,
    "created_at": "2026-11-21T09:03:49.116693Z",
    "updated_at": "2026-11-21T09:03:49.124094Z",
    "finished_at": "2026-11-21T09:03:49.124094Z",
}


def test_the_key_is_sent_as_a_bearer_token_and_never_shown() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=RUN)

    api = client(handler)
    api.get_run("run/1?x")
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"
    assert seen[0].url.raw_path == b"/v1/runs/run%2F1%3Fx"  # an id stays one path segment
    assert KEY not in repr(api)


def test_a_run_comes_back_as_the_record_the_engine_returns() -> None:
    run = answering(200, RUN).get_run("run_1")
    assert run.status is RunStatus.COMPLETED
    assert json.loads(run.input_json) == {"amount": 5000, "name": "Zoë"}
    assert run.result_json == b"null"  # a completed run's result, even a null one
    shown = render.run_dict(run)
    for name in ("created_at", "updated_at", "finished_at"):
        assert shown[name] == RUN[name]  # microseconds round-trip exactly
    assert {k: v for k, v in shown.items() if k != "meta"} == RUN
    failed = answering(200, {**RUN, "status": "failed", "error": "boom"}).get_run("run_1")
    assert failed.result_json is None


def test_long_lists_are_read_page_by_page() -> None:
    queries: list[dict[str, str]] = []
    newest = 1200

    def handler(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        queries.append(query)
        start = int(query.get("cursor", f"run_{newest + 1}").removeprefix("run_")) - 1
        limit = int(query["limit"])
        ids = list(range(start, max(start - limit, 0), -1))
        items = [{**RUN, "id": f"run_{n}"} for n in ids]
        more = ids and ids[-1] > 1
        return httpx.Response(200, json={"items": items, "next": items[-1]["id"] if more else None})

    runs = client(handler).list_runs(limit=700, status=RunStatus.COMPLETED, workflow="loan")
    assert [r.id for r in runs] == [f"run_{n}" for n in range(1200, 500, -1)]
    assert queries == [
        {"status": "completed", "workflow": "loan", "limit": "500"},
        {"status": "completed", "workflow": "loan", "limit": "200", "cursor": "run_701"},
    ]
    queries.clear()
    assert len(client(handler).list_runs(limit=3, before="run_3")) == 2  # the list ends
    assert queries == [{"limit": "3", "cursor": "run_3"}]


def test_review_statuses_repeat_and_records_carry_the_keys_tenant() -> None:
    seen: list[httpx.URL] = []
    review = {
        "id": "rev_1",
        "run_id": "run_1",
        "step": "review",
        "pool": "p",
        "lane": "normal",
        "status": "approved",
        "sla_due": None,
        "created_at": "2026-11-21T09:03:49Z",
        "claimed_by": "alice",
        "decided_by": "alice",
        "decided_at": "2026-11-21T09:04:00.5Z",
        "comment": None,
        "escalations": 0,
        "payload": {"amount": 1},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        if request.url.path == "/v1/tenant":
            return httpx.Response(403, json=error("permission_denied", "use a tenant key"))
        return httpx.Response(200, json={"items": [review]})

    api = client(handler)
    with pytest.raises(PermissionDeniedError):  # the tenant comes from the key
        api.list_reviews(statuses=[ReviewStatus.APPROVED, ReviewStatus.REJECTED], pool="p")
    assert seen[0].params.get_list("status") == ["approved", "rejected"]
    assert seen[0].params["pool"] == "p" and seen[0].params["limit"] == "100"


def test_deleting_a_tenant_sends_purge_audit_and_returns_the_proof() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"tenant_id": "acme", "deleted": {"runs": 2}, "left": {"runs": 0}}
        return httpx.Response(200, json=body)

    result = client(handler).delete_tenant("acme", purge_audit=True)
    assert result == {"deleted": {"runs": 2}, "left": {"runs": 0}}
    assert (seen[0].method, seen[0].url.path) == ("DELETE", "/v1/tenants/acme")
    assert seen[0].url.params["purge_audit"] == "true"


# -- settings ------------------------------------------------------------------------------------


def test_settings_read_the_server_and_key_and_never_show_the_key() -> None:
    env = {"TENANTFLOW_URL": "https://tf.example:8443", "TENANTFLOW_API_KEY": KEY}
    settings = Settings.from_env(env)
    assert (settings.url, settings.api_key) == ("https://tf.example:8443", KEY)
    assert KEY not in repr(settings) and KEY not in str(settings)
    flagged = Settings.from_env(env, url="http://127.0.0.1:8000", api_key="tfk_other")
    assert (flagged.url, flagged.api_key) == ("http://127.0.0.1:8000", "tfk_other")
    assert Settings.from_env({}).url is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"TENANTFLOW_URL": "ftp://tf.example"}, ("TENANTFLOW_URL", "http(s)://")),
        ({"TENANTFLOW_URL": ""}, ("TENANTFLOW_URL",)),
        ({"TENANTFLOW_API_KEY": ""}, ("TENANTFLOW_API_KEY",)),
        ({"TENANTFLOW_API_KEY": "tfk_a secret"}, ("TENANTFLOW_API_KEY",)),
    ],
)
def test_a_bad_server_setting_names_its_variable_but_not_the_key(
    env: dict[str, str], words: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    for word in words:
        assert word in caught.value.message
    assert "secret" not in caught.value.message
    assert "secret" not in json.dumps(caught.value.to_dict())
