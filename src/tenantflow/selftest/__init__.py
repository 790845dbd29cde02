"""The reliability suite behind ``tenantflow selftest``: scenarios that crash, pause, restart,
load and attack a real tenantflow, then count from the stores, execution logs and answers what
was lost, duplicated, leaked or overspent, and judge each figure against a stated bound.

Each scenario is a function filling a :class:`~tenantflow.selftest.core.Row`;
:func:`run_selftest` runs the chosen ones under a profile (``short`` for CI, ``long`` on demand)
and :mod:`tenantflow.selftest.table` prints the table. What each one does and its bounds:
``docs/reliability.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tenantflow.errors import ConfigurationError
from tenantflow.selftest.audit import run_audit
from tenantflow.selftest.budget import run_budget_race
from tenantflow.selftest.cluster import run_crash_postgres
from tenantflow.selftest.core import (
    LONG,
    PROFILES,
    SHORT,
    Context,
    Profile,
    Row,
    Scenario,
    Unavailable,
    run_scenario,
)
from tenantflow.selftest.crash import run_crash_sqlite
from tenantflow.selftest.fuzz import run_fuzz
from tenantflow.selftest.hostile import run_hostile
from tenantflow.selftest.isolation import run_isolation
from tenantflow.selftest.load import run_load
from tenantflow.selftest.mesh import (
    run_mesh_budget,
    run_mesh_crash,
    run_mesh_deadlock,
    run_mesh_isolation,
    run_mesh_loan,
)
from tenantflow.selftest.pause import run_pause
from tenantflow.selftest.restart import run_db_restart

__all__ = [
    "LONG",
    "MESH_SCENARIOS",
    "PROFILES",
    "SCENARIOS",
    "SHORT",
    "Context",
    "Profile",
    "Row",
    "Scenario",
    "Unavailable",
    "choose",
    "run_scenario",
    "run_selftest",
]

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "crash-sqlite",
        "SIGKILL the embedded engine (scheduler and executor) during runs; lost commit acks",
        run_crash_sqlite,
    ),
    Scenario(
        "crash-postgres",
        "SIGKILL workers and the API front on PostgreSQL during runs",
        run_crash_postgres,
        needs=("postgres",),
    ),
    Scenario("pause", "SIGSTOP a worker past its lease; its late result is refused", run_pause),
    Scenario(
        "db-restart",
        "restart PostgreSQL under an engine with runs in flight; lost commit acks",
        run_db_restart,
        needs=("postgres",),
    ),
    Scenario(
        "isolation",
        "every API operation × five keys; canaries planted by one tenant, sought by others",
        run_isolation,
    ),
    Scenario(
        "hostile",
        "steps, inputs and model output that try to cross the boundary; secrets in inputs",
        run_hostile,
    ),
    Scenario("budget", "concurrent steps race for the last of a $1.00 budget", run_budget_race),
    Scenario("load", "open-loop submissions held at a rate against a real server", run_load),
    Scenario("fuzz", "schemathesis on the API; hypothesis on specs, policies, scenarios", run_fuzz),
    Scenario(
        "audit", "tamper with, delete and reorder audit rows; verify names the row", run_audit
    ),
)

MESH_SCENARIOS: tuple[Scenario, ...] = (  # tenantflow selftest --placement mesh
    Scenario(
        "mesh-crash",
        "SIGKILL mesh agents and the NATS server under load; completions counted on the log",
        run_mesh_crash,
        needs=("postgres",),
    ),
    Scenario(
        "mesh-isolation",
        "a tenant's and a region's NATS users try other tenants' and regions' subjects",
        run_mesh_isolation,
    ),
    Scenario(
        "mesh-budget",
        "50 steps on two agents call a priced tool; the KV budget ledger fits 12",
        run_mesh_budget,
        needs=("postgres",),
    ),
    Scenario(
        "mesh-deadlock",
        "three agents wait on each other: a timeout names the cycle",
        run_mesh_deadlock,
    ),
    Scenario(
        "mesh-loan",
        "the loan platform through mesh up, agents in two regions, the REST API",
        run_mesh_loan,
        needs=("postgres",),
    ),
)


def choose(names: Iterable[str] | None, placement: str | None = None) -> list[Scenario]:
    """The scenarios named (all of the placement's, in table order, when None or empty;
    ``placement="mesh"``: the mesh's).

    Raises:
        ConfigurationError: a name that is no scenario.
    """
    wanted = list(names or ())
    pool = MESH_SCENARIOS if placement == "mesh" else SCENARIOS
    known = {s.name: s for s in (*SCENARIOS, *MESH_SCENARIOS)}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigurationError(
            f"unknown scenario {unknown[0]!r}: one of {', '.join(s.name for s in pool)}",
            field="only",
            value=unknown[0],
        )
    if not wanted:
        return list(pool)
    return [s for s in (*SCENARIOS, *MESH_SCENARIOS) if s.name in wanted]


def run_selftest(scenarios: Sequence[Scenario], ctx: Context) -> list[Row]:
    """Run ``scenarios`` one after the other; a judged row for each."""
    return [run_scenario(s, ctx) for s in scenarios]
