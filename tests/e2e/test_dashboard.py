"""The web dashboard in-process (``httpx.ASGITransport``): sign-in, sessions, CSRF, headers, and
every page for tenant A, tenant B, an admin and no session — B never sees A's ids or canary
strings, the admin never sees a tenant's inputs or outputs."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from api_harness import Api, serving

import tenantflow as tf
from tenantflow.dashboard.sessions import COOKIE
from tenantflow.observability.metrics import fairness_index

pytestmark = pytest.mark.timeout(60)

CANARY_A = "canary-a-5e1f0c"  # A's applicant: in its inputs, state and review payloads
CANARY_B = "canary-b-93d2aa"
MADE_UP = "run_0123456789abcdef01234567"


@dataclass
class Browser:
    """One signed-in (or anonymous) httpx client on the app, with its session's CSRF token."""

    client: httpx.AsyncClient
    csrf: str = ""

    async def get(self, url: str) -> httpx.Response:
        return await self.client.get(url)

    async def post(self, url: str, **fields: str | list[str]) -> httpx.Response:
        data = {"csrf": self.csrf, **fields}
        return await self.client.post(url, data=data)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def sign_in(api: Api, key: str) -> Browser:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(api.app), base_url="http://api")
    page = await client.get("/ui/login")
    assert page.status_code == 200
    r = await client.post("/ui/login", data={"csrf": csrf_of(page.text), "key": key})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/ui/"
    cookie = r.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert key not in cookie
    home = await client.get("/ui/", follow_redirects=True)
    assert home.status_code == 200, home.text
    assert key not in home.text
    return Browser(client, csrf_of(home.text))


@dataclass
class World:
    api: Api
    a: Browser
    b: Browser
    admin: Browser
    anon: Browser
    key_a: str
    key_b: str
    run_a: str  # waiting for its review
    done_a: str  # completed
    run_b: str
    review_a: str


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with serving(tmp_path) as api:
        key_a = await api.tenant("acme")
        key_b = await api.tenant("globex")
        run_a = (await api.submit(key_a, "approval", {"applicant": CANARY_A, "amount": 5000}))["id"]
        done_a = (await api.submit(key_a, "approval", {"applicant": CANARY_A, "amount": 10}))["id"]
        run_b = (await api.submit(key_b, "approval", {"applicant": CANARY_B, "amount": 7000}))["id"]
        await api.wait_run(key_a, done_a)
        review_a = (await api.wait_review(key_a, run_a))["id"]
        await api.wait_review(key_b, run_b)
        await api.engine.memory.put(
            "acme", "profile", {"applicant": CANARY_A}, namespace="user:ada"
        )
        await api.engine.memory.add_document("acme", f"dispute letter from {CANARY_A}", id="doc1")
        browsers = [await sign_in(api, k) for k in (key_a, key_b, api.admin_key)]
        anon = Browser(
            httpx.AsyncClient(transport=httpx.ASGITransport(api.app), base_url="http://api")
        )
        try:
            yield World(api, *browsers, anon, key_a, key_b, run_a, done_a, run_b, review_a)
        finally:
            for b in [*browsers, anon]:
                await b.client.aclose()


def tenant_pages(w: World) -> list[str]:
    """A's pages: the lists every tenant has, and A's own objects."""
    return [
        "/ui/runs",
        "/ui/runs?status=completed",
        "/ui/runs?workflow=approval&window=24h",
        f"/ui/runs/{w.run_a}",
        f"/ui/runs/{w.done_a}",
        f"/ui/runs/{w.done_a}/live",
        f"/ui/runs/{w.done_a}/state?version=1",
        f"/ui/runs/{w.done_a}/events",
        f"/ui/runs/{w.done_a}/steps/decide",
        "/ui/reviews",
        "/ui/usage",
        "/ui/audit",
        "/ui/audit?verify=true",
        "/ui/memory?namespace=user:ada",
        "/ui/memory?q=dispute",
        "/ui/runs?min_cost=0&until=2100-01-01T00:00&since=2000-01-01",
    ]


ADMIN_PAGES = [
    "/ui/admin/tenants",
    "/ui/admin/tenants/acme",
    "/ui/admin/fairness",
    "/ui/admin/health",
]


async def test_tenant_a_sees_its_runs_reviews_and_canaries(world: World) -> None:
    a = world.a
    runs = await a.get("/ui/runs")
    assert runs.status_code == 200
    assert world.run_a in runs.text and world.done_a in runs.text
    assert world.run_b not in runs.text
    detail = await a.get(f"/ui/runs/{world.run_a}")
    assert detail.status_code == 200
    assert 'class="dag"' in detail.text and "waiting" in detail.text
    assert 'data-events="/ui/runs/' in detail.text  # live while it waits
    reviews = await a.get("/ui/reviews")
    assert world.review_a in reviews.text and CANARY_A in reviews.text
    state = await a.get(f"/ui/runs/{world.done_a}/state?version=0")
    assert CANARY_A in state.text
    step = await a.get(f"/ui/runs/{world.done_a}/steps/decide")
    assert step.status_code == 200 and "&#34;approved&#34;" in step.text  # its output
    assert "step.succeeded" in step.text
    nostep = await a.get(f"/ui/runs/{world.done_a}/steps/nothing")
    assert nostep.status_code == 404
    events = await a.get(f"/ui/runs/{world.done_a}/events")
    assert events.status_code == 200 and "run.completed" in events.text


async def test_cross_tenant_matrix(world: World) -> None:
    a_ids = [world.run_a, world.done_a, world.review_a, CANARY_A]
    for url in tenant_pages(world):
        mine = await world.a.get(url)
        assert mine.status_code == 200, (url, mine.text[:300])
        theirs = await world.b.get(url)
        for marker in a_ids:
            assert marker not in theirs.text, (url, marker)
        own_object = world.run_a in url or world.done_a in url
        assert theirs.status_code == (404 if own_object else 200), (url, theirs.status_code)
        if own_object:  # exactly the answer to a run that does not exist
            made_up = await world.b.get(
                url.replace(world.run_a, MADE_UP).replace(world.done_a, MADE_UP)
            )
            assert made_up.status_code == 404 and made_up.text == theirs.text
        admin = await world.admin.get(url)
        assert admin.status_code == 403, url
        for marker in [*a_ids, CANARY_B, world.run_b]:
            assert marker not in admin.text, (url, marker)
        anon = await world.anon.get(url)
        assert anon.status_code == 303 and anon.headers["location"] == "/ui/login", url
    # B's own list pages do show B's run: the absence above is scoping, not an empty page.
    assert world.run_b in (await world.b.get("/ui/runs")).text


async def test_admin_pages_show_the_control_plane_and_no_payloads(world: World) -> None:
    for url in ADMIN_PAGES:
        page = await world.admin.get(url)
        assert page.status_code == 200, (url, page.text[:300])
        for marker in [CANARY_A, CANARY_B, world.run_a, world.done_a, world.run_b, world.review_a]:
            assert marker not in page.text, (url, marker)
        for tenant in (world.a, world.b):
            refused = await tenant.get(url)
            assert refused.status_code == 403, url
            assert "admin key" in refused.text
        anon = await world.anon.get(url)
        assert anon.status_code == 303, url
    tenants = await world.admin.get("/ui/admin/tenants")
    assert "acme" in tenants.text and "globex" in tenants.text
    fairness = await world.admin.get("/ui/admin/fairness")
    assert "Jain" in fairness.text and 'id="jain"' in fairness.text


async def test_headers_csp_and_no_inline_script(world: World) -> None:
    for url in ["/ui/login", "/ui/runs", f"/ui/runs/{world.run_a}", "/ui/reviews"]:
        client = world.anon if url == "/ui/login" else world.a
        page = await client.get(url)
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY"
        # Every <script> has a src (no inline script), and no element carries an on* handler.
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) == []
        assert re.search(r"\son[a-z]+=", page.text) is None
    static = await world.anon.get("/ui/static/htmx-2.0.11.min.js")
    assert static.status_code == 200 and "htmx" in static.text


async def test_csrf_is_refused_without_the_sessions_token(world: World) -> None:
    c = world.a.client
    no_token = await c.post("/ui/runs/cancel", data={"run": world.run_a, "confirm": "yes"})
    assert no_token.status_code == 403
    other = await c.post(
        "/ui/runs/cancel", data={"run": world.run_a, "confirm": "yes", "csrf": world.b.csrf}
    )
    assert other.status_code == 403
    as_json = await c.post("/ui/runs/cancel", json={"csrf": world.a.csrf, "run": world.run_a})
    assert as_json.status_code == 403
    decide = await c.post(f"/ui/reviews/{world.review_a}/decide", data={"decision": "approve"})
    assert decide.status_code == 403
    logout = await c.post("/ui/logout", data={"csrf": "forged"})
    assert logout.status_code == 403
    # Nothing happened: the run still waits for its review, the session still works.
    run = await world.a.get(f"/ui/runs/{world.run_a}")
    assert run.status_code == 200 and 'data-events="' in run.text
    # Sign-in itself needs the form's token (its cookie), so no one can sign a browser in.
    fresh = httpx.AsyncClient(transport=httpx.ASGITransport(world.api.app), base_url="http://api")
    async with fresh:
        forged = await fresh.post("/ui/login", data={"csrf": "x", "key": world.key_a})
        assert forged.status_code == 403
        assert COOKIE not in forged.headers.get("set-cookie", "")


async def test_wrong_key_and_sign_out(world: World) -> None:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(world.api.app), base_url="http://api")
    async with client:
        page = await client.get("/ui/login")
        bad = await client.post(
            "/ui/login", data={"csrf": csrf_of(page.text), "key": world.key_a[:-3] + "xyz"}
        )
        assert bad.status_code == 401 and "invalid API key" in bad.text
    out = await world.a.post("/ui/logout")
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    after = await world.a.get("/ui/runs")
    assert after.status_code == 303


async def test_session_expires_on_the_sessions_clock(world: World) -> None:
    sessions = world.api.app.state.dashboard.state.sessions
    # Moved from the session's own sign-in time, not from the test's start: the fixture may
    # have signed in any time before.
    session = await sessions.get(world.a.client.cookies[COOKIE])
    assert session is not None
    now = [session.created_at]
    sessions.now = lambda: now[0]
    assert (await world.a.get("/ui/runs")).status_code == 200
    now[0] += sessions.ttl_s - 1
    assert (await world.a.get("/ui/runs")).status_code == 200
    now[0] += 2
    expired = await world.a.get("/ui/runs")
    assert expired.status_code == 303 and expired.headers["location"] == "/ui/login"
    # htmx requests are told to go to the sign-in page rather than swapping it in.
    hx = await world.b.client.get("/ui/runs", headers={"HX-Request": "true"})
    assert hx.status_code == 204 and hx.headers["hx-redirect"] == "/ui/login"


async def test_revoking_the_key_ends_its_sessions(world: World) -> None:
    keys = await world.api.engine.keys.list("acme")
    await world.api.engine.keys.revoke("acme", keys[0].id)
    assert (await world.a.get("/ui/runs")).status_code == 303
    assert (await world.b.get("/ui/runs")).status_code == 200


async def test_bulk_cancel_asks_then_cancels(world: World) -> None:
    ask = await world.a.post("/ui/runs/cancel", run=[world.run_a, world.done_a])
    assert ask.status_code == 200 and "Yes, cancel 2 runs" in ask.text
    assert (await world.api.engine.get_run("acme", world.run_a)).status.value != "cancelled"
    # B cannot cancel A's run: not found, and nothing changes.
    sneaky = await world.b.post("/ui/runs/cancel", run=[world.run_a], confirm="yes")
    assert sneaky.status_code == 200 and "not found" in sneaky.text
    done = await world.a.post("/ui/runs/cancel", run=[world.run_a, world.done_a], confirm="yes")
    assert done.status_code == 200
    assert "already ended completed" in done.text
    record = await world.api.engine.wait("acme", world.run_a)
    assert record.status.value == "cancelled"
    empty = await world.a.post("/ui/runs/cancel")
    assert empty.status_code == 400


async def test_claim_and_decide_resume_the_run(world: World) -> None:
    theirs = await world.b.post(f"/ui/reviews/{world.review_a}/claim")
    assert theirs.status_code == 404
    claim = await world.a.post(f"/ui/reviews/{world.review_a}/claim")
    assert claim.status_code == 303
    inbox = await world.a.get("/ui/reviews")
    assert "claimed" in inbox.text
    bad = await world.a.post(f"/ui/reviews/{world.review_a}/decide", decision="maybe")
    assert bad.status_code == 422
    decided = await world.a.post(
        f"/ui/reviews/{world.review_a}/decide", decision="approve", comment="ok"
    )
    assert decided.status_code == 303
    assert decided.headers["location"] == f"/ui/runs/{world.run_a}"
    record = await world.api.engine.wait("acme", world.run_a)
    assert record.status.value == "completed"
    page = await world.a.get(f"/ui/runs/{world.run_a}")
    assert "completed" in page.text and 'data-events="' not in page.text


async def test_admin_manages_tenants_and_keys(world: World) -> None:
    admin = world.admin
    r = await admin.post("/ui/admin/tenants/acme", max_running_steps="3", weight="2.5")
    assert r.status_code == 303
    info = await world.api.engine.tenants.get("acme")
    assert info.policy.max_running_steps == 3 and info.policy.weight == 2.5
    bad = await admin.post("/ui/admin/tenants/acme", max_running_steps="-1")
    assert bad.status_code == 422
    nan = await admin.post("/ui/admin/tenants/acme", weight="nan")
    assert nan.status_code == 422
    assert (await world.api.engine.tenants.get("acme")).policy.max_running_steps == 3
    created = await admin.post("/ui/admin/tenants", id="initech", tier="free")
    assert created.status_code == 303
    key = await admin.post("/ui/admin/tenants/initech/keys", name="ops")
    assert key.status_code == 201
    secret = re.search(r'id="new-secret">([^<]+)<', key.text)
    assert secret is not None
    ops = await sign_in(world.api, secret.group(1))
    try:
        assert (await ops.get("/ui/runs")).status_code == 200
        page = await admin.get("/ui/admin/tenants/initech")
        assert secret.group(1) not in page.text  # shown once only
        key_id = re.search(r"/keys/(key_[0-9a-f]+)/rotate", page.text)
        assert key_id is not None
        rotated = await admin.post(f"/ui/admin/tenants/initech/keys/{key_id.group(1)}/rotate")
        assert rotated.status_code == 200
        successor = re.search(r'id="new-secret">([^<]+)<', rotated.text)
        assert successor is not None and successor.group(1) != secret.group(1)
        assert (await ops.get("/ui/runs")).status_code == 303  # the old key's session ended
        await ops.client.aclose()
        ops = await sign_in(world.api, successor.group(1))
        new_id = re.search(r"/keys/(key_[0-9a-f]+)/revoke", rotated.text)
        assert new_id is not None and new_id.group(1) != key_id.group(1)
        revoked = await admin.post(f"/ui/admin/tenants/initech/keys/{new_id.group(1)}/revoke")
        assert revoked.status_code == 303
        assert (await ops.get("/ui/runs")).status_code == 303
    finally:
        await ops.client.aclose()
    ask = await admin.post("/ui/admin/tenants/initech/delete")
    assert ask.status_code == 200 and "Yes, delete initech" in ask.text
    assert "initech" in [t.id for t in world.api.engine.tenants.list()]
    gone = await admin.post("/ui/admin/tenants/initech/delete", confirm="yes")
    assert gone.status_code == 303
    assert "initech" not in [t.id for t in world.api.engine.tenants.list()]
    # A tenant key cannot reach the control plane's forms either.
    refused = await world.a.post("/ui/admin/tenants/acme", max_running_steps="99")
    assert refused.status_code == 403


async def test_unknown_objects_and_bad_parameters_are_html_errors(world: World) -> None:
    missing = await world.a.get("/ui/runs/run_0123456789abcdef01234567")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    bad = await world.a.get("/ui/runs/x/state?version=-1")
    assert bad.status_code == 422
    odd = await world.a.get("/ui/runs?status=bogus")
    assert odd.status_code == 200  # an unknown status filters nothing
    nopage = await world.a.get("/ui/nowhere")
    assert nopage.status_code == 404


async def test_the_runs_list_reads_no_input_or_result(world: World) -> None:
    engine = world.api.engine
    seen: list[dict[str, object]] = []
    original = engine.list_runs

    async def spy(tenant: str, **kwargs: object) -> object:
        seen.append(kwargs)
        return await original(tenant, **kwargs)  # type: ignore[arg-type]

    engine.list_runs = spy  # type: ignore[method-assign]
    try:
        page = await world.a.get("/ui/runs?status=completed")
    finally:
        del engine.list_runs
    assert page.status_code == 200 and world.done_a in page.text
    assert seen and all(call["payloads"] is False for call in seen)
    # What that call returns: the rows without their payloads, the cursor still working.
    light = await engine.list_runs("acme", payloads=False, limit=1)
    assert light[0].input_json == b"" and light[0].result_json is None
    full = await engine.list_runs("acme", limit=1)
    assert CANARY_A.encode() in full[0].input_json
    rest = await engine.list_runs("acme", payloads=False, before=light[0].id)
    assert [r.id for r in rest] == [r.id for r in await engine.list_runs("acme")][1:]


async def test_read_only_dashboard_shows_but_changes_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path, dashboard="read-only") as api:
        key = await api.tenant("acme")
        run_id = (await api.submit(key, "approval", {"applicant": "ada", "amount": 5000}))["id"]
        review = await api.wait_review(key, run_id)
        tenant = await sign_in(api, key)
        admin = await sign_in(api, api.admin_key)
        try:
            runs = await tenant.get("/ui/runs")
            assert run_id in runs.text and "Cancel selected" not in runs.text
            inbox = await tenant.get("/ui/reviews")
            assert review["id"] in inbox.text and "Approve" not in inbox.text
            page = await admin.get("/ui/admin/tenants/acme")
            assert "Save" not in page.text and "Revoke" not in page.text
            for browser, url, fields in [
                (tenant, "/ui/runs/cancel", {"run": run_id, "confirm": "yes"}),
                (tenant, f"/ui/reviews/{review['id']}/decide", {"decision": "approve"}),
                (admin, "/ui/admin/tenants/acme", {"max_running_steps": "1"}),
                (admin, "/ui/admin/tenants", {"id": "newco"}),
            ]:
                refused = await browser.post(url, **fields)
                assert refused.status_code == 403 and "read-only" in refused.text, url
            assert (await api.engine.get_run("acme", run_id)).status.value == "running"
            assert (await api.engine.tenants.get("acme")).policy.max_running_steps != 1
            assert "newco" not in [t.id for t in api.engine.tenants.list()]
            out = await tenant.post("/ui/logout")
            assert out.status_code == 303
        finally:
            await tenant.client.aclose()
            await admin.client.aclose()


async def test_admin_tenant_list_pages_by_id(world: World) -> None:
    for i in range(105):
        await world.api.engine.tenants.create(f"t{i:03d}")
    first = await world.admin.get("/ui/admin/tenants")
    # By id: acme, globex, t000 … t097 on the first page of 100.
    assert "acme" in first.text and "t097" in first.text and "t098" not in first.text
    found = re.search(r'cursor=([^"]+)" rel="next"', first.text)
    assert found is not None and found.group(1) == "t097"
    second = await world.admin.get(f"/ui/admin/tenants?cursor={found.group(1)}")
    assert "t098" in second.text and "t104" in second.text and "acme" not in second.text
    assert 'rel="next"' not in second.text


def test_serve_refuses_an_unknown_dashboard_mode(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "serve", "--dashboard", "maybe"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: --dashboard must be one of on, read-only, off"


async def test_create_app_refuses_an_unknown_dashboard_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dashboard must be"):
        async with serving(tmp_path, dashboard="yes"):
            pass


async def test_fairness_shows_who_holds_the_slots(world: World) -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    holding = [0]
    hold = tf.Workflow("hold", input=int)

    @hold.step
    async def wait(ctx: tf.StepContext, input: int) -> int:
        holding[0] += 1
        if holding[0] == 4:
            started.set()
        await release.wait()
        return input

    engine = world.api.engine
    engine.register(hold)
    for _ in range(3):
        await world.api.submit(world.key_a, "hold", 1)
    await world.api.submit(world.key_b, "hold", 2)
    await asyncio.wait_for(started.wait(), 10)
    try:
        running = dict(engine.dispatcher.running_by)
        assert running == {"acme": 3, "globex": 1}
        page = await world.admin.get("/ui/admin/fairness")
        expected = fairness_index(engine, running, dict(engine.dispatcher.queued_by))
        assert f'<dd id="jain">{expected:.3f}</dd>' in page.text
        # Slots to spare: each tenant's fair share is its whole demand, and each runs it.
        assert expected == 1.0
        rows = re.findall(
            r'tenants/(\w+)">\1</a></td><td>(\d+)</td><td>0</td><td>2</td><td>20</td>'
            r"<td>([\d.]+)</td>",
            page.text,
        )
        assert rows == [("acme", "3", "3.00"), ("globex", "1", "1.00")]
        assert "Placement</dt><dd>embedded" in page.text
        for marker in [CANARY_A, CANARY_B, world.run_a, world.run_b]:
            assert marker not in page.text
    finally:
        release.set()


# -- runs filters, memory, health, latency, sign-in throttling, any control plane ------------


def _paid(engine: tf.Engine) -> None:
    """A workflow whose run calls a $0.10 tool ``input`` times (its cost: input × $0.10)."""

    @engine.tools.register(cost_usd=0.1)
    async def bureau(query: str) -> str:
        return f"report on {query}"

    paid = tf.Workflow("paid", input=int)

    @paid.step
    async def check(ctx: tf.StepContext, input: int) -> int:
        for i in range(input):
            await ctx.tool("bureau", query=f"q{i}")
        return input

    engine.register(paid)


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


async def test_runs_filter_by_cost_and_time_bounds(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenantflow.dashboard import runs as runs_module

    engine = world.api.engine
    _paid(engine)
    one = (await world.api.submit(world.key_a, "paid", 1))["id"]
    done = await world.api.wait_run(world.key_a, one, ("completed", "failed", "paused"))
    assert done["status"] == "completed", done
    three = (await world.api.submit(world.key_a, "paid", 3))["id"]
    await world.api.wait_run(world.key_a, three)
    costs = await engine.run_costs("acme", [one, three, world.done_a])
    assert (costs[one].micros, costs[three].micros, costs[world.done_a].micros) == (
        100_000,
        300_000,
        0,
    )
    listed = await world.a.get("/ui/runs")
    assert "$0.1000" in listed.text and "$0.3000" in listed.text  # the cost column
    dear = await world.a.get("/ui/runs?min_cost=0.2")
    assert three in dear.text and one not in dear.text and world.done_a not in dear.text
    cheap = await world.a.get("/ui/runs?min_cost=0.05&max_cost=$0.15")
    assert one in cheap.text and three not in cheap.text and world.done_a not in cheap.text
    # Time bounds: between the runs' creation times (microseconds apart at least).
    t_done, t_one, t_three = [
        (await engine.get_run("acme", r)).created_at for r in (world.done_a, one, three)
    ]
    assert t_done < t_one < t_three
    until = await world.a.get(f"/ui/runs?until={_iso((t_one + t_three) / 2)}")
    assert one in until.text and world.done_a in until.text and three not in until.text
    after = _iso((t_done + t_one) / 2)
    since = await world.a.get(f"/ui/runs?since={after}")
    assert one in since.text and three in since.text and world.done_a not in since.text
    both = await world.a.get(f"/ui/runs?since={after}&max_cost=0.15")
    assert one in both.text and three not in both.text
    # B's filtered list is B's alone.
    theirs = await world.b.get("/ui/runs?min_cost=0.05")
    assert one not in theirs.text and three not in theirs.text
    for bad in (
        "min_cost=abc",
        "max_cost=-1",
        "until=yesterday",
        "since=2026-13-01",
        "min_cost=inf",
    ):
        refused = await world.a.get(f"/ui/runs?{bad}")
        assert refused.status_code == 422, bad
    # A scan that stops at its bound says so and links on from where it stopped.
    monkeypatch.setattr(runs_module, "SCAN", 2)
    monkeypatch.setattr(runs_module, "_BATCH", 2)
    bounded = await world.a.get("/ui/runs?min_cost=0.2")
    assert 'id="scanned"' in bounded.text and "Look further" in bounded.text
    assert three in bounded.text  # the newest two runs were read: three, then one
    onward = re.search(r'href="/ui/runs\?([^"]+)" rel="next"', bounded.text)
    assert onward is not None and "min_cost=0.2" in onward.group(1)
    rest = await world.a.get("/ui/runs?" + onward.group(1).replace("&amp;", "&"))
    assert rest.status_code == 200 and three not in rest.text


async def test_memory_page_is_the_tenants_own(world: World) -> None:
    page = await world.a.get("/ui/memory?namespace=user:ada")
    assert page.status_code == 200 and "profile" in page.text and CANARY_A in page.text
    found = await world.a.get(f"/ui/memory?q={CANARY_A}")
    assert "doc1" in found.text and "dispute letter" in found.text
    empty = await world.a.get("/ui/memory")
    assert "No entries." in empty.text  # the default namespace has none
    theirs = await world.b.get("/ui/memory?namespace=user:ada")
    assert (
        theirs.status_code == 200 and CANARY_A not in theirs.text and "No entries." in theirs.text
    )
    searched = await world.b.get(f"/ui/memory?q={CANARY_A}")
    assert "doc1" not in searched.text and "No document matches." in searched.text
    bad = await world.a.get("/ui/memory?namespace=nobody:x")
    assert bad.status_code == 422
    for i in range(105):
        await world.api.engine.memory.put("acme", f"k{i:03d}", i)
    first = await world.a.get("/ui/memory")
    assert "k099" in first.text and "k100" not in first.text
    more = re.search(r'href="/ui/memory\?([^"]+)" rel="next"', first.text)
    assert more is not None
    second = await world.a.get("/ui/memory?" + more.group(1).replace("&amp;", "&"))
    assert "k104" in second.text and "k050" not in second.text


async def test_health_shows_members_and_breakers(world: World) -> None:
    engine = world.api.engine

    @engine.tools.register
    async def flaky(query: str) -> str:
        raise ConnectionError("down")

    broken = tf.Workflow("broken", input=int)

    @broken.step(retry=tf.Retry(max_attempts=1))
    async def call(ctx: tf.StepContext, input: int) -> int:
        await ctx.tool("flaky", query="x")
        return input

    engine.register(broken)
    run = (await world.api.submit(world.key_a, "broken", 1))["id"]
    await world.api.wait_run(world.key_a, run, ("failed",))
    [view] = [b for b in engine.breakers() if "flaky" in b.name]
    assert view.state == "closed" and view.failures == 1
    page = await world.admin.get("/ui/admin/health")
    assert page.status_code == 200
    assert 'id="placement">embedded<' in page.text
    assert engine.owner in page.text and 'class="badge h-up"' in page.text
    assert view.name in page.text and 'class="badge b-closed"' in page.text
    for marker in [CANARY_A, CANARY_B, world.run_a, world.run_b, run]:
        assert marker not in page.text


async def test_fairness_shows_latency_against_the_no_burst_baseline(world: World) -> None:
    [acme] = world.api.engine.latency(["acme"])
    assert acme.recent >= 1 and acme.baseline_samples >= 1  # done_a ran with nobody queued
    page = await world.admin.get("/ui/admin/fairness")
    table = page.text[page.text.index('id="latency"') :]
    assert "<td>acme</td>" in table
    assert f"{acme.p99_s:.3f}" in table


def test_latency_tracker_separates_burst_samples() -> None:
    from tenantflow.engine.plane import LatencyTracker, p99
    from tenantflow.observability.events import RunFinished, RunSubmitted
    from tenantflow.testing import FakeClock

    clock = FakeClock(1000.0)
    others = {"quiet": 0}
    tracker = LatencyTracker(clock, lambda t: others.get(t, 0))

    def run(run_id: str, took: float, burst: bool) -> None:
        others["quiet"] = 5 if burst else 0
        start = clock.now()
        tracker.on_run_submitted(
            RunSubmitted(
                tenant_id="quiet",
                run_id=run_id,
                at_s=start,
                workflow="w",
                lane="normal",
                queued=False,
            )
        )
        clock.advance(took)
        tracker.on_run_finished(
            RunFinished(
                tenant_id="quiet",
                run_id=run_id,
                at_s=clock.now(),
                workflow="w",
                status="completed",
                submitted_at_s=start,
                state_version=1,
                run_sla_s=None,
            )
        )

    for i in range(100):
        run(f"calm{i}", 1.0 + i / 100, burst=False)
    for i in range(100):
        run(f"busy{i}", 3.0, burst=True)
    view = tracker.of("quiet")
    assert view.baseline_samples == 100 and view.baseline_p99_s == pytest.approx(1.98)
    # The last 300 s hold the 100 burst runs (3 s each) and the last calm one: p99 3 s.
    assert view.recent == 101 and view.p99_s == 3.0
    assert view.ratio == pytest.approx(3.0 / 1.98)
    clock.advance(400)
    assert tracker.of("quiet").recent == 0 and tracker.of("quiet").ratio is None
    assert p99([]) is None and p99([5.0]) == 5.0 and p99(range(1, 101)) == 99


async def test_failed_sign_ins_are_throttled_per_key_and_per_address(world: World) -> None:
    api = world.api
    sessions = api.app.state.dashboard.state.sessions
    now = [sessions.now()]
    sessions.now = lambda: now[0]

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(api.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://api")

    async def attempt(c: httpx.AsyncClient, key: str) -> httpx.Response:
        form = await c.get("/ui/login")
        return await c.post("/ui/login", data={"csrf": csrf_of(form.text), "key": key})

    wrong_a = world.key_a[:-3] + "xyz"  # A's key id, a wrong secret
    async with client("10.0.0.1") as one, client("10.0.0.2") as two:
        for _ in range(5):
            assert (await attempt(one, wrong_a)).status_code == 401
        locked = await attempt(
            two, world.key_a
        )  # the right key, another address: A's key id is locked
        assert locked.status_code == 429 and "too many failed sign-ins" in locked.text
        assert int(locked.headers["retry-after"]) == 300
        assert COOKIE not in locked.headers.get("set-cookie", "")
        assert (await attempt(two, world.key_b)).status_code == 303  # B's key is not
        now[0] += 120
        assert int((await attempt(two, world.key_a)).headers["retry-after"]) == 180
        now[0] += 181
        assert (await attempt(two, world.key_a)).status_code == 303  # the window passed
    # Per address: 20 failures from one address, each naming a different (made-up) key.
    async with client("10.0.0.3") as three, client("10.0.0.4") as four:
        for i in range(20):
            made_up = f"tfk_{i:024x}_" + "s" * 32
            assert (await attempt(three, made_up)).status_code == 401
        refused = await attempt(three, world.key_b)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "300"
        assert (await attempt(four, world.key_b)).status_code == 303


async def test_sign_in_throttle_unit() -> None:
    from tenantflow.dashboard.throttle import SignInThrottle
    from tenantflow.errors import RateLimitedError

    t = [0.0]
    throttle = SignInThrottle(now=lambda: t[0], per_key=2, per_address=3, window_s=10)
    await throttle.failed("garbage", "a")
    await throttle.failed("garbage", "b")
    with pytest.raises(RateLimitedError) as err:
        await throttle.check("garbage", "c")  # a malformed string counts against its digest
    assert err.value.retry_after_s == 10
    await throttle.succeeded("garbage")
    await throttle.check("garbage", "c")
    for key in ("x1", "x2", "x3"):
        await throttle.failed(key, "a")
    with pytest.raises(RateLimitedError):
        await throttle.check("x4", "a")
    t[0] = 10.0
    await throttle.check("x4", "a")  # the failures left the window
    with pytest.raises(tf.ConfigurationError):
        SignInThrottle(now=lambda: 0.0, per_key=0)


async def test_process_records_are_bounded() -> None:
    from tenantflow.dashboard.records import ProcessRecords

    records = ProcessRecords(max_rows=4)
    for i in range(10):
        await records.put("sign-in", f"k{i}", {"at": i}, now=float(i), expires_at=100.0)
    assert len(records) == 4
    assert await records.get("sign-in", "k0", now=0.0) is None  # the oldest were dropped
    assert await records.get("sign-in", "k9", now=9.0) == {"at": 9}
    assert await records.get("sign-in", "k9", now=100.0) is None  # expired


class _ProtocolOnly:
    """The engine seen only through the ControlPlane protocol: any other attribute (the
    dispatcher, admission, stores, clock…) raises, so a page that reached for one fails."""

    def __init__(self, engine: tf.Engine) -> None:
        from tenantflow.placement.control import ControlPlane

        self._engine = engine
        self._allowed = {n for n in dir(ControlPlane) if not n.startswith("_")}

    def __getattr__(self, name: str) -> object:
        if name not in self._allowed:
            raise AttributeError(f"{name} is not on the ControlPlane protocol")
        return getattr(self._engine, name)


async def test_every_page_works_through_the_control_plane_protocol_alone(tmp_path: Path) -> None:
    import api_workflows

    from tenantflow.api import create_app

    engine = tf.Engine.open(f"sqlite:///{tmp_path / 'p.db'}", seed=1)
    api_workflows.setup(engine)
    await engine.start()
    try:
        app = create_app(_ProtocolOnly(engine), manage_engine=False)  # type: ignore[arg-type]
        _, admin_key = await engine.keys.create(None, name="admin")
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                api = Api(engine, app, client, admin_key)
                key = await api.tenant("acme")
                run = (await api.submit(key, "approval", {"applicant": "ada", "amount": 10}))["id"]
                await api.wait_run(key, run)
                tenant = await sign_in(api, key)
                admin = await sign_in(api, admin_key)
                try:
                    for url in [
                        "/ui/runs",
                        "/ui/runs?min_cost=0&since=2000-01-01",
                        f"/ui/runs/{run}",
                        f"/ui/runs/{run}/live",
                        f"/ui/runs/{run}/state?version=1",
                        f"/ui/runs/{run}/steps/decide",
                        "/ui/reviews",
                        "/ui/usage",
                        "/ui/audit?verify=true",
                        "/ui/memory",
                    ]:
                        page = await tenant.get(url)
                        assert page.status_code == 200, (url, page.text[:500])
                    for url in [*ADMIN_PAGES]:
                        page = await admin.get(url)
                        assert page.status_code == 200, (url, page.text[:500])
                finally:
                    await tenant.client.aclose()
                    await admin.client.aclose()
    finally:
        await engine.close()


async def test_bulk_retry_asks_then_retries_from_the_failed_step(world: World) -> None:
    engine = world.api.engine
    calls = {"n": 0}
    once = tf.Workflow("once", input=int)

    @once.step
    async def prepare(ctx: tf.StepContext, input: int) -> int:
        return input + 1

    @once.step(retry=tf.Retry(max_attempts=1))
    async def flaky(ctx: tf.StepContext, prepare: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("the first call fails")
        return prepare * 2

    engine.register(once)
    failed = (await world.api.submit(world.key_a, "once", 1))["id"]
    await world.api.wait_run(world.key_a, failed, ("failed",))
    ask = await world.a.post("/ui/runs/retry", run=[failed, world.done_a])
    assert ask.status_code == 200 and "Yes, retry 2 runs" in ask.text
    assert (await engine.get_run("acme", failed)).status.value == "failed"  # not yet
    # B cannot retry A's run: not found, and nothing changes.
    sneaky = await world.b.post("/ui/runs/retry", run=[failed], confirm="yes")
    assert sneaky.status_code == 200 and "not found" in sneaky.text
    assert (await engine.get_run("acme", failed)).status.value == "failed"
    done = await world.a.post("/ui/runs/retry", run=[failed, world.done_a], confirm="yes")
    assert done.status_code == 200
    outcomes = dict(
        re.findall(r'<td><a href="/ui/runs/(run_\w+)">\1</a></td><td>(.*?)</td>', done.text)
    )
    assert outcomes[failed].startswith(f'<a href="/ui/runs/{failed}">retried, now')
    refused = outcomes[world.done_a]  # a completed run is refused, and the page says why
    assert not refused.startswith("retried") and "it completed" in refused
    record = await world.api.wait_run(world.key_a, failed)
    assert record["status"] == "completed"
    assert calls["n"] == 2  # the failed step ran again; prepare's output was kept
    assert (await world.a.post("/ui/runs/retry")).status_code == 400


@pytest.mark.postgres
async def test_the_dashboard_on_a_clusters_front(postgres_url: str) -> None:
    """The centralized placement: the front serves the dashboard, a worker executes. Pages
    render from the front (which drives nothing), the health page lists the worker with the
    tenants it holds, and a tenant's pages stay its own."""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    import api_workflows

    from tenantflow.api import create_app
    from tenantflow.placement.centralized import open_front, open_worker

    lease = timedelta(seconds=1)
    worker = open_worker(postgres_url, lease=lease, slots=8)
    front = open_front(postgres_url, lease=lease, slots=8)
    for e in (worker, front):
        api_workflows.setup(e)
    async with worker, front:
        app = create_app(front, manage_engine=False)
        _, admin_key = await front.keys.create(None, name="admin")
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                api = Api(front, app, client, admin_key)
                key_a = await api.tenant("acme")
                key_b = await api.tenant("globex")
                deadline = asyncio.get_running_loop().time() + 20
                assert worker.membership is not None
                while {"acme", "globex"} - worker.membership.owned:
                    assert asyncio.get_running_loop().time() < deadline, "tenants not held"
                    await asyncio.sleep(0.05)
                run = (await api.submit(key_a, "approval", {"applicant": CANARY_A, "amount": 10}))[
                    "id"
                ]
                await api.wait_run(key_a, run, timeout=30)
                a = await sign_in(api, key_a)
                b = await sign_in(api, key_b)
                admin = await sign_in(api, admin_key)
                try:
                    for url in ["/ui/runs", f"/ui/runs/{run}", "/ui/usage", "/ui/memory"]:
                        mine = await a.get(url)
                        assert mine.status_code == 200, (url, mine.text[:300])
                        theirs = await b.get(url)
                        assert run not in theirs.text and CANARY_A not in theirs.text, url
                    assert (await b.get(f"/ui/runs/{run}")).status_code == 404
                    health = await admin.get("/ui/admin/health")
                    assert health.status_code == 200
                    assert 'id="placement">front<' in health.text
                    assert worker.owner in health.text and "tenants 2" in health.text
                    members = await front.health()
                    [w] = [m for m in members if m.kind == "worker"]
                    assert w.id == worker.owner and w.state == "up" and w.detail["tenants"] == 2
                    fairness = await admin.get("/ui/admin/fairness")
                    assert (
                        fairness.status_code == 200 and "Placement</dt><dd>front" in fairness.text
                    )
                    for page in (health, fairness):
                        assert run not in page.text and CANARY_A not in page.text
                finally:
                    for browser in (a, b, admin):
                        await browser.client.aclose()
