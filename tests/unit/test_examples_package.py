"""The loan platform example ships inside the package (``tenantflow.examples.loan_platform``),
not as a top-level ``loan_platform`` package; ``--app loan_platform.…`` references still load."""

from __future__ import annotations

import importlib.util

import pytest

from tenantflow.cli.serve import load_app
from tenantflow.errors import ConfigurationError
from tenantflow.examples.loan_platform import service


def test_no_top_level_loan_platform_package_is_installed() -> None:
    assert importlib.util.find_spec("loan_platform") is None


def test_old_and_new_app_references_load_the_same_setup() -> None:
    new = load_app("tenantflow.examples.loan_platform.service:setup")
    old = load_app("loan_platform.service:setup")
    assert new is old is service.setup


@pytest.mark.parametrize("raw", ["0", "-2", "fast", "nan", "inf"])
def test_a_bad_loan_speed_is_refused_with_a_typed_error(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(service.SPEED_ENV, raw)
    with pytest.raises(ConfigurationError) as caught:
        service.speed()
    assert caught.value.fields["field"] == service.SPEED_ENV


def test_the_loan_speed_defaults_to_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(service.SPEED_ENV, raising=False)
    assert service.speed() == 1.0
    monkeypatch.setenv(service.SPEED_ENV, "200")
    assert service.speed() == 200.0


def test_the_platforms_side_effects_are_off_the_critical_path() -> None:
    from tenantflow.examples.loan_platform.workflow import loan

    effects = {s.name for s in loan.spec.steps if s.side_effect}
    assert effects == {"record_pull", "notify_applicant"}
    assert loan.spec.sinks == ("decide",)  # the result is the decision, never a side effect
