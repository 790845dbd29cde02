"""``tenantflow topology`` on bad input, and advise/project on the shipped figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "topology", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "topology", "--placements", "cloud"], "--placements takes"),
        (["compare", "no-such-workload.yaml"], "error:"),
        (["advise", "--tenants", "5"], "topology advise needs --growth"),
        (["advise", "--preset", "bank"], "--preset knows one platform"),
        (["project", "--tenants", "0,x"], "--tenants takes"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(args: list[str], message: str) -> None:
    done = _cli(*args)
    assert done.returncode != 0
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_project_from_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text('{"a": 1}')
    done = _cli("project", "--from", str(bogus))
    assert done.returncode != 0 and "is not a `tenantflow topology compare --json`" in done.stderr


def test_advise_the_loan_platform_from_the_shipped_figures() -> None:
    done = _cli("advise", "--preset", "loan-platform", "--json")
    assert done.returncode == 0, done.stderr
    advice = json.loads(done.stdout)
    assert advice["recommended"] in advice["scores"]
    best = advice["recommended"]
    assert advice["scores"][best] == max(advice["scores"].values())
    assert advice["reasons"][best]  # every recommendation has its reasons
    assert advice["measured"]["centralized"]  # and measured figures behind the shared one


def test_project_prints_the_calibration_and_its_error() -> None:
    done = _cli("project", "--tenants", "10,100,1000")
    assert done.returncode == 0, done.stderr
    assert "fit error at the measured points" in done.stdout
    assert "cost per tenant per month" in done.stdout
