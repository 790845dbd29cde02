"""What a step sees of the engine: ``StepContext``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tenantflow.domain import budget as budget_math
from tenantflow.domain.breaker import record_outcome
from tenantflow.domain.models import ModelResponse
from tenantflow.domain.records import (
    TERMINAL_RUN,
    NewEvent,
    RecordCall,
    RunRecord,
    RunStatus,
    Transition,
)
from tenantflow.domain.tenancy import AuditEntry, ReleaseHolds, UsageDelta
from tenantflow.engine.gateway import AwaitChild
from tenantflow.engine.memory import MemoryView, step_memory
from tenantflow.errors import CircuitOpenError

if TYPE_CHECKING:
    from tenantflow.domain.policy import Policy
    from tenantflow.engine.runtime import Active, Runtime

__all__ = ["StepContext"]

_KEYED_SLOTS = 2**31 - 1
"""Call records keyed by identity use the indexes -1 … -_KEYED_SLOTS (positional ones are > 0)."""

_IDENTITY: ContextVar[list[int] | None] = ContextVar("tenantflow_call_identity", default=None)
"""The keyed index the next call made in this task takes (consumed by its first call)."""


@dataclass(slots=True)
class StepContext:
    """Passed as the first argument of every step.

    Its identity (``run_id``, ``tenant_id``, ``workflow``, ``step``, ``attempt``,
    ``idempotency_key``) is read-only: a step cannot act as another tenant or run.

    Attributes:
        run_id: the run this attempt belongs to.
        tenant_id: the run's tenant (from the caller that submitted it, never from data).
        workflow: the workflow's name.
        step: the step key (``name`` or ``name[i]`` for a fan-out element).
        attempt: 1 for the first try, 2 for the first retry, …
        idempotency_key: stable across every attempt of this step: pass it to tools so that a
            re-executed attempt (after a crash) is deduplicated downstream.
    """

    _run_id: str
    _tenant_id: str
    _workflow: str
    _step: str
    _attempt: int
    _idempotency_key: str
    _runtime: Runtime = field(repr=False)
    _run: Active | None = field(default=None, repr=False)
    optional: bool = False
    notes: list[NewEvent] = field(default_factory=list, repr=False)
    notes_usage: list[UsageDelta] = field(default_factory=list, repr=False)
    _calls: int = field(default=0, repr=False)
    _recorded: dict[int, tuple[str, str, str]] | None = field(default=None, repr=False)
    _seen: dict[str, int] = field(default_factory=dict, repr=False)
    _claimed: dict[int, str] = field(default_factory=dict, repr=False)

    # -- identity: read-only, so step code cannot act as another tenant or run --------------

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def tenant_id(self) -> str:
        return self._tenant_id

    @property
    def workflow(self) -> str:
        return self._workflow

    @property
    def step(self) -> str:
        return self._step

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def idempotency_key(self) -> str:
        return self._idempotency_key

    @property
    def budget_scope(self) -> str:
        """The run ledger this attempt's spending is charged to: the root run of a tree of
        child runs (subagents draw on their parent's budget)."""
        run = self._run
        return f"run:{run.budget_run if run is not None and run.budget_run else self._run_id}"

    # -- for step code ------------------------------------------------------------------------

    def now(self) -> datetime:
        """The engine clock's current time (a fake clock in tests)."""
        return datetime.fromtimestamp(self._runtime.clock.now(), tz=UTC)

    def log(self, message: str, **data: Any) -> None:
        """Add a note to the run's execution log (committed with the attempt's outcome)."""
        self.notes.append(
            NewEvent("step.log", self.step, self.attempt, {"message": message, **data})
        )

    @property
    def policy(self) -> Policy:
        """The tenant policy snapshot this run was admitted with (refreshed between steps)."""
        if self._run is None or self._run.policy is None:
            raise RuntimeError("this step context has no policy (a compensation)")
        return self._run.policy

    @property
    def memory(self) -> MemoryView:
        """The run's tenant's agent memory, namespace ``default`` (``ctx.memory.scope(
        "user:alice")`` for another): ``get``, ``put``, ``delete``, ``list``,
        ``add_document``, ``search``. The tenant is the run's, never an argument; writes commit
        before they return. See :mod:`tenantflow.engine.memory`."""
        return step_memory(self._runtime, self._tenant_id, self._run, self._idempotency_key)

    async def tool(self, name: str, /, **args: Any) -> Any:
        """Call a registered tool through the tenant's allow list, rate limit, budget and
        circuit breaker. Raises NotAllowedError, RateLimitedError (the step is re-queued
        without holding a slot), BudgetExceededError or CircuitOpenError."""
        return await self._runtime.gateway.call_tool(self, name, args)

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
        return await self._runtime.gateway.call_model(
            self,
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
        index = self.next_call_index()
        recorded = await self.recorded_call(index)
        if recorded is None:
            run = self._run
            if run is None:
                raise RuntimeError("a compensation cannot start child runs")
            child = await self._runtime.hooks.start_child(run, self.step, index, workflow, task)
            await self.write(
                RecordCall(
                    self.tenant_id,
                    self.run_id,
                    self.step,
                    index,
                    "child",
                    workflow,
                    json.dumps({"run": child}),
                    self.now_s(),
                )
            )
        else:
            child = str(json.loads(recorded)["run"])
        record = await self._runtime.store.get_run(self.tenant_id, child)
        if record is None or record.status not in TERMINAL_RUN:
            if self._run is not None:
                self._runtime.expect_child(child, self._run, self.step)
            raise AwaitChild(child)
        return child, child_answer(record)

    @asynccontextmanager
    async def circuit(self, name: str) -> AsyncIterator[None]:
        """Guard a call to dependency ``name`` with its circuit breaker.

        Raises :class:`CircuitOpenError` at once, without running the block, while the breaker
        is open; an exception from the block counts as a failure of the dependency, unless it
        is the tenant's policy refusing the call (a rate limit, the budget, an allow-list) or a
        cancellation (see :func:`~tenantflow.domain.breaker.record_outcome`).
        """
        breaker = self._runtime.breaker(name)
        now = self._runtime.clock.now()
        if not breaker.allow(now):
            raise CircuitOpenError(
                f"circuit {name!r} is open",
                dependency=name,
                retry_after_s=breaker.retry_after_s(now),
            )
        try:
            yield
        except BaseException as exc:
            record_outcome(breaker, exc, self._runtime.clock.now())
            raise
        breaker.record_success(self._runtime.clock.now())

    # -- for the gateway ----------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def now_s(self) -> float:
        return self._runtime.clock.now()

    def next_call_index(self) -> int:
        keyed = _IDENTITY.get()
        if keyed:  # inside ``call_identity``: this call's index is its identity's
            return keyed.pop()
        self._calls += 1
        return self._calls

    @asynccontextmanager
    async def call_identity(self, identity: str) -> AsyncIterator[int]:
        """Key the next ``ctx.model``/``ctx.tool`` call made inside the block by ``identity``.

        A call is normally recorded by its position in the attempt. Frameworks that make calls
        in parallel, or in another order when they re-execute, key them instead by what they
        are (a tool-call id, a hash of the request): the record is found again whatever the
        order, so a re-executed attempt never repeats a paid call. The n-th call with the same
        identity in an attempt is a distinct call. Yields the record's index.
        """
        index = await self._keyed_index(identity)
        token = _IDENTITY.set([index])
        try:
            yield index
        finally:
            _IDENTITY.reset(token)

    async def _keyed_index(self, identity: str) -> int:
        seen = self._seen.get(identity, 0) + 1
        self._seen[identity] = seen
        digest = hashlib.sha256(f"{identity}\x00{seen}".encode()).digest()
        tag = digest[:12].hex()
        start = int.from_bytes(digest[12:16], "big") % _KEYED_SLOTS
        await self.recorded_call(0)  # loads the step's records
        recorded = self._recorded or {}
        for probe in range(_KEYED_SLOTS):  # open addressing: a hash collision takes the next
            index = -1 - (start + probe) % _KEYED_SLOTS
            found = recorded.get(index)
            if found is not None:
                # A reviewer's answer recorded for this index carries no tag.
                if found[1].endswith(f"@{tag}") or "@" not in found[1]:
                    return index
                continue
            if self._claimed.get(index, tag) == tag:
                self._claimed[index] = tag
                return index
        raise RuntimeError("no free call index")  # 2**31 calls in one step: unreachable

    async def recorded_call(self, index: int) -> str | None:
        if self._recorded is None:
            self._recorded = await self._runtime.store.recorded_calls(
                self.tenant_id, self.run_id, self.step
            )
        found = self._recorded.get(index)
        return None if found is None else found[2]

    async def write(self, op: Any) -> Any:
        if isinstance(op, RecordCall) and op.index in self._claimed:
            # A keyed record carries its identity's tag, so a colliding identity probes on.
            op = replace(op, name=f"{op.name}@{self._claimed[op.index]}")
        return await self._runtime.writer.write(op)

    def log_event(self, kind: str, data: dict[str, Any]) -> None:
        self.notes.append(NewEvent(kind, self.step, self.attempt, data))

    async def note_decision(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        audit: AuditEntry | None = None,
        usage: list[UsageDelta] | None = None,
    ) -> None:
        """Record a policy decision now, in the execution log and the audit log."""
        await self.write(
            Transition(
                self.tenant_id,
                self.run_id,
                self.now_s(),
                events=[NewEvent(kind, self.step, self.attempt, data)],
                audit=[audit] if audit is not None else [],
                usage=usage or [],
            )
        )

    async def release_holds(self, key: str) -> None:
        await self.write(ReleaseHolds(self.tenant_id, key, self.now_s()))

    async def remaining_micros(self) -> int | None:
        """What is left of the run's and the tenant's period money budget (None: unlimited)."""
        policy = self.policy
        b = policy.budget
        now = self.now_s()
        ledgers = {
            row["scope"]: row
            for row in await self._runtime.store.ledgers(self.tenant_id)
            if row["unit"] == "micros" and row["scope"] in (self.budget_scope, "period")
        }
        left: list[int] = []
        for scope, limit in ((self.budget_scope, b.run_micros), ("period", b.period_micros)):
            if limit is None:
                continue
            row = ledgers.get(scope)
            spent = reserved = 0
            if row is not None:
                reserved = int(row["reserved"])
                stale = scope == "period" and budget_math.needs_reset(
                    row["period_start"], now, b.period
                )
                spent = 0 if stale else int(row["spent"])
            left.append(max(0, limit - spent - reserved))
        return min(left) if left else None


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
