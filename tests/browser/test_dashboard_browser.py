"""The dashboard in Chromium against a real server: a tenant signs in, filters runs (status,
time, cost), follows a run live while its review is claimed and approved in another tab,
bulk-cancels, bulk-retries, reads its memory, checks the audit chain and signs out; another
tenant's browser is refused the first tenant's run and memory; an admin changes a tenant's cap,
reads the fairness figures and the health page. Every page visited is scanned with axe-core:
0 violations. The runs list, a run's page, the review inbox, the memory and health pages are
saved to docs/img/ for the README and docs/dashboard.md."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser_harness import SCREENSHOTS, Served, serving

pytestmark = pytest.mark.timeout(120)

CANARY = "canary-browser-7d1e"
BIG = {"applicant": "grace", "amount": 5000}  # waits for a human review
SMALL = {"applicant": "alan", "amount": 10}


def accessible(page: Any) -> None:
    """axe-core on the page as it is now: no violation of any rule it runs."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    assert results.violations_count == 0, f"{page.url}\n{results.generate_report()}"


def sign_in(page: Any, served: Served, key: str) -> None:
    page.goto(f"{served.url}/ui/login")
    accessible(page)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def test_tenant_follows_a_run_reviews_cancels_and_signs_out(served: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    key = served.tenant("acme")
    other = served.tenant("globex")
    foreign = served.submit(other, "approval", BIG)
    done = [served.submit(key, "approval", SMALL) for _ in range(3)]
    waiting = served.submit(key, "approval", BIG)
    extra = [served.submit(key, "approval", BIG) for _ in range(2)]
    served.wait(key, "/v1/reviews", lambda b: len(b["items"]) == 3)
    for run_id in done:
        served.wait(key, f"/v1/runs/{run_id}", lambda b: b["status"] == "completed")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    sign_in(page, served, key)
    expect(page).to_have_url(re.compile(r"/ui/runs$"))
    for run_id in [*done, waiting, *extra]:
        expect(page.get_by_role("link", name=run_id)).to_be_visible()
    expect(page.get_by_role("link", name=foreign)).to_have_count(0)
    # The session cookie is HttpOnly: the page's script cannot read it (nor any key).
    assert page.evaluate("document.cookie") == ""
    accessible(page)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-runs.png"), full_page=True)

    # Filter: the status goes into the URL, and only completed runs are listed.
    page.get_by_label("Status").select_option("completed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"status=completed"))
    for run_id in done:
        expect(page.get_by_role("link", name=run_id)).to_be_visible()
    expect(page.get_by_role("link", name=waiting)).to_have_count(0)
    accessible(page)
    # Time and cost bounds go into the URL too: until long ago, nothing; any cost up to $1, all.
    page.get_by_label("Until (UTC)").fill("2001-01-01T00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"until=2001-01-01T00%3A00"))
    expect(page.get_by_text("No runs match.")).to_be_visible()
    page.get_by_label("Until (UTC)").fill("")
    page.get_by_label("to $").fill("1")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"max_cost=1"))
    for run_id in done:
        expect(page.get_by_role("link", name=run_id)).to_be_visible()
    accessible(page)

    # Open the waiting run: its DAG shows the review step waiting, and the page is live.
    page.goto(f"{served.url}/ui/runs/{waiting}")
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("svg.dag")).to_contain_text("waiting")
    accessible(page)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-run.png"), full_page=True)

    # In a second tab: the inbox, claim, approve. The first tab follows the run to its end.
    inbox = context.new_page()
    inbox.goto(f"{served.url}/ui/reviews")
    section = inbox.locator("section.review", has=inbox.get_by_role("link", name=waiting))
    expect(section).to_be_visible()
    accessible(inbox)
    inbox.screenshot(path=str(SCREENSHOTS / "dashboard-reviews.png"), full_page=True)
    section.get_by_role("button", name="Claim").click()
    section = inbox.locator("section.review", has=inbox.get_by_role("link", name=waiting))
    expect(section).to_contain_text("claimed")
    section.get_by_label("Comment").fill("looks fine")
    section.get_by_role("button", name="Approve").click()
    expect(inbox).to_have_url(re.compile(rf"/ui/runs/{waiting}$"))
    expect(inbox.locator("#run-status")).to_have_text("completed")
    # The live page saw it over the event stream, without a reload.
    expect(page.locator("#run-status")).to_have_text("completed", timeout=15_000)
    expect(page.locator("svg.dag")).not_to_contain_text("waiting")
    accessible(page)
    inbox.close()

    # A step's output and events, loaded on demand.
    page.get_by_role("link", name="decide", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("decide")
    expect(page.get_by_label("Output of decide")).to_contain_text("approved")
    accessible(page)
    page.go_back()
    # A state version, loaded on demand.
    page.get_by_role("link", name="v0", exact=True).first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("state version 0")
    accessible(page)

    # Bulk cancel with confirmation.
    page.goto(f"{served.url}/ui/runs?status=running")
    for run_id in extra:
        page.get_by_label(f"Select run {run_id}").check()
    page.get_by_role("button", name="Cancel selected…").click()
    expect(page.get_by_role("button", name="Yes, cancel 2 runs")).to_be_visible()
    accessible(page)
    page.get_by_role("button", name="Yes, cancel 2 runs").click()
    for run_id in extra:
        row = page.get_by_role("row", name=re.compile(run_id))
        expect(row).to_contain_text(re.compile("cancel"))
    for run_id in extra:
        served.wait(key, f"/v1/runs/{run_id}", lambda b: b["status"] == "cancelled")
    accessible(page)

    # Usage, and the audit log's verify button.
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage and budget")).to_be_visible()
    accessible(page)
    page.get_by_role("link", name="Audit").click()
    page.get_by_role("button", name="Verify the hash chain").click()
    expect(page.locator("#verify-result")).to_contain_text("Chain intact")
    accessible(page)

    # Sign out: the session is gone, the pages send the browser to the sign-in form.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.goto(f"{served.url}/ui/runs")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    assert not [e for e in errors if "Content Security Policy" in e], errors
    context.close()


def test_admin_changes_a_cap_and_reads_fairness(browser: Any, served: Served) -> None:
    from playwright.sync_api import expect

    served.tenant("initech")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, served, served.admin_key)
    expect(page).to_have_url(re.compile(r"/ui/admin/tenants$"))
    accessible(page)
    page.get_by_role("link", name="initech", exact=True).click()
    accessible(page)
    page.get_by_label("max running steps").fill("7")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#cap-steps")).to_have_text("7")
    policy = served.wait(served.admin_key, "/v1/tenants/initech", lambda b: True)["policy"]
    assert policy["max_running_steps"] == 7
    # A new key's secret, shown once; a deletion asked for confirmation: scanned as well.
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-secret")).to_have_text(re.compile(r"^tfk_"))
    accessible(page)
    page.get_by_role("button", name="Delete tenant…").click()
    expect(page.get_by_role("button", name="Yes, delete initech")).to_be_visible()
    accessible(page)
    page.get_by_role("link", name="Fairness").click()
    expect(page.locator("#jain")).to_have_text(re.compile(r"^[01]\.\d{3}$"))
    expect(page.get_by_text("Slots in use")).to_be_visible()
    expect(page.locator("#latency")).to_be_visible()
    accessible(page)
    page.get_by_role("link", name="Health").click()
    expect(page.locator("#placement")).to_have_text("embedded")
    expect(page.locator("#members")).to_contain_text("up")
    expect(page.locator("#breakers")).to_be_visible()
    accessible(page)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-health.png"), full_page=True)
    # The scan is not vacuous: an input without a label is a violation.
    from axe_playwright_python.sync_playwright import Axe

    page.evaluate("document.querySelector('main').appendChild(document.createElement('input'))")
    assert Axe().run(page).violations_count > 0
    # The control plane shows no tenant's runs: the tenant pages refuse an admin session.
    page.goto(f"{served.url}/ui/runs")
    expect(page.get_by_role("alert")).to_contain_text("admin key")
    accessible(page)
    context.close()


def test_the_session_expires(browser: Any, tmp_path: Path) -> None:
    """A server whose sign-ins last 6 s: the session cookie is HttpOnly and SameSite=Strict,
    and once the session is over the pages send the browser back to the sign-in form."""
    from playwright.sync_api import expect

    with serving(tmp_path, "--session-minutes", "0.1") as served:
        key = served.tenant("acme")
        context = browser.new_context()
        page = context.new_page()
        sign_in(page, served, key)
        [cookie] = [c for c in context.cookies() if c["name"] == "tf_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert key not in cookie["value"]
        # Wait (bounded) for the end of the session: each reload is one more request with it.
        deadline = time.monotonic() + 60
        while not page.url.endswith("/ui/login"):
            assert time.monotonic() < deadline, "the session never expired"
            page.goto(f"{served.url}/ui/runs")
            time.sleep(0.5)
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        sign_in(page, served, key)  # a new sign-in works again
        expect(page).to_have_url(re.compile(r"/ui/runs$"))
        context.close()


def test_tenant_retries_reads_memory_and_another_tenant_is_refused(
    served: Served, browser: Any
) -> None:
    from playwright.sync_api import expect

    key = served.tenant("umbrella")
    other = served.tenant("hooli")
    foreign = served.submit(other, "approval", BIG)
    waiting = served.submit(key, "approval", BIG)
    extra = [served.submit(key, "approval", BIG) for _ in range(2)]
    with served.api(key) as c:
        r = c.put("/v1/memory/user:grace/entries/profile", json={"value": {"tier": CANARY}})
        assert r.status_code == 200, r.text
        for run_id in extra:
            assert c.post(f"/v1/runs/{run_id}/cancel").status_code == 200, run_id
    for run_id in extra:
        served.wait(key, f"/v1/runs/{run_id}", lambda b: b["status"] == "cancelled")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, served, key)
    expect(page).to_have_url(re.compile(r"/ui/runs$"))

    # Bulk retry with confirmation: each cancelled run goes back to its review.
    page.goto(f"{served.url}/ui/runs?status=cancelled")
    for run_id in extra:
        page.get_by_label(f"Select run {run_id}").check()
    page.get_by_role("button", name="Retry selected…").click()
    expect(page.get_by_role("button", name="Yes, retry 2 runs")).to_be_visible()
    accessible(page)
    page.get_by_role("button", name="Yes, retry 2 runs").click()
    for run_id in extra:
        expect(page.get_by_role("row", name=re.compile(run_id))).to_contain_text("retried, now")
    for run_id in extra:
        served.wait(key, f"/v1/runs/{run_id}", lambda b: b["status"] != "cancelled")
    served.wait(key, "/v1/reviews", lambda b: {r["run_id"] for r in b["items"]} >= set(extra))
    accessible(page)

    # Memory: the tenant's own entries, by namespace.
    page.get_by_role("link", name="Memory").click()
    page.get_by_label("Namespace").fill("user:grace")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#entries")).to_contain_text(CANARY)
    accessible(page)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-memory.png"), full_page=True)

    # Another tenant's browser: A's run is "not found", A's memory is not there.
    theirs = browser.new_context()
    b_page = theirs.new_page()
    sign_in(b_page, served, other)
    expect(b_page).to_have_url(re.compile(r"/ui/runs$"))
    expect(b_page.get_by_role("link", name=foreign)).to_be_visible()
    response = b_page.goto(f"{served.url}/ui/runs/{waiting}")
    assert response is not None and response.status == 404
    expect(b_page.get_by_role("alert")).to_contain_text("No such run here.")
    assert waiting not in b_page.content()
    accessible(b_page)
    b_page.goto(f"{served.url}/ui/memory?namespace=user:grace")
    expect(b_page.locator("#entries")).to_contain_text("No entries.")
    assert CANARY not in b_page.content()
    theirs.close()

    context.close()
