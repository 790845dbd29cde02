"""Identifiers the whole system agrees on: tenant ids, lanes and the default store's key.

Checked here, below every layer, so that the engine, the observers, the API and the CLI refuse
the same malformed tenant id with the same error.
"""

from __future__ import annotations

import re

from tenantflow.errors import ConfigurationError

__all__ = ["DEFAULT_STORE", "LANES", "check_lane", "check_tenant"]

DEFAULT_STORE = "default"
"""The key of the engine's default store (region stores are keyed by their region)."""

LANES = ("urgent", "normal", "background")
"""The priority lanes a run can be submitted in, most urgent first."""

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid tenant id (1-64 letters, digits, '.', '_' or '-').

    Raises:
        ConfigurationError: it is not.
    """
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ConfigurationError(
            f"invalid tenant id {tenant!r}: 1-64 letters, digits, '.', '_' or '-'",
            field="tenant",
            value=repr(tenant),
        )
    return tenant


def check_lane(lane: str) -> str:
    """``lane`` if it is one of :data:`LANES`.

    Raises:
        ConfigurationError: it is not.
    """
    if lane not in LANES:
        raise ConfigurationError(
            f"unknown lane {lane!r}: one of {', '.join(LANES)}", field="lane", value=lane
        )
    return lane
