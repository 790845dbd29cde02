"""A PydanticAI agent as a durable, tenant-governed step (``tenantflow[pydantic-ai]``).

Build the agent once, with tenantflow's model and durability capability::

    agent = Agent(TenantflowModel(), name="support", capabilities=[TenantflowDurability()])

and run it inside a step with ``await run_agent(ctx, agent, prompt)``:

- :class:`TenantflowModel` sends every model request through the tenant's gateway
  (``ctx.model``: endpoint by tier, allowed models and residency; rate limits; budget reserved
  and settled), recorded under a hash of the request's content, so a re-executed attempt
  replays it instead of paying again. ``TenantflowModel("small")`` prefers that tier.
- :class:`TenantflowDurability` is PydanticAI's public durability extension point
  (``BaseDurabilityCapability`` with a ``CallableOperationBackend``, as the Temporal, DBOS,
  Prefect and Hatchet integrations use). Each tool call unit runs through the gateway's tool
  path: the tenant's allow and deny lists (a refused call is audited, and the model is told),
  rate limit ``tool:<name>``, price, circuit breaker; it is recorded under its tool-call id, so
  parallel calls replay correctly in any order. A tool is registered as a gateway tool of its
  name the first time it runs (price 0); :func:`register_tools` registers it beforehand with a
  price. Other units (tool listing, instructions, event handlers) are not paid calls and run
  again on re-execution.

Approvals and deferred tools (``requires_approval=True``, ``ApprovalRequired``,
``CallDeferred``, ``ApprovalRequiredToolset``) become review tasks in the tenant's reviewer
pool; the agent resumes from its recorded messages once they are decided (see
:func:`run_agent`).

Streaming: ``run_agent(ctx, agent, prompt, event_stream_handler=...)`` streams every model
request through the gateway (``TenantflowModel.request_stream``): the handler gets the text
deltas as the provider receives them; a recorded request is replayed as one delta.
``Agent.run_stream`` (which ends at the first output) is not supported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tenantflow.domain.models import ModelResponse as GatewayResponse
from tenantflow.engine.context import attempt_scope
from tenantflow.engine.gateway import Tools
from tenantflow.errors import ConfigurationError, ContractError, NotAllowedError, NotFoundError
from tenantflow.integrations._carry import Carried, carry, unwrap
from tenantflow.integrations._gateway import (
    missing_extra,
    record_state,
    register_tool,
    streamed_call,
)
from tenantflow.integrations._observe import agent_run
from tenantflow.integrations._reviews import answered, approved

try:
    from pydantic import TypeAdapter
    from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, ModelRetry
    from pydantic_ai.durable_exec import (
        JSON_CODEC,
        BaseDurabilityCapability,
        DurabilityEngineSpec,
        DurableOperationBackend,
        DurableOperationId,
        JournalCallableOperationBackend,
        RoleBasedOperationConfig,
        ToolsetCallToolId,
    )
    from pydantic_ai.messages import (
        InstructionPart,
        ModelMessage,
        ModelMessagesTypeAdapter,
        ModelRequest,
        ModelResponse,
        ModelResponseStreamEvent,
        RetryPromptPart,
        SystemPromptPart,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
    from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.tools import RunContext
    from pydantic_ai.usage import RequestUsage
except ImportError as exc:  # pragma: no cover - the extra is part of dev
    raise missing_extra("pydantic_ai", "pydantic-ai", exc) from exc

if TYPE_CHECKING:
    from tenantflow.engine.context import StepContext

__all__ = ["TenantflowDurability", "TenantflowModel", "register_tools", "run_agent"]

DEFAULT_MAX_TOKENS = 1024

_STEP: ContextVar[StepContext | None] = ContextVar("tenantflow_pydantic_ai_step", default=None)
_HANDLER: ContextVar[Any] = ContextVar("tenantflow_pydantic_ai_handler", default=None)
_BODY: ContextVar[Callable[[], Awaitable[object]] | None] = ContextVar(
    "tenantflow_pydantic_ai_body", default=None
)


def _current() -> StepContext:
    ctx = _STEP.get()
    if ctx is None:
        raise ConfigurationError(
            "a tenantflow PydanticAI agent runs inside a step: await run_agent(ctx, agent, prompt)"
        )
    return ctx


@contextmanager
def _in_step(ctx: StepContext) -> Iterator[None]:
    token = _STEP.set(ctx)
    try:
        yield
    finally:
        _STEP.reset(token)


class TenantflowModel(Model):
    """A PydanticAI model that answers through the running step's tenant gateway.

    Args:
        tier: ``"small"`` or ``"large"`` to prefer that tier; None: the tenant's policy decides.
    """

    def __init__(self, tier: str | None = None) -> None:
        super().__init__()
        self._tier = tier

    @property
    def model_name(self) -> str:
        """The tier asked for, or ``policy`` (the tenant's policy picks the endpoint)."""
        return self._tier or "policy"

    @property
    def system(self) -> str:
        """The provider name PydanticAI reports: the tenant's gateway."""
        return "tenantflow"

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Send the request through the gateway, recorded under a hash of its content."""
        ctx = _current()
        call = self._prepare(messages, model_settings, model_request_parameters)
        response = await call.send(ctx, stream=False)
        out: list[Any] = [TextPart(response.text)] if response.text else []
        out += [
            ToolCallPart(c.name, dict(c.arguments), tool_call_id=call.call_id(c.id))
            for c in response.tool_calls
        ]
        return ModelResponse(
            parts=out,
            usage=RequestUsage(input_tokens=response.tokens_in, output_tokens=response.tokens_out),
            model_name=response.model,
            provider_name="tenantflow",
        )

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        """Stream the request through the gateway (``ctx.model(stream=True)``: the same routing,
        rate limit and budget as any call): text deltas come as the provider receives them, the
        call is recorded when it completes, under the same key as :meth:`request`; a recorded
        call is replayed as one delta."""
        ctx = _current()
        call = self._prepare(messages, model_settings, model_request_parameters)
        yield _GatewayStream(model_request_parameters=call.params, _ctx=ctx, _call=call)

    def _prepare(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> _Call:
        model_settings, params = self.prepare_request(model_settings, model_request_parameters)
        chat: list[dict[str, Any]] = []
        parts = params.instruction_parts or []
        if parts:
            chat.append({"role": "system", "content": InstructionPart.join(parts)})
        chat.extend(_to_chat(messages))
        tools = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description or "",
                    "parameters": t.parameters_json_schema,
                },
            }
            for t in (*params.function_tools, *params.output_tools)
        ]
        settings: Mapping[str, Any] = model_settings or {}
        max_tokens = int(settings.get("max_tokens") or DEFAULT_MAX_TOKENS)
        request = json.dumps(
            {"messages": chat, "tools": tools, "max_tokens": max_tokens, "tier": self._tier},
            sort_keys=True,
            default=str,
        )
        return _Call(
            chat=chat,
            tools=tools,
            max_tokens=max_tokens,
            temperature=float(settings.get("temperature") or 0.0),
            tier=self._tier,
            digest=hashlib.sha256(request.encode()).hexdigest(),
            params=params,
        )


@dataclass(frozen=True, slots=True)
class _Call:
    """One model request of the agent, as the gateway gets it."""

    chat: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    tier: str | None
    digest: str
    """A hash of the request's content: its record's key (the same on every re-execution)."""
    params: ModelRequestParameters

    def call_id(self, provider_id: str) -> str:
        """A tool call's id: unique in the run (providers reuse ``call_0``), stable on replay."""
        return f"{provider_id}-{self.digest[:12]}"

    async def send(self, ctx: StepContext, *, stream: bool) -> GatewayResponse:
        with carry():
            async with ctx.call_identity(f"pai-model:{self.digest}"):
                return await ctx.model(
                    messages=self.chat,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                    extra_tools=self.tools,
                    tier=self.tier,
                    stream=stream,
                )


@dataclass
class _GatewayStream(StreamedResponse):
    """A model response streamed through the gateway (see ``TenantflowModel.request_stream``)."""

    _ctx: StepContext = field(kw_only=True)
    _call: _Call = field(kw_only=True)
    _model: str = field(default="policy", init=False)
    _at: datetime = field(default_factory=lambda: datetime.now(UTC), init=False)

    async def _get_event_iterator(self) -> AsyncIterator[ModelResponseStreamEvent]:
        streamed = False
        async with streamed_call(lambda: self._call.send(self._ctx, stream=True)) as (deltas, task):
            while (delta := await deltas.get()) is not None:
                streamed = True
                for event in self._parts_manager.handle_text_delta(
                    vendor_part_id="text", content=delta
                ):
                    yield event
            response = task.result()
        self._model = response.model
        if response.text and not streamed:  # replayed, or a provider that does not stream
            for event in self._parts_manager.handle_text_delta(
                vendor_part_id="text", content=response.text
            ):
                yield event
        for i, c in enumerate(response.tool_calls):
            yield self._parts_manager.handle_tool_call_part(
                vendor_part_id=f"call-{i}",
                tool_name=c.name,
                args=dict(c.arguments),
                tool_call_id=self._call.call_id(c.id),
            )
        self._usage = RequestUsage(
            input_tokens=response.tokens_in, output_tokens=response.tokens_out
        )

    @property
    def model_name(self) -> str:
        """The model the gateway chose (known once the call completed)."""
        return self._model

    @property
    def provider_name(self) -> str:
        """The tenant's gateway."""
        return "tenantflow"

    @property
    def provider_url(self) -> None:
        """None: the endpoint is the gateway's choice."""
        return None

    @property
    def timestamp(self) -> datetime:
        """When the stream started."""
        return self._at


def _to_chat(messages: Sequence[ModelMessage]) -> list[dict[str, Any]]:
    """PydanticAI's message history as OpenAI chat messages (content only: no timestamps or
    run ids, so a re-executed attempt sends, and hashes, the same request)."""
    chat: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, ModelResponse):
            text = "".join(p.content for p in message.parts if isinstance(p, TextPart))
            calls = [
                {
                    "id": p.tool_call_id,
                    "type": "function",
                    "function": {"name": p.tool_name, "arguments": p.args_as_json_str()},
                }
                for p in message.parts
                if isinstance(p, ToolCallPart)
            ]
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            chat.append(entry)
            continue
        if not isinstance(message, ModelRequest):
            continue
        for part in message.parts:
            if isinstance(part, SystemPromptPart):
                chat.append({"role": "system", "content": part.content})
            elif isinstance(part, UserPromptPart):
                content = part.content
                text = content if isinstance(content, str) else " ".join(map(str, content))
                chat.append({"role": "user", "content": text})
            elif isinstance(part, ToolReturnPart):
                chat.append(
                    {
                        "role": "tool",
                        "tool_call_id": part.tool_call_id,
                        "content": part.model_response_str(),
                    }
                )
            elif isinstance(part, RetryPromptPart):
                if part.tool_name is not None:
                    chat.append(
                        {
                            "role": "tool",
                            "tool_call_id": part.tool_call_id,
                            "content": part.model_response(),
                        }
                    )
                else:
                    chat.append({"role": "user", "content": part.model_response()})
    return chat


class _Backend(JournalCallableOperationBackend[None]):
    """Runs PydanticAI's durable units inside the step: tool calls through the gateway."""

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: None,
    ) -> object:
        ctx = _STEP.get()
        if ctx is None or not isinstance(operation_id, ToolsetCallToolId):
            return await body()  # model requests record themselves (TenantflowModel)
        tool_name, arguments, run_context = cache_key[0], cache_key[1], cache_key[2]
        assert isinstance(tool_name, str) and isinstance(arguments, dict)
        call_id = getattr(run_context, "tool_call_id", None) or ""
        registry = attempt_scope(ctx).services.gateway.tools
        _register(registry, tool_name, "", None, 0.0)
        identity = f"pai-tool:{call_id}:{tool_name}:{json.dumps(arguments, sort_keys=True)}"
        token = _BODY.set(body)
        try:
            with carry():
                async with ctx.call_identity(identity):
                    return await ctx.tool(tool_name, **arguments)
        except _AskApproval as asked:
            return asked.value
        except Carried as carried:
            refused = carried.error
            # Refused by the tenant's policy (audited by the gateway) or bad arguments from the
            # model: the model is told, as in tenantflow's own agent loop.
            if isinstance(refused, NotAllowedError | ContractError | NotFoundError):
                raise ModelRetry(refused.message) from None
            raise
        finally:
            _BODY.reset(token)


class TenantflowDurability(BaseDurabilityCapability[Any]):
    """PydanticAI's durability capability for tenantflow steps (see the module documentation).

    Args:
        name: the agent's name in recorded unit names (default: the agent's ``name``).
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="tenantflow",
        durable_unit_noun="recorded call",
        durable_unit_plural="recorded calls",
        durable_container_noun="step",
        codec=JSON_CODEC,  # tool results are recorded as JSON in the tenant's store
        sequential_tools_in_durable_context=False,  # calls are recorded by tool-call id
        tool_config_key="tenantflow",
    )

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)

    @property
    def in_durable_context(self) -> bool:
        """Inside a tenantflow step (``run_agent``)."""
        return _STEP.get() is not None

    def _effective_event_stream_handler(self) -> Any:
        """The run's ``event_stream_handler`` (given to :func:`run_agent`), else the
        capability's: PydanticAI delivers the model's stream to it live, inside the model
        request unit, and the run's other events after."""
        return _HANDLER.get() or super()._effective_event_stream_handler()

    def get_durable_operation_backend(self) -> DurableOperationBackend[Any]:
        """The backend that records units in the running step."""
        return _Backend(
            agent_name=self.name or "agent",
            config=RoleBasedOperationConfig(model=None, event=None, capability=None, tool=None),
        )


def register_tools(
    tools: Tools,
    names: Sequence[str],
    *,
    cost_usd: float = 0.0,
    costs_usd: Mapping[str, float] | None = None,
) -> list[str]:
    """Register a PydanticAI agent's tools (by name) as gateway tools with a price, so the
    agent's calls of them are governed, priced and recorded.

    Raises:
        ConfigurationError: a name is taken by a tool that is not an agent's tool.
    """
    for name in names:
        _register(tools, name, "", None, (costs_usd or {}).get(name, cost_usd))
    return list(names)


def _register(
    tools: Tools, name: str, description: str, schema: dict[str, Any] | None, cost_usd: float
) -> None:
    register_tool(
        tools,
        name,
        make_fn=_unit_runner,
        marker="_tenantflow_pydantic_ai_tool",
        clash=f"the agent's tool {name!r} has the name of a registered tool: rename one",
        description=description,
        parameters=schema,
        cost_usd=cost_usd,
    )


class _AskApproval(BaseException):
    """A tool that raised ``ApprovalRequired``: its (encoded) answer is carried through the
    gateway's tool path as a non-result — not recorded, not charged (the hold is released), not a
    breaker failure — because the same call runs again, approved, under the same tool-call id.
    :class:`_Backend` returns it to PydanticAI, which makes the call a review."""

    def __init__(self, value: object) -> None:
        super().__init__("the tool asks for approval")
        self.value = value


def _unit_runner() -> Any:
    async def run_unit(**_arguments: Any) -> Any:
        body = _BODY.get()
        if body is None:
            raise ConfigurationError("a PydanticAI agent's tool can only be called by its agent")
        value = await body()
        if isinstance(value, dict) and value.get("kind") == "approval_required":
            raise _AskApproval(value)
        return value

    run_unit._tenantflow_pydantic_ai_tool = True  # type: ignore[attr-defined]
    return run_unit


async def run_agent(ctx: StepContext, agent: Agent[Any, Any], prompt: str, **options: Any) -> Any:
    """Run ``agent`` on ``prompt`` in this step, durably and under the tenant's policy; returns
    the run's output. ``options`` go to ``Agent.run``.

    A tool that needs approval (``requires_approval=True``, or ``ApprovalRequired`` raised) or
    defers its call (``CallDeferred``) pauses the agent: its messages so far and the pending
    calls are recorded, and each call becomes a review task in the tenant's reviewer pool (the
    step waits holding no slot). Once every call is decided, the agent goes on from the recorded
    messages with the reviewers' results (``DeferredToolResults``): an approved call runs, a
    deferred call's result is the reviewer's comment. A rejection fails the step. No model call
    made before the pause is made again.

    Raises:
        ConfigurationError: the agent has no :class:`TenantflowDurability` capability.
    """
    if TenantflowDurability.from_agent(agent) is None:
        raise ConfigurationError(
            "give the agent capabilities=[TenantflowDurability()] and a TenantflowModel()"
        )
    handler = options.pop("event_stream_handler", None)
    async with agent_run(ctx, agent.name or "agent", "pydantic-ai"):
        token = _HANDLER.set(handler)
        try:
            with _in_step(ctx), unwrap():
                return await _run(ctx, agent, prompt, options)
        finally:
            _HANDLER.reset(token)


_PAUSE = TypeAdapter(DeferredToolRequests)


async def _run(
    ctx: StepContext, agent: Agent[Any, Any], prompt: str, options: dict[str, Any]
) -> Any:
    output_type = options.pop("output_type", None) or agent.output_type
    wanted = list(output_type) if isinstance(output_type, list | tuple) else [output_type]
    pauses = DeferredToolRequests in wanted  # the caller handles the pending calls itself
    if not pauses:
        wanted.append(DeferredToolRequests)
    history = options.pop("message_history", None)
    results: DeferredToolResults | None = options.pop("deferred_tool_results", None)
    scope = attempt_scope(ctx)
    round_ = 0
    while True:
        round_ += 1
        async with ctx.call_identity(f"pai-state:{round_}") as index:
            saved = await scope.recorded_call(index)
        if saved is None:
            result: Any = await agent.run(
                prompt if round_ == 1 else None,
                message_history=history,
                deferred_tool_results=results,
                output_type=wanted,
                **options,
            )
            if pauses or not isinstance(result.output, DeferredToolRequests):
                return result.output
            saved = json.dumps(
                {
                    "messages": json.loads(
                        ModelMessagesTypeAdapter.dump_json(result.all_messages())
                    ),
                    "pending": json.loads(_PAUSE.dump_json(result.output)),
                }
            )
            await record_state(ctx, index, saved)
        state = json.loads(saved)
        history = ModelMessagesTypeAdapter.validate_python(state["messages"])
        pending = _PAUSE.validate_python(state["pending"])
        approvals: dict[str, Any] = {}
        for call in pending.approvals:
            await approved(ctx, "pai", call.tool_call_id, call.tool_name, call.args_as_json_str())
            approvals[call.tool_call_id] = True
        answers: dict[str, Any] = {}
        for call in pending.calls:
            answers[call.tool_call_id] = await answered(
                ctx, "pai", call.tool_call_id, call.tool_name, call.args_as_json_str()
            )
        results = DeferredToolResults(approvals=approvals, calls=answers)
