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

_PROBE = """
import json, sys
import tenantflow.cli.main
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(proc.stdout))


def _loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_importing_the_cli_loads_no_simulator_report_client_or_server() -> None:
    modules = _modules_after(_PROBE)
    assert "tenantflow.cli.main" in modules  # the probe did import the CLI
    assert [name for name in NOT_AT_STARTUP if _loaded(modules, name)] == []


def test_the_probe_sees_a_module_once_it_is_imported() -> None:
    # Without this the check above could pass for a probe that sees nothing.
    code = _PROBE.replace(
        "import tenantflow.cli.main",
        "import tenantflow.cli.main\nimport tenantflow.sim, tenantflow.report, tenantflow.client",
    )
    modules = _modules_after(code)
    assert all(_loaded(modules, n) for n in ("tenantflow.sim", "tenantflow.report", "httpx"))


def test_the_public_api_loads_the_engine_on_first_use() -> None:
    before = _modules_after("import json, sys, tenantflow\nprint(json.dumps(sorted(sys.modules)))")
    assert not _loaded(before, "tenantflow.engine")
    after = _modules_after(
        "import json, sys, tenantflow\n"
        "assert tenantflow.Engine.__module__ == 'tenantflow.engine.engine'\n"
        "from tenantflow import StepContext, Workflow\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    assert _loaded(after, "tenantflow.engine") and _loaded(after, "tenantflow.workflow")
