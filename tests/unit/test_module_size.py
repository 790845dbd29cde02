"""No module of the engine grows past 600 lines.

The engine was split into parts of one job each (ARCHITECTURE.md, "The tree"); a module that
grows past the limit is doing more than one again. Split it by moving code (a part beside it,
a subpackage), not by squeezing lines.
"""

from __future__ import annotations

from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "src" / "tenantflow" / "engine"
LIMIT = 600


def oversized(root: Path, limit: int = LIMIT) -> list[str]:
    """Every ``*.py`` under ``root`` (subpackages included) longer than ``limit`` lines, as
    ``path: N lines``, by path."""
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(root.parent).as_posix()}: {lines} lines")
    return found


def test_no_engine_module_is_over_the_limit() -> None:
    assert ENGINE.is_dir()
    too_long = oversized(ENGINE)
    assert too_long == [], f"over {LIMIT} lines (split them by moving code): {too_long}"


def test_the_walk_names_every_long_module_in_subpackages_too(tmp_path: Path) -> None:
    root = tmp_path / "engine"
    (root / "sub").mkdir(parents=True)
    (root / "short.py").write_text("x = 1\n" * 600)
    (root / "long.py").write_text("x = 1\n" * 601)
    (root / "sub" / "deep.py").write_text("x = 1\n" * 900)
    (root / "notes.txt").write_text("x\n" * 900)
    assert oversized(root) == ["engine/long.py: 601 lines", "engine/sub/deep.py: 900 lines"]
