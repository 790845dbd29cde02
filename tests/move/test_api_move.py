"""What a tenant's callers see through the source's REST API during and after a move."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import tenantflow as tf
from tenantflow.placement.move import cancel_release, move_tenant, release_tenant

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e" / "apps"))
import api_workflows
from api_harness import bearer, serving

pytestmark = pytest.mark.timeout(60)


async def test_the_source_api_answers_409_while_moving_and_the_target_serves_the_key(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as api:
        key = await api.tenant("acme")
        run = {"workflow": "tally", "input": 3}
        cell = tf.Engine.open(f"sqlite:///{tmp_path / 'cell.db'}")
        api_workflows.setup(cell)
        async with cell:
            await release_tenant(api.engine, "acme", location="https://cell-acme.example")
            r = await api.client.post("/v1/runs", json=run, headers=bearer(key))
            assert r.status_code == 409, r.text
            error = r.json()["error"]
            assert error["code"] == "tenant_moved" and error["state"] == "moving"
            assert error["location"] == "https://cell-acme.example"
            assert error["retry_after_s"] == 1.0
            await cancel_release(api.engine, "acme", reason="changed our minds")
            r = await api.client.post("/v1/runs", json=run, headers=bearer(key))
            assert r.status_code == 201, r.text  # served at the source again

            report = await move_tenant(api.engine, cell, "acme", location="cell:acme")
            assert len(report.api_keys) == 1 and report.runs == 1
            r = await api.client.post("/v1/runs", json=run, headers=bearer(key))
            assert r.status_code == 401, r.text  # the source no longer knows whose key it is
            principal = await cell.keys.authenticate(key)
            assert principal.tenant_id == "acme" and principal.key_id == report.api_keys[0]
            actions = [a.action for a in await cell.audit_log("acme")]
            assert actions[-3:] == ["tenant.move_aborted", "tenant.moving", "tenant.moved"]
