"""Open-loop load on the REST API: run submissions over loopback to a real ``tenantflow serve``.

    python benchmarks/api_load.py                          # 500/s for 20 s, 4 tenants
    python benchmarks/api_load.py --rate 800 --duration 10 --tenants 1

It starts ``tenantflow serve`` in a subprocess on a fresh SQLite file (``synchronous=normal``)
with this module as the ``--app`` (a three-step workflow whose steps only compute), creates an
admin key with the command line, then the tenants and their keys over HTTP. Submissions
(``POST /v1/runs``) are sent on a fixed schedule — open loop: the next one goes at its time
whether or not earlier ones have been answered — over a pool of keep-alive connections, by a
small HTTP/1.1 client written for this script so that the load generator, on the same machine,
costs as little CPU as possible. Latency is measured from each submission's scheduled time, so
queueing in the client or the server counts (no coordinated omission).

Prints: submissions/s achieved, p50/p99/max submission latency, errors by status, and the runs
completed and steps/s while the load ran and after a bounded drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenantflow as tf

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
    """``tenantflow serve --app api_load:setup``."""
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

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


# -- the server --------------------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"tenantflow {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    admin: str
    log: Path


def start_server(directory: Path, slots: int) -> Served:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).parent), env.get("PYTHONPATH", "")) if p
    )
    db = f"sqlite:///{directory / 'load.db'}?synchronous=normal"
    _cli(env, "db", "upgrade", "--db", db)
    admin = json.loads(_cli(env, "keys", "create", "--admin", "--db", db, "--json"))["secret"]
    port = _free_port()
    log = directory / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tenantflow.cli.main",
                "serve",
                "--db",
                db,
                "--app",
                "api_load:setup",
                "--port",
                str(port),
                "--slots",
                str(slots),
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Served(proc, port, admin, log)


async def wait_ready(served: Served) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{served.log.read_text()}")
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
    raise SystemExit("the server did not become ready")


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)


async def _json(pool: Pool, method: str, path: str, key: str, body: Any = None) -> Any:
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    answer = await pool.request(method, path, headers, data)
    if answer.status >= 300:
        raise SystemExit(f"{method} {path}: {answer.status} {answer.body[:300]!r}")
    return json.loads(answer.body)


async def _steps(pool: Pool, keys: list[str]) -> int:
    total = 0.0
    for key in keys:
        usage = await _json(pool, "GET", "/v1/usage", key)
        total += sum(u["value"] for u in usage["items"] if u["metric"] == "steps")
    return int(total)


async def _completed(pool: Pool, keys: list[str]) -> int:
    done = 0
    for key in keys:
        cursor = None
        while True:
            path = "/v1/runs?status=completed&limit=500" + (f"&cursor={cursor}" if cursor else "")
            page = await _json(pool, "GET", path, key)
            done += len(page["items"])
            cursor = page["next"]
            if cursor is None:
                break
    return done


async def load(served: Served, rate: float, duration: float, tenants: int, conns: int) -> None:
    await wait_ready(served)
    pool = Pool(served.port, conns)
    keys = []
    for i in range(tenants):
        tenant = f"load-{i}"
        policy = {"max_active_runs": 10_000, "max_running_steps": 1_000}
        await _json(pool, "POST", "/v1/tenants", served.admin, {"id": tenant, "policy": policy})
        created = await _json(pool, "POST", f"/v1/tenants/{tenant}/keys", served.admin, {})
        keys.append(created["secret"])
    bodies = [json.dumps({"workflow": "bench", "input": n}).encode() for n in range(1000)]
    headers = [
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"} for key in keys
    ]
    results = Results()
    total = int(rate * duration)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def submit(i: int, due: float) -> None:
        try:
            answer = await pool.request("POST", "/v1/runs", headers[i % tenants], bodies[i % 1000])
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            results.failures[type(exc).__name__] += 1
            return
        results.statuses[answer.status] += 1
        if answer.status < 300:
            results.latencies_ms.append((loop.time() - due) * 1000)

    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(submit(i, due)))
    sent_s = loop.time() - start
    await asyncio.gather(*tasks)
    answered_s = loop.time() - start
    ok = len(results.latencies_ms)
    steps_at_end = await _steps(pool, keys)
    completed_at_end = await _completed(pool, keys)
    # Drained when every run's three steps are counted (a cheap read; listing runs is not).
    drain_deadline = loop.time() + 60
    while loop.time() < drain_deadline and await _steps(pool, keys) < 3 * ok:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    drained_s = loop.time() - start
    steps_drained = await _steps(pool, keys)
    completed_drained = await _completed(pool, keys)
    pool.close()

    lat = sorted(results.latencies_ms) or [0.0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    errors = {s: n for s, n in results.statuses.items() if s >= 300} | dict(results.failures)
    print(f"api load: {total} submissions at {rate:g}/s for {duration:g} s, {tenants} tenant(s)")
    print(
        f"  submissions/s achieved  {ok / answered_s:8.1f}  ({ok} accepted in {answered_s:.1f} s)"
    )
    print(f"  schedule kept           {sent_s:8.1f} s to send all")
    print(f"  p50 latency ms          {statistics.median(lat):8.1f}")
    print(f"  p99 latency ms          {p99:8.1f}")
    print(f"  max latency ms          {lat[-1]:8.1f}")
    print(f"  errors                  {errors or 0}")
    print(
        f"  runs completed          {completed_at_end:8d} by the end of the load,"
        f" {completed_drained} after {drained_s:.1f} s"
    )
    print(
        f"  steps/s                 {steps_at_end / answered_s:8.1f} during the load,"
        f" {steps_drained / drained_s:.1f} overall"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="submissions per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--slots", type=int, default=64, help="the server's step slots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-api-load-") as tmp:
        served = start_server(Path(tmp), args.slots)
        try:
            asyncio.run(load(served, args.rate, args.duration, args.tenants, args.connections))
        finally:
            served.proc.send_signal(signal.SIGTERM)
            code = served.proc.wait(timeout=60)
            if code != 0:
                print(f"server exited {code}:\n{served.log.read_text()}", file=sys.stderr)


if __name__ == "__main__":
    main()
