"""tenantflow as an MCP server at /mcp: a tenant's key drives its runs and reviews end to end
through an MCP client, with the REST API's answers."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from api_harness import Api, bearer, serving

pytest.importorskip("mcp")
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(tmp_path) as served:
        yield served


async def call(client: Any, name: str, **arguments: Any) -> Any:
    result = await client.call_tool(name, arguments)
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{name}: {text}"
    return json.loads(text)


async def test_a_tenant_runs_reviews_and_reads_usage_over_mcp(api: Api) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    key = await api.tenant("acme")
    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(api.app), base_url="http://api", headers=bearer(key)
    )
    async with http, Client(streamable_http_client("http://api/mcp", http_client=http)) as c:
        started = await call(
            c,
            "start_run",
            workflow="approval",
            input={"applicant": "ann", "amount": 5000},
            idempotency_key="loan-1",
        )
        assert started["created"] is True
        again = await call(
            c,
            "start_run",
            workflow="approval",
            input={"applicant": "ann", "amount": 5000},
            idempotency_key="loan-1",
        )
        assert (again["id"], again["created"]) == (started["id"], False)
        reused = await c.call_tool(
            "start_run",
            {
                "workflow": "approval",
                "input": {"applicant": "eve", "amount": 1},
                "idempotency_key": "loan-1",
            },
        )
        assert reused.is_error
        assert "".join(getattr(b, "text", "") for b in reused.content).startswith("conflict: ")
        review = await api.wait_review(key, started["id"])
        listed = await call(c, "list_reviews")
        assert [r["id"] for r in listed] == [review["id"]]
        decided = await call(
            c, "decide_review", review_id=review["id"], approve=True, reviewer="rita"
        )
        assert decided["status"] == "approved"
        await api.wait_run(key, started["id"])
        run = await call(c, "get_run", run_id=started["id"])
        assert (run["status"], run["result"]) == ("completed", "approved")
        kinds = [e["kind"] for e in await call(c, "get_run_timeline", run_id=started["id"])]
        assert kinds[0] == "run.submitted" and kinds[-1] == "run.completed"
        other = await call(
            c, "start_run", workflow="approval", input={"applicant": "bo", "amount": 9000}
        )
        await api.wait_review(key, other["id"])
        cancelled = await call(c, "cancel_run", run_id=other["id"], reason="withdrawn")
        assert cancelled["id"] == other["id"]
        assert [r["id"] for r in await call(c, "list_runs", status="completed")] == [started["id"]]
        usage = await call(c, "get_usage")
        assert any(row["metric"] == "steps" for row in usage)
        bad = await c.call_tool("list_runs", {"status": "no-such-status"})
        assert bad.is_error
        assert "invalid_argument" in "".join(getattr(b, "text", "") for b in bad.content)
