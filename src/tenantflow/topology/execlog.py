"""The executions log: what step code did, written outside the engine by every process.

Each step execution appends ``S`` when its body starts and ``E`` when its work is done (``X``
when it was cancelled), one line per ``write`` with ``O_APPEND`` so that lines from several
processes never interleave and a SIGKILL loses nothing already written::

    S <pid> <tenant> <run> <step> <attempt> <time>
    E <pid> <tenant> <run> <step> <attempt> <time> <model|-> <tokens_in> <tokens_out> <cost_micros>

The comparison measures from it what the platform's own records cannot show independently:
when steps really ran and in which process (hop latency, queue depth, time to first progress,
concurrency after a policy change), which endpoint's model served a call (cross-region calls),
and the tokens and money the providers reported (the truth cost attribution is checked
against).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExecLine", "ExecLog", "read_exec_log"]


@dataclass(frozen=True, slots=True)
class ExecLine:
    """One line of the executions log."""

    kind: str  # "S" started, "E" work done, "X" cancelled
    pid: int
    tenant: str
    run: str
    step: str
    attempt: int
    at: float
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_micros: int = 0


class ExecLog:
    """Appends lines to the executions log at ``path`` (safe to share between processes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def write(
        self,
        kind: str,
        tenant: str,
        run: str,
        step: str,
        attempt: int,
        *,
        model: str | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost_micros: int = 0,
    ) -> None:
        text = f"{kind} {os.getpid()} {tenant} {run} {step} {attempt} {time.time():.6f}"
        if kind == "E":
            text += f" {model or '-'} {tokens_in} {tokens_out} {cost_micros}"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (text + "\n").encode())
        finally:
            os.close(fd)


def read_exec_log(path: Path, offset: int = 0) -> tuple[list[ExecLine], int]:
    """The complete lines from byte ``offset`` on, and the offset after the last of them."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    out: list[ExecLine] = []
    for raw in data[:end].split(b"\n"):
        parts = raw.decode().split()
        if len(parts) < 7:
            continue
        kind, pid, tenant, run, step, attempt, at = parts[:7]
        line = ExecLine(kind, int(pid), tenant, run, step, int(attempt), float(at))
        if kind == "E" and len(parts) >= 11:
            model = None if parts[7] == "-" else parts[7]
            line = ExecLine(
                kind,
                int(pid),
                tenant,
                run,
                step,
                int(attempt),
                float(at),
                model,
                int(parts[8]),
                int(parts[9]),
                int(parts[10]),
            )
        out.append(line)
    return out, offset + end + 1
