"""What a replanner is told (:class:`Failure`) and what it answers (:class:`Revision`).

Plain values, below both the workflow spec (which declares the replanner's type) and the
replanning rules (:mod:`tenantflow.domain.replan`, which check and apply a revision), so that
neither of those imports the other's module to name them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Failure", "Revision"]


@dataclass(frozen=True, slots=True)
class Failure:
    """What the replanner is told about the step that failed for good."""

    step: str
    error_type: str
    message: str
    attempts: int
    revision: int  # revisions of this run so far
    statuses: Mapping[str, str] = field(default_factory=dict)  # every step's status


@dataclass(frozen=True, slots=True)
class Revision:
    """A change to the rest of the plan, with its reason (recorded with it)."""

    reason: str
    replace: Mapping[str, str] = field(default_factory=dict)  # failed step -> standby step
    skip: tuple[str, ...] = ()
    insert: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "replace", dict(self.replace))
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "insert", tuple(self.insert))
