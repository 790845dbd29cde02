"""Replanning: revising the rest of a run's plan when a step fails for good.

A workflow may declare a replanner (``@wf.replan``): a plain function that, given the
:class:`Failure`, returns a :class:`Revision` or ``None``. A revision may

- **replace** the failed step by a standby step (``@wf.step(standby=True)``): the standby's
  function runs in the failed step's place, under its key, so its dependents get the output;
  it must take no upstream output the failed step did not, and return the same output type;
- **skip** steps that have not started (the failed step itself included): they are recorded
  as skipped, and their dependents take their defaults or are skipped, as for any skip;
- **insert** standby steps into the plan: they run now, so every step they depend on must have
  settled, and every step that depends on them must still be pending (it then waits for them).

Standby steps are declared with the workflow but are not in a run's plan until a revision
inserts them (or runs one in a failed step's place); otherwise they are recorded as skipped.

A run may be revised at most ``max_revisions`` times (the workflow's setting). Each revision is
committed with the failure it answers, as the run's next plan version: a ``plan`` entry in the
state history (so ``engine.versions``/``state`` show every plan with its reason), a
``plan.revised`` event and an audit entry. A revision the rules refuse is recorded as
``plan.refused`` and the step fails as it would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tenantflow.domain.records import StepStatus
from tenantflow.domain.revision import Failure, Revision

if TYPE_CHECKING:
    from tenantflow.domain.spec import WorkflowSpec

__all__ = ["Failure", "Revision", "check_revision", "plan_entry"]


def check_revision(
    spec: WorkflowSpec,
    statuses: Mapping[str, StepStatus],
    failed: str,
    revision: Revision,
    done: int,
    max_revisions: int,
) -> str | None:
    """Why ``revision`` may not be applied after ``failed`` failed, or None if it may."""
    if not revision.reason.strip():
        return "a revision needs a reason"
    if done >= max_revisions:
        return f"the run was already revised {done} times (max_revisions={max_revisions})"
    if failed not in revision.replace and failed not in revision.skip:
        return f"a revision must replace or skip the failed step {failed!r}"
    names = [*revision.replace, *revision.replace.values(), *revision.skip, *revision.insert]
    unknown = sorted({n for n in names if not spec.has_step(n)})
    if unknown:
        return f"unknown steps: {', '.join(unknown)}"
    for old, new in revision.replace.items():
        if old != failed:
            return f"only the failed step {failed!r} can be replaced, not {old!r}"
        if old in revision.skip:
            return f"step {old!r} cannot be both replaced and skipped"
        standby, original = spec.step(new), spec.step(old)
        if not standby.standby:
            return f"step {new!r} is not a standby step"
        if standby.output_type != original.output_type:
            return f"standby step {new!r} does not return the output type of {old!r}"
        extra = sorted(set(standby.deps) - set(original.deps))
        if extra:
            return f"standby step {new!r} needs {', '.join(extra)}, which {old!r} does not"
        if original.fan_out or standby.fan_out or original.kind != "function":
            return "only plain function steps can be replaced"
    for name in revision.skip:
        if name != failed and statuses.get(name) != StepStatus.PENDING:
            return f"step {name!r} has already started or settled; it cannot be skipped"
    for name in revision.insert:
        step = spec.step(name)
        if not step.standby:
            return f"step {name!r} is not a standby step"
        if name in revision.replace.values():
            return f"step {name!r} cannot be both inserted and run in another's place"
        settled = (StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.FAILED)
        skipped_now = set(revision.skip)
        waiting = [d for d in step.deps if statuses.get(d) not in settled and d not in skipped_now]
        if waiting:
            return f"inserted step {name!r} depends on unsettled {', '.join(waiting)}"
        started = [d for d in spec.dependents[name] if statuses.get(d) != StepStatus.PENDING]
        if started:
            return f"inserted step {name!r} comes too late: {', '.join(started)} already started"
    return None


def plan_entry(
    version: int, failed: str, revision: Revision, replaced: Mapping[str, str]
) -> dict[str, Any]:
    """The ``plan`` entry a revision writes to the state history."""
    return {
        "version": version,
        "after_failure_of": failed,
        "reason": revision.reason,
        "replace": dict(revision.replace),
        "skip": list(revision.skip),
        "insert": list(revision.insert),
        "replaced": dict(replaced),  # every replacement in force, this one included
    }
