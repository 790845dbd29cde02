"""The MCP server of the integration kill tests, over stdio: ``python mcp_facts_server.py DIR``.

Its one tool, ``lookup(topic)``, waits until ``DIR/gate-<topic>`` exists, then appends
``<pid> mcp <topic>`` to ``DIR/effects`` and answers ``facts about <topic>``. It exits when its
client (the worker) dies, as a stdio server does, so a killed worker's call never completes late.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

DIRECTORY = Path(sys.argv[1])
PARENT = os.getppid()
server = MCPServer("facts", log_level="CRITICAL")


@server.tool()
async def lookup(topic: str) -> str:
    """Look a topic up."""
    while True:
        if os.getppid() != PARENT:  # the client is gone: nobody will read the answer
            os._exit(1)
        if (DIRECTORY / f"gate-{topic}").exists():
            break
        await asyncio.sleep(0.005)
    if os.getppid() != PARENT:  # a gate opened after the client died is not this call's
        os._exit(1)
    with (DIRECTORY / "effects").open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} mcp {topic}\n")
        f.flush()
        os.fsync(f.fileno())
    return f"facts about {topic}"


if __name__ == "__main__":
    server.run("stdio")
