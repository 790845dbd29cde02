"""Backpressure at the mesh's intake, over HTTP: once a tenant's work items waiting on the
stream reach its policy's limit (20 per run it may have active), a submission is refused with
429, ``Retry-After`` and a JSON body, and nothing is recorded; another tenant is not affected.

No agent runs, so every submitted run's first work item stays on the stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import tenantflow as tf
from tenantflow.adapters.nats.fabric import save_credentials
from tenantflow.adapters.nats.policy import QUEUED_PER_ACTIVE_RUN
from tenantflow.client import Client
from tenantflow.selftest.workload import WORKFLOW

from .test_up import _free_port, _tenant_key, _wait_http

pytestmark = pytest.mark.timeout(90)


async def _setup(url: str) -> tuple[str, str]:
    async with tf.Engine.open(url) as engine:
        await engine.tenants.create("acme", tier="standard", max_active_runs=1)
        await engine.tenants.create("globex", tier="standard", max_active_runs=1)
    return await _tenant_key(url, "acme"), await _tenant_key(url, "globex")


def test_a_tenant_past_its_queue_limit_gets_429_with_retry_after(
    mesh_server: Any, postgres_url: str, tmp_path: Path
) -> None:
    acme_key, globex_key = asyncio.run(_setup(postgres_url))
    creds = save_credentials(mesh_server.creds["admin"], tmp_path / "admin.json")
    port = _free_port()
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "tenantflow.topology.mesh_api", "--db", postgres_url,
                "--nats", mesh_server.url, "--creds", str(creds), "--regions", "eu",
                "--default-region", "eu", "--port", str(port),
                "--app", "tenantflow.selftest.workload:setup",
            ],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    limit = QUEUED_PER_ACTIVE_RUN  # max_active_runs = 1
    try:
        _wait_http(url, proc, log)
        with httpx.Client(base_url=url, timeout=30) as http:

            def submit(key: str, i: int) -> httpx.Response:
                return http.post(
                    "/v1/runs",
                    json={"workflow": WORKFLOW, "input": {"i": i}},
                    headers={"Authorization": f"Bearer {key}"},
                )

            for i in range(limit):
                answer = submit(acme_key, i)
                assert answer.status_code < 300, answer.text
            refused = submit(acme_key, limit)
            assert refused.status_code == 429, refused.text
            assert float(refused.headers["Retry-After"]) >= 1
            body = refused.json()
            assert "20 work items waiting" in str(body), body
            # Nothing was recorded for the refused submission; another tenant still gets in.
            with Client(url, acme_key) as client:
                assert len(list(client.list_runs(limit=100))) == limit
            assert submit(globex_key, 0).status_code < 300
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
