"""The reliability suite's own logic: bounds, figures read back from logs, the OpenAPI matrix,
the table; and the findings it made about bad input."""

from __future__ import annotations

import pytest

from tenantflow.domain.policy import Policy
from tenantflow.errors import ConfigurationError
from tenantflow.selftest import SCENARIOS, Row, choose
from tenantflow.selftest.cluster import executing_at_once
from tenantflow.selftest.core import SHORT, Context, percentile
from tenantflow.selftest.isolation import Operation, expected, operations
from tenantflow.selftest.table import COLUMNS, cells
from tenantflow.selftest.verify import recovery_after_kills
from tenantflow.selftest.workload import Execution
from tenantflow.sim import ScenarioError, parse_scenario


def test_a_clean_row_passes_and_every_broken_bound_fails_it() -> None:
    clean = Row("x", lost=0, duplicate_completions=0, duplicate_executions=3, duplicate_bound=3)
    clean.recovery_s, clean.recovery_bound_s = [0.5, 1.0], 2.0
    clean.judge()
    assert (clean.status, clean.failures) == ("pass", [])
    broken = [
        Row("x", lost=1),
        Row("x", duplicate_completions=1),
        Row("x", cross_tenant=2),
        Row("x", overspend_micros=1),
        Row("x", duplicate_executions=4, duplicate_bound=3),
        Row("x", tamper_detected=9, tamper_injected=10),
        Row("x", recovery_s=[1.0, 2.5], recovery_bound_s=2.0),
    ]
    for row in broken:
        row.judge()
        assert row.status == "fail" and len(row.failures) == 1, row
    checked = Row("x")
    assert checked.check(False, "one reason") is False
    checked.judge()
    assert checked.reason == "one reason"


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([1.0, 9.0], 0.99) == 9.0


def _x(kind: str, pid: int, tenant: str, run: str, step: str, attempt: int, at: float) -> Execution:
    return Execution(kind, pid, tenant, run, step, attempt, at)


def test_recovery_is_the_time_until_every_interrupted_tenant_runs_again() -> None:
    log = [
        _x("S", 1, "t0", "r1", "a", 1, 10.0),  # cut short by the kill of pid 1 at 11.0
        _x("S", 1, "t1", "r2", "a", 1, 10.5),  # cut short too
        _x("S", 1, "t2", "r3", "a", 1, 10.0),
        _x("E", 1, "t2", "r3", "a", 1, 10.2),  # finished before the kill: not interrupted
        _x("S", 2, "t0", "r1", "a", 2, 12.0),  # t0 again 1.0 s after the kill
        _x("S", 3, "t1", "r4", "b", 1, 13.5),  # t1 again 2.5 s after
    ]
    assert recovery_after_kills(log, [(1, 11.0)]) == [2.5]
    assert recovery_after_kills(log, [(9, 11.0)]) == []  # it ran nothing: nothing to recover


def test_steps_executing_at_once_count_bodies_cut_short_until_the_kill() -> None:
    log = [
        _x("S", 1, "t0", "r1", "a", 1, 0.0),
        _x("S", 2, "t0", "r2", "a", 1, 0.5),
        _x("E", 2, "t0", "r2", "a", 1, 0.6),
        _x("S", 2, "t0", "r3", "a", 1, 1.0),  # pid 1's body is still open: 2 at once
        _x("X", 2, "t0", "r3", "a", 1, 1.1),
        _x("S", 3, "t1", "r4", "a", 1, 5.0),
    ]
    assert executing_at_once(log, {1: 2.0}) == {"t0": 2, "t1": 1}
    assert executing_at_once(log, {1: 0.7}) == {"t0": 2, "t1": 1}
    assert executing_at_once(log[:3], {1: 0.4}) == {"t0": 1}


DOCUMENT = {
    "paths": {
        "/healthz": {"get": {"tags": ["health"]}},
        "/metrics": {
            "get": {"tags": ["health"], "summary": "Metrics (admin key)", "security": [{}]}
        },
        "/v1/tenants/{tenant_id}": {
            "delete": {
                "tags": ["admin"],
                "security": [{}],
                "parameters": [{"name": "tenant_id", "in": "path", "required": True}],
            }
        },
        "/v1/runs/{run_id}/state/diff": {
            "get": {
                "tags": ["runs"],
                "security": [{}],
                "parameters": [
                    {"name": "run_id", "in": "path", "required": True},
                    {"name": "a", "in": "query", "required": True, "schema": {"type": "integer"}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
            }
        },
        "/v1/memory/{namespace}/entries/{key}": {
            "put": {
                "tags": ["memory"],
                "security": [{}],
                "parameters": [
                    {"name": "namespace", "in": "path", "required": True},
                    {"name": "key", "in": "path", "required": True},
                ],
            }
        },
    }
}


def test_the_matrix_classifies_operations_from_the_document() -> None:
    ops = {op.label: op for op in operations(DOCUMENT)}
    assert {label: op.kind for label, op in ops.items()} == {
        "GET /healthz": "public",
        "GET /metrics": "admin",
        "DELETE /v1/tenants/{tenant_id}": "admin",
        "GET /v1/runs/{run_id}/state/diff": "tenant",
        "PUT /v1/memory/{namespace}/entries/{key}": "tenant",
    }
    diff = ops["GET /v1/runs/{run_id}/state/diff"]
    assert (diff.params, diff.query) == (("run_id",), {"a": 0})


@pytest.mark.parametrize(
    ("kind", "method", "params", "key", "good", "bad"),
    [
        ("public", "GET", (), "none", 200, 401),
        ("admin", "GET", (), "none", 401, 403),
        ("admin", "GET", (), "own", 403, 200),
        ("admin", "DELETE", ("tenant_id",), "admin", 404, 403),
        ("tenant", "GET", ("run_id",), "admin", 403, 404),
        ("tenant", "GET", ("run_id",), "other", 404, 200),
        ("tenant", "GET", ("run_id",), "own", 200, 404),
        ("tenant", "GET", (), "other", 200, 403),
        ("tenant", "PUT", ("namespace", "key"), "other", 200, 401),
        ("tenant", "POST", ("run_id",), "own", 409, 500),
        ("tenant", "GET", (), "revoked", 401, 200),
    ],
)
def test_the_expected_answer_of_each_cell(
    kind: str, method: str, params: tuple[str, ...], key: str, good: int, bad: int
) -> None:
    op = Operation(method, "/x", kind, params, {})
    assert expected(op, key, good)
    assert not expected(op, key, bad)


def test_the_table_has_a_cell_per_column() -> None:
    row = Row("crash-sqlite", runs=300, lost=0, duplicate_executions=7, duplicate_bound=240)
    row.fault("SIGKILLs", 30)
    row.recovery_s, row.recovery_bound_s = [0.05, 1.5], 6.0
    row.overspend_micros = 0
    row.judge()
    out = dict(zip(COLUMNS, cells(row), strict=True))
    assert out["faults injected"] == "30 SIGKILLs"
    assert out["dup. executions (bound)"] == "7 (≤ 240)"
    assert out["recovery p50 / p99 (bound)"] == "50 ms / 1.50 s (< 6 s)"
    assert (out["overspend"], out["cross-tenant"], out["result"]) == ("$0", "–", "pass (0 s)")


def test_scenarios_are_chosen_by_name() -> None:
    assert [s.name for s in choose(None)] == [s.name for s in SCENARIOS]
    assert [s.name for s in choose(["audit", "pause"])] == ["pause", "audit"]
    with pytest.raises(ConfigurationError, match="unknown scenario 'nope': one of crash-sqlite"):
        choose(["nope"])


# -- what the fuzz scenario found ----------------------------------------------------------


def test_a_region_of_the_wrong_type_is_a_clear_refusal() -> None:
    for bad in ({"us-east-1": 1}, ["us-east-1"], 3):
        with pytest.raises(ConfigurationError) as caught:
            Policy.for_tier("standard", region=bad)
        assert caught.value.fields["field"] == "region"


def test_a_character_yaml_refuses_is_one_line_with_its_line() -> None:
    text = "name: x\nseed: 1\nslots: 2\nduration: 1\x05h\n"
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source="bad.yaml")
    message = str(caught.value)
    assert message.startswith("bad.yaml:4: YAML error: unacceptable character #x0005")
    assert "\n" not in message


def test_without_a_command_line_the_selftest_runs_the_installed_one() -> None:
    # The selftest never imports the CLI (the CLI imports it): on its own it runs the command
    # line in a subprocess, its output returned and a failure raised with the output's end.
    ctx = Context(SHORT)
    assert ctx.run_cli(["--version"]).strip().startswith("tenantflow ")
    with pytest.raises(RuntimeError, match="unknown-command"):
        ctx.run_cli(["unknown-command"])
