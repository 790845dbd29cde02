"""Shared fixtures: servers are required in CI and skipped, with a reason, elsewhere."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_server(name: str, reachable: bool, how: str) -> None:
    """Skip (locally) or fail (in CI) when a server the test needs is not reachable."""
    if reachable:
        return
    message = f"{name} is not reachable ({how})"
    if IN_CI:
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(message)
