"""Immutable state history: materialise, diff and bisect state versions.

A run's state at version *v* is its input (version 0) plus the outputs that versions 1..v added,
keyed by producing step. Versions are append-only deltas chained by hash
(:func:`~tenantflow.domain.records.next_state_hash`), so a version is never updated in place and
any version can be rebuilt exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Change", "bisect_versions", "diff_states", "fold"]


def fold(deltas: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply deltas in version order; later keys replace earlier ones."""
    state: dict[str, Any] = {}
    for delta in deltas:
        state.update(delta)
    return state


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two states, at a JSON path like ``verify.confidence``."""

    path: str
    kind: str  # "added" | "removed" | "changed"
    before: Any = None
    after: Any = None


def diff_states(before: Any, after: Any, path: str = "") -> list[Change]:
    """Every leaf-level difference between two JSON-like values, in key order."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[Change] = []
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before:
                out.append(Change(sub, "added", after=after[key]))
            elif key not in after:
                out.append(Change(sub, "removed", before=before[key]))
            else:
                out.extend(diff_states(before[key], after[key], sub))
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        out = []
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            out.extend(diff_states(b, a, f"{path}[{i}]"))
        return out
    if before != after:
        return [Change(path or "$", "changed", before, after)]
    return []


def bisect_versions(lo: int, hi: int, holds: Callable[[int], bool]) -> int | None:
    """The first version in ``[lo, hi]`` where ``holds`` is false, or None if it holds at ``hi``.

    Assumes the predicate is monotone over the history (true up to some version, false after),
    the usual shape of "which step broke the state". Loads O(log n) versions.
    """
    if holds(hi):
        return None
    if not holds(lo):
        return lo
    # invariant: holds(lo) and not holds(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return hi
