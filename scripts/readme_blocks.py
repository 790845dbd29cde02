#!/usr/bin/env python3
"""Run the README's shell blocks in order, as a new user would, in a fresh virtual environment.

The checkout's tracked files are copied to a scratch directory; a virtual environment is made
there as ``.venv`` and the package is installed into it from a wheel (built here, or given with
``--wheel``); then every ```` ```bash ```` block of the README runs, in order, in one bash
process (so an ``export`` or a ``cd`` carries over, as in a reader's shell), with ``.venv/bin``
first on the PATH and ``set -euo pipefail``. A block is skipped only when the line before it
says so where a reader sees it, in italics::

    *Not run by the README check: it needs PostgreSQL and starts workers that run until stopped.*

Background processes a block starts are stopped at the end. Exit status 0 when every block
ran and succeeded; otherwise 1, naming the block and its first line.

    python scripts/readme_blocks.py                      # build a wheel, run everything
    python scripts/readme_blocks.py --list               # the blocks, and which are skipped
    python scripts/readme_blocks.py --wheel dist/x.whl --replace 8000=18123

``--replace OLD=NEW`` rewrites text in the blocks before they run (the tests move the
documented port 8000 to a free one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^\*Not run by the README check: (?P<reason>.+)\*$")
FENCE = re.compile(r"^```bash\s*$")
EXTRAS = "server"  # what the README's runnable blocks need (serve); plots are not run


@dataclass(frozen=True)
class Block:
    """One ```bash block of the README."""

    line: int  # 1-based line of the opening fence
    text: str
    skip: str | None  # the reason given, when the README says it is not run

    @property
    def first(self) -> str:
        return next((x for x in self.text.splitlines() if x.strip()), "")


def blocks(readme: Path) -> list[Block]:
    """Every ```bash block of ``readme``, with the skip reason written before it, if any."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if not FENCE.match(lines[i]):
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        # The marker may wrap over lines: gather the paragraph that ends just before the block.
        para_start = before
        while para_start > 0 and lines[para_start - 1].strip():
            para_start -= 1
        paragraph = " ".join(x.strip() for x in lines[para_start : before + 1])
        match = SKIP.match(paragraph)
        found.append(Block(start + 1, "\n".join(body), match["reason"] if match else None))
        i += 1
    return found


def _copy_checkout(target: Path) -> None:
    """The tracked files (what a fresh clone has), or the tree without build leftovers."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.split(b"\0")
        names = [n.decode() for n in listed if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
    if not names:
        ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.db", "build", "dist")
        shutil.copytree(ROOT, target, symlinks=True, ignore=ignore, dirs_exist_ok=True)
        return
    for name in names:
        source, dest = ROOT / name, target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            dest.symlink_to(os.readlink(source))
        elif source.exists():
            shutil.copy2(source, dest)


def build_wheel(out: Path) -> Path:
    """Build the package's wheel from the checkout into ``out``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
    )
    return next(out.glob("tenantflow-*.whl"))


def _venv(work: Path, wheel: Path) -> Path:
    venv = work / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([*pip, f"{wheel}[{EXTRAS}]"], check=True, env=env)
    return venv


def _script(runnable: list[Block], replace: list[tuple[str, str]]) -> str:
    parts = ["set -euo pipefail"]
    for n, block in enumerate(runnable):
        text = block.text
        for old, new in replace:
            text = text.replace(old, new)
        parts.append(f"echo '::block {n}' >&2")
        parts.append(text)
    parts.append("echo '::done' >&2")
    return "\n".join(parts) + "\n"


def run(readme: Path, wheel: Path | None, replace: list[tuple[str, str]], timeout_s: float) -> int:
    """Run the README's runnable blocks (see the module docstring); the exit status."""
    every = blocks(readme)
    runnable = [b for b in every if b.skip is None]
    with tempfile.TemporaryDirectory(prefix="tf-readme-") as scratch:
        work = Path(scratch) / "checkout"
        work.mkdir()
        _copy_checkout(work)
        wheel = wheel or build_wheel(Path(scratch) / "dist")
        started = time.monotonic()
        venv = _venv(work, wheel)
        print(f"installed {wheel.name}[{EXTRAS}] in {time.monotonic() - started:.1f}s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLOW_")}
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        proc = subprocess.Popen(
            ["bash", "-c", _script(runnable, replace)],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its background jobs are ours to stop
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n(timed out after {timeout_s:g}s)"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    reached = [int(m) for m in re.findall(r"^::block (\d+)$", err, re.M)]
    done = "::done" in err
    for block in every:
        status = f"skipped: {block.skip}" if block.skip else "ran"
        print(f"README.md:{block.line}: {status} — {block.first}")
    if proc.returncode == 0 and done:
        print(f"ok: {len(runnable)} blocks ran, {len(every) - len(runnable)} skipped")
        return 0
    failed = runnable[reached[-1]] if reached else None
    where = f"README.md:{failed.line} ({failed.first})" if failed else "before the first block"
    print(f"FAILED at {where}: exit {proc.returncode}", file=sys.stderr)
    print(out[-3000:], file=sys.stderr)
    print(re.sub(r"^::block \d+\n", "", err, flags=re.M)[-3000:], file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--wheel", type=Path, help="install this wheel instead of building one")
    parser.add_argument("--replace", action="append", default=[], metavar="OLD=NEW")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for all blocks")
    parser.add_argument("--list", action="store_true", help="list the blocks and exit")
    args = parser.parse_args()
    if args.list:
        for block in blocks(args.readme):
            status = f"skipped: {block.skip}" if block.skip else "runs"
            print(f"README.md:{block.line}: {status} — {block.first}")
        return 0
    pairs = []
    for item in args.replace:
        old, sep, new = item.partition("=")
        if not sep or not old:
            parser.error(f"--replace takes OLD=NEW, got {item!r}")
        pairs.append((old, new))
    return run(args.readme, args.wheel, pairs, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
