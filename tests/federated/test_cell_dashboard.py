"""A federated cell serves the web dashboard at ``/ui``: a tenant key signs in on its cell and
sees its runs and a run's detail (and nothing of the tenant in the other cell); the cell's admin
key sees the placement — this cell, its plane, and both cells as the plane's registry has them
(state, tenants, last heartbeat) — and none of a tenant's runs.

Real processes: a plane started with ``tenantflow plane`` on a free port, one tenant per cell
(``--cell-size 1``), cells started by the plane's supervisor, all over real HTTP.
"""

from __future__ import annotations

import contextlib
import html
import re
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from plane_harness import csrf_of, federation, sign_in, wait_for

from tenantflow.client import Client
from tenantflow.selftest.workload import WORKFLOW

pytest.importorskip("uvicorn", reason="the server extra is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_a_cells_dashboard_for_a_tenant_and_for_the_cells_admin(tmp_path: Path) -> None:
    with federation(tmp_path) as fed:
        url, keys, cell_key = fed.url, fed.keys, fed.cell_keys["ca"]
        home, other = fed.cells["ca"], fed.cells["cb"]
        with Client(url, keys["ca"]) as client:
            run_id = client.submit(WORKFLOW, {"i": 2}).id
            wait_for(
                lambda: client.get_run(run_id).status.value == "completed", 60, "the run to end"
            )

        # The tenant's key on its cell: its runs, a run's detail.
        with contextlib.closing(sign_in(home["url"], keys["ca"])) as tenant:
            runs = tenant.get("/ui/runs")
            assert runs.status_code == 200 and run_id in runs.text
            detail = tenant.get(f"/ui/runs/{run_id}")
            assert detail.status_code == 200 and run_id in detail.text
            assert "completed" in detail.text
            assert tenant.get("/ui/admin/health").status_code == 403  # not the control plane
            assert keys["ca"] not in runs.text + detail.text
        # The other tenant's key is not a key of this cell, and its cell has none of ca's runs.
        refused = httpx.Client(base_url=home["url"], timeout=20)
        with refused:
            form = refused.get("/ui/login")
            answer = refused.post("/ui/login", data={"csrf": csrf_of(form.text), "key": keys["cb"]})
            assert answer.status_code == 401
        with contextlib.closing(sign_in(other["url"], keys["cb"])) as tenant_b:
            theirs = tenant_b.get(f"/ui/runs/{run_id}")
            assert theirs.status_code == 404 and run_id not in theirs.text
            assert run_id not in tenant_b.get("/ui/runs").text

        # The cell's admin key: the placement, the cell's facts and both cells from the plane.
        with contextlib.closing(sign_in(home["url"], cell_key)) as operator:

            def both_cells_up() -> str | None:
                page = operator.get("/ui/admin/health")
                assert page.status_code == 200, page.text
                rows = re.findall(r'<tr class="member" data-kind="cell">(.*?)</tr>', page.text)
                up = [r for r in rows if 'class="badge h-up"' in r]
                return page.text if len(up) == 2 else None

            page = html.unescape(wait_for(both_cells_up, 30, "both cells up on the health page"))
            assert '<dd id="placement">federated cell</dd>' in page
            assert f"<dd>{home['id']}</dd>" in page  # this cell
            assert f"<dd>{url}</dd>" in page  # its plane
            assert "<dd>yes</dd>" in page  # the plane is reachable
            assert "cell: 2 up" in page and "plane: 1 up" in page and "process: 1 up" in page
            rows = re.findall(r'<tr class="member" data-kind="cell">(.*?)</tr>', page)
            for cell, tenant in ((home, "ca"), (other, "cb")):
                [row] = [r for r in rows if f"<td>{cell['id']}</td>" in r]
                assert f"tenants {tenant}" in row and f"url {cell['url']}" in row
                assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", row)  # last beat
            [mine] = [r for r in rows if f"<td>{home['id']}</td>" in r]
            assert "this cell yes" in mine
            assert run_id not in page and keys["ca"] not in page and cell_key not in page
            fairness = operator.get("/ui/admin/fairness")
            assert fairness.status_code == 200 and "federated cell" in fairness.text
            assert operator.get("/ui/runs").status_code == 403  # an admin sees no runs
