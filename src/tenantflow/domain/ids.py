"""Identifiers the whole system agrees on: tenant ids, lanes, run and review ids, and the
default store's key.

Tenant ids and lanes are checked here, below every layer, so that the engine, the observers,
the API and the CLI refuse the same malformed one with the same error. Run and review ids are
made here, for every placement.
"""

from __future__ import annotations

import re
import secrets

from tenantflow.errors import ConfigurationError

__all__ = ["DEFAULT_STORE", "LANES", "check_lane", "check_tenant", "new_review_id", "new_run_id"]

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


_MS_MASK = (1 << 48) - 1


def new_run_id(now: float) -> str:
    """A new run id: ``run_`` and 24 hex digits, the first 12 the milliseconds of ``now`` (the
    run's creation time, seconds since the epoch) and the last 12 random.

    Ids of runs created together sort together, so the store's indexes keyed by run id (the
    runs, their steps, state versions and events) take the writes of the runs in flight on a
    few pages at their end, not on a random page each: a group commit writes fewer pages (the
    README's benchmarks say how many more steps a second that makes). The 48 random bits keep
    ids made in the same millisecond, by any process, apart. A run id is not a secret: every
    access to a run is scoped by its tenant, whatever its id says.
    """
    return f"run_{int(now * 1000) & _MS_MASK:012x}{secrets.token_hex(6)}"


def new_review_id() -> str:
    """A new review id: ``rev_`` and 20 random hex digits."""
    return "rev_" + secrets.token_hex(10)
