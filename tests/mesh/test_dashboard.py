"""The dashboard on the mesh API: a tenant signs in at /ui with its key and sees its runs and a
run's detail (read from the projected read model), and an admin sees the health page list the
agent that ran them (kind ``agent``, from its heartbeats), and the load page the queues."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import tenantflow as tf
from tenantflow.api.app import create_app
from tenantflow.placement.centralized import open_front
from tenantflow.placement.mesh.agent import AgentOptions, close_agent, open_agent
from tenantflow.placement.mesh.control import MeshControl
from tenantflow.selftest.workload import STEPS, WORKFLOW, setup

pytestmark = pytest.mark.timeout(60)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def _sign_in(app: Any, key: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api")
    page = await client.get("/ui/login")
    assert page.status_code == 200
    r = await client.post("/ui/login", data={"csrf": _csrf(page.text), "key": key})
    assert r.status_code == 303, r.text
    return client


async def test_the_dashboard_on_the_mesh_api(
    mesh_server: Any, admin: Any, postgres_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TF_SELFTEST_STEP_MS", "1,3")
    control = MeshControl(
        open_front(postgres_url),
        nats_url=mesh_server.url,
        creds=mesh_server.creds["admin"],
        regions=["eu"],
        default_region="eu",
        read_model=f"sqlite:///{tmp_path / 'read.db'}",
    )
    app = create_app(control, setup=[setup])  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        _, admin_key = await control.keys.create(None, name="admin")
        await control.tenants.create("acme")
        await control.tenants.create("globex")
        _, acme_key = await control.keys.create("acme")
        options = AgentOptions(
            postgres_url,
            mesh_server.url,
            mesh_server.creds["agent-eu"],
            ["eu"],
            default_region="eu",
            sweep=False,
            setups=(setup,),
        )
        agent = await open_agent(options)
        clients: list[httpx.AsyncClient] = []
        try:
            runs = [
                (await control.submit(WORKFLOW, tenant="acme", input={"i": i})).id for i in range(2)
            ]
            other = (await control.submit(WORKFLOW, tenant="globex", input={"i": 9})).id
            deadline = time.monotonic() + 20
            for run_id, tenant in [(r, "acme") for r in runs] + [(other, "globex")]:
                while (await control.get_run(tenant, run_id)).status != tf.RunStatus.COMPLETED:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)

            acme = await _sign_in(app, acme_key)
            clients.append(acme)
            page = await acme.get("/ui/runs")
            assert page.status_code == 200, page.text
            assert all(r in page.text for r in runs) and other not in page.text
            detail = await acme.get(f"/ui/runs/{runs[0]}")
            assert detail.status_code == 200, detail.text
            assert "completed" in detail.text
            assert all(
                f">{step}<" in detail.text or f"/steps/{step}" in detail.text for step in STEPS
            )
            assert (await acme.get(f"/ui/runs/{other}")).status_code == 404  # globex's

            ops = await _sign_in(app, admin_key)
            clients.append(ops)
            deadline = time.monotonic() + 10
            while True:  # the agent's first beat is published when it starts
                health = await ops.get("/ui/admin/health")
                assert health.status_code == 200, health.text
                if agent[0].owner in health.text:
                    break
                assert time.monotonic() < deadline, health.text[-2000:]
                await asyncio.sleep(0.2)
            members = {m.id: m for m in await control.health()}
            assert members[agent[0].owner].kind == "agent"
            assert members[agent[0].owner].state == "up"
            assert members[agent[0].owner].detail["slots"] == options.slots
            assert "<td>agent</td>" in health.text
            assert (await ops.get("/ui/admin/fairness")).status_code == 200
            assert control.load().slots == options.slots  # the live agent's slots
        finally:
            for client in clients:
                await client.aclose()
            await close_agent(*agent)
