"""The CLI starts without what only some commands need.

``tenantflow --help`` must not pay for importing the engine, the simulator, the report and its
plots, the HTTP client or the API server: ``tenantflow.cli.main`` imports them only inside the
commands that use them (and ``import tenantflow`` loads the engine on first use of a name that
needs it). Checked by module, in a fresh interpreter, not by timing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Top-level packages, and tenantflow's own modules, that importing the CLI must leave alone.
NOT_AT_STARTUP = (
    "tenantflow.engine",
    "tenantflow.adapters",
    "tenantflow.sim",
    "tenantflow.report",
    "tenantflow.client",
    "tenantflow.api",
    "tenantflow.selftest",
    "fastapi",
    "uvicorn",
    "matplotlib",
    "httpx",
    "yaml",
)

# One fresh interpreter, its modules listed at three points: after ``import tenantflow``, after
# importing the CLI, and after the public API's engine and the heavy modules are asked for.
_PROBE = """
import json, sys
seen = [sorted(sys.modules)]
import tenantflow
seen.append(sorted(sys.modules))
import tenantflow.cli.main
seen.append(sorted(sys.modules))
assert tenantflow.Engine.__module__ == "tenantflow.engine.engine"
from tenantflow import StepContext, Workflow
import tenantflow.sim, tenantflow.report, tenantflow.client
seen.append(sorted(sys.modules))
print(json.dumps(seen[1:]))
"""


@pytest.fixture(scope="module")
def snapshots() -> list[set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    return [set(names) for names in json.loads(proc.stdout)]


def _loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_importing_the_cli_loads_no_engine_simulator_report_client_or_server(
    snapshots: list[set[str]],
) -> None:
    _, cli, _ = snapshots
    assert "tenantflow.cli.main" in cli  # the probe did import the CLI
    assert [name for name in NOT_AT_STARTUP if _loaded(cli, name)] == []


def test_the_probe_sees_a_module_once_it_is_imported(snapshots: list[set[str]]) -> None:
    # Without this the check above could pass for a probe that sees nothing.
    *_, later = snapshots
    assert all(_loaded(later, n) for n in ("tenantflow.sim", "tenantflow.report", "httpx"))


def test_the_public_api_loads_the_engine_on_first_use(snapshots: list[set[str]]) -> None:
    package, _, later = snapshots
    assert not _loaded(package, "tenantflow.engine")
    assert _loaded(later, "tenantflow.engine") and _loaded(later, "tenantflow.workflow")
