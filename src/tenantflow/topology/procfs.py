"""What a placement's processes cost, read from ``/proc`` (Linux).

For each process: resident memory (``VmRSS``), CPU seconds (``utime + stime`` of ``stat``),
threads, open file descriptors and how many of them are sockets, and context switches. A
process this user may not inspect (another user's ``fd`` directory) counts what it can read and
says so in ``unreadable``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProcSample", "Usage", "children", "sample", "total"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One process at one moment."""

    pid: int
    role: str
    rss_kb: int
    cpu_s: float
    threads: int
    fds: int | None
    sockets: int | None
    ctx_switches: int


@dataclass(frozen=True, slots=True)
class Usage:
    """A placement's processes at one moment, summed."""

    processes: int
    rss_mb: float
    cpu_s: float
    fds: int
    sockets: int
    threads: int
    ctx_switches: int
    roles: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _cpu_s(pid: int) -> float:
    text = (_PROC / str(pid) / "stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _fds(pid: int) -> tuple[int, int] | None:
    try:
        names = os.listdir(_PROC / str(pid) / "fd")
    except OSError:
        return None
    sockets = 0
    for name in names:
        try:
            if os.readlink(_PROC / str(pid) / "fd" / name).startswith("socket:"):
                sockets += 1
        except OSError:
            continue
    return len(names), sockets


def sample(pid: int, role: str) -> ProcSample | None:
    """``pid`` now (None if it is gone)."""
    try:
        status = _status(pid)
        cpu = _cpu_s(pid)
    except (OSError, ValueError, IndexError):
        return None
    rss = int(status.get("VmRSS", "0 kB").split()[0])
    switches = int(status.get("voluntary_ctxt_switches", "0")) + int(
        status.get("nonvoluntary_ctxt_switches", "0")
    )
    fds = _fds(pid)
    return ProcSample(
        pid=pid,
        role=role,
        rss_kb=rss,
        cpu_s=cpu,
        threads=int(status.get("Threads", "1")),
        fds=None if fds is None else fds[0],
        sockets=None if fds is None else fds[1],
        ctx_switches=switches,
    )


def children(pid: int) -> list[int]:
    """``pid``'s descendants (every thread's children, recursively)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        task_dir = _PROC / str(parent) / "task"
        try:
            tasks = os.listdir(task_dir)
        except OSError:
            continue
        for task in tasks:
            try:
                kids = (task_dir / task / "children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                found.append(int(kid))
                todo.append(int(kid))
    return found


def total(pids: Mapping[int, str] | Iterable[tuple[int, str]]) -> Usage:
    """The processes ``pids`` (pid → role) summed now; gone processes are left out."""
    items = pids.items() if isinstance(pids, Mapping) else pids
    samples = [s for s in (sample(pid, role) for pid, role in items) if s is not None]
    roles: dict[str, int] = {}
    for s in samples:
        roles[s.role] = roles.get(s.role, 0) + 1
    return Usage(
        processes=len(samples),
        rss_mb=round(sum(s.rss_kb for s in samples) / 1024, 1),
        cpu_s=round(sum(s.cpu_s for s in samples), 2),
        fds=sum(s.fds or 0 for s in samples),
        sockets=sum(s.sockets or 0 for s in samples),
        threads=sum(s.threads for s in samples),
        ctx_switches=sum(s.ctx_switches for s in samples),
        roles=roles,
        unreadable=sum(1 for s in samples if s.fds is None),
    )
