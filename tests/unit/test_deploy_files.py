"""The Dockerfile and compose.yaml run commands this release has, with options it accepts.

Building and starting the images needs a Docker daemon, which the CI machine does not have
(docs/deploy.md): this checks what can be checked without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from tenantflow.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def _parses(args: list[str]) -> str:
    """Parse ``tenantflow ARGS`` as the CLI would (no command runs); the command's path."""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("tenantflow", list(args))
    path = ["tenantflow"]
    while hasattr(command, "list_commands"):  # a group (typer ships its own click)
        # What the group left for its subcommand (click keeps the name apart from the rest).
        rest = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        assert rest, f"{' '.join(path)} needs a subcommand"
        name = rest[0]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"no command {' '.join([*path, name])}"
        path.append(name)
        command = sub
        ctx = command.make_context(name, rest[1:], parent=ctx)
    return " ".join(path)


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def test_compose_runs_postgres_a_migration_the_api_and_workers() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert "--workers" in services["api"]["command"]
    env = services["worker"]["environment"]
    assert env["TENANTFLOW_DATABASE_URL"].startswith("postgresql://")
    assert env["TENANTFLOW_APP"] == "tenantflow.examples.loan_platform.service:setup"


@pytest.mark.parametrize("service", ["migrate", "api", "worker"])
def test_each_services_command_is_a_valid_tenantflow_command(service: str) -> None:
    command = _compose()["services"][service]["command"]
    assert _parses(command).startswith("tenantflow ")


def test_the_images_default_command_is_valid_and_binds_all_interfaces() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))
    args = yaml.safe_load(cmd.removeprefix("CMD "))  # a JSON array
    assert _parses(args) == "tenantflow serve" and "0.0.0.0" in args
    assert 'ENTRYPOINT ["tenantflow"]' in text and "[server,postgres]" in text


def test_an_unknown_option_would_be_caught() -> None:
    with pytest.raises(Exception, match="no-such-option"):
        _parses(["worker", "--no-such-option"])
    with pytest.raises(AssertionError, match="no command tenantflow nope"):
        _parses(["nope"])
