"""Load: open-loop submissions over loopback to a real ``tenantflow serve``, held at a rate.

The server runs in a process of its own on a fresh SQLite file (``synchronous=normal``) with this
module as its ``--app`` (a three-step workflow whose steps only compute); the admin key is made
with the command line, the tenants and their keys over HTTP. Submissions (``POST /v1/runs``) go
on a fixed schedule — open loop: the next one goes at its time whether or not earlier ones were
answered — over a pool of keep-alive connections, by a small HTTP/1.1 client written for this so
that the load generator, on the same machine, costs as little CPU as possible. Latency counts
from each submission's scheduled time, so queueing in the client or the server counts (no
coordinated omission). After the hold the server drains; then, from its store: every accepted
run is there and completed, no other run is (every run accounted for), and the dispatch latency
of each — from its submission to the start of its first step.

``benchmarks/api_load.py`` prints the same measurement for any rate and duration.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenantflow as tf
from tenantflow.selftest.core import Context, Row, percentile
from tenantflow.selftest.procs import Process, admin_key, cli_env, free_port

__all__ = ["LoadResult", "Pool", "Served", "load", "run_load", "setup", "start_server"]

# -- the workflow the server runs (this module is its --app) -----------------------------------

bench = tf.Workflow("bench", input=int)


@bench.step
async def one(ctx: tf.StepContext, input: int) -> int:
    return input + 1


@bench.step
async def two(ctx: tf.StepContext, one: int) -> int:
    return one * 2


@bench.step
async def three(ctx: tf.StepContext, two: int) -> int:
    return two - 1


def setup(engine: tf.Engine) -> None:
    """``tenantflow serve --app tenantflow.selftest.load:setup``."""
    engine.register(bench)


# -- a minimal HTTP/1.1 client over keep-alive connections -------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return Answer(status, await self.reader.readexactly(length) if length else b"")

    def close(self) -> None:
        self.writer.close()


class Pool:
    """At most ``size`` connections; a request waits for a free one (and that wait counts)."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.idle: asyncio.Queue[Connection] = asyncio.Queue()
        self.slots = asyncio.Semaphore(size)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer:
        async with self.slots:
            reused = None if self.idle.empty() else self.idle.get_nowait()
            if reused is not None:
                try:
                    answer = await reused.request(method, path, headers, body)
                except (ConnectionError, asyncio.IncompleteReadError):
                    reused.close()  # closed by the server while idle: open a new one
                else:
                    self.idle.put_nowait(reused)
                    return answer
            conn = await Connection.open(self.port)
            try:
                answer = await conn.request(method, path, headers, body)
            except BaseException:
                conn.close()
                raise
            self.idle.put_nowait(conn)
            return answer

    async def json(self, method: str, path: str, key: str, body: Any = None) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        answer = await self.request(method, path, headers, data)
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path}: {answer.status} {answer.body[:300]!r}")
        return json.loads(answer.body)

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


# -- the server --------------------------------------------------------------------------------


@dataclass
class Served:
    process: Process
    port: int
    admin: str
    db: str
    log: Path


def start_server(directory: Path, slots: int) -> Served:
    env = cli_env()
    db = f"sqlite:///{directory / 'load.db'}?synchronous=normal"
    admin = admin_key(env, db)
    port = free_port()
    log = directory / "server.log"
    command = ["-m", "tenantflow.cli.main", "serve", "--db", db, "--port", str(port)]
    command += ["--app", "tenantflow.selftest.load:setup", "--slots", str(slots)]
    command += ["--log-level", "warning"]
    process = Process([sys.executable, *command], output=log, env=env)
    return Served(process, port, admin, db, log)


async def wait_ready(served: Served) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not served.process.alive():
            raise RuntimeError(f"the server exited:\n{served.log.read_text()[-2000:]}")
        try:
            conn = await Connection.open(served.port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        answer = await conn.request("GET", "/readyz", {})
        conn.close()
        if answer.status == 200:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the server did not become ready in 60s")


# -- the load ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What the load measured; latencies in milliseconds."""

    rate: float
    duration_s: float
    tenants: int
    scheduled: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (tenant, run id)
    sent_s: float = 0.0  # from the first scheduled time to the last submission sent
    answered_s: float = 0.0  # ... to the last answer
    drained_s: float = 0.0  # ... to every accepted run ended (or the drain's deadline)
    steps_during: int = 0

    @property
    def errors(self) -> dict[str, int]:
        bad = {str(s): n for s, n in self.statuses.items() if s >= 300}
        return bad | dict(self.failures)


async def load(
    served: Served, rate: float, duration: float, tenants: int, conns: int, drain_s: float = 60
) -> LoadResult:
    """Hold ``rate`` submissions a second for ``duration`` seconds, then drain."""
    await wait_ready(served)
    pool = Pool(served.port, conns)
    keys: dict[str, str] = {}
    for i in range(tenants):
        tenant = f"load-{i}"
        policy = {"max_active_runs": 10_000, "max_running_steps": 1_000}
        await pool.json("POST", "/v1/tenants", served.admin, {"id": tenant, "policy": policy})
        created = await pool.json("POST", f"/v1/tenants/{tenant}/keys", served.admin, {})
        keys[tenant] = created["secret"]
    names = sorted(keys)
    bodies = [json.dumps({"workflow": "bench", "input": n}).encode() for n in range(1000)]
    headers = [
        {"Authorization": f"Bearer {keys[t]}", "Content-Type": "application/json"} for t in names
    ]
    result = LoadResult(rate, duration, tenants, scheduled=int(rate * duration))
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def submit(i: int, due: float) -> None:
        try:
            answer = await pool.request("POST", "/v1/runs", headers[i % tenants], bodies[i % 1000])
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            result.failures[type(exc).__name__] += 1
            return
        result.statuses[answer.status] += 1
        if answer.status < 300:
            result.latencies_ms.append((loop.time() - due) * 1000)
            result.accepted.append((names[i % tenants], json.loads(answer.body)["id"]))

    tasks = []
    for i in range(result.scheduled):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(submit(i, due)))
    result.sent_s = loop.time() - start
    await asyncio.gather(*tasks)
    result.answered_s = loop.time() - start
    result.steps_during = await _steps(pool, keys)
    deadline = loop.time() + drain_s
    while loop.time() < deadline and await _steps(pool, keys) < 3 * len(result.accepted):  # noqa: ASYNC110
        await asyncio.sleep(0.25)
    result.drained_s = loop.time() - start
    pool.close()
    return result


async def _steps(pool: Pool, keys: dict[str, str]) -> int:
    total = 0.0
    for key in keys.values():
        usage = await pool.json("GET", "/v1/usage", key)
        total += sum(u["value"] for u in usage["items"] if u["metric"] == "steps")
    return int(total)


async def accounted(served: Served, result: LoadResult) -> tuple[int, int, list[float]]:
    """From the server's store: accepted runs completed, runs it holds that were never
    accepted, and each completed run's dispatch latency (submission to first step, ms)."""
    async with tf.Engine.open(served.db, execute=False) as reader:
        store: Any = reader.store
        rows = await store.execute_sql(
            "SELECT r.id, r.status, r.created_at, MIN(e.ts) FROM runs r LEFT JOIN events e"
            " ON e.run_id = r.id AND e.kind = 'step.started' GROUP BY r.id, r.status,"
            " r.created_at"
        )
    stored = {run_id: (status, created, first) for run_id, status, created, first in rows}
    accepted = {run_id for _, run_id in result.accepted}
    completed = [stored[r] for r in accepted if r in stored and stored[r][0] == "completed"]
    dispatch = [(first - created) * 1000 for _, created, first in completed if first is not None]
    return len(completed), len(set(stored) - accepted), dispatch


def run_load(ctx: Context, row: Row, directory: Path) -> None:
    """The scenario (see the module docstring)."""
    profile = ctx.profile
    rate, hold = profile.load_rate, profile.load_hold_s
    served = start_server(directory, slots=64)
    try:
        result = asyncio.run(load(served, rate, hold, tenants=4, conns=64))
        code = served.process.stop(60.0)
    finally:
        if served.process.alive():
            served.process.kill()
    row.check(code == 0, f"the server exited {code} when stopped")
    completed, phantom, dispatch = asyncio.run(accounted(served, result))
    accepted = len(result.accepted)
    row.runs = accepted
    row.lost = accepted - completed
    row.check(not result.errors, f"errors: {result.errors}")
    row.check(
        accepted == result.scheduled, f"{accepted} of {result.scheduled} submissions accepted"
    )
    row.check(phantom == 0, f"{phantom} runs stored that no submission accepted")
    row.check(
        result.sent_s <= hold + 1.0, f"the schedule slipped: {result.sent_s:.1f}s to send {hold:g}s"
    )
    lat = result.latencies_ms
    row.note(
        f"{rate:g}/s held {hold:g}s over loopback, 4 tenants: submission p50"
        f" {_ms(percentile(lat, 0.5))} p99 {_ms(percentile(lat, 0.99))}, dispatch p50"
        f" {_ms(percentile(dispatch, 0.5))} p99 {_ms(percentile(dispatch, 0.99))};"
        f" {accepted / max(result.answered_s, 1e-9):.0f} accepted/s;"
        f" {result.steps_during / max(result.answered_s, 1e-9):.0f} steps/s meanwhile;"
        f" drained in {result.drained_s - result.answered_s:.1f}s"
    )
    for name, value in (
        ("submission_p50_ms", percentile(lat, 0.5)),
        ("submission_p99_ms", percentile(lat, 0.99)),
        ("dispatch_p50_ms", percentile(dispatch, 0.5)),
        ("dispatch_p99_ms", percentile(dispatch, 0.99)),
    ):
        if value is not None:
            row.figures[name] = round(value, 1)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"
