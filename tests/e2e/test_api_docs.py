"""``/docs`` works offline: Swagger UI's assets come from the package, never from a CDN."""

from __future__ import annotations

import re

import httpx

import tenantflow as tf
from tenantflow.api import create_app
from tenantflow.testing import MemoryStore


async def test_docs_page_and_its_assets_are_served_from_the_package() -> None:
    engine = tf.Engine(MemoryStore(), tf.EngineConfig(execute=False))
    app = create_app(engine)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        page = await c.get("/docs")
        assert page.status_code == 200
        assert "swagger-ui" in page.text
        urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing off the host
        assert not re.search(r"https?://", page.text.replace("http://api", ""))
        for url in urls:
            asset = await c.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url
        assert (await c.get("/redoc")).status_code == 404  # CDN-only: not offered
        assert (await c.get("/openapi.json")).json()["info"]["title"] == "tenantflow"
