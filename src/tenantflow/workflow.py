"""Defining workflows: ``Workflow`` and its ``@workflow.step`` decorator.

Each step is an ``async def`` whose first parameter receives the :class:`StepContext`. Every
other parameter is bound by name: a parameter named after an earlier step receives that step's
output (and makes it a dependency); a parameter annotated with the workflow's input type, or
named ``input``, receives the workflow input. Anything else is a :class:`SpecError` raised when
the module is imported, as are unknown dependencies and cycles.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar, overload

from tenantflow.domain.agent import Agent, AgentResult
from tenantflow.domain.replan import Failure, Revision
from tenantflow.domain.reviews import ReviewDecision
from tenantflow.domain.signals import check_name
from tenantflow.domain.spec import Param, Predicate, Retry, StepSpec, WorkflowSpec
from tenantflow.errors import SpecError

__all__ = ["Workflow"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
StepRef = str | Callable[..., Any]
_OUTPUT_OF_KIND: dict[str, Any] = {"review": ReviewDecision, "agent": AgentResult}


class Workflow:
    """A named, versioned workflow built from decorated async steps.

    Args:
        name: the workflow's name, used to submit runs.
        input: the input contract (a pydantic model or any type pydantic validates).
        version: runs stay on the version they started with; register a new version to change
            the steps without disturbing runs in flight.
        on_event: event names (``POST /v1/events/{name}``, ``Engine.publish``) that start a
            run of this workflow, with the event's data as its input, for the sender's tenant.
    """

    def __init__(
        self,
        name: str,
        *,
        input: Any = Any,
        version: str | int = "1",
        max_revisions: int = 3,
        on_event: str | Sequence[str] = (),
    ) -> None:
        events = (on_event,) if isinstance(on_event, str) else tuple(on_event)
        self.on_event: tuple[str, ...] = tuple(check_name(e) for e in events)
        self.name = name
        self.input_type = input
        self.version = str(version)
        self.max_revisions = max_revisions
        self._steps: list[StepSpec] = []
        self._names: dict[Callable[..., Any], str] = {}
        self._replan: Callable[[Failure], Revision | None] | None = None
        self._spec: WorkflowSpec | None = None

    @property
    def spec(self) -> WorkflowSpec:
        """The validated spec; :class:`SpecError` if the workflow has no steps."""
        if self._spec is None:
            self._spec = self._build(self._steps)
        return self._spec

    def _build(self, steps: list[StepSpec]) -> WorkflowSpec:
        return WorkflowSpec(
            self.name,
            self.version,
            self.input_type,
            steps,
            replan=self._replan,
            max_revisions=self.max_revisions,
        )

    def replan(
        self, fn: Callable[[Failure], Revision | None], /
    ) -> Callable[[Failure], Revision | None]:
        """Declare the replanner: called (synchronously, so keep it pure and quick) when a step
        fails for good, it returns a :class:`~tenantflow.domain.replan.Revision` of the rest of
        the plan, or None to let the step fail. See :mod:`tenantflow.domain.replan`."""
        if inspect.iscoroutinefunction(fn) or not callable(fn):
            raise SpecError(
                f"the replanner of workflow {self.name!r} must be a plain function",
                workflow=self.name,
            )
        self._replan = fn
        if self._steps:
            self._spec = self._build(self._steps)
        return fn

    @overload
    def step(self, fn: F, /) -> F: ...

    @overload
    def step(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        after: Iterable[StepRef] = (),
        when: Callable[..., Any] | None = None,
        fan_out: str | None = None,
        optional: bool = False,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
        compensate: Callable[..., Awaitable[Any]] | None = None,
        circuit: str | None = None,
        standby: bool = False,
        side_effect: bool = False,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        after: Iterable[StepRef] = (),
        when: Callable[..., Any] | None = None,
        fan_out: str | None = None,
        optional: bool = False,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
        compensate: Callable[..., Awaitable[Any]] | None = None,
        circuit: str | None = None,
        standby: bool = False,
        side_effect: bool = False,
    ) -> F | Callable[[F], F]:
        """Add a step. Use bare (``@wf.step``) or with options.

        Args:
            name: defaults to the function's name.
            after: steps (functions or names) that must finish first, beyond those implied by
                parameter names.
            when: a predicate over upstream outputs (parameters bound like a step's); when it is
                false the step is recorded as skipped.
            fan_out: the parameter to map over: the step runs once per element of that list and
                its output is the list of results, in order.
            optional: if it fails for good the run goes on; dependents receive their parameter's
                default (or are skipped if they have none).
            retry: the retry policy (default: 3 attempts, exponential backoff with jitter).
            timeout: per attempt; a hung attempt is cancelled and counts as a failure.
            compensate: ``async def (ctx, output)`` run in reverse order if the run fails later.
            circuit: name of the dependency whose circuit breaker guards this step.
            standby: declared but not in a run's plan: a revision (``@wf.replan``) may run it
                in a failed step's place or insert it; otherwise it is recorded as skipped.
            side_effect: a notification, webhook, CRM write, analytics or memory indexing:
                no later step may read its output or come after it
                (:class:`~tenantflow.errors.SideEffectSpecError` otherwise), and it is not
                part of the run's result. Embedded and centralized engines run it like any
                step; the hybrid placement hands it to side-effect agents through an outbox,
                and the run does not wait for it (see docs/hybrid.md). It is optional: its
                failure fails no run, under any placement.
        """

        def register(func: F) -> F:
            self._add(
                func,
                name=name or func.__name__,
                after=after,
                when=when,
                fan_out=fan_out,
                optional=optional or side_effect,  # never fails the run
                retry=retry or Retry(),
                timeout=timeout,
                compensate=compensate,
                circuit=circuit,
                standby=standby,
                side_effect=side_effect,
            )
            return func

        return register(fn) if fn is not None else register

    @overload
    def review(self, fn: F, /) -> F: ...

    @overload
    def review(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        after: Iterable[StepRef] = (),
        when: Callable[..., Any] | None = None,
        pool: str | None = None,
        sla: timedelta | None = None,
        optional: bool = False,
    ) -> Callable[[F], F]: ...

    def review(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        after: Iterable[StepRef] = (),
        when: Callable[..., Any] | None = None,
        pool: str | None = None,
        sla: timedelta | None = None,
        optional: bool = False,
    ) -> F | Callable[[F], F]:
        """Add a human review gate. The function returns what the reviewer sees (a dict or a
        model); the step then waits — holding no slot — in the tenant's reviewer pool (or
        ``pool``) until someone decides, and its output is a :class:`ReviewDecision`.
        ``sla`` overrides the policy's review SLA; a breach is handled as the policy says."""

        def register(func: F) -> F:
            self._add(
                func,
                name=name or func.__name__,
                after=after,
                when=when,
                fan_out=None,
                optional=optional,
                retry=Retry(),
                timeout=None,
                compensate=None,
                circuit=None,
                kind="review",
                options={"pool": pool, "sla_s": sla.total_seconds() if sla else None},
            )
            return func

        return register(fn) if fn is not None else register

    def agent(
        self,
        agent: Agent,
        /,
        *,
        name: str | None = None,
        after: Iterable[StepRef] = (),
        when: Callable[..., Any] | None = None,
        optional: bool = False,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
    ) -> Callable[[F], F]:
        """Add an agent step: the decorated function returns the task (a ``str``: the first
        user message) and the engine runs the :class:`~tenantflow.domain.agent.Agent` loop on
        it. Every iteration is a durable element of the step (``name[0]``, ``name[1]``, …):
        dispatched, leased, budget-checked, rate-limited and recorded as a state version like
        any step. The step's output is an :class:`~tenantflow.domain.agent.AgentResult`.
        ``retry`` and ``timeout`` apply to each iteration."""
        if not isinstance(agent, Agent):
            raise SpecError(
                f"workflow {self.name!r}: agent() takes an Agent, not {type(agent).__name__}",
                workflow=self.name,
            )

        def register(func: F) -> F:
            self._add(
                func,
                name=name or func.__name__,
                after=after,
                when=when,
                fan_out=None,
                optional=optional,
                retry=retry or Retry(),
                timeout=timeout,
                compensate=None,
                circuit=None,
                kind="agent",
                options={"agent": agent},
            )
            return func

        return register

    def _add(
        self,
        func: Callable[..., Awaitable[Any]],
        *,
        name: str,
        after: Iterable[StepRef],
        when: Callable[..., Any] | None,
        fan_out: str | None,
        optional: bool,
        retry: Retry,
        timeout: timedelta | None,
        compensate: Callable[..., Awaitable[Any]] | None,
        circuit: str | None,
        kind: str = "function",
        options: dict[str, Any] | None = None,
        standby: bool = False,
        side_effect: bool = False,
    ) -> None:
        where = f"step {name!r} of workflow {self.name!r}"
        if not inspect.iscoroutinefunction(func):
            raise SpecError(f"{where} must be an async function", workflow=self.name, step=name)
        if compensate is not None and not inspect.iscoroutinefunction(compensate):
            raise SpecError(
                f"the compensation of {where} must be an async function",
                workflow=self.name,
                step=name,
            )
        if timeout is not None and timeout <= timedelta(0):
            raise SpecError(
                f"the timeout of {where} must be positive", workflow=self.name, step=name
            )
        deps: list[str] = [self._resolve(ref, where) for ref in after]
        params, output_type = self._params(func, where, skip_first=True)
        if fan_out is not None and fan_out not in {p.name for p in params}:
            raise SpecError(
                f"{where} fans out over {fan_out!r}, which is not one of its parameters",
                workflow=self.name,
                step=name,
            )
        predicate = None
        if when is not None:
            when_params, _ = self._params(when, f"the condition of {where}", skip_first=False)
            predicate = Predicate(when, tuple(when_params))
            deps.extend(p.step for p in when_params if p.step)
        deps.extend(p.step for p in params if p.step)
        spec = StepSpec(
            name=name,
            fn=func,
            deps=tuple(dict.fromkeys(deps)),
            params=tuple(params),
            output_type=_OUTPUT_OF_KIND.get(kind, output_type),
            when=predicate,
            fan_out=fan_out,
            optional=optional,
            retry=retry,
            timeout_s=timeout.total_seconds() if timeout is not None else None,
            compensate=compensate,
            circuit=circuit,
            kind=kind,
            options=options or {},
            standby=standby,
            side_effect=side_effect,
        )
        steps = [*self._steps, spec]
        self._spec = self._build(steps)  # validates
        self._steps = steps
        self._names[func] = name

    def _resolve(self, ref: StepRef, where: str) -> str:
        if isinstance(ref, str):
            known = {s.name for s in self._steps}
            if ref not in known:
                raise SpecError(
                    f"{where} comes after unknown step {ref!r}; define it first",
                    workflow=self.name,
                    dependency=ref,
                )
            return ref
        resolved = self._names.get(ref)
        if resolved is None:
            label = getattr(ref, "__name__", repr(ref))
            raise SpecError(
                f"{where} comes after {label!r}, which is not a step of this workflow",
                workflow=self.name,
                dependency=label,
            )
        return resolved

    def _params(
        self, func: Callable[..., Any], where: str, *, skip_first: bool
    ) -> tuple[list[Param], Any]:
        try:
            hints = typing.get_type_hints(func)
        except Exception as exc:
            raise SpecError(
                f"cannot resolve the type hints of {where}: {exc}", workflow=self.name
            ) from None
        sig = inspect.signature(func)
        items = list(sig.parameters.values())
        if skip_first:
            if not items:
                raise SpecError(
                    f"{where} must take the step context as its first parameter", workflow=self.name
                )
            items = items[1:]
        known = {s.name for s in self._steps}
        params: list[Param] = []
        for p in items:
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise SpecError(f"{where} may not take *args or **kwargs", workflow=self.name)
            annotation = hints.get(p.name, Any)
            has_default = p.default is not inspect.Parameter.empty
            default = p.default if has_default else None
            if p.name in known:
                params.append(Param(p.name, "step", p.name, annotation, has_default, default))
            elif (
                p.name == "input"
                or (self.input_type is not Any and annotation is self.input_type)
                or (not skip_first and p.name not in hints)  # an unannotated lambda argument
            ):
                params.append(Param(p.name, "input", None, annotation, has_default, default))
            elif has_default:
                continue  # the function's own default applies
            else:
                raise SpecError(
                    f"parameter {p.name!r} of {where} matches no upstream output (steps so far:"
                    f" {', '.join(sorted(known)) or 'none'}) and is not the workflow input"
                    f" (annotate it with the input type or name it 'input')",
                    workflow=self.name,
                    parameter=p.name,
                )
        return params, hints.get("return", Any)
