"""The SDK integrations are optional: importing tenantflow (or building its app) imports none of
them until their module is imported."""

from __future__ import annotations

import subprocess
import sys

SDKS = ("agents", "pydantic_ai", "mcp", "openai")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {SDKS!r} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return proc.stdout.split()


def test_import_tenantflow_imports_no_sdk() -> None:
    assert _loaded_after("import tenantflow, tenantflow.integrations") == []


def test_each_integration_imports_only_its_sdk() -> None:
    assert _loaded_after("import tenantflow.integrations.mcp_tools") == []  # mcp: on first use
    assert "pydantic_ai" not in _loaded_after("import tenantflow.integrations.openai_agents")
    assert "agents" not in _loaded_after("import tenantflow.integrations.pydantic_ai")
