"""The Client follows a federated plane's redirect to the tenant's cell, keeps using the cell,
and asks the plane again when the cell cannot be reached."""

from __future__ import annotations

import httpx
import pytest

from tenantflow.client import Client
from tenantflow.errors import ConfigurationError, StoreUnavailableError

KEY = "tfk_" + "a" * 24 + "_" + "s" * 40
TENANT = {
    "id": "acme",
    "org_id": None,
    "policy_version": 1,
    "region": None,
    "store": "default",
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
    "policy": {"tier": "standard", "weight": 1.0, "max_active_runs": 5, "max_running_steps": 5},
}


def test_redirect_is_followed_with_the_key_and_the_cell_is_remembered() -> None:
    seen: list[tuple[str, str | None]] = []
    cell_up = {"on": True}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.port == 9000:  # the plane
            return httpx.Response(
                307, headers={"location": f"http://127.0.0.1:9100{request.url.raw_path.decode()}"}
            )
        if not cell_up["on"]:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=TENANT)

    client = Client("http://127.0.0.1:9000", KEY, transport=httpx.MockTransport(handler))
    assert client.tenant().id == "acme"
    assert seen == [
        ("http://127.0.0.1:9000/v1/tenant", f"Bearer {KEY}"),
        ("http://127.0.0.1:9100/v1/tenant", f"Bearer {KEY}"),
    ]
    seen.clear()
    client.tenant()
    assert seen == [("http://127.0.0.1:9100/v1/tenant", f"Bearer {KEY}")]  # the plane is out
    seen.clear()
    cell_up["on"] = False
    with pytest.raises(StoreUnavailableError):
        client.tenant()
    # It went back to the plane, which sent it to the cell again; the cell still refused.
    assert [u for u, _ in seen][:3] == [
        "http://127.0.0.1:9100/v1/tenant",
        "http://127.0.0.1:9000/v1/tenant",
        "http://127.0.0.1:9100/v1/tenant",
    ]


def test_a_redirect_to_something_not_http_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"location": "file:///etc/passwd"})

    client = Client("http://127.0.0.1:9000", KEY, transport=httpx.MockTransport(handler))
    with pytest.raises(ConfigurationError):
        client.tenant()
