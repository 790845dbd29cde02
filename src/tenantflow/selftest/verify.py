"""Reading the figures back: from the store (runs, execution log, state versions) and from the
executions log the workload's steps append to (see :mod:`tenantflow.selftest.workload`).

Nothing here trusts the process under test: every figure is recomputed from what was durably
recorded. A run counts as *lost* unless it is stored, completed, with the right result and
state; a *duplicate completion* is a second ``step.succeeded`` for one step of one run; a
*duplicate execution* is a second start of one step's body (allowed: execution is at least
once, completion exactly once); a *DAG violation* is an attempt of a step that started before
each of the steps it depends on had its completion recorded.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tenantflow.domain.records import RunStatus, next_state_hash
from tenantflow.errors import NotFoundError
from tenantflow.ports import Store
from tenantflow.selftest.core import Row
from tenantflow.selftest.workload import DEPENDS, STEPS, Execution, expected_outputs

__all__ = ["Expected", "Outcome", "recovery_after_kills", "verify_runs"]


@dataclass(frozen=True, slots=True)
class Expected:
    """A run the scenario submitted: its tenant, its input ``i`` and its id."""

    tenant: str
    i: int
    run_id: str


@dataclass
class Outcome:
    """What the store and the executions log say about the expected runs."""

    expected: int = 0
    completed: int = 0
    lost: int = 0
    duplicate_completions: int = 0
    missing_completions: int = 0
    dag_violations: int = 0
    state_errors: int = 0
    executions: int = 0
    duplicate_executions: int = 0
    reused_attempts: int = 0
    unlogged_commits: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(text)

    def into(self, row: Row) -> None:
        """Copy the figures into ``row`` and check the invariants without a column."""
        row.runs = (row.runs or 0) + self.expected
        row.lost = (row.lost or 0) + self.lost
        row.duplicate_completions = (row.duplicate_completions or 0) + self.duplicate_completions
        row.duplicate_executions = (row.duplicate_executions or 0) + self.duplicate_executions
        row.check(self.dag_violations == 0, f"{self.dag_violations} DAG order violations")
        row.check(self.state_errors == 0, f"{self.state_errors} broken state histories")
        row.check(self.missing_completions == 0, f"{self.missing_completions} missing completions")
        row.check(
            self.reused_attempts == 0,
            f"{self.reused_attempts} attempt numbers executed twice (fencing)",
        )
        row.check(
            self.unlogged_commits == 0,
            f"{self.unlogged_commits} committed results no execution produced",
        )
        row.check(not self.problems, "first problems: " + "; ".join(self.problems))


async def verify_runs(
    store: Store, expected: Sequence[Expected], executions: Iterable[Execution]
) -> Outcome:
    """Check every expected run in ``store`` and count executions of them in the log."""
    out = Outcome(expected=len(expected))
    ids = {e.run_id for e in expected}
    starts: Counter[tuple[str, str, int]] = Counter()
    ended: set[tuple[str, str, int]] = set()
    for x in executions:
        if x.run in ids:
            if x.kind == "S":
                starts[(x.run, x.step, x.attempt)] += 1
            elif x.kind == "E":
                ended.add((x.run, x.step, x.attempt))
    per_step = Counter((run, step) for run, step, _ in starts.elements())
    out.executions = sum(per_step.values())
    out.duplicate_executions = sum(n - 1 for n in per_step.values())
    out.reused_attempts = sum(n - 1 for n in starts.values())
    for exp in expected:
        await _verify_run(store, exp, ended, out)
    return out


async def _verify_run(
    store: Store, exp: Expected, ended: set[tuple[str, str, int]], out: Outcome
) -> None:
    try:
        record = await store.get_run(exp.tenant, exp.run_id)
    except NotFoundError:
        out.lost += 1
        out.problem(f"run {exp.run_id} of {exp.tenant} is not stored")
        return
    want = expected_outputs(exp.i)
    events = await store.events(exp.tenant, exp.run_id)
    succeeded: dict[str, list[tuple[int, int | None]]] = defaultdict(list)  # step -> (id, attempt)
    for e in events:
        if e.kind == "step.succeeded" and e.step is not None:
            succeeded[e.step].append((e.id, e.attempt))
    for step in STEPS:
        n = len(succeeded[step])
        out.duplicate_completions += max(0, n - 1)
        if n == 0 and record.status == RunStatus.COMPLETED:
            out.missing_completions += 1
        for _, attempt in succeeded[step][:1]:
            if attempt is not None and (exp.run_id, step, attempt) not in ended:
                out.unlogged_commits += 1
    first_done = {step: min(i for i, _ in done) for step, done in succeeded.items() if done}
    for e in events:
        if e.kind != "step.started" or e.step is None or e.step not in DEPENDS:
            continue
        late = [d for d in DEPENDS[e.step] if first_done.get(d, 1 << 62) > e.id]
        if late:
            out.dag_violations += 1
            out.problem(f"{exp.run_id}/{e.step} attempt {e.attempt} started before {late}")
    completed = [e for e in events if e.kind == "run.completed"]
    out.duplicate_completions += max(0, len(completed) - 1)
    result = json.loads(record.result_json) if record.result_json is not None else None
    if record.status != RunStatus.COMPLETED or result != want["e"]:
        out.lost += 1
        out.problem(f"run {exp.run_id} ended {record.status.value} with {result!r}")
        return
    out.completed += 1
    versions = await store.state_versions(exp.tenant, exp.run_id)
    chain, h = [], ""
    for v in versions:
        h = next_state_hash(h, v.version, v.step, v.delta_json)
        chain.append(v.hash == h)
    deltas = [json.loads(v.delta_json) for v in versions[1:]]
    good = (
        [v.version for v in versions] == list(range(len(STEPS) + 1))
        and all(v.parent == v.version - 1 for v in versions[1:])
        and all(chain)
        and record.state_hash == h
        and json.loads(versions[0].delta_json) == {"i": exp.i}
        and sorted((v.step or "") for v in versions[1:]) == sorted(STEPS)
        and all(
            d == {v.step: want[v.step or ""]} for d, v in zip(deltas, versions[1:], strict=True)
        )
    )
    if not good:
        out.state_errors += 1
        out.problem(f"run {exp.run_id}: state versions broken")


def recovery_after_kills(
    executions: Sequence[Execution], kills: Iterable[tuple[int, float]]
) -> list[float]:
    """For each kill (pid, when) that cut step bodies short: how long until every tenant whose
    steps it was executing had a step started again by a live process (seconds)."""
    open_: dict[int, dict[tuple[str, str, int], str]] = defaultdict(dict)  # pid: attempt: tenant
    opened: dict[tuple[int, str, str, int], float] = {}
    starts: dict[str, list[tuple[float, int]]] = defaultdict(list)  # tenant -> (when, pid)
    ends: dict[tuple[int, str, str, int], float] = {}
    for x in executions:
        key = (x.pid, x.run, x.step, x.attempt)
        if x.kind == "S":
            opened[key] = x.at
            open_[x.pid][(x.run, x.step, x.attempt)] = x.tenant
            starts[x.tenant].append((x.at, x.pid))
        else:
            ends[key] = x.at
    for tenant_starts in starts.values():
        tenant_starts.sort()
    out = []
    for pid, when in kills:
        cut = {
            tenant
            for (run, step, attempt), tenant in open_.get(pid, {}).items()
            if opened[(pid, run, step, attempt)] <= when
            and ends.get((pid, run, step, attempt), when + 1) > when
        }
        delays = []
        for tenant in cut:
            later = starts[tenant]
            i = bisect.bisect_left(later, (when, -1))
            again = next((at for at, by in later[i:] if by != pid), None)
            if again is not None:
                delays.append(again - when)
        if delays:
            out.append(max(delays))
    return out
