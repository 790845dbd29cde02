"""The API in-process for tests: the app around a SQLite engine, its lifespan running, and an
httpx client on ``httpx.ASGITransport``; plus the few calls every API test makes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import api_workflows
import httpx
from fastapi import FastAPI

import tenantflow as tf
from tenantflow.api import create_app

__all__ = ["Api", "bearer", "serving"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Api:
    engine: tf.Engine
    app: FastAPI
    client: httpx.AsyncClient
    admin_key: str

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.admin_key)

    async def tenant(self, tenant_id: str, **policy: Any) -> str:
        """Register a tenant over the API and return a new key of it."""
        r = await self.client.post(
            "/v1/tenants", json={"id": tenant_id, "policy": policy}, headers=self.admin
        )
        assert r.status_code == 201, r.text
        r = await self.client.post(f"/v1/tenants/{tenant_id}/keys", headers=self.admin)
        assert r.status_code == 201, r.text
        secret: str = r.json()["secret"]
        return secret

    async def submit(self, key: str, workflow: str, input: Any, **extra: Any) -> dict[str, Any]:
        r = await self.client.post(
            "/v1/runs", json={"workflow": workflow, "input": input, **extra}, headers=bearer(key)
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def wait_run(
        self, key: str, run_id: str, statuses: Iterable[str] = ("completed",), timeout: float = 10
    ) -> dict[str, Any]:
        """Poll the run until its status is one of ``statuses``."""
        wanted = set(statuses)
        async with asyncio.timeout(timeout):
            while True:
                r = await self.client.get(f"/v1/runs/{run_id}", headers=bearer(key))
                assert r.status_code == 200, r.text
                body: dict[str, Any] = r.json()
                if body["status"] in wanted:
                    return body
                await asyncio.sleep(0.02)

    async def wait_review(self, key: str, run_id: str, timeout: float = 10) -> dict[str, Any]:
        """The open review task of the run, once it exists."""
        async with asyncio.timeout(timeout):
            while True:
                r = await self.client.get("/v1/reviews", headers=bearer(key))
                assert r.status_code == 200, r.text
                for review in r.json()["items"]:
                    if review["run_id"] == run_id:
                        found: dict[str, Any] = review
                        return found
                await asyncio.sleep(0.02)


@asynccontextmanager
async def serving(directory: Path, **options: Any) -> AsyncIterator[Api]:
    """The app on a fresh SQLite database in ``directory`` (``options`` go to create_app)."""
    engine = tf.Engine.open(
        f"sqlite:///{directory / 'api.db'}?synchronous=normal",
        seed=1,
        **options.pop("engine_options", {}),
    )
    app = create_app(engine, setup=[api_workflows.setup], **options)
    async with app.router.lifespan_context(app):
        _, admin = await engine.keys.create(None, name="admin")
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(engine, app, client, admin)
