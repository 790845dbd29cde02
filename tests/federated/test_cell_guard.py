"""A cell's guard: a moved tenant's key is redirected to its new place (the redirect marker);
other keys reach the API untouched."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from tenantflow.placement.federated.cell import CellGuard

MOVED = "tfk_" + "b" * 24 + "_" + "s" * 40
STAYED = "tfk_" + "c" * 24 + "_" + "s" * 40


async def api(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"reached": scope["path"]})(scope, receive, send)


async def test_a_moved_tenants_key_is_redirected_and_others_pass() -> None:
    cell: Any = SimpleNamespace(
        moved={"key_" + "b" * 24: "http://10.0.0.9:8100"}, draining=set(), engine=None
    )
    guard = CellGuard(api, cell=lambda: cell)
    transport = httpx.ASGITransport(app=guard)
    async with httpx.AsyncClient(transport=transport, base_url="http://cell") as client:
        moved = await client.get("/v1/runs?limit=5", headers={"Authorization": f"Bearer {MOVED}"})
        assert moved.status_code == 307
        assert moved.headers["location"] == "http://10.0.0.9:8100/v1/runs?limit=5"
        assert moved.json()["error"]["code"] == "moved"
        stayed = await client.get("/v1/runs", headers={"Authorization": f"Bearer {STAYED}"})
        assert stayed.status_code == 200 and stayed.json() == {"reached": "/v1/runs"}
