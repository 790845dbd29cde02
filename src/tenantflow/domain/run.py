"""The run state machine: given what has happened, decide what happens next.

:func:`advance` is called after a step settles (succeeds, fails for good as an optional step, is
skipped) and returns a :class:`Plan`: which steps become ready, which are skipped (a false
condition, or a required upstream output that never came), which fan out, which fan-outs gather,
and whether the run is complete. It never mutates its input; the engine commits the plan in the
same transaction as the transition that caused it and only then applies it in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantflow.domain.records import StepStatus
from tenantflow.domain.spec import Param, StepSpec, WorkflowSpec, child_key

__all__ = ["MISSING", "Plan", "advance", "bind", "compensation_order", "run_result"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_SETTLED = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.FAILED})


@dataclass(slots=True)
class Plan:
    """What follows from a transition. Keys are step keys; reasons are for the execution log."""

    ready: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mapped: list[tuple[str, int]] = field(default_factory=list)
    gathered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    completed: bool = False
    choreographed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Side-effect steps handed to the outbox (a choreographing spec), with their arguments:
    they settle as succeeded with no output, and side-effect agents run them."""

    def statuses(self) -> dict[str, StepStatus]:
        """The status every key named by this plan takes."""
        out: dict[str, StepStatus] = {}
        for key in self.ready:
            out[key] = StepStatus.READY
        for key, _ in self.skipped:
            out[key] = StepStatus.SKIPPED
        for key, n in self.mapped:
            out[key] = StepStatus.MAPPED
            for i in range(n):
                out[child_key(key, i)] = StepStatus.READY
        for key in self.gathered:
            out[key] = StepStatus.SUCCEEDED
        for key, _ in self.failed:
            out[key] = StepStatus.FAILED
        for key, _ in self.choreographed:
            out[key] = StepStatus.SUCCEEDED
        return out


def bind(
    params: Iterable[Param],
    input_value: Any,
    outputs: Mapping[str, Any],
    item: Any = MISSING,
    fan_out: str | None = None,
) -> dict[str, Any] | None:
    """Arguments for a step or predicate, or None if a required upstream output is missing."""
    args: dict[str, Any] = {}
    for p in params:
        if fan_out is not None and p.name == fan_out and item is not MISSING:
            args[p.name] = item
        elif p.source == "input":
            args[p.name] = input_value
        elif p.source == "step":
            value = outputs.get(p.step or "", MISSING)
            if value is MISSING:
                if not p.has_default:
                    return None
                value = p.default
            args[p.name] = value
    return args


def _required_missing(step: StepSpec, statuses: Mapping[str, StepStatus]) -> str | None:
    for p in step.params:
        if (
            p.source == "step"
            and not p.has_default
            and statuses.get(p.step or "") != StepStatus.SUCCEEDED
        ):
            return f"upstream step {p.step!r} produced no output"
    return None


def advance(
    spec: WorkflowSpec,
    statuses: Mapping[str, StepStatus],
    outputs: Mapping[str, Any],
    input_value: Any,
    changed: Iterable[str] | None = None,
) -> Plan:
    """Decide the consequences of the steps in ``changed`` having settled.

    Args:
        spec: the run's workflow spec.
        statuses: current status of every step key (after the change).
        outputs: outputs of succeeded steps by step name (fan-out elements by element key).
        input_value: the validated workflow input.
        changed: names of steps that just settled; None means "look at every step" (a new run).
    """
    plan = Plan()
    local = dict(statuses)
    frontier: list[str] = list(spec.roots) if changed is None else _dependents(spec, changed)
    seen: set[str] = set()
    while frontier:
        name = frontier.pop(0)
        if name in seen or local.get(name) != StepStatus.PENDING:
            continue
        step = spec.step(name)
        if any(local.get(d) not in _SETTLED for d in step.deps):
            continue
        seen.add(name)
        if step.standby:  # joins the plan only through a revision
            plan.skipped.append((name, "standby: not in the plan"))
            local[name] = StepStatus.SKIPPED
            frontier.extend(spec.dependents[name])
            continue
        reason = _required_missing(step, local)
        if reason is None and step.when is not None:
            args = bind(step.when.params, input_value, outputs)
            try:
                ok = args is not None and bool(step.when.fn(**args))
            except Exception as exc:  # a broken predicate fails its step, loudly
                plan.failed.append((name, f"condition raised {type(exc).__name__}: {exc}"))
                local[name] = StepStatus.FAILED
                continue
            if not ok:
                reason = "condition is false"
        if reason is not None:
            plan.skipped.append((name, reason))
            local[name] = StepStatus.SKIPPED
            frontier.extend(spec.dependents[name])
            continue
        if step.kind == "agent":  # a loop: its first iteration, the rest as it goes
            plan.mapped.append((name, 1))
            local[name] = StepStatus.MAPPED
            continue
        if step.fan_out is not None:
            args = bind(step.params, input_value, outputs) or {}
            items = args.get(step.fan_out)
            if not isinstance(items, list | tuple):
                plan.failed.append(
                    (
                        name,
                        f"fan-out parameter {step.fan_out!r} is {type(items).__name__}, not a list",
                    )
                )
                local[name] = StepStatus.FAILED
                continue
            if not items:
                plan.gathered.append(name)
                local[name] = StepStatus.SUCCEEDED
                frontier.extend(spec.dependents[name])
                continue
            plan.mapped.append((name, len(items)))
            local[name] = StepStatus.MAPPED
            continue
        if step.side_effect and spec.choreograph:  # the outbox's, not the engine's to run
            plan.choreographed.append((name, bind(step.params, input_value, outputs) or {}))
            local[name] = StepStatus.SUCCEEDED
            continue
        plan.ready.append(name)
        local[name] = StepStatus.READY
    plan.completed = all(
        local.get(s.name) in _SETTLED
        and not (local.get(s.name) == StepStatus.FAILED and not s.optional)
        for s in spec.steps
    )
    return plan


def _dependents(spec: WorkflowSpec, changed: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in changed:
        out.extend(spec.dependents.get(name, ()))
    return out


def run_result(spec: WorkflowSpec, outputs: Mapping[str, Any]) -> Any:
    """A completed run's result: its single sink's output, or a dict of every sink's output."""
    if len(spec.sinks) == 1:
        return outputs.get(spec.sinks[0])
    return {name: outputs.get(name) for name in spec.sinks}


def compensation_order(
    spec: WorkflowSpec, statuses: Mapping[str, StepStatus], versions: Mapping[str, int | None]
) -> list[str]:
    """Succeeded steps that have a compensation, most recently completed first."""
    done = [
        s.name
        for s in spec.steps
        if s.compensate is not None and statuses.get(s.name) == StepStatus.SUCCEEDED
    ]
    return sorted(done, key=lambda n: versions.get(n) or 0, reverse=True)
