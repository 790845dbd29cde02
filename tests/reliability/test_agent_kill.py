"""Kill -9 in the middle of agent loops: each restart resumes at the last recorded iteration and
never repeats a tool call that was recorded before the kill.

``agent_worker.py`` runs three agent loops of twelve lookups each on a SQLite file. The test
SIGKILLs it at seeded moments while lookups are executing, and before every restart reads what
the store had recorded: the turns of finished iterations and the calls recorded by the
iteration in flight. After the restart, no lookup of that recorded set may start again.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tenantflow import AgentResult, Engine, RunStatus
from tenantflow.domain.agent import Turn
from tenantflow.domain.spec import parse_key

WORKER = Path(__file__).with_name("agent_worker.py")
RUNS = ("alpha", "beta", "gamma")
LOOKUPS = 12
PER_TURN = 3
TURNS = LOOKUPS // PER_TURN + 1  # the last one answers
KILLS = 6
SEED = 20_261_121


def _lines(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line.strip()]


async def _recorded(url: str) -> tuple[set[str], dict[str, int]]:
    """Queries whose lookup the store had recorded, and each run's finished iterations."""
    queries: set[str] = set()
    iterations: dict[str, int] = {}
    async with Engine.open(url, execute=False) as engine:
        for run in await engine.list_runs("acme"):
            done = 0
            for step in await engine.steps("acme", run.id):
                _, index = parse_key(step.key)
                if index is None:
                    continue
                if step.output_json is not None:
                    done += 1
                    turn = Turn.model_validate_json(step.output_json)
                    queries.update(str(r.arguments["query"]) for r in turn.tool_results)
                calls = await engine.store.recorded_calls("acme", run.id, step.key)
                for kind, _name, result in calls.values():
                    if kind == "tool":
                        queries.add(json.loads(result).removeprefix("result:"))
            iterations[str(json.loads(run.input_json))] = done
    return queries, iterations


def test_kill_mid_loop_resumes_without_repeating_recorded_tool_calls(tmp_path: Path) -> None:
    db = tmp_path / "agents.db"
    log = tmp_path / "exec.log"
    url = f"sqlite:///{db}"
    rng = random.Random(SEED)
    cmd = [sys.executable, str(WORKER), "--db", str(db), "--exec-log", str(log)]
    kills = 0
    recorded: set[str] = set()  # lookups the store had recorded before this worker started
    repeated: list[str] = []
    resumed_at: list[dict[str, int]] = []
    final_rc: int | None = None
    while final_rc is None:
        before = len(_lines(log))
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        pid = str(proc.pid)
        if kills < KILLS:
            target = rng.randint(2, 6)  # lookups this worker starts before it is killed
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                started = sum(1 for f in _lines(log)[before:] if f[0] == "S" and f[1] == pid)
                if started >= target:
                    break
                time.sleep(0.005)
        if kills < KILLS and proc.poll() is None:
            time.sleep(rng.uniform(0.0, 0.06))  # land inside or between lookups
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
        else:
            final_rc = proc.wait(timeout=120)
        repeated.extend(
            f[2] for f in _lines(log)[before:] if f[0] == "S" and f[1] == pid and f[2] in recorded
        )
        recorded, iterations = asyncio.run(_recorded(url))
        resumed_at.append(iterations)
    assert final_rc == 0
    assert kills == KILLS
    assert repeated == []
    # Kills landed mid-loop: some run had finished iterations but not all of them.
    assert any(0 < n < TURNS for it in resumed_at[:-1] for n in it.values())

    async def check() -> None:
        async with Engine.open(url, execute=False) as engine:
            runs = await engine.list_runs("acme")
            assert sorted(str(json.loads(r.input_json)) for r in runs) == sorted(RUNS)
            for run in runs:
                assert run.status == RunStatus.COMPLETED
                result = AgentResult.model_validate_json(run.result_json or b"")
                assert result.status == "answered"
                assert result.iterations == TURNS and result.tool_calls == LOOKUPS
                # Each iteration recorded once, in order, each with the next lookups.
                steps = {s.key: s for s in await engine.steps("acme", run.id)}
                task = str(json.loads(run.input_json))
                for t in range(TURNS - 1):
                    turn = Turn.model_validate_json(steps[f"dig[{t}]"].output_json or b"")
                    wanted = [f"{task}-{i}" for i in range(t * PER_TURN, (t + 1) * PER_TURN)]
                    assert [r.arguments["query"] for r in turn.tool_results] == wanted
                    assert [r.content for r in turn.tool_results] == [f"result:{q}" for q in wanted]
                timeline = await engine.timeline("acme", run.id)
                done = Counter(e.step for e in timeline if e.kind == "agent.iteration")
                assert all(n == 1 for n in done.values()) and len(done) == TURNS

    asyncio.run(check())
    # Every lookup ran at least once; repeats happen only for calls not yet recorded.
    started = Counter(f[2] for f in _lines(log) if f[0] == "S")
    assert set(started) == {f"{r}-{i}" for r in RUNS for i in range(LOOKUPS)}
