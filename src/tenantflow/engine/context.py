"""What a step sees of the engine: ``StepContext``.

It exposes the attempt's identity, the clock, the execution log, the tenant's policy, agent
memory, tools, models, child runs and circuit breakers, and nothing that writes to the store
directly: the engine-internal side of an attempt (its sink, store, breakers, observers) is an
:class:`~tenantflow.engine.execution.scope.AttemptScope` held privately, whose writes accept only
the attempt's own run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from tenantflow.domain import signals
from tenantflow.domain.models import ModelResponse
from tenantflow.domain.records import (
    TERMINAL_RUN,
    NewEvent,
    RecordCall,
    RunRecord,
    RunStatus,
    Transition,
)
from tenantflow.engine.memory import MemoryView, step_memory
from tenantflow.engine.signals import AwaitChild, AwaitSignal
from tenantflow.errors import SignalTimeoutError, SpecError

if TYPE_CHECKING:
    from tenantflow.domain.policy import Policy
    from tenantflow.engine.execution.scope import AttemptScope

__all__ = ["StepContext", "attempt_scope", "child_answer"]

_RAISE: Final[Any] = object()
"""``wait_for_signal``'s default ``default``: a timeout raises :class:`SignalTimeoutError`."""


class StepContext:
    """Passed as the first argument of every step.

    Its identity (``run_id``, ``tenant_id``, ``workflow``, ``step``, ``attempt``,
    ``idempotency_key``) is read-only: a step cannot act as another tenant or run, and nothing
    it can reach from here writes another tenant's or run's records.

    Attributes:
        run_id: the run this attempt belongs to.
        tenant_id: the run's tenant (from the caller that submitted it, never from data).
        workflow: the workflow's name.
        step: the step key (``name`` or ``name[i]`` for a fan-out element).
        attempt: 1 for the first try, 2 for the first retry, …
        idempotency_key: stable across every attempt of this step: pass it to tools so that a
            re-executed attempt (after a crash) is deduplicated downstream.
    """

    __slots__ = ("__scope",)

    def __init__(self, scope: AttemptScope) -> None:
        self.__scope = scope

    def __repr__(self) -> str:
        return f"StepContext(run_id={self.run_id!r}, step={self.step!r}, attempt={self.attempt})"

    # -- identity: read-only, so step code cannot act as another tenant or run --------------

    @property
    def run_id(self) -> str:
        return self.__scope.run_id

    @property
    def tenant_id(self) -> str:
        return self.__scope.tenant_id

    @property
    def workflow(self) -> str:
        return self.__scope.workflow

    @property
    def step(self) -> str:
        return self.__scope.step

    @property
    def attempt(self) -> int:
        return self.__scope.attempt

    @property
    def idempotency_key(self) -> str:
        return self.__scope.idempotency_key

    @property
    def budget_scope(self) -> str:
        """The run ledger this attempt's spending is charged to: the root run of a tree of
        child runs (subagents draw on their parent's budget)."""
        return self.__scope.budget_scope

    # -- for step code ------------------------------------------------------------------------

    def now(self) -> datetime:
        """The engine clock's current time (a fake clock in tests)."""
        return datetime.fromtimestamp(self.__scope.now_s(), tz=UTC)

    def _pending_notes(self) -> list[Any]:
        """The execution-log entries this context holds until its outcome is committed (the
        engine commits them with it; a compensation's too)."""
        return list(getattr(self.__scope, "notes", ()))

    def log(self, message: str, **data: Any) -> None:
        """Add a note to the run's execution log (committed with the attempt's outcome, or with
        the compensation's); ``logged_at`` records when it was written."""
        note = {"message": message, **data, "logged_at": self.__scope.now_s()}
        self.__scope.log_event("step.log", note)

    @property
    def policy(self) -> Policy:
        """The tenant policy snapshot this run was admitted with (refreshed between steps)."""
        return self.__scope.policy

    @property
    def memory(self) -> MemoryView:
        """The run's tenant's agent memory, namespace ``default`` (``ctx.memory.scope(
        "user:alice")`` for another): ``get``, ``put``, ``delete``, ``list``,
        ``add_document``, ``search``. The tenant is the run's, never an argument; writes commit
        before they return. See :mod:`tenantflow.engine.memory`."""
        scope = self.__scope
        services = scope.services
        return step_memory(
            services.store,
            services.clock,
            scope.write,
            scope.tenant_id,
            scope.run,
            scope.idempotency_key,
        )

    async def tool(self, name: str, /, **args: Any) -> Any:
        """Call a registered tool through the tenant's allow list, rate limit, budget and
        circuit breaker. Raises NotAllowedError, RateLimitedError (the step is re-queued
        without holding a slot), BudgetExceededError or CircuitOpenError."""
        scope = self.__scope
        return await scope.services.gateway.call_tool(scope, name, args)

    async def model(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[dict[str, Any]] | None = None,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        tools: Iterable[str] = (),
        stream: bool = False,
        tier: str | None = None,
        extra_tools: Iterable[Mapping[str, Any]] = (),
    ) -> ModelResponse:
        """Call a model: the endpoint is chosen by the tenant's model tier, allowed models,
        residency region, endpoint health and remaining budget; tokens and cost are recorded.

        Args:
            prompt: a user message (or pass ``messages``).
            messages: OpenAI-shaped chat messages.
            system: a system message placed first.
            max_tokens: completion cap; the budget reserves the worst case for it.
            tools: names of registered tools the model may ask to call.
            extra_tools: further OpenAI tool schemas offered to the model (answered by the
                caller, not by a registered tool: e.g. an agent's subagents).
            tier: "large" or "small", overriding the policy's model tier preference.
        """
        msgs: list[dict[str, Any]] = []
        if system:
            msgs.append({"role": "system", "content": system})
        if messages is not None:
            msgs.extend(dict(m) for m in messages)
        if prompt is not None:
            msgs.append({"role": "user", "content": prompt})
        if not msgs:
            raise ValueError("ctx.model needs a prompt or messages")
        scope = self.__scope
        return await scope.services.gateway.call_model(
            scope,
            msgs,
            max_tokens=max_tokens,
            temperature=temperature,
            tools=tools,
            stream=stream,
            tier=tier,
            extra_tools=extra_tools,
        )

    async def delegate(self, workflow: str, task: str) -> tuple[str, str]:
        """Start a child run of ``workflow`` with ``task`` as its input and wait for it; returns
        the child's id and its answer (an agent's answer, else its JSON result, else why it
        did not complete).

        The child runs for this run's tenant, in its region, and draws on this run's budget.
        It starts at once in this run's place: this run waits for it holding no slot, and the
        child takes no active-run place of its own (it uses its waiting parent's), so the runs
        of a tenant that are doing work stay within its cap, and every step of the child counts
        against the tenant's step cap and fair share like any other. Starting it is recorded,
        so a re-executed attempt waits for the same child.
        """
        scope = self.__scope
        services = scope.services
        index = scope.next_call_index()
        recorded = await scope.recorded_call(index)
        if recorded is None:
            run = scope.run
            if run is None:
                raise RuntimeError("a compensation cannot start child runs")
            child = await services.start_child(run, scope.step, index, workflow, task)
            await scope.write(
                RecordCall(
                    scope.tenant_id,
                    scope.run_id,
                    scope.step,
                    index,
                    "child",
                    workflow,
                    json.dumps({"run": child}),
                    scope.now_s(),
                )
            )
        else:
            child = str(json.loads(recorded)["run"])
        record = await services.store.get_run(scope.tenant_id, child)
        if record is None or record.status not in TERMINAL_RUN:
            if scope.run is not None:
                services.expect_child(child, scope.run, scope.step)
            raise AwaitChild(child)
        return child, child_answer(record)

    async def wait_for_signal(
        self,
        name: str,
        *,
        timeout: timedelta | float | None = None,
        default: Any = _RAISE,
    ) -> Any:
        """Wait for signal ``name`` to be sent to this run and return its payload.

        Signals are sent with ``Engine.signal``, ``POST /v1/runs/{id}/signals/{name}``,
        ``tenantflow runs signal`` or ``Client.signal``. Each signal is taken by exactly one
        wait, oldest first; one sent before the step waits is kept until a wait takes it. While
        none is there the step waits holding no slot (durably: a restart resumes the wait), and
        it runs again from the start when one arrives: its earlier calls, and this wait's
        payload once taken, are replayed from the record, not repeated.

        ``timeout`` (a timedelta or seconds) is fixed at the wait's first attempt; a retry
        does not extend it. Past it, with no signal taken, the wait raises
        :class:`~tenantflow.errors.SignalTimeoutError` (a step failure: the step's retry
        policy applies, and a retry takes a signal that arrived meanwhile), or returns
        ``default`` when one is given (recorded, so a re-execution returns it again).
        """
        scope = self.__scope
        name = signals.check_name(name)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if seconds is not None and (not isinstance(seconds, int | float) or seconds <= 0):
            raise SpecError("a signal wait's timeout must be positive", field="timeout")
        run = scope.run
        if run is None:
            raise RuntimeError("a compensation cannot wait for signals")
        wait_index = scope.next_call_index()  # records the deadline
        got_index = scope.next_call_index()  # records what the wait returned
        got = await scope.recorded_call(got_index)
        if got is not None:
            return _replayed(json.loads(got), name, default)
        now = scope.now_s()
        recorded = await scope.recorded_call(wait_index)
        if recorded is None:
            deadline = None if seconds is None else now + float(seconds)
            await self._record(wait_index, "signal.wait", name, {"deadline": deadline})
        else:
            deadline = json.loads(recorded)["deadline"]
        async with run.lock:  # one wait of this run takes a signal at a time
            log = await scope.services.store.events(scope.tenant_id, scope.run_id)
            found = signals.take(log, name, scope.step, got_index)
            if found is not None:
                consumed = {
                    "name": name,
                    "signal_id": found.data.get("id"),
                    "step": scope.step,
                    "index": got_index,
                }
                if not any(
                    e.kind == signals.CONSUMED and e.data.get("signal_id") == found.data.get("id")
                    for e in log
                ):
                    await scope.write(
                        Transition(
                            scope.tenant_id,
                            scope.run_id,
                            now,
                            events=[
                                NewEvent(signals.CONSUMED, scope.step, scope.attempt, consumed)
                            ],
                        )
                    )
                payload = found.data.get("payload")
                await self._record(
                    got_index,
                    "signal",
                    name,
                    {"signal_id": found.data.get("id"), "payload": payload},
                )
                return payload
        if deadline is not None and now >= deadline:
            if default is _RAISE:
                raise SignalTimeoutError(
                    f"no signal {name!r} within the wait's timeout", signal=name
                )
            await self._record(got_index, "signal", name, {"timeout": True})
            return default
        raise AwaitSignal(name, deadline)

    async def _record(self, index: int, kind: str, name: str, value: dict[str, Any]) -> None:
        scope = self.__scope
        await scope.write(
            RecordCall(
                scope.tenant_id,
                scope.run_id,
                scope.step,
                index,
                kind,
                name,
                json.dumps(value),
                scope.now_s(),
            )
        )

    @asynccontextmanager
    async def call_identity(self, identity: str) -> AsyncIterator[int]:
        """Key the next ``ctx.model``/``ctx.tool`` call made inside the block by ``identity``.

        A call is normally recorded by its position in the attempt. Frameworks that make calls
        in parallel, or in another order when they re-execute, key them instead by what they
        are (a tool-call id, a hash of the request): the record is found again whatever the
        order, so a re-executed attempt never repeats a paid call. The n-th call with the same
        identity in an attempt is a distinct call. Yields the record's index.
        """
        async with self.__scope.call_identity(identity) as index:
            yield index

    @asynccontextmanager
    async def circuit(self, name: str) -> AsyncIterator[None]:
        """Guard a call to dependency ``name`` with its circuit breaker.

        Raises :class:`CircuitOpenError` at once, without running the block, while the breaker
        is open; an exception from the block counts as a failure of the dependency, unless it
        is the tenant's policy refusing the call (a rate limit, the budget, an allow-list) or a
        cancellation (see :func:`~tenantflow.domain.breaker.record_outcome`).
        """
        async with self.__scope.circuit(name):
            yield


def _replayed(record: dict[str, Any], name: str, default: Any) -> Any:
    """What a wait that already ended returns again: its signal's payload, or its default."""
    if record.get("timeout"):
        if default is _RAISE:
            raise SignalTimeoutError(f"no signal {name!r} within the wait's timeout", signal=name)
        return default
    return record.get("payload")


def attempt_scope(ctx: StepContext) -> AttemptScope:
    """The engine's side of ``ctx``, for tenantflow's own SDK integrations
    (:mod:`tenantflow.integrations`): its records, writes and registries. Not for step code."""
    return ctx._StepContext__scope  # type: ignore[attr-defined,no-any-return]


def child_answer(record: RunRecord) -> str:
    """What a finished child run answers its parent: an agent's answer, else its JSON result,
    else why it did not complete."""
    if record.status != RunStatus.COMPLETED:
        return f"error: the child run {record.status.value}: {record.error or 'no result'}"
    raw = (record.result_json or b"null").decode()
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, dict) and isinstance(value.get("answer"), str):
        return str(value["answer"])
    return value if isinstance(value, str) else raw
