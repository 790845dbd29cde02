"""The tool and model gateway behind ``ctx.tool(...)`` and ``ctx.model(...)``.

Every external call passes the same gates, in order: the durable call record (a re-executed
attempt replays a call it already made instead of calling, and paying, again), the tenant's
allow/deny list, the residency region (models), the tenant's rate limit for that resource
(durable GCRA; an exhausted limit parks the step without holding a slot), the budget (reserve
the worst case before, settle the actual cost after, release on failure; the degradation ladder
when it does not fit), the circuit breaker, then the call itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tenantflow.domain import budget as budget_math
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.limits import MAX_TOKENS, check_int
from tenantflow.domain.models import ModelRequest, ModelResponse
from tenantflow.domain.policy import RateLimit
from tenantflow.domain.records import NewEvent, RecordCall, Transition
from tenantflow.domain.routing import Endpoint, select_endpoint
from tenantflow.domain.tenancy import (
    AcquireRate,
    AuditEntry,
    LedgerLine,
    Refusal,
    Reserve,
    Settle,
    ThrottleRate,
    UsageDelta,
)
from tenantflow.engine.gateway.models import Models, response_from_json, response_to_json
from tenantflow.engine.gateway.tools import Tool, Tools
from tenantflow.engine.signals import Escalate, Pause, SkipStep
from tenantflow.errors import (
    BudgetExceededError,
    CircuitOpenError,
    NotAllowedError,
    ProviderError,
    ProviderThrottledError,
    RateLimitedError,
    ResidencyError,
)
from tenantflow.observability.events import Degraded, ModelCallFinished, ToolCallFinished
from tenantflow.ports import ModelProvider

if TYPE_CHECKING:
    from tenantflow.ports import CallScope

__all__ = ["PLATFORM", "Gateway", "SpendGuard"]

PLATFORM = "*"
"""The rate-limit bucket of limits shared by all tenants (never a tenant id: ids refuse ``*``)."""


def _estimate_tokens(messages: Iterable[dict[str, Any]]) -> int:
    return max(1, math.ceil(sum(len(str(m.get("content") or "")) for m in messages) / 4))


class SpendGuard(Protocol):
    """A cap on money above the tenants' budgets (a federated cell's wallet of a cross-tenant
    money cap): asked before every priced call, after the call's own budget reservation."""

    def reserve(self, micros: int) -> bool:
        """Take ``micros`` (the call's worst case) if there is room; False: nothing taken."""
        ...

    def settle(self, reserved: int, actual: int) -> None:
        """The call cost ``actual`` of the ``reserved`` (0: it failed before costing)."""
        ...


class Gateway:
    """Runs tool and model calls for steps, enforcing the tenant's policy (see module doc)."""

    def __init__(
        self,
        tools: Tools,
        models: Models,
        *,
        platform_limits: Mapping[str, RateLimit] | None = None,
        tenant_limits: bool = True,
    ) -> None:
        self.tools = tools
        self.models = models
        self.platform_limits: dict[str, RateLimit] = dict(platform_limits or {})
        """Limits on a resource for all tenants together (e.g. the bureau's contract with the
        platform), in a bucket of their own (:data:`PLATFORM`)."""
        self.tenant_limits = tenant_limits
        """False: the tenants' own limits are not applied (tenant controls off)."""
        self.spend_guard: SpendGuard | None = None
        """Asked after a priced call's budget reservation; a refusal is a ``platform``
        BudgetExceededError (the policy's degradation ladder). Set by a federated cell."""

    # -- tools --------------------------------------------------------------------------------

    async def call_tool(self, ctx: CallScope, name: str, args: dict[str, Any]) -> Any:
        index = ctx.next_call_index()
        recorded = await ctx.recorded_call(index)
        tool = await self.tools.resolve(ctx.tenant_id, name)
        if recorded is not None:
            return contract_for(tool.output_type).load(
                recorded, step=ctx.step, direction=f"tool {name}"
            )
        policy = ctx.policy
        if not tool.allowed_for(policy):
            await ctx.note_decision(
                "tool.denied",
                {"tool": name},
                audit=AuditEntry(
                    f"run:{ctx.run_id}", "tool.denied", f"tool:{name}", {"step": ctx.step}
                ),
            )
            raise NotAllowedError(
                f"tool {name!r} is not allowed for tenant {ctx.tenant_id!r}",
                tool=name,
                tenant=ctx.tenant_id,
            )
        if tool.input_model is not None:
            validated, _ = contract_for(tool.input_model).check(
                args, step=ctx.step, direction=f"arguments of tool {name!r}"
            )
            call_args = validated.model_dump()
        else:
            call_args = dict(args)
        await self._rate(ctx, tool.resource)
        key = f"{ctx.run_id}:{ctx.step}:{ctx.attempt}:{index}"
        if tool.cost_micros:
            try:
                await self._reserve(ctx, key, tool.cost_micros, 0)
            except BudgetExceededError as exc:  # the policy's ladder, as for a model call
                await self._degrade(ctx, exc, None, index, [], tool=True)
                raise
        if tool.takes_key:
            call_args["idempotency_key"] = f"{ctx.idempotency_key}:{index}"
        try:
            async with ctx.circuit(f"tool:{name}"):
                raw = await self._run_tool(ctx, tool, call_args)
        except BaseException:
            if tool.cost_micros:
                await ctx.release_holds(key)
                self._settle_guard(tool.cost_micros, 0)
            raise
        value, out_json = contract_for(tool.output_type).check(
            raw, step=ctx.step, direction=f"result of tool {name!r}"
        )
        if tool.compensate is not None:  # what to undo if the run fails: before the record
            effect = {
                "tool": name,
                "index": index,
                "arguments": {k: v for k, v in call_args.items() if k != "idempotency_key"},
                "result": json.loads(out_json),
            }
            await ctx.write(
                Transition(
                    ctx.tenant_id,
                    ctx.run_id,
                    ctx.now_s(),
                    events=[NewEvent("tool.effect", ctx.step, ctx.attempt, effect)],
                )
            )
        usage = [UsageDelta("tool_calls", 1, name)]
        if tool.cost_micros:
            self._settle_guard(tool.cost_micros, tool.cost_micros)
            usage.append(UsageDelta("cost_micros", tool.cost_micros, f"tool:{name}"))
            await ctx.write(
                Settle(
                    ctx.tenant_id, key, self._actual(ctx, tool.cost_micros, 0), ctx.now_s(), usage
                )
            )
            usage = []
        await ctx.write(
            RecordCall(
                ctx.tenant_id,
                ctx.run_id,
                ctx.step,
                index,
                "tool",
                name,
                out_json.decode(),
                ctx.now_s(),
            )
        )
        if usage:
            await ctx.write(Transition(ctx.tenant_id, ctx.run_id, ctx.now_s(), usage=usage))
        return value

    # -- models -------------------------------------------------------------------------------

    async def call_model(
        self,
        ctx: CallScope,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float,
        tools: Iterable[str],
        stream: bool,
        tier: str | None,
        extra_tools: Iterable[Mapping[str, Any]] = (),
    ) -> ModelResponse:
        index = ctx.next_call_index()
        recorded = await ctx.recorded_call(index)
        if recorded is not None:
            return response_from_json(recorded)
        check_int(max_tokens, "max_tokens", 1, MAX_TOKENS)  # the reservation must fit 64 bits
        policy = ctx.policy
        prompt_tokens = _estimate_tokens(messages)
        remaining = await ctx.remaining_micros()

        def healthy(name: str) -> bool:
            b = ctx.breaker(f"model:{name}")
            return b.state != "open" or b.retry_after_s(ctx.now_s()) <= 0

        try:
            selection = select_endpoint(
                policy,
                self.models.endpoints,
                healthy=healthy,
                max_tokens=max_tokens,
                prompt_tokens=prompt_tokens,
                remaining_micros=remaining,
                prefer_tier=tier,  # type: ignore[arg-type]
            )
        except ResidencyError as exc:
            await ctx.note_decision(
                "residency.blocked",
                {"region": policy.region, "error": exc.message},
                audit=AuditEntry(
                    f"run:{ctx.run_id}",
                    "residency.blocked",
                    f"step:{ctx.step}",
                    {"region": policy.region},
                ),
            )
            raise
        except BudgetExceededError as exc:
            await self._degrade(ctx, exc, remaining, index, messages)
            raise  # _degrade always raises a signal; this keeps type checkers honest
        endpoint = selection.endpoint
        if selection.degraded:
            await ctx.note_decision(
                "budget.degraded",
                {"action": "cheaper_model", "endpoint": endpoint.name, "reason": selection.reason},
                audit=AuditEntry(
                    f"run:{ctx.run_id}",
                    "budget.degraded",
                    f"step:{ctx.step}",
                    {"action": "cheaper_model", "endpoint": endpoint.name},
                ),
                usage=[UsageDelta("degradations", 1, "cheaper_model")],
            )
            self._degraded(ctx, "cheaper_model")
        resource = f"model:{endpoint.name}"
        limit = await self._rate(ctx, resource)
        key = f"{ctx.run_id}:{ctx.step}:{ctx.attempt}:{index}"
        try:
            await self._reserve(ctx, key, selection.estimate_micros, prompt_tokens + max_tokens)
        except BudgetExceededError as exc:  # lost a race for the last of the budget
            await self._degrade(ctx, exc, remaining, index, messages)
            raise
        provider = self.models.providers[endpoint.name]
        offered = [await self.tools.resolve(ctx.tenant_id, name) for name in tools]
        request = ModelRequest(
            model=endpoint.model,
            messages=tuple(messages),
            max_tokens=max_tokens,
            temperature=temperature,
            tools=(
                *(  # a tool only its allow-listed tenants may call is not listed to others
                    tool.schema()
                    for tool in offered
                    if not tool.explicit or tool.allowed_for(policy)
                ),
                *(dict(t) for t in extra_tools),
            ),
            idempotency_key=f"{ctx.idempotency_key}:{index}",
            stream=stream,
        )
        breaker = ctx.breaker(resource)
        if not breaker.allow(ctx.now_s()):
            await ctx.release_holds(key)
            raise CircuitOpenError(
                f"circuit {resource!r} is open",
                dependency=resource,
                retry_after_s=breaker.retry_after_s(ctx.now_s()),
            )
        try:
            response = await self._complete(ctx, endpoint, provider, request)
        except ProviderThrottledError as exc:
            breaker.record_success(ctx.now_s())  # a throttle is not an outage
            await ctx.release_holds(key)
            if limit is not None:
                await self._throttle(ctx, resource, limit, exc.retry_after_s)
            raise RateLimitedError(
                f"provider throttled {endpoint.name!r}",
                resource=resource,
                retry_after_s=exc.retry_after_s,
            ) from exc
        except ProviderError as exc:
            breaker.record_failure(ctx.now_s())
            used_in = int(exc.fields.get("tokens_in") or 0)
            used_out = int(exc.fields.get("tokens_out") or 0)
            if used_in or used_out:  # an interrupted call is priced for what it produced
                cost = endpoint.cost_micros(used_in, used_out)
                await ctx.write(
                    Settle(
                        ctx.tenant_id,
                        key,
                        self._actual(ctx, cost, used_in + used_out),
                        ctx.now_s(),
                        self._usage(endpoint, used_in, used_out, cost),
                    )
                )
            else:
                await ctx.release_holds(key)
            raise
        except BaseException:
            await ctx.release_holds(key)
            raise
        breaker.record_success(ctx.now_s())
        cost = endpoint.cost_micros(response.tokens_in, response.tokens_out)
        self._settle_guard(selection.estimate_micros, cost)
        await ctx.write(
            Settle(
                ctx.tenant_id,
                key,
                self._actual(ctx, cost, response.tokens_in + response.tokens_out),
                ctx.now_s(),
                self._usage(endpoint, response.tokens_in, response.tokens_out, cost),
            )
        )
        await ctx.write(
            RecordCall(
                ctx.tenant_id,
                ctx.run_id,
                ctx.step,
                index,
                "model",
                endpoint.name,
                response_to_json(response),
                ctx.now_s(),
            )
        )
        ctx.log_event(
            "model.call",
            {
                "endpoint": endpoint.name,
                "model": endpoint.model,
                "region": endpoint.region,
                "tokens_in": response.tokens_in,
                "tokens_out": response.tokens_out,
                "cost_micros": cost,
            },
        )
        return response

    def _usage(
        self, endpoint: Endpoint, tokens_in: int, tokens_out: int, cost: int
    ) -> list[UsageDelta]:
        return [
            UsageDelta("model_calls", 1, endpoint.name),
            UsageDelta("tokens_in", tokens_in, endpoint.model),
            UsageDelta("tokens_out", tokens_out, endpoint.model),
            UsageDelta("cost_micros", cost, f"model:{endpoint.model}"),
        ]

    def _lines(self, ctx: CallScope, micros: int, tokens: int) -> list[LedgerLine]:
        b = ctx.policy.budget
        run_scope = ctx.budget_scope
        lines = [
            LedgerLine(run_scope, "micros", micros, b.run_micros),
            LedgerLine("period", "micros", micros, b.period_micros, b.period),
        ]
        if tokens:
            lines.append(LedgerLine(run_scope, "tokens", tokens, b.run_tokens))
            lines.append(LedgerLine("period", "tokens", tokens, b.period_tokens, b.period))
        return lines

    def _actual(self, ctx: CallScope, micros: int, tokens: int) -> dict[tuple[str, str], int]:
        run_scope = ctx.budget_scope
        return {
            (run_scope, "micros"): micros,
            ("period", "micros"): micros,
            (run_scope, "tokens"): tokens,
            ("period", "tokens"): tokens,
        }

    async def _reserve(self, ctx: CallScope, key: str, micros: int, tokens: int) -> None:
        result = await ctx.write(
            Reserve(ctx.tenant_id, key, self._lines(ctx, micros, tokens), ctx.now_s())
        )
        guard = self.spend_guard
        if not isinstance(result, Refusal) and guard is not None and not guard.reserve(micros):
            await ctx.release_holds(key)
            raise BudgetExceededError(
                f"the platform's money cap cannot cover this call: needs {micros} micros",
                scope="platform",
                unit="micros",
                needed=micros,
                available=0,
            )
        if isinstance(result, Refusal):
            raise BudgetExceededError(
                f"the {result.scope} budget cannot cover this call: needs {result.needed}"
                f" {result.unit}, {result.available} left",
                scope=result.scope,
                unit=result.unit,
                needed=result.needed,
                available=result.available,
            )

    def _settle_guard(self, reserved: int, actual: int) -> None:
        """Tell the spend guard what a call it let through cost (a model call that failed
        after its reservation stays counted at its worst case: never under)."""
        if self.spend_guard is not None and reserved:
            self.spend_guard.settle(reserved, actual)

    async def _rate(self, ctx: CallScope, resource: str) -> RateLimit | None:
        """Take a cell of the tenant's bucket, then of the platform's, or raise RateLimitedError.

        Returns the tenant's limit applied (None: none), which a provider's 429 then lowers.

        The tenant's own limit comes first, so one tenant exhausting its quota never touches
        the shared bucket another tenant needs. When the platform's bucket refuses after the
        tenant's granted, the tenant's cell is spent without a call: conservative, never over.
        """
        limit = ctx.policy.rate_limit_for(resource) if self.tenant_limits else None
        if limit is not None:
            await self._acquire(ctx, ctx.tenant_id, resource, limit, f"tenant {ctx.tenant_id!r}")
        shared = self.platform_limits.get(resource)
        if shared is not None:
            await self._acquire(ctx, PLATFORM, resource, shared, "the platform")
        return limit

    async def _throttle(
        self, ctx: CallScope, resource: str, limit: RateLimit, retry_after_s: float
    ) -> None:
        """A provider answered 429: lower the tenant's bucket for ``resource`` and pause it
        until ``retry_after_s`` has passed."""
        now = ctx.now_s()
        op = ThrottleRate(
            ctx.tenant_id, resource, now, retry_after_s, limit.rate_per_s, limit.burst
        )
        await ctx.write(op)

    async def _acquire(
        self, ctx: CallScope, bucket: str, resource: str, limit: RateLimit, whose: str
    ) -> None:
        decision = await ctx.write(
            AcquireRate(bucket, resource, ctx.now_s(), limit.rate_per_s, limit.burst)
        )
        if not decision.allowed:
            raise RateLimitedError(
                f"{whose} is over its rate limit for {resource!r}",
                resource=resource,
                retry_after_s=decision.retry_after_s,
            )

    async def _degrade(
        self,
        ctx: CallScope,
        exc: BudgetExceededError,
        remaining: int | None,
        index: int,
        messages: list[dict[str, Any]],
        *,
        tool: bool = False,
    ) -> None:
        policy = ctx.policy
        available = exc.fields.get("available")
        left = int(available) if available is not None else (remaining or 0)
        ladder = policy.degradation
        if tool:  # no cheaper tool to switch to, and a reviewer's answer is not a tool's result
            ladder = tuple(r for r in ladder if r not in ("cheaper_model", "escalate_to_human"))
        decision = budget_math.decide_degradation(
            remaining_micros=left,
            estimate_micros=max(left + 1, int(exc.fields.get("needed") or 1)),
            optional=ctx.optional,
            cheaper_estimate_micros=None,
            ladder=ladder,
        )
        action = decision.action
        await ctx.note_decision(
            "budget.degraded",
            {"action": action, "reason": decision.reason},
            audit=AuditEntry(
                f"run:{ctx.run_id}",
                "budget.degraded",
                f"step:{ctx.step}",
                {"action": action, "reason": decision.reason},
            ),
            usage=[UsageDelta("degradations", 1, action)],
        )
        self._degraded(ctx, action)
        if action == "skip_optional":
            raise SkipStep(f"budget: {decision.reason}")
        if action == "escalate_to_human":
            prompt = "\n".join(str(m.get("content") or "") for m in messages)
            raise Escalate(f"budget: {decision.reason}", index, prompt)
        raise Pause(f"budget: {decision.reason}")

    # -- observers (tenantflow.observability.events) ------------------------------------------

    async def _run_tool(self, ctx: CallScope, tool: Tool, args: dict[str, Any]) -> Any:
        observers = ctx.observers
        if not observers:
            return await tool.fn(**args)
        started_s = ctx.now_s()
        error: BaseException | None = None
        try:
            return await tool.fn(**args)
        except BaseException as exc:
            error = exc
            raise
        finally:
            observers.emit(
                ToolCallFinished(
                    tenant_id=ctx.tenant_id,
                    run_id=ctx.run_id,
                    at_s=ctx.now_s(),
                    step=ctx.step,
                    attempt=ctx.attempt,
                    tool=tool.name,
                    started_at_s=started_s,
                    cost_micros=tool.cost_micros if error is None else 0,
                    error_type=None if error is None else type(error).__name__,
                )
            )

    async def _complete(
        self, ctx: CallScope, endpoint: Endpoint, provider: ModelProvider, request: ModelRequest
    ) -> ModelResponse:
        observers = ctx.observers
        if not observers:
            return await provider.complete(request)
        started_s = ctx.now_s()
        response: ModelResponse | None = None
        error: BaseException | None = None
        try:
            response = await provider.complete(request)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            if response is not None:
                tokens_in, tokens_out = response.tokens_in, response.tokens_out
            elif isinstance(error, ProviderError) and not isinstance(error, ProviderThrottledError):
                # An interrupted call is priced for what it produced (see call_model).
                tokens_in = int(error.fields.get("tokens_in") or 0)
                tokens_out = int(error.fields.get("tokens_out") or 0)
            else:
                tokens_in = tokens_out = 0
            observers.emit(
                ModelCallFinished(
                    tenant_id=ctx.tenant_id,
                    run_id=ctx.run_id,
                    at_s=ctx.now_s(),
                    step=ctx.step,
                    attempt=ctx.attempt,
                    endpoint=endpoint.name,
                    provider=endpoint.provider,
                    model=endpoint.model,
                    region=endpoint.region,
                    started_at_s=started_s,
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    cost_micros=endpoint.cost_micros(tokens_in, tokens_out),
                    response_model=None if response is None else response.model,
                    finish_reason=None if response is None else response.finish_reason,
                    error_type=None if error is None else type(error).__name__,
                )
            )

    def _degraded(self, ctx: CallScope, action: str) -> None:
        observers = ctx.observers
        if observers:
            observers.emit(
                Degraded(
                    tenant_id=ctx.tenant_id,
                    run_id=ctx.run_id,
                    at_s=ctx.now_s(),
                    step=ctx.step,
                    attempt=ctx.attempt,
                    action=action,
                )
            )
