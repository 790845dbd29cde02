"""``GET /v1/workflows``: what a tenant can submit, with which input."""

from __future__ import annotations

import httpx
from pydantic import BaseModel, Field

import tenantflow as tf
from tenantflow.api import create_app
from tenantflow.testing import MemoryStore


class Application(BaseModel):
    applicant: str
    amount: float = Field(gt=0)


def _workflow(version: int) -> tf.Workflow:
    wf = tf.Workflow("loan", input=Application, version=version)

    @wf.step
    async def verify(ctx: tf.StepContext, application: Application) -> bool:
        return True

    @wf.step
    async def decide(ctx: tf.StepContext, verify: bool) -> str:
        return "ok"

    return wf


async def test_a_tenant_key_lists_workflows_versions_and_input_schemas() -> None:
    async with tf.Engine(MemoryStore()) as engine:
        await _check(engine)


async def _check(engine: tf.Engine) -> None:
    engine.register(_workflow(1))
    engine.register(_workflow(2))
    await engine.tenants.create("bank-a")
    _, tenant_key = await engine.keys.create("bank-a")
    _, admin_key = await engine.keys.create(None)
    app = create_app(engine, manage_engine=False)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        assert (await c.get("/v1/workflows")).status_code == 401
        admin = {"Authorization": f"Bearer {admin_key}"}
        assert (await c.get("/v1/workflows", headers=admin)).status_code == 403
        for key in (tenant_key,):
            r = await c.get("/v1/workflows", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            assert [(w["name"], w["version"], w["latest"]) for w in items] == [
                ("loan", "1", False),
                ("loan", "2", True),
            ]
            assert items[0]["steps"] == ["verify", "decide"]
            schema = items[1]["input_schema"]
            assert schema["required"] == ["applicant", "amount"]
            assert schema["properties"]["amount"]["exclusiveMinimum"] == 0
