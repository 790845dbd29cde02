"""Kill -9 in the middle of an SDK agent: the OpenAI Agents SDK, PydanticAI and an MCP tool
(and, for both SDKs, while a tool's approval waits for its reviewer).

``integration_worker.py`` runs one agent in a subprocess against the local OpenAI-compatible test
server (in this process). The model asks for two lookups in parallel (``a``, ``b``), then one more
(``c``), then answers. Each lookup waits for a gate file and then appends its side effect to a
file, so the test holds a call exactly where it wants the kill; it waits for what the store has
recorded (read from the SQLite file) or what the server has received, never for a time. Three
kills per integration: right after the second model response is recorded, while the second
model request is in flight, and between the two parallel lookups. After each restart the run
must end as a run with no crash does (same answer, same transcript sent to the model), with
every recorded model request sent once (the one in flight at most twice, charged once), every
tool call's side effect done once, the run's ledger equal to the sum of the unique calls and no
hold left, and the tenant's audit chain intact.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tenantflow import Engine
from tenantflow.adapters.providers.testserver import OpenAITestServer
from tenantflow.engine.gateway import response_from_json

WORKER = Path(__file__).with_name("integration_worker.py")
KINDS = ("openai-agents", "openai-agents-stream", "pydantic-ai", "mcp")
IN_FLIGHT_KINDS = (*KINDS, "pydantic-ai-stream")  # a stream held before its first byte
TOOL_KINDS = (*KINDS, "mcp-tenant")  # an MCP server registered at run time for the tenant
TOOL_PRICE_MICROS = 10_000
ANSWER = "Tides follow the moon."
WAIT_S = 90.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _tool(kind: str) -> str:
    return "facts__lookup" if kind.startswith("mcp") else "lookup"


@dataclass
class Model:
    """What the model answers, in order (queued on the test server phase by phase)."""

    kind: str

    def first(self, server: OpenAITestServer, **options: Any) -> None:
        tool = _tool(self.kind)
        server.queue(tool_calls=[(tool, {"topic": "a"}), (tool, {"topic": "b"})], **options)

    def second(self, server: OpenAITestServer, **options: Any) -> None:
        server.queue(tool_calls=[(_tool(self.kind), {"topic": "c"})], **options)

    def answer(self, server: OpenAITestServer) -> None:
        server.queue(text=ANSWER)


class Worker:
    """The agent's process, on one database and one directory of gates and effects."""

    def __init__(
        self, kind: str, root: Path, server: OpenAITestServer, *, approval: bool = False
    ) -> None:
        self.kind = kind
        self.approval = approval
        self.dir = root
        self.db = root / "agent.db"
        self.server = server
        self.proc: subprocess.Popen[bytes] | None = None

    def open_gate(self, *topics: str) -> None:
        for topic in topics:
            (self.dir / f"gate-{topic}").touch()

    def start(self) -> None:
        cmd = [
            sys.executable,
            str(WORKER),
            "--kind",
            self.kind,
            "--db",
            str(self.db),
            "--base-url",
            self.server.base_url,
            "--dir",
            str(self.dir),
        ]
        if self.approval:
            cmd.append("--approval")
        self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` (a file, the store, the server's log) until it holds."""
        assert self.proc is not None
        deadline = time.monotonic() + WAIT_S
        while not ready():
            assert self.proc.poll() is None, f"the worker exited ({self.proc.returncode}) {what}"
            assert time.monotonic() < deadline, f"timed out {what}"
            time.sleep(0.01)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def finish(self) -> dict[str, Any]:
        assert self.proc is not None
        rc = self.proc.wait(timeout=WAIT_S * 2)
        result: dict[str, Any] = json.loads((self.dir / "result.json").read_text())
        assert rc == 0, result
        return result

    def calls(self, kind: str) -> int:
        """How many calls of ``kind`` (model, tool) the store has recorded."""
        return self._count("SELECT COUNT(*) FROM calls WHERE kind = ?", kind)

    def reviews(self, status: str) -> int:
        """How many review tasks the store holds in ``status``."""
        return self._count("SELECT COUNT(*) FROM reviews WHERE status = ?", status)

    def _count(self, sql: str, value: str) -> int:
        if not self.db.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute(sql, (value,)).fetchone()
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0
        return int(row[0])

    def effects(self) -> list[tuple[str, str]]:
        """(tool-call id, topic) of every side effect done, in order."""
        path = self.dir / "effects"
        if not path.exists():
            return []
        return [tuple(line.split()[1:3]) for line in path.read_text().splitlines() if line]  # type: ignore[misc]


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer() as s:
        yield s


def _bodies(server: OpenAITestServer) -> list[str]:
    return [json.dumps(r.body, sort_keys=True) for r in server.requests]


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """The crash-free run of each kind, made once for the module."""
    made: dict[str, tuple[dict[str, Any], Any]] = {}

    def get(kind: str) -> tuple[dict[str, Any], Any]:
        if kind not in made:
            made[kind] = crash_free(kind, tmp_path_factory.mktemp(f"baseline-{kind}"))
        return made[kind]

    return get


def crash_free(kind: str, root: Path) -> tuple[dict[str, Any], Any]:
    """The run with no crash: its result and the messages of the model's last request."""
    with OpenAITestServer() as server:
        worker = Worker(kind, root, server)
        model = Model(kind)
        worker.open_gate("a", "b", "c")
        model.first(server)
        model.second(server)
        model.answer(server)
        worker.start()
        result = worker.finish()
        assert len(server.requests) == 3
        return result, server.requests[-1].body["messages"]


async def _ledger_and_audit(worker: Worker, run_id: str) -> None:
    async with Engine.open(f"sqlite:///{worker.db}", execute=False) as engine:
        steps = await engine.steps("acme", run_id)
        recorded: dict[int, tuple[str, str, str]] = {}
        for step in steps:
            recorded.update(await engine.store.recorded_calls("acme", run_id, step.key))
        models = [  # a reviewer's approval is recorded as a free "human" answer
            response_from_json(r) for k, n, r in recorded.values() if k == "model" and n != "human"
        ]
        tools = [r for k, _, r in recorded.values() if k == "tool"]
        assert (len(models), len(tools)) == (3, 3)
        from integration_worker import ENDPOINT

        expected = sum(ENDPOINT.cost_micros(m.tokens_in, m.tokens_out) for m in models)
        expected += TOOL_PRICE_MICROS * len(tools)
        ledgers = {(row["scope"], row["unit"]): row for row in await engine.budget("acme")}
        run = ledgers[(f"run:{run_id}", "micros")]
        assert (int(run["spent"]), int(run["reserved"])) == (expected, 0)
        period = ledgers[("period", "micros")]
        assert (int(period["spent"]), int(period["reserved"])) == (expected, 0)
        usage = {(r["metric"], r["dim"]): r["value"] for r in await engine.usage("acme")}
        assert usage[("model_calls", "local")] == 3
        verdict = await engine.audit_verify("acme")
        assert verdict.ok, verdict
        if worker.kind == "mcp-tenant":  # registered once, read back by the restarted worker
            actions = [a.action for a in await engine.audit_log("acme")]
            assert actions.count("mcp_server.registered") == 1


def check(
    worker: Worker,
    result: dict[str, Any],
    baseline: tuple[dict[str, Any], Any],
    *,
    repeated: int,
    topics: tuple[str, ...] = ("a", "b", "c"),
) -> None:
    """The run ended as the crash-free one; each call was made (and paid) once."""
    assert result["status"] == "completed"
    assert result["result"] == baseline[0]["result"] == ANSWER
    server = worker.server
    assert server.requests[-1].body["messages"] == baseline[1]  # the same transcript
    bodies = Counter(_bodies(server))
    assert len(bodies) == 3  # three distinct model requests
    assert sum(bodies.values()) == 3 + repeated
    assert all(n == 1 for n in bodies.values()) if repeated == 0 else max(bodies.values()) == 2
    effects = worker.effects()
    assert Counter(topic for _, topic in effects) == dict.fromkeys(topics, 1)
    if not worker.kind.startswith("mcp"):  # the MCP server does not see the tool-call id
        assert len({call_id for call_id, _ in effects}) == 3
    if worker.kind.endswith("-stream"):  # the answer streamed live in the attempt that made it
        lines = [line.split(" ", 1) for line in (worker.dir / "stream").read_text().splitlines()]
        last = max(int(attempt) for attempt, _ in lines)
        deltas = [ast.literal_eval(d) for attempt, d in lines if int(attempt) == last]
        assert "".join(deltas) == ANSWER and len(deltas) == len(ANSWER.split())
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        asyncio.run(_ledger_and_audit(worker, result["run_id"]))
    finally:
        sys.path.remove(str(Path(__file__).parent))


@pytest.mark.parametrize("kind", KINDS)
def test_kill_right_after_a_model_response_is_recorded(
    kind: str, tmp_path: Path, server: OpenAITestServer, baselines: Callable[[str], Any]
) -> None:
    baseline = baselines(kind)
    (tmp_path / "run").mkdir()
    worker, model = Worker(kind, tmp_path / "run", server), Model(kind)
    worker.open_gate("a", "b")  # c stays shut: the kill lands before it runs
    model.first(server)
    model.second(server)
    worker.start()
    worker.wait_for("for the second model response", lambda: worker.calls("model") == 2)
    worker.kill()
    assert worker.calls("tool") == 2 and len(server.requests) == 2
    model.answer(server)
    worker.open_gate("c")
    worker.start()
    check(worker, worker.finish(), baseline, repeated=0)


@pytest.mark.parametrize("kind", IN_FLIGHT_KINDS)
def test_kill_while_a_model_call_is_in_flight(
    kind: str, tmp_path: Path, server: OpenAITestServer, baselines: Callable[[str], Any]
) -> None:
    baseline = baselines(kind)
    (tmp_path / "run").mkdir()
    worker, model = Worker(kind, tmp_path / "run", server), Model(kind)
    worker.open_gate("a", "b", "c")
    model.first(server)
    model.second(server, delay_s=3_600)  # held until the server stops: the kill lands first
    worker.start()
    worker.wait_for("for the second model request", lambda: len(server.requests) == 2)
    worker.kill()
    assert worker.calls("model") == 1
    model.second(server)
    model.answer(server)
    worker.start()
    check(worker, worker.finish(), baseline, repeated=1)
    requests = _bodies(server)
    assert requests[1] == requests[2]  # the repeat is the call that was in flight


@pytest.mark.parametrize("kind", TOOL_KINDS)
def test_kill_between_two_parallel_tool_calls(
    kind: str, tmp_path: Path, server: OpenAITestServer, baselines: Callable[[str], Any]
) -> None:
    baseline = baselines(kind)
    (tmp_path / "run").mkdir()
    worker, model = Worker(kind, tmp_path / "run", server), Model(kind)
    worker.open_gate("a", "c")  # b stays shut: a is done and recorded, b not yet run
    model.first(server)
    worker.start()
    worker.wait_for(
        "for lookup a to be recorded",
        lambda: worker.calls("tool") == 1 and [t for _, t in worker.effects()] == ["a"],
    )
    worker.kill()
    model.second(server)
    model.answer(server)
    worker.open_gate("b")
    worker.start()
    check(worker, worker.finish(), baseline, repeated=0)


APPROVAL_KINDS = ("openai-agents", "pydantic-ai")


def _approval_script(kind: str, server: OpenAITestServer) -> None:
    """Two lookups in parallel, then a publication that needs a reviewer, then the answer."""
    Model(kind).first(server)
    server.queue(tool_calls=[("publish", {"title": "Tides"})])
    server.queue(text=ANSWER)


@pytest.mark.parametrize("kind", APPROVAL_KINDS)
def test_kill_while_an_approval_waits_for_its_reviewer(kind: str, tmp_path: Path) -> None:
    with OpenAITestServer() as server:  # the run with no crash, approved as soon as asked
        (tmp_path / "baseline").mkdir()
        calm = Worker(kind, tmp_path / "baseline", server, approval=True)
        calm.open_gate("a", "b")
        (calm.dir / "approve").touch()
        _approval_script(kind, server)
        calm.start()
        baseline = calm.finish(), server.requests[-1].body["messages"]
        assert len(server.requests) == 3
    with OpenAITestServer() as server:
        (tmp_path / "run").mkdir()
        worker = Worker(kind, tmp_path / "run", server, approval=True)
        worker.open_gate("a", "b")
        _approval_script(kind, server)
        worker.start()
        worker.wait_for("for the approval's review", lambda: worker.reviews("pending") == 1)
        worker.kill()
        assert len(server.requests) == 2
        assert sorted(t for _, t in worker.effects()) == ["a", "b"]  # publish waits
        worker.start()  # the run waits for its reviewer, holding no slot
        (worker.dir / "approve").touch()
        result = worker.finish()
        assert worker.reviews("approved") == 1
        # Resumed from the saved state: neither model call made before the approval is made
        # again, nor either lookup; the publication runs once.
        check(worker, result, baseline, repeated=0, topics=("a", "b", "publish"))
