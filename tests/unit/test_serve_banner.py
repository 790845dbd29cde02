"""``tenantflow serve`` says on start-up what it serves, and warns when it serves nothing."""

from __future__ import annotations

import tenantflow as tf
from tenantflow.cli.serve import Banner, redact
from tenantflow.testing import MemoryStore


def _banner(apps: list[str]) -> Banner:
    return Banner(
        apps=apps,
        store="postgresql://app:s3cret@db:5432/flows",
        placement="embedded",
        slots=64,
        base="http://127.0.0.1:8000",
    )


def test_without_an_app_the_banner_warns_that_nothing_is_registered() -> None:
    engine = tf.Engine(MemoryStore(), tf.EngineConfig(execute=False))
    lines = _banner([]).lines(engine)
    text = "\n".join(lines)
    assert lines[0] == "tenantflow serve: http://127.0.0.1:8000"
    assert "workflows  (none)" in text
    assert "docs       http://127.0.0.1:8000/docs" in text
    assert "s3cret" not in text and "postgresql://app:***@db:5432/flows" in text
    assert lines[-1].startswith("warning: no workflows are registered (no --app)")


def test_with_an_app_it_lists_the_workflows_and_does_not_warn() -> None:
    engine = tf.Engine(MemoryStore(), tf.EngineConfig(execute=False))
    wf = tf.Workflow("loan-approval", version=2)

    @wf.step
    async def decide(ctx: tf.StepContext) -> str:
        return "ok"

    engine.register(wf)
    banner = _banner(["loan_platform.service:setup"])
    banner.routes = {"/ui"}
    lines = banner.lines(engine)
    assert "  workflows  loan-approval@2" in lines
    assert "  app        loan_platform.service:setup" in lines
    assert "  dashboard  http://127.0.0.1:8000/ui" in lines
    assert not any(line.startswith("warning") for line in lines)


def test_redact_keeps_urls_without_a_password() -> None:
    assert redact("sqlite:///loans.db") == "sqlite:///loans.db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
