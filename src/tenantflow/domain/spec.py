"""Workflow specifications: a versioned DAG of steps, checked when it is defined.

A :class:`WorkflowSpec` is pure data plus the step callables. It is validated as a whole
(duplicate names, unknown dependencies, cycles, parameters that match no upstream output) so
that a bad workflow fails at import time with a :class:`~tenantflow.errors.SpecError`, never
half-way through a run.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

from tenantflow.domain.agent import Turn
from tenantflow.domain.limits import check_int
from tenantflow.domain.revision import Failure, Revision
from tenantflow.errors import (
    ConfigurationError,
    ContractError,
    SideEffectSpecError,
    SpecError,
    brief,
)

__all__ = [
    "Param",
    "Predicate",
    "Retry",
    "StepSpec",
    "WorkflowSpec",
    "child_key",
    "parse_key",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,99}$")

StepFn = Callable[..., Awaitable[Any]]
ParamSource = Literal["input", "step", "item"]


def _td(value: timedelta | float) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


@dataclass(frozen=True, slots=True)
class Retry:
    """When and how a failed step attempt is tried again.

    Delays grow exponentially from ``initial`` by ``multiplier`` up to ``max_interval``; each is
    spread by ``jitter`` (a fraction: 0.2 means ±20 %) so retries of many runs do not arrive in
    lock-step. An error retries if it is an instance of ``retry_on`` and not of ``no_retry_on``.
    ``initial`` and ``max_interval`` take a ``timedelta`` or seconds (``initial=0.1``).

    A :class:`~tenantflow.errors.ContractError` (a value that breaks a data contract) is not
    retried unless ``retry_on`` names it (or a subclass) explicitly: the same inputs break the
    same contract again. Name it for a step whose output varies between attempts (a model's).
    """

    max_attempts: int = 3
    initial: timedelta | float = timedelta(milliseconds=200)
    """The first delay; seconds are turned into a ``timedelta`` on construction."""
    multiplier: float = 2.0
    max_interval: timedelta | float = timedelta(seconds=30)
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    no_retry_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        for name in ("initial", "max_interval"):
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                try:
                    object.__setattr__(self, name, timedelta(seconds=value))
                except (OverflowError, ValueError):  # inf, nan, or past timedelta's range
                    raise SpecError(
                        f"Retry.{name} must be a finite number of seconds within timedelta's"
                        f" range, got {brief(value)}",
                        field=name,
                    ) from None
            elif not isinstance(value, timedelta):
                raise SpecError(
                    f"Retry.{name} must be a timedelta or a number of seconds,"
                    f" got {type(value).__name__} {brief(value)}",
                    field=name,
                )
        # Attempts are counted in the store's 64-bit columns; floats must be finite.
        check_int(self.max_attempts, "max_attempts", 1)
        for name in ("multiplier", "jitter"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ConfigurationError(
                    f"Retry.{name} must be a number, not {brief(number)}", field=name, value=number
                )
            if not math.isfinite(number):
                raise ConfigurationError(
                    f"Retry.{name} must be finite, not {number!r}", field=name, value=number
                )
        if self.max_attempts < 1:
            raise ConfigurationError(
                "Retry.max_attempts must be at least 1",
                field="max_attempts",
                value=self.max_attempts,
            )
        if self.multiplier < 1.0:
            raise ConfigurationError(
                "Retry.multiplier must be >= 1", field="multiplier", value=self.multiplier
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigurationError(
                "Retry.jitter must be within [0, 1]", field="jitter", value=self.jitter
            )
        if _td(self.initial) < timedelta(0) or _td(self.max_interval) < timedelta(0):
            raise ConfigurationError("Retry intervals must not be negative", field="initial")

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether ``attempt`` (1-based, the one that just failed) may be followed by another."""
        if attempt >= self.max_attempts:
            return False
        if self.no_retry_on and isinstance(error, self.no_retry_on):
            return False
        if isinstance(error, ContractError) and not any(
            issubclass(kind, ContractError) for kind in self.retry_on
        ):
            return False
        return isinstance(error, self.retry_on)

    def delay_s(self, attempt: int, rand: float) -> float:
        """Backoff before the attempt after ``attempt``; ``rand`` is uniform in [0, 1)."""
        cap = _td(self.max_interval).total_seconds()
        try:
            base = min(
                _td(self.initial).total_seconds() * self.multiplier ** max(0, attempt - 1), cap
            )
        except OverflowError:  # a growth past any float is past the cap
            base = cap
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rand - 1.0)))


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a step or predicate, and where its value comes from."""

    name: str
    source: ParamSource
    step: str | None = None
    annotation: Any = Any
    has_default: bool = False
    default: Any = None


@dataclass(frozen=True, slots=True)
class Predicate:
    """A condition on upstream outputs: the step runs only if it returns true."""

    fn: Callable[..., Any]
    params: tuple[Param, ...]


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One node of a workflow.

    Attributes:
        name: unique within the workflow.
        fn: the async callable; its first parameter is the :class:`StepContext`.
        deps: names of the steps that must finish first.
        params: the remaining parameters, each bound to the workflow input, an upstream output,
            or (for a fan-out step) one element of the mapped list.
        output_type: the output contract (a type pydantic can validate).
        when: optional predicate; false means the step is recorded as skipped.
        fan_out: name of the parameter mapped over; the step runs once per element and its
            output is the list of results, in order.
        kind: ``"function"``, ``"review"`` (a human gate) or ``"agent"`` (a loop whose
            iterations are its elements; ``options["agent"]`` holds its settings).
        standby: not in a run's plan unless a revision puts it there (see
            :mod:`tenantflow.domain.replan`); otherwise recorded as skipped.
        optional: a failure for good does not fail the run; dependents get their default.
        side_effect: off the critical path (a notification, webhook, CRM write, analytics,
            memory indexing): no later step reads its output or waits for it, it is not
            part of the run's result, and it is optional (its failure fails no run).
            Embedded and centralized engines run it like any step; under the hybrid
            placement the engine writes it to an outbox instead (see
            :attr:`WorkflowSpec.choreograph`) and side-effect agents run it off the run.
    """

    name: str
    fn: StepFn
    deps: tuple[str, ...]
    params: tuple[Param, ...]
    output_type: Any = Any
    when: Predicate | None = None
    fan_out: str | None = None
    optional: bool = False
    retry: Retry = field(default_factory=Retry)
    timeout_s: float | None = None
    compensate: Callable[..., Awaitable[Any]] | None = None
    circuit: str | None = None
    kind: str = "function"
    options: Mapping[str, Any] = field(default_factory=dict)
    standby: bool = False
    side_effect: bool = False

    @property
    def result_type(self) -> Any:
        """The type of the step's recorded output: a fan-out step gathers a list of them."""
        return list[self.output_type] if self.fan_out else self.output_type  # type: ignore[name-defined]

    @property
    def item_type(self) -> Any:
        """The type of one element's output: a fan-out's item, or an agent loop's turn."""
        if self.kind == "agent":
            return Turn
        return self.output_type


def child_key(name: str, index: int) -> str:
    """The key of element ``index`` of a fan-out step."""
    return f"{name}[{index}]"


def parse_key(key: str) -> tuple[str, int | None]:
    """Split a step key into its step name and fan-out index (None for a plain step)."""
    if key.endswith("]") and "[" in key:
        name, _, rest = key.partition("[")
        return name, int(rest[:-1])
    return key, None


class WorkflowSpec:
    """A named, versioned DAG of :class:`StepSpec`, validated on construction."""

    __slots__ = (
        "_by_name",
        "choreograph",
        "dependents",
        "fingerprint",
        "input_type",
        "max_revisions",
        "name",
        "replan",
        "sinks",
        "steps",
        "version",
    )

    def __init__(
        self,
        name: str,
        version: str,
        input_type: Any,
        steps: Sequence[StepSpec],
        *,
        replan: Callable[[Failure], Revision | None] | None = None,
        max_revisions: int = 3,
    ) -> None:
        if not _NAME.match(name):
            raise SpecError(
                f"workflow name {brief(name)} is invalid: use letters, digits, '_' or '-'",
                workflow=name,
            )
        check_int(max_revisions, "max_revisions", error=SpecError)
        self.name = name
        self.version = str(version)
        self.input_type = input_type
        by_name: dict[str, StepSpec] = {}
        for step in steps:
            if step.side_effect and not step.optional:  # a side effect never fails the run
                step = replace(step, optional=True)
            if not _NAME.match(step.name):
                raise SpecError(
                    f"step name {step.name!r} is invalid: use letters, digits, '_' or '-'",
                    workflow=name,
                    step=step.name,
                )
            if step.name in by_name:
                raise SpecError(
                    f"workflow {name!r} defines step {step.name!r} twice",
                    workflow=name,
                    step=step.name,
                )
            by_name[step.name] = step
        if not by_name:
            raise SpecError(f"workflow {name!r} has no steps", workflow=name)
        self._by_name = by_name
        self._check_references()
        self._check_side_effects()
        self.steps: tuple[StepSpec, ...] = tuple(self._topological_order())
        dependents: dict[str, list[str]] = {s.name: [] for s in self.steps}
        for step in self.steps:
            for dep in step.deps:
                dependents[dep].append(step.name)
        self.dependents: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in dependents.items()}
        # A side effect is never part of the result: the run ends without waiting for it
        # under the hybrid placement, so it may not shape the result anywhere else either.
        self.sinks: tuple[str, ...] = tuple(
            s.name
            for s in self.steps
            if not s.standby
            and not s.side_effect
            and all(by_name[d].side_effect for d in dependents[s.name])
        )
        self.choreograph = False
        """True under the hybrid placement: a side-effect step that becomes ready is written to
        the outbox (recorded as succeeded with no output) instead of being executed."""
        if max_revisions < 0:
            raise SpecError(f"workflow {name!r}: max_revisions must not be negative", workflow=name)
        self.replan = replan
        """Called when a step fails for good; may return a :class:`Revision`."""
        self.max_revisions = max_revisions
        self.fingerprint = self._fingerprint()

    def choreographed(self) -> WorkflowSpec:
        """This spec with :attr:`choreograph` set: the same steps, versions and fingerprint,
        its side effects handed to the outbox (what the hybrid placement registers)."""
        clone = copy.copy(self)
        clone.choreograph = True
        return clone

    def step(self, name: str) -> StepSpec:
        """The step called ``name``; :class:`SpecError` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise SpecError(
                f"workflow {self.name!r} has no step {name!r}", workflow=self.name, step=name
            ) from None

    def has_step(self, name: str) -> bool:
        return name in self._by_name

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if not s.deps)

    def _check_references(self) -> None:
        for step in self._by_name.values():
            for dep in step.deps:
                if dep not in self._by_name:
                    raise SpecError(
                        f"step {step.name!r} depends on unknown step {dep!r}",
                        workflow=self.name,
                        step=step.name,
                        dependency=dep,
                    )
                if dep == step.name:
                    raise SpecError(
                        f"step {step.name!r} depends on itself", workflow=self.name, step=step.name
                    )
            params = list(step.params) + list(step.when.params if step.when else ())
            for p in params:
                if p.source == "step" and p.step not in step.deps:
                    raise SpecError(
                        f"parameter {p.name!r} of step {step.name!r} reads step {p.step!r},"
                        " which is not among its dependencies",
                        workflow=self.name,
                        step=step.name,
                        parameter=p.name,
                    )
            if step.fan_out is not None:
                matched = [p for p in step.params if p.name == step.fan_out]
                if not matched:
                    raise SpecError(
                        f"step {step.name!r} fans out over {step.fan_out!r}, which is not one"
                        " of its parameters",
                        workflow=self.name,
                        step=step.name,
                        parameter=step.fan_out,
                    )

    def _check_side_effects(self) -> None:
        for step in self._by_name.values():
            if step.side_effect:
                where = f"side-effect step {step.name!r} of workflow {self.name!r}"
                if step.kind != "function":
                    why = f"is a {step.kind} step; only plain function steps can be side effects"
                elif step.fan_out is not None:
                    why = "fans out; a side effect is one message, not a gathered list"
                elif step.compensate is not None:
                    why = "has a compensation; compensation stays on the critical path"
                else:
                    continue
                raise SideEffectSpecError(f"{where} {why}", workflow=self.name, step=step.name)
            for dep in step.deps:
                upstream = self._by_name.get(dep)
                if upstream is not None and upstream.side_effect:
                    reads = any(p.step == dep for p in step.params) or any(
                        p.step == dep for p in (step.when.params if step.when else ())
                    )
                    raise SideEffectSpecError(
                        f"step {step.name!r} of workflow {self.name!r}"
                        f" {'reads the output of' if reads else 'comes after'} side-effect step"
                        f" {dep!r}: a side effect's output feeds no later step and nothing"
                        " waits for it (drop side_effect=True, or the dependency)",
                        workflow=self.name,
                        step=step.name,
                        dependency=dep,
                    )

    def _topological_order(self) -> list[StepSpec]:
        # Kahn's algorithm, stable in declaration order so the order is reproducible.
        indegree = {name: len(s.deps) for name, s in self._by_name.items()}
        children: dict[str, list[str]] = {name: [] for name in self._by_name}
        for s in self._by_name.values():
            for dep in s.deps:
                children[dep].append(s.name)
        order: list[StepSpec] = []
        ready = [name for name in self._by_name if indegree[name] == 0]
        while ready:
            name = ready.pop(0)
            order.append(self._by_name[name])
            for child in children[name]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        if len(order) != len(self._by_name):
            cyclic = sorted(n for n, d in indegree.items() if d > 0)
            raise SpecError(
                f"workflow {self.name!r} has a dependency cycle through {', '.join(cyclic)}",
                workflow=self.name,
                steps=",".join(cyclic),
            )
        return order

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in self.steps:
            h.update(
                f"{s.name}|{','.join(s.deps)}|{s.fan_out}|{s.optional}|{s.kind}|{s.standby}|"
                f"{getattr(s.fn, '__qualname__', '')}{'|fx' if s.side_effect else ''}\n".encode()
            )
        return h.hexdigest()[:16]
