"""The SDK and MCP integration examples run offline, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_agents_sdk_research_asks_a_reviewer_and_resumes() -> None:
    pytest.importorskip("agents")
    out = run_example("agents_sdk_research.py")
    assert "review opened: tool 'publish' needs approval" in out
    assert (
        'run completed: "Tides are driven by the Moon\'s gravity; the report is published."' in out
    )
    assert out.count("  model.call") == 3 and "  step.resumed" in out
    assert "model calls=3 tool calls=3" in out
    assert "audit chain ok: True" in out


def test_pydantic_ai_support_refuses_what_the_tenant_may_not_call() -> None:
    pytest.importorskip("pydantic_ai")
    out = run_example("pydantic_ai_support.py")
    acme, globex = out.split("globex: ")
    assert "acme: run completed" in acme and "refused and audited: ['tool:refund']" in acme
    assert "tools called: ['order_status']" in acme
    assert "not allowed for tenant 'acme'" in acme
    assert "the model was told: refunded B200" in globex
    assert "tools called: ['order_status', 'refund']" in globex
    assert "refused and audited: nothing" in globex
    assert "globex review opened: tool 'cancel_order' needs approval" in globex
    assert 'approved by rita; run completed: "Order A100 is cancelled."' in globex
    assert "streamed: ['Order', ' A100', ' is', ' cancelled.']" in globex  # word by word


def test_mcp_tools_both_ways() -> None:
    pytest.importorskip("mcp")
    out = run_example("mcp_tools.py")
    assert "registered MCP tools: ['kb__delete', 'kb__search']" in out
    assert "offered to the agent: ['kb__search']" in out
    assert "kb__delete refused: tool 'kb__delete' is not allowed for tenant 'acme'" in out
    assert "audited: ['tool.denied tool:kb__delete']" in out
    assert 'run completed: "Tides are driven by the Moon\'s gravity."' in out
    assert "acme's runs over MCP: [('ask_kb', 'completed')]" in out
    assert "its timeline: run.submitted … run.completed" in out
    assert "admin added for globex: 201 ['wiki__search']" in out
    assert 'globex run completed: "Wind makes waves."' in out
    assert "acme calling wiki__search: refused: no tool named 'wiki__search'" in out
    assert "globex audit: ['mcp_server.registered mcp_server:wiki']" in out
