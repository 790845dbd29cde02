"""Hostile command lines (issue 23): usage errors, malformed server URLs and out-of-range numbers
all end in ONE ``error:`` line on stderr and exit 2 — no usage box, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tenantflow.cli.main import app
from tenantflow.client import Client
from tenantflow.errors import ConfigurationError

pytestmark = pytest.mark.timeout(60)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    return {**env, "TENANTFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **extra}


def one_error_line(tmp_path: Path, *args: str, **env: str) -> str:
    """Run ``tenantflow *args`` in-process: exit 2, nothing on stdout, one ``error:`` line."""
    result = CliRunner().invoke(app, list(args), env=_env(tmp_path, **env))
    assert result.exit_code == 2, (args, result.output, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("runs", "list", "--bogus"),
            "No such option: --bogus (see 'tenantflow runs list --help')",
        ),
        (("runs", "list", "--limit", "abc"), "'--limit'"),
        (("runs", "list", "--limti", "3"), "--limit"),
        (("nosuch",), "No such command 'nosuch'. (see 'tenantflow --help')"),
        (("runs", "show"), "Missing argument 'RUN_ID'. (see 'tenantflow runs show --help')"),
        (("tenants", "create"), "Missing argument 'TENANT'"),
        (("runs", "diff", "run_x", "1", "x" * 5000), "'B'"),
        (("serve", "--port", "99999999999999999999999"), "--port"),
        (("--nope",), "No such option: --nope"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    line = one_error_line(tmp_path, *args)
    assert says in line, line
    assert len(line) < 600  # a huge argument is not echoed in full


def test_help_still_prints_the_help(tmp_path: Path) -> None:
    for args in (["--help"], ["runs", "list", "--help"]):
        result = CliRunner().invoke(app, args, env=_env(tmp_path))
        assert result.exit_code == 0 and "Usage" in result.stdout, result.output
    result = CliRunner().invoke(app, ["--version"], env=_env(tmp_path))
    assert result.exit_code == 0 and result.stdout.startswith("tenantflow ")


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://[::1]:port",
        "http://exa mple.com",
        "http://h:-1",
        "http://h:70000",
        "ftp://x",
    ],
)
def test_a_malformed_server_url_is_one_line_and_exit_2(tmp_path: Path, url: str) -> None:
    line = one_error_line(tmp_path, "runs", "list", TENANTFLOW_URL=url, TENANTFLOW_API_KEY="k")
    assert "URL" in line or "url" in line, line


def test_the_client_refuses_a_malformed_url_with_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as err:
        Client("http://[::1", "key")
    assert err.value.fields["field"] == "url" and "http://[::1" in err.value.message


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ('budget={"period_micros": 1208925819614629174706176}', "budget.period_micros"),
        ('budget={"run_tokens": 18446744073709551616}', "budget.run_tokens"),
        ("max_running_steps=1e309", "max_running_steps"),
        ('budget={"run_micros": "$1e309"}', "budget.run_micros"),
        ("weight=NaN", "weight"),
    ],
)
def test_out_of_range_policy_numbers_are_one_line(tmp_path: Path, setting: str, field: str) -> None:
    result = CliRunner().invoke(app, ["db", "upgrade"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    line = one_error_line(tmp_path, "tenants", "create", "acme", "--tier", "free", "--set", setting)
    assert field in line, line


def test_the_installed_command_reports_a_bad_url_in_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, TENANTFLOW_URL="http://[::1", TENANTFLOW_API_KEY="k")
    proc = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "runs", "list", "--bogus-flag"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: No such option")
    proc = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", "runs", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: invalid server URL") and proc.stderr.count("\n") == 1


def test_non_finite_json_values_are_one_line_naming_the_path(tmp_path: Path) -> None:
    for args in (["db", "upgrade"], ["tenants", "create", "acme", "--tier", "free"]):
        result = CliRunner().invoke(app, args, env=_env(tmp_path))
        assert result.exit_code == 0, result.output
    for value, where in (('{"a": [1, NaN]}', "a[1]"), ('{"a": 1e309}', "a"), ("Infinity", "$")):
        line = one_error_line(tmp_path, "memory", "put", "--tenant", "acme", "k", value)
        assert f"at {where} (numbers must be finite)" in line, line
    big = str(2**80)
    result = CliRunner().invoke(
        app, ["memory", "put", "--tenant", "acme", "k", big], env=_env(tmp_path)
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["memory", "get", "--tenant", "acme", "k"], env=_env(tmp_path))
    assert big in result.stdout  # kept exactly
