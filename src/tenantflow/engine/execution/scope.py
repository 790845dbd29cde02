"""What the engine holds for one attempt, behind the user-facing ``StepContext``.

:class:`AttemptScope` implements :class:`~tenantflow.ports.CallScope` for the gateway: the
attempt's identity and policy, the durable call record, circuit breakers, observers, and the
only way an attempt writes: :meth:`AttemptScope.write`, which accepts ops of its own run (and
of the platform's rate buckets) and refuses any other tenant's or run's. Step code sees a
:class:`~tenantflow.engine.context.StepContext`, which exposes nothing that writes.

:class:`Ledgers` is the embedded :class:`~tenantflow.ports.LedgerRouter`: a tenant's and a
run's ledgers go to the tenant's region store, the platform's to one designated store.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tenantflow.domain import budget as budget_math
from tenantflow.domain.breaker import CircuitBreaker, record_outcome
from tenantflow.domain.records import NewEvent, RecordCall, Transition
from tenantflow.domain.tenancy import AcquireRate, AuditEntry, ReleaseHolds, UsageDelta
from tenantflow.engine.execution.active import ActiveRun
from tenantflow.engine.gateway import PLATFORM, Gateway
from tenantflow.errors import CircuitOpenError, NotAllowedError
from tenantflow.ports import Clock, LedgerScope, OpSink, Store

if TYPE_CHECKING:
    from tenantflow.domain.policy import Policy
    from tenantflow.observability.events import Observers

__all__ = ["AttemptScope", "Ledgers", "Services"]

_KEYED_SLOTS = 2**31 - 1
"""Call records keyed by identity use the indexes -1 … -_KEYED_SLOTS (positional ones are > 0)."""

_IDENTITY: ContextVar[list[int] | None] = ContextVar("tenantflow_call_identity", default=None)
"""The keyed index the next call made in this task takes (consumed by its first call)."""


class Ledgers:
    """Which sink owns a ledger (a :class:`~tenantflow.ports.LedgerRouter`): the tenant's
    region store for its own and its runs' ledgers; ``platform`` for the platform's."""

    def __init__(self, tenant: OpSink, platform: OpSink | None = None) -> None:
        self.tenant = tenant
        self.platform = platform or tenant
        """The designated owner of platform ledgers (the engine's default store)."""

    def sink_for(self, tenant_id: str, scope: LedgerScope) -> OpSink:
        return self.platform if scope == "platform" else self.tenant


@dataclass(slots=True)
class Services:
    """What every attempt of one driver shares (built once per driver)."""

    clock: Clock
    store: Store
    ledgers: Ledgers
    gateway: Gateway
    breaker: Callable[[str], CircuitBreaker]
    observers: Observers
    start_child: Callable[[ActiveRun, str, int, str, str], Awaitable[str]]
    expect_child: Callable[[str, ActiveRun, str], None]


@dataclass(slots=True, eq=False)
class AttemptScope:
    """One attempt as the gateway sees it (see the module doc)."""

    run_id: str
    tenant_id: str
    workflow: str
    step: str
    attempt: int
    idempotency_key: str
    services: Services = field(repr=False)
    run: ActiveRun | None = field(default=None, repr=False)
    optional: bool = False
    notes: list[NewEvent] = field(default_factory=list, repr=False)
    notes_usage: list[UsageDelta] = field(default_factory=list, repr=False)
    _calls: int = field(default=0, repr=False)
    _recorded: dict[int, tuple[str, str, str]] | None = field(default=None, repr=False)
    _seen: dict[str, int] = field(default_factory=dict, repr=False)
    _claimed: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def budget_scope(self) -> str:
        """The run ledger this attempt's spending is charged to: the root run of a tree of
        child runs (subagents draw on their parent's budget)."""
        run = self.run
        return f"run:{run.budget_run if run is not None and run.budget_run else self.run_id}"

    @property
    def policy(self) -> Policy:
        """The tenant policy snapshot the run was admitted with (refreshed between steps)."""
        if self.run is None or self.run.policy is None:
            raise RuntimeError("this step context has no policy (a compensation)")
        return self.run.policy

    @property
    def observers(self) -> Observers:
        return self.services.observers

    def now_s(self) -> float:
        return self.services.clock.now()

    def next_call_index(self) -> int:
        keyed = _IDENTITY.get()
        if keyed:  # inside ``call_identity``: this call's index is its identity's
            return keyed.pop()
        self._calls += 1
        return self._calls

    @asynccontextmanager
    async def call_identity(self, identity: str) -> AsyncIterator[int]:
        """Key the next call made inside the block by ``identity`` (see
        :meth:`~tenantflow.engine.context.StepContext.call_identity`); yields its index."""
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
            self._recorded = await self.services.store.recorded_calls(
                self.tenant_id, self.run_id, self.step
            )
        found = self._recorded.get(index)
        return None if found is None else found[2]

    async def write(self, op: Any) -> Any:
        """Write an op of this attempt's run; a platform rate bucket goes to the platform's
        ledger. Fails closed: an op naming another tenant or run raises NotAllowedError."""
        if isinstance(op, RecordCall) and op.index in self._claimed:
            # A keyed record carries its identity's tag, so a colliding identity probes on.
            op = replace(op, name=f"{op.name}@{self._claimed[op.index]}")
        tenant = getattr(op, "tenant_id", None)
        ledgers = self.services.ledgers
        if tenant == PLATFORM and isinstance(op, AcquireRate):
            return await ledgers.sink_for(self.tenant_id, "platform").write(op)
        run_id = getattr(op, "run_id", self.run_id)
        if tenant != self.tenant_id or run_id != self.run_id:
            raise NotAllowedError(
                "a step writes only its own run's records",
                tenant=self.tenant_id,
                run_id=self.run_id,
                op=type(op).__name__,
            )
        return await ledgers.sink_for(self.tenant_id, "tenant").write(op)

    def breaker(self, name: str) -> CircuitBreaker:
        return self.services.breaker(name)

    @asynccontextmanager
    async def circuit(self, name: str) -> AsyncIterator[None]:
        """Guard a call to dependency ``name`` with its circuit breaker (see
        :meth:`tenantflow.engine.context.StepContext.circuit`)."""
        breaker = self.breaker(name)
        clock = self.services.clock
        now = clock.now()
        if not breaker.allow(now):
            raise CircuitOpenError(
                f"circuit {name!r} is open",
                dependency=name,
                retry_after_s=breaker.retry_after_s(now),
            )
        try:
            yield
        except BaseException as exc:
            record_outcome(breaker, exc, clock.now())
            raise
        breaker.record_success(clock.now())

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
            for row in await self.services.store.ledgers(self.tenant_id)
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
