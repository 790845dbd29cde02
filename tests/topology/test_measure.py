"""The comparison's figures, on hand-made records: each one's definition, pinned."""

from __future__ import annotations

import pytest

from tenantflow.topology import measure as m
from tenantflow.topology.driver import RunInfo, Submission
from tenantflow.topology.execlog import ExecLine, ExecLog, read_exec_log


def _run(run_id: str, tenant: str, created: float, finished: float | None) -> RunInfo:
    status = "completed" if finished is not None else "running"
    return RunInfo(run_id, tenant, status, created, finished, None)


def test_jain_is_one_when_equal_and_one_over_n_when_one_takes_all() -> None:
    assert m.jain([3.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert m.jain([9.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert m.jain([]) is None


def test_pearson_sign_and_degenerate_cases() -> None:
    assert m.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert m.pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert m.pearson([1, 2], [1, 2]) is None  # fewer than 3 points
    assert m.pearson([1, 1, 1], [1, 2, 3]) is None  # no variance


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert m.percentile(values, 50) == 50.0
    assert m.percentile(values, 99) == 99.0
    assert m.percentile([], 99) is None


def test_run_latency_counts_from_the_first_try_and_flags_missing_runs() -> None:
    subs = [
        Submission("a", "k1", "p", first_try=10.0, acked=12.0, run_id="r1"),
        Submission("a", "k2", "p", first_try=10.0, acked=10.1, run_id="r2"),
        Submission("a", "k3", "p", first_try=10.0, run_id=None, refused="503"),
    ]
    runs = {"r1": _run("r1", "a", 12.0, 12.5)}
    lat = {x.run_id: x for x in m.run_latencies(subs, runs)}
    assert lat["r1"].seconds == pytest.approx(2.5)  # the 2 s outage before the ack counts
    assert lat["r2"].status == "missing" and lat["r2"].seconds is None
    assert len(lat) == 2  # a refused submission has no run


def test_hops_are_ready_to_started() -> None:
    runs = {"r": _run("r", "a", 100.0, 101.0)}
    lines = [
        ExecLine("S", 1, "a", "r", "s1", 1, 100.2),
        ExecLine("E", 1, "a", "r", "s1", 1, 100.5),
        ExecLine("S", 1, "a", "r", "s2", 1, 100.9),
        ExecLine("E", 1, "a", "r", "s2", 1, 101.0),
    ]
    assert m.hop_latencies(lines, runs, ["s1", "s2"]) == pytest.approx([0.2, 0.4])


def test_queue_depth_is_created_and_not_started() -> None:
    runs = [_run("r1", "x", 0.0, 5.0), _run("r2", "x", 0.0, 5.0), _run("r3", "x", 2.0, 5.0)]
    lines = [ExecLine("S", 1, "x", "r1", "s1", 1, 1.0), ExecLine("S", 1, "x", "r2", "s1", 1, 3.0)]
    assert m.queue_depth(runs, lines, "s1", [0.5, 1.5, 2.5, 3.5]) == [2, 1, 2, 1]


def test_policy_violations_count_starts_over_the_new_cap_after_the_write() -> None:
    # cap lowered to 1 at t=10: two steps were running then (allowed to finish); a start at 11
    # while one still runs breaks the cap, a start at 13 alone does not
    lines = [
        ExecLine("S", 1, "x", "r1", "s", 1, 9.0),
        ExecLine("S", 1, "x", "r2", "s", 1, 9.5),
        ExecLine("E", 1, "x", "r1", "s", 1, 10.5),
        ExecLine("S", 1, "x", "r3", "s", 1, 11.0),
        ExecLine("E", 1, "x", "r2", "s", 1, 12.0),
        ExecLine("E", 1, "x", "r3", "s", 1, 12.5),
        ExecLine("S", 1, "x", "r4", "s", 1, 13.0),
        ExecLine("S", 1, "y", "r9", "s", 1, 11.0),  # another tenant: not counted
    ]
    violations, lag, at_write = m.policy_violations(lines, "x", written=10.0, cap=1)
    assert (violations, at_write) == (1, 2)
    assert lag == pytest.approx(1.0)


def test_residency_counts_calls_outside_the_tenants_region() -> None:
    lines = [
        ExecLine("E", 1, "eu", "r", "s", 1, 1.0, "small-eu", 10, 5, 3),
        ExecLine("E", 1, "eu", "r", "t", 1, 2.0, "small-us", 10, 5, 3),
        ExecLine("E", 1, "any", "r2", "s", 1, 2.0, "small-us", 10, 5, 3),  # unbound tenant
        ExecLine("E", 1, "eu", "r", "u", 1, 3.0, None),  # no model call
    ]
    regions = {"eu": "eu-west-1", "any": None}
    models = {"small-eu": "eu-west-1", "small-us": "us-east-1"}
    assert m.residency(lines, regions, models) == (1, 2)


def test_attribution_error_total_and_worst_tenant() -> None:
    total, worst = m.attribution_error({"a": 90.0, "b": 100.0}, {"a": 100.0, "b": 100.0})
    assert total == pytest.approx(0.05)
    assert worst == pytest.approx(0.10)
    assert m.attribution_error({}, {}) == (None, None)


def test_saturation_window_ends_when_the_first_tenant_runs_dry() -> None:
    runs = {
        "a1": _run("a1", "a", 0.0, 1.0),
        "b1": _run("b1", "b", 0.0, 1.0),
        "b2": _run("b2", "b", 0.0, 3.0),
    }
    lines = [
        ExecLine("E", 1, "a", "a1", "s", 1, 0.5),
        ExecLine("E", 1, "b", "b1", "s", 1, 0.5),
        ExecLine("E", 1, "b", "b1", "s", 2, 0.6),  # a re-execution counts once
        ExecLine("E", 1, "b", "b2", "s", 1, 2.0),  # after the window
    ]
    sat = m.saturation(lines, runs, {"a": 1.0, "b": 1.0}, start=0.0)
    assert sat["window_s"] == pytest.approx(1.0)
    assert sat["steps_per_s"] == pytest.approx(2.0)
    assert sat["jain"] == pytest.approx(1.0)


def test_drain_time_needs_every_run_finished() -> None:
    subs = [Submission("x", f"k{i}", "p", first_try=10.0, run_id=f"r{i}") for i in range(2)]
    runs = {"r0": _run("r0", "x", 10.0, 12.0), "r1": _run("r1", "x", 10.0, 14.0)}
    assert m.drain_time(subs, runs) == pytest.approx(4.0)
    runs["r1"] = _run("r1", "x", 10.0, None)
    assert m.drain_time(subs, runs) is None


def test_exec_log_round_trip_and_partial_lines(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "exec.log"  # type: ignore[operator]
    log = ExecLog(path)
    log.write("S", "a", "r", "s", 1)
    log.write("E", "a", "r", "s", 1, model="m", tokens_in=3, tokens_out=4, cost_micros=5)
    with open(path, "a") as fh:
        fh.write("S 1 a r half")  # a line still being written: not read
    lines, offset = read_exec_log(path)
    assert [x.kind for x in lines] == ["S", "E"]
    assert (lines[1].model, lines[1].tokens_in, lines[1].cost_micros) == ("m", 3, 5)
    more, _ = read_exec_log(path, offset)
    assert more == []


def test_p99_back_is_the_first_second_from_which_every_second_is_within_the_bound() -> None:
    # the outage (seconds 0-2) is slow, second 3 is back, second 4 slips, then back for good
    assert m.p99_back({0: 5.0, 1: 4.0, 2: 3.0, 3: 0.5, 4: 2.0, 5: 0.5, 6: 0.4}, 1.0) == 5.0
    assert m.p99_back({0: 0.5, 1: 0.4}, 1.0) == 0.0  # never left the bound
    assert m.p99_back({0: 5.0, 1: 0.5, 2: 3.0}, 1.0) is None  # still above at the window's end
    assert m.p99_back({}, 1.0) is None  # nothing measured
    assert m.p99_back({0: 0.5}, 0.0) is None  # no steady p99 to compare with


def test_open_loop_stops_submitting_when_told() -> None:
    import asyncio

    from tenantflow.topology.driver import Driver
    from tenantflow.topology.workload import load_workload

    workload = load_workload("topology", quick=True)
    driver = Driver("http://127.0.0.1:9", "admin", workload)
    stop = asyncio.Event()
    seen: list[int] = []

    async def submit(tenant: str, phase: str, seq: int, deadline: float) -> Submission:
        seen.append(seq)
        if len(seen) == 3:
            stop.set()  # told to stop while submitting the third arrival
        return Submission(tenant, f"{phase}-{seq}", phase, 0.0, run_id=str(seq))

    driver.submit = submit  # type: ignore[method-assign]

    async def scenario(stopped: bool) -> list[Submission]:
        if stopped:
            stop.set()
        # 5 arrivals a second for 10 minutes: without the stop it would run that long
        return await asyncio.wait_for(driver.open_loop(["a"], 5.0, 600.0, "f", 1, stop=stop), 120.0)

    assert asyncio.run(scenario(stopped=True)) == []  # stopped before the first arrival
    stop.clear()
    subs = asyncio.run(scenario(stopped=False))
    assert len(subs) == len(seen) >= 3  # the ones submitted are returned, then nothing more
