"""The examples the README points at run, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("approved=") == 3
    assert "run.completed" in proc.stdout
    assert "refused bad input" in proc.stdout and "amount" in proc.stdout


def test_research_agent_runs_with_subagents_and_shows_its_iterations() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "research_agent.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "status=answered iterations=2" in out
    assert "Moon's gravity" in out and "density differences" in out
    assert out.count("scout run_") == 2 and out.count("(completed)") == 3
    assert "research[0]      tools: delegate_scout, delegate_scout" in out
    assert out.count("investigate[1]   tools: read") == 2
    assert "spent by the lead and its scouts: $0.0" in out
