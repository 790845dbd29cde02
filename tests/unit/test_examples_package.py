"""The loan platform example ships inside the package (``tenantflow.examples.loan_platform``),
not as a top-level ``loan_platform`` package; ``--app loan_platform.…`` references still load."""

from __future__ import annotations

import importlib.util

from tenantflow.cli.serve import load_app
from tenantflow.examples.loan_platform import service


def test_no_top_level_loan_platform_package_is_installed() -> None:
    assert importlib.util.find_spec("loan_platform") is None


def test_old_and_new_app_references_load_the_same_setup() -> None:
    new = load_app("tenantflow.examples.loan_platform.service:setup")
    old = load_app("loan_platform.service:setup")
    assert new is old is service.setup
