"""A federated cell's dashboard in Chromium: a tenant signs in on its cell and reads its runs
and a run; the cell's admin key reads the health page — this cell, its plane, both cells as
the plane's registry has them — and every page is scanned with axe-core: 0 violations.

Real processes: a plane started with ``tenantflow plane``, one tenant per cell."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "federated"))
from plane_harness import federation, wait_for

from tenantflow.client import Client
from tenantflow.selftest.workload import WORKFLOW

pytest.importorskip("uvicorn", reason="the server extra is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def accessible(page: Any) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    assert results.violations_count == 0, f"{page.url}\n{results.generate_report()}"


def sign_in(page: Any, base: str, key: str) -> None:
    page.goto(f"{base}/ui/login")
    accessible(page)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def test_a_cells_pages_in_the_browser(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with federation(tmp_path) as fed:
        home, other = fed.cells["ca"], fed.cells["cb"]
        with Client(fed.url, fed.keys["ca"]) as client:
            run_id = client.submit(WORKFLOW, {"i": 3}).id
            wait_for(
                lambda: client.get_run(run_id).status.value == "completed", 60, "the run to end"
            )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        sign_in(page, home["url"], fed.keys["ca"])
        expect(page).to_have_url(re.compile(r"/ui/runs$"))
        expect(page.get_by_role("link", name=run_id)).to_be_visible()
        accessible(page)
        page.get_by_role("link", name=run_id).click()
        expect(page.locator("#run-status")).to_have_text("completed")
        accessible(page)
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/ui/login$"))

        sign_in(page, home["url"], fed.cell_keys["ca"])
        expect(page).to_have_url(re.compile(r"/ui/admin/tenants$"))
        accessible(page)
        deadline = time.monotonic() + 30
        while True:  # bounded: until the plane's view has both cells beating
            page.goto(f"{home['url']}/ui/admin/health")
            kinds = page.locator("#kinds").inner_text()
            if kinds == "process: 1 up · plane: 1 up · cell: 2 up":
                break
            assert time.monotonic() < deadline, kinds
            time.sleep(0.5)
        expect(page.locator("#placement")).to_have_text("federated cell")
        members = page.locator("#members")
        expect(members).to_contain_text(home["id"])
        expect(members).to_contain_text(other["id"])
        expect(members).to_contain_text("tenants cb")
        accessible(page)
        page.get_by_role("link", name="Fairness").click()
        expect(page.locator("#jain")).to_be_visible()
        accessible(page)
        context.close()
