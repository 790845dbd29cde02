"""Two API processes on one database share the dashboard's sessions and sign-in counts: a
session made through one is valid through the other, signing out (or revoking the key) through
one ends it in both, and failed sign-ins through both count together. Two apps, each with its
own engine on the same SQLite file, stand in for two ``tenantflow serve`` processes behind a
load balancer (nothing is shared between them but the file)."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent / "apps"))
import api_workflows
from api_harness import Api, serving

import tenantflow as tf
from tenantflow.api import create_app
from tenantflow.dashboard.records import OWNER, StoreRecords
from tenantflow.dashboard.sessions import COOKIE
from tenantflow.domain.ids import check_tenant

pytestmark = pytest.mark.timeout(60)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


@asynccontextmanager
async def second_process(directory: Path) -> AsyncIterator[tuple[tf.Engine, httpx.AsyncClient]]:
    """Another app with its own engine on the first one's SQLite file (not executing runs:
    one engine executes from a SQLite file; any number may serve the API and the dashboard)."""
    engine = tf.Engine.open(
        f"sqlite:///{directory / 'api.db'}?synchronous=normal", seed=2, execute=False
    )
    app = create_app(engine, setup=[api_workflows.setup])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app, client=("10.0.0.9", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield engine, client


def first_process(api: Api) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(api.app, client=("10.0.0.8", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


async def attempt(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/ui/login")
    return await client.post("/ui/login", data={"csrf": csrf_of(form.text), "key": key})


async def test_a_session_made_in_one_process_is_valid_and_ended_in_the_other(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as api:
        key = await api.tenant("acme")  # before B starts: a process reads tenants at start
        async with second_process(tmp_path) as (other, b), first_process(api) as a:
            signed_in = await attempt(a, key)
            assert signed_in.status_code == 303, signed_in.text
            token = a.cookies[COOKIE]
            b.cookies.update(a.cookies)  # the load balancer sends the next request to B
            on_b = await b.get("/ui/runs")  # B never saw the sign-in
            assert on_b.status_code == 200, on_b.text
            assert "acme" in on_b.text and key not in on_b.text
            # The CSRF token is the session's on both: a form made by A is accepted by B.
            csrf = csrf_of((await a.get("/ui/runs")).text)
            assert csrf_of(on_b.text) == csrf
            out = await b.post("/ui/logout", data={"csrf": csrf})
            assert out.status_code == 303 and out.headers["location"] == "/ui/login"
            refused = await a.get("/ui/runs")  # signed out through B: A refuses it too
            assert refused.status_code == 303 and refused.headers["location"] == "/ui/login"
            # Nothing stored is the key or the token: the row is the token's digest.
            rows = await StoreRecords(api.engine.store).scan("sessions", "", now=0.0, limit=10)
            assert rows == []  # signed out: gone from the database

            assert (await attempt(a, key)).status_code == 303
            token = a.cookies[COOKIE]
            b.cookies.update(a.cookies)  # the load balancer sends the next request to B
            assert (await b.get("/ui/runs")).status_code == 200
            rows = await StoreRecords(api.engine.store).scan("sessions", "", now=0.0, limit=10)
            assert len(rows) == 1
            stored = repr(rows)
            assert key not in stored and token not in stored
            assert key.split("_")[-1] not in stored
            # Revoking the key through B's engine ends the session through A.
            [info] = await other.keys.list("acme")
            await other.keys.revoke("acme", info.id)
            assert (await a.get("/ui/runs")).status_code == 303
            assert (await b.get("/ui/runs")).status_code == 303


async def test_failed_sign_ins_count_across_processes(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        key = await api.tenant("acme")
        wrong = key[:-3] + "xyz"  # the key's id, a wrong secret
        async with second_process(tmp_path) as (_, b), first_process(api) as a:
            for client in (a, b, a, b, a):  # 5 failures, spread over both processes
                assert (await attempt(client, wrong)).status_code == 401
            for client in (a, b):  # the key is locked in both, the right secret included
                locked = await attempt(client, key)
                assert locked.status_code == 429, locked.text
                assert COOKIE not in locked.headers.get("set-cookie", "")
            # The failures are rows of the reserved owner, which no tenant id can be.
            with pytest.raises(tf.ConfigurationError):
                check_tenant(OWNER)
            with pytest.raises(tf.ConfigurationError):
                await api.engine.tenants.create(OWNER)


async def test_expired_rows_are_swept_from_the_store(tmp_path: Path) -> None:
    from tenantflow.dashboard.records import SWEEP_S

    async with serving(tmp_path) as api:
        records = StoreRecords(api.engine.store)
        for i in range(3):
            await records.put("sign-in", f"old{i}", {"at": i}, now=1000.0, expires_at=1010.0)
        assert len(await records.scan("sign-in", "", now=0.0, limit=10)) == 3
        assert await records.scan("sign-in", "", now=1010.0, limit=10) == []  # expired
        await records.put("sign-in", "new", {"at": 1}, now=1000.0 + SWEEP_S, expires_at=2e9)
        left = await records.scan("sign-in", "", now=0.0, limit=10)  # expired ones included
        assert [k for k, _ in left] == ["new"]


async def test_the_sweep_pages_through_every_row(tmp_path: Path, monkeypatch: Any) -> None:
    import tenantflow.dashboard.records as module

    monkeypatch.setattr(module, "_SWEEP_PAGE", 3)
    async with serving(tmp_path) as api:
        records = StoreRecords(api.engine.store)
        # Live rows first in key order, expired ones after them: one page does not reach them.
        for i in range(4):
            await records.put("s", f"a{i}", {}, now=0.0, expires_at=1e12)
        for i in range(4):
            await records.put("s", f"b{i}", {}, now=0.0, expires_at=10.0)

        async def keys() -> list[str]:
            return [k for k, _ in await records.scan("s", "", now=0.0, limit=100)]

        assert len(await keys()) == 8
        t = 100.0
        while any(k.startswith("b") for k in await keys()):
            t += module.SWEEP_S
            assert t < 100.0 + 10 * module.SWEEP_S, await keys()  # a few passes, not forever
            await records.put("s", "a0", {}, now=t, expires_at=1e12)
        assert await keys() == ["a0", "a1", "a2", "a3"]
