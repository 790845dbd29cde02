"""The README works as written: its shell blocks in a fresh virtual environment, in order, and
its Python example (twice, printing what its comment says)."""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _runner() -> object:
    spec = importlib.util.spec_from_file_location(
        "readme_blocks", ROOT / "scripts" / "readme_blocks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_blocks"] = module
    spec.loader.exec_module(module)
    return module


def test_every_skipped_block_says_why_where_a_reader_sees_it() -> None:
    blocks = _runner().blocks(README)  # type: ignore[attr-defined]
    assert len(blocks) == README.read_text(encoding="utf-8").count("```bash")
    skipped = {b.first.split()[0] for b in blocks if b.skip}
    ran = [b.first.split()[0] for b in blocks if not b.skip]
    # A new block runs unless the README says otherwise; these are the ones it says so for.
    assert skipped == {"./scripts/demo", "tenantflow", "export"}
    assert ran == ["source", "tenantflow", ".venv/bin/python", "tenantflow", "tenantflow"]
    assert all(b.skip and len(b.skip) > 10 for b in blocks if b.skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readmes_shell_blocks_run_in_a_fresh_virtual_environment() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "readme_blocks.py"),
            *("--replace", f"8000={_free_port()}", "--timeout", "600"),
        ],
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert re.search(r"^ok: 5 blocks ran, 6 skipped$", done.stdout, re.M), done.stdout


def _python_example() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "asyncio.run" in b)
    promised = re.search(r"print\(.*\)\s+#\s*(.+)$", block, re.M)
    assert promised is not None, "the example's print has no comment saying what it prints"
    return block, promised.group(1).strip()


@pytest.mark.timeout(120)
def test_the_python_example_runs_twice_and_prints_what_it_promises(tmp_path: Path) -> None:
    code, promised = _python_example()
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    for _ in range(2):  # the database it creates outlives the first run
        done = subprocess.run(
            [sys.executable, "example.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=100,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == promised
    assert (tmp_path / "tenantflow.db").exists()
