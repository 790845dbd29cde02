"""MCP tool calls with a connection per call against the pooled sessions (``MCPPool``).

    python benchmarks/mcp_pool.py                      # 20 calls each way, stdio and HTTP
    python benchmarks/mcp_pool.py --calls 50 --concurrency 8 --transport http

A small MCP server (one tool, ``echo``) is started as a subprocess: over stdio (the pool starts
one server process per session, a connection per call starts one per call) and over streamable
HTTP on a free loopback port. For each transport and mode the script makes ``--calls`` calls one
after another, then ``--calls`` calls ``--concurrency`` at a time, and prints calls/s, p50 and
max latency, and the connections opened (the pool of ``--concurrency`` sessions is opened by a
warm-up first, reported on its own line, so its rows are the steady state). It calls
``MCPPool.call`` — the transport under the gateway, without the store — so the figures are the
cost of reaching the server. On a shared, loaded machine the absolute figures are noisy; the
ratio is what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tenantflow.integrations.mcp_tools import MCPPool, MCPServerSpec

SERVER = '''
import sys
from mcp.server.mcpserver import MCPServer

server = MCPServer("bench", log_level="CRITICAL")


@server.tool()
def echo(text: str) -> str:
    """Echo the text."""
    return text


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]), stateless_http=True)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP MCP server did not start") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def measure(pool: MCPPool, calls: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limit:
            started = time.perf_counter()
            result = await pool.call("echo", {"text": f"t{i}"})
            latencies.append(time.perf_counter() - started)
            assert not result.is_error, result

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return time.perf_counter() - started, latencies


async def bench(spec: MCPServerSpec, label: str, calls: int, concurrency: int) -> None:
    for pool_size in (0, concurrency):
        mode = "connection per call" if pool_size == 0 else f"pool of {pool_size}"
        pool = MCPPool(dataclasses.replace(spec, pool_size=pool_size))
        try:
            if pool_size:  # open the sessions first: the figures are the steady state
                warm, _ = await measure(pool, pool_size, pool_size)
                print(f"  {label:5} {mode:20} warm-up: {pool.opened} sessions in {warm:.2f} s")
            for width in (1, concurrency):
                opened = pool.opened
                elapsed, lat = await measure(pool, calls, width)
                lat.sort()
                print(
                    f"  {label:5} {mode:20} concurrency {width:2}: {calls / elapsed:8.1f} calls/s"
                    f"  p50 {statistics.median(lat) * 1000:8.1f} ms"
                    f"  max {lat[-1] * 1000:8.1f} ms"
                    f"  connections opened {pool.opened - opened}"
                )
        finally:
            await pool.close()


async def main(calls: int, concurrency: int, transports: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench_server.py"
        script.write_text(SERVER)
        print(f"mcp tool calls: {calls} per run, one at a time and {concurrency} at a time")
        if "stdio" in transports:
            spec = MCPServerSpec("bench", command=sys.executable, args=[str(script), "stdio"])
            await bench(spec, "stdio", calls, concurrency)
        if "http" in transports:
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                "http",
                str(port),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await wait_http(port)
                spec = MCPServerSpec("bench", url=f"http://127.0.0.1:{port}/mcp")
                await bench(spec, "http", calls, concurrency)
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--transport", choices=("stdio", "http", "both"), default="both")
    args = parser.parse_args()
    if not 1 <= args.calls <= 10_000 or not 1 <= args.concurrency <= 64:
        parser.error("--calls must be 1..10000 and --concurrency 1..64")
    chosen = ["stdio", "http"] if args.transport == "both" else [args.transport]
    asyncio.run(main(args.calls, args.concurrency, chosen))
