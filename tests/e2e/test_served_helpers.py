"""The CLI fork server (``served.CliForker``) runs a command as a subprocess of its own does:
the same exit code, stdout and stderr — usage errors with the program name included — and the
command's stdin, environment and working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from .served import CliForker, cli_env, run_cli

pytestmark = pytest.mark.timeout(300)


def test_a_forked_command_is_what_a_subprocess_gives(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    env = cli_env({"COLUMNS": "200", "TENANTFLOW_DATABASE_URL": db})
    run_cli(tmp_path, "db", "upgrade", env=env)
    forker = CliForker.shared()
    put = ("memory", "put", "note", "-", "--tenant", "bank-a")
    made = forker.run(tmp_path, "tenants", "create", "bank-a", "--tier", "free", env=env)
    assert made.returncode == 0, made.stderr
    written = forker.run(tmp_path, *put, env=env, stdin='[1, 2, "three"]')  # stdin is given
    assert written.returncode == 0, written.stderr
    for args in [
        ("runs", "lisst"),  # a usage error: it names the program
        ("runs", "list", "--limit", "x"),
        ("memory", "get", "note", "--tenant", "bank-a", "--json"),
        ("tenants", "list"),
        ("runs", "list", "--tenant", "nobody"),
    ]:
        forked = forker.run(tmp_path, *args, env=env)
        started = run_cli(tmp_path, *args, env=env)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            started.returncode,
            started.stdout,
            started.stderr,
        ), args
        if args[1] == "get":
            assert '"three"' in forked.stdout
