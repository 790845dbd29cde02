"""A small MCP server over stdio for the tests: ``python mcp_notes_server.py LOG``.

Tools: ``add(a, b)``, ``note(text, key)``, which appends ``<pid> <key> <text>`` to LOG (the
side effect the tests count) and answers ``noted <text>``, ``broken()`` (an error result) and
``crash()`` (the process exits).
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("notes", log_level="CRITICAL")
LOG = sys.argv[1] if len(sys.argv) > 1 else os.devnull


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def note(text: str, key: str) -> str:
    """Write a note down."""
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {key} {text}\n")
    return f"noted {text}"


@server.tool()
def crash() -> str:
    """Ends the server's process (a server that dies mid-call)."""
    os._exit(3)


@server.tool()
def broken() -> str:
    """Always fails."""
    raise ValueError("this tool is broken")


if __name__ == "__main__":
    server.run("stdio")
