"""An OpenAI Agents SDK agent as a durable, tenant-governed step (``tenantflow[openai-agents]``).

Inside a step, ``await run_agent(ctx, agent, task)`` runs the SDK's own loop (``Runner.run``)
with two seams replaced:

- **Model calls** go to :class:`TenantflowModel`, which sends the SDK's request through the
  tenant's gateway (``ctx.model``): endpoint chosen by the tenant's tier, allowed models and
  residency region; rate limits; the budget reserved before and settled after. Each call is
  recorded under a hash of its request, so a re-executed attempt replays the response instead
  of paying again, whatever order the calls come in. The agent's ``model`` may name a tier
  (``"small"``, ``"large"``); any other name leaves the choice to the tenant's policy.
- **Function tools** go through the gateway's tool path (``ctx.tool``): the tenant's allow and
  deny lists (a refusal is audited and returned to the model as the tool's answer), rate limit
  ``tool:<name>``, price, circuit breaker. Each call is recorded under its tool-call id, so
  tools the model calls in parallel replay correctly in any order. An agent's function tool
  is registered as a gateway tool of its name the first time it runs (price 0); register it
  beforehand with :func:`register_function_tools` to give it a price.
- **Approvals**: a tool with ``needs_approval`` pauses the SDK run; its saved state
  (``RunState``) is recorded and the call becomes a review task in the tenant's reviewer pool
  (the step waits holding no slot). Once a reviewer approves, the step resumes from the saved
  state. A rejection fails the step, like any rejected escalation.

Gateway tools (registered Python tools, MCP tools) are offered to an SDK agent with
:func:`gateway_tools`, which lists only those the tenant's policy lets it call; the tools of
MCP servers registered for the tenant alone with :func:`tenant_tools`.

Streaming: ``run_agent(..., on_event=handler)`` runs ``Runner.run_streamed``; model calls
stream through the gateway (:meth:`TenantflowModel.stream_response`), text deltas reaching
``handler`` as the provider receives them; a recorded call is replayed as one delta.

Not supported: server-side conversation state
(``previous_response_id``, ``conversation_id``), hosted tools, and ``response_format``: an
agent's ``output_type`` is validated by the SDK from the model's text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from tenantflow.domain.models import ModelResponse as TenantflowResponse
from tenantflow.engine.context import attempt_scope
from tenantflow.engine.gateway import Tool, Tools
from tenantflow.errors import ConfigurationError, ContractError, NotAllowedError, NotFoundError
from tenantflow.integrations._carry import Carried, carry, unwrap
from tenantflow.integrations._gateway import (
    missing_extra,
    record_state,
    register_tool,
    streamed_call,
)
from tenantflow.integrations._observe import agent_run
from tenantflow.integrations._reviews import approved

try:
    from agents import (
        Agent,
        FunctionTool,
        Model,
        ModelProvider,
        ModelResponse,
        ModelSettings,
        ModelTracing,
        RunConfig,
        Runner,
        RunState,
        Usage,
    )
    from agents.models.chatcmpl_converter import Converter
    from agents.stream_events import StreamEvent
    from agents.tool_context import ToolContext
    from openai.types.chat import ChatCompletionMessage
    from openai.types.responses import (
        Response,
        ResponseCompletedEvent,
        ResponseTextDeltaEvent,
        ResponseUsage,
    )
    from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
except ImportError as exc:  # pragma: no cover - the extra is part of dev
    raise missing_extra("openai_agents", "openai-agents", exc) from exc

if TYPE_CHECKING:
    from agents.agent_output import AgentOutputSchemaBase
    from agents.handoffs import Handoff
    from agents.items import TResponseInputItem, TResponseStreamEvent
    from agents.tool import Tool as SDKTool

    from tenantflow.engine.context import StepContext

__all__ = [
    "TenantflowModel",
    "TenantflowModelProvider",
    "gateway_tools",
    "register_function_tools",
    "run_agent",
    "tenant_tools",
]

TIERS = ("small", "large")
DEFAULT_MAX_TOKENS = 1024

_INVOCATION: ContextVar[tuple[ToolContext[Any], str, Any] | None] = ContextVar(
    "tenantflow_sdk_tool_invocation", default=None
)
"""The SDK tool call the gateway is running: (its ToolContext, raw arguments, the original
``on_invoke_tool``), read by the gateway tool that stands for an SDK function tool."""


class TenantflowModel(Model):
    """An Agents SDK model that answers through the step's tenant gateway (``ctx.model``).

    Args:
        ctx: the step's context.
        tier: ``"small"`` or ``"large"`` to prefer that tier; None: the tenant's policy decides.
    """

    def __init__(self, ctx: StepContext, tier: str | None = None) -> None:
        self._ctx = ctx
        self._tier = tier

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[SDKTool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: Any = None,
    ) -> ModelResponse:
        """Send the SDK's request through the gateway, recorded under a hash of the request."""
        call = self._prepare(
            system_instructions, input, model_settings, tools, handoffs,
            previous_response_id or conversation_id or prompt,
        )  # fmt: skip
        return call.model_response(await call.send(self._ctx, stream=False))

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[SDKTool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: Any = None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        """Stream the model's answer through the gateway (``ctx.model(stream=True)``: the same
        routing, rate limit and budget as any call, priced for what it produced if it breaks).

        Text deltas are yielded as the provider receives them; the call is recorded when it
        completes, under the same key as :meth:`get_response`. A call already recorded (a
        re-executed attempt) is replayed: its text comes as one delta, nothing is paid again.
        """
        call = self._prepare(
            system_instructions, input, model_settings, tools, handoffs,
            previous_response_id or conversation_id or prompt,
        )  # fmt: skip
        sequence = 0
        streamed = False
        async with streamed_call(lambda: call.send(self._ctx, stream=True)) as (deltas, task):
            while (delta := await deltas.get()) is not None:
                streamed = True
                yield _text_delta(delta, sequence)
                sequence += 1
            response = task.result()
        if response.text and not streamed:  # replayed, or a provider that does not stream
            yield _text_delta(response.text, sequence)
            sequence += 1
        result = call.model_response(response)
        yield ResponseCompletedEvent(
            type="response.completed",
            sequence_number=sequence,
            response=Response(
                id=f"tf-{call.digest[:24]}",
                created_at=0,
                model=response.model,
                object="response",
                output=result.output,
                tool_choice="auto",
                tools=[],
                parallel_tool_calls=True,
                usage=ResponseUsage(
                    input_tokens=response.tokens_in,
                    output_tokens=response.tokens_out,
                    total_tokens=response.tokens_in + response.tokens_out,
                    input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                    output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
                ),
            ),
        )

    def _prepare(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[SDKTool],
        handoffs: list[Handoff[Any, Any]],
        server_state: Any,
    ) -> _Call:
        if server_state:
            raise ConfigurationError(
                "server-side conversation state and prompt templates are not supported: the"
                " run's transcript lives in the step, where it is recorded and replayed"
            )
        messages: list[dict[str, Any]] = [dict(m) for m in Converter.items_to_messages(input)]
        if system_instructions:
            messages.insert(0, {"role": "system", "content": system_instructions})
        offered = [dict(Converter.tool_to_openai(t)) for t in tools]
        offered += [dict(Converter.convert_handoff_tool(h)) for h in handoffs]
        max_tokens = model_settings.max_tokens or DEFAULT_MAX_TOKENS
        request = json.dumps(
            {"messages": messages, "tools": offered, "max_tokens": max_tokens, "tier": self._tier},
            sort_keys=True,
            default=str,
        )
        return _Call(
            messages=messages,
            offered=offered,
            max_tokens=max_tokens,
            temperature=model_settings.temperature or 0.0,
            tier=self._tier,
            digest=hashlib.sha256(request.encode()).hexdigest(),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """One model request of the SDK, as the gateway gets it."""

    messages: list[dict[str, Any]]
    offered: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    tier: str | None
    digest: str
    """A hash of the request's content: its record's key (the same on every re-execution)."""

    async def send(self, ctx: StepContext, *, stream: bool) -> TenantflowResponse:
        with carry():
            async with ctx.call_identity(f"sdk-model:{self.digest}"):
                return await ctx.model(
                    messages=self.messages,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                    extra_tools=self.offered,
                    tier=self.tier,
                    stream=stream,
                )

    def model_response(self, response: TenantflowResponse) -> ModelResponse:
        message = ChatCompletionMessage.model_validate(
            {
                "role": "assistant",
                "content": response.text or None,
                "tool_calls": [
                    {
                        "id": f"{c.id}-{self.digest[:12]}",  # unique in the run, stable on replay
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in response.tool_calls
                ]
                or None,
            }
        )
        return ModelResponse(
            output=Converter.message_to_output_items(message, provider_data={"model": "tf"}),
            usage=Usage(
                requests=1,
                input_tokens=response.tokens_in,
                output_tokens=response.tokens_out,
                total_tokens=response.tokens_in + response.tokens_out,
            ),
            response_id=None,
        )


def _text_delta(delta: str, sequence: int) -> ResponseTextDeltaEvent:
    return ResponseTextDeltaEvent(
        type="response.output_text.delta",
        item_id="tf-message",
        output_index=0,
        content_index=0,
        delta=delta,
        logprobs=[],
        sequence_number=sequence,
    )


class TenantflowModelProvider(ModelProvider):
    """Resolves every model name of a run to a :class:`TenantflowModel` of the step (a tier
    name selects that tier; anything else is left to the tenant's policy)."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    def get_model(self, model_name: str | None) -> Model:
        """The gateway model for ``model_name``."""
        return TenantflowModel(self._ctx, model_name if model_name in TIERS else None)


def register_function_tools(
    tools: Tools,
    function_tools: Sequence[FunctionTool],
    *,
    cost_usd: float = 0.0,
    costs_usd: Mapping[str, float] | None = None,
) -> list[str]:
    """Register Agents SDK function tools as gateway tools (their price, their rate-limit
    resource ``tool:<name>``), so an agent's calls of them are governed and recorded.

    Returns:
        The names registered.

    Raises:
        ConfigurationError: a name is taken by a tool that is not an SDK function tool.
    """
    names = []
    for function_tool in function_tools:
        _register(tools, function_tool, (costs_usd or {}).get(function_tool.name, cost_usd))
        names.append(function_tool.name)
    return names


def _register(tools: Tools, function_tool: FunctionTool, cost_usd: float) -> None:
    register_tool(
        tools,
        function_tool.name,
        make_fn=_sdk_invoker,
        marker="_tenantflow_sdk_tool",
        clash=f"the agent's tool {function_tool.name!r} has the name of a registered tool:"
        " rename one of them",
        description=function_tool.description,
        parameters=dict(function_tool.params_json_schema),
        cost_usd=cost_usd,
    )


def _sdk_invoker() -> Any:
    async def invoke(**_arguments: Any) -> Any:
        current = _INVOCATION.get()
        if current is None:
            raise ConfigurationError("an SDK function tool can only be called by its agent")
        tool_context, raw, original = current
        return await original(tool_context, raw)

    invoke._tenantflow_sdk_tool = True  # type: ignore[attr-defined]
    return invoke


def _governed(ctx: StepContext, function_tool: FunctionTool) -> FunctionTool:
    original = function_tool.on_invoke_tool
    name = function_tool.name

    async def on_invoke_tool(tool_context: ToolContext[Any], raw: str) -> Any:
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return f"error: the arguments of {name!r} are not JSON"
        if not isinstance(arguments, dict):
            return f"error: the arguments of {name!r} must be a JSON object"
        token = _INVOCATION.set((tool_context, raw, original))
        try:
            return await _call(ctx, tool_context, name, raw, arguments)
        finally:
            _INVOCATION.reset(token)

    return dataclasses.replace(function_tool, on_invoke_tool=on_invoke_tool)


async def _call(
    ctx: StepContext,
    tool_context: ToolContext[Any],
    name: str,
    raw: str,
    arguments: dict[str, Any],
) -> Any:
    """Call tool ``name`` through the gateway, recorded under its tool-call id."""
    try:
        with carry():
            async with ctx.call_identity(f"sdk-tool:{tool_context.tool_call_id}:{name}:{raw}"):
                return await ctx.tool(name, **arguments)
    except Carried as carried:
        refused = carried.error
        # Refused by the tenant's policy (audited by the gateway) or bad arguments from the
        # model: the model reads why, as in tenantflow's own agent loop.
        if isinstance(refused, NotAllowedError | ContractError | NotFoundError):
            return f"error: {refused.message}"
        raise


def gateway_tools(ctx: StepContext, names: Sequence[str] | None = None) -> list[FunctionTool]:
    """The engine's registered tools (of ``names``, or all) that the step's tenant may call, as
    SDK function tools that call them through the gateway (recorded by tool-call id). A tool the
    tenant may not call is not listed at all."""
    registry = attempt_scope(ctx).services.gateway.tools
    policy = ctx.policy
    wanted = [t.name for t in registry] if names is None else list(names)
    found = []
    for name in wanted:
        tool = registry.get(name)
        if getattr(tool.fn, "_tenantflow_sdk_tool", False) or not tool.allowed_for(policy):
            continue
        found.append(_gateway_tool(ctx, tool))
    return found


async def tenant_tools(ctx: StepContext) -> list[FunctionTool]:
    """The tools of the MCP servers registered for the step's tenant alone
    (:class:`~tenantflow.integrations.mcp_tenants.TenantMCPServers`) that its policy lets it
    call, as SDK function tools through the gateway (none if no such server is registered)."""
    tools = attempt_scope(ctx).services.gateway.tools
    if tools.tenant_resolver is None:
        return []
    from tenantflow.integrations.mcp_tenants import TenantMCPServers

    registry = TenantMCPServers.for_tools(tools)
    if registry is None:
        return []
    own = await registry.tools(ctx.tenant_id)
    return [_gateway_tool(ctx, t) for t in own if t.allowed_for(ctx.policy)]


def _gateway_tool(ctx: StepContext, tool: Tool) -> FunctionTool:
    async def on_invoke_tool(tool_context: ToolContext[Any], raw: str) -> Any:
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return f"error: the arguments of {tool.name!r} are not JSON"
        if not isinstance(arguments, dict):
            return f"error: the arguments of {tool.name!r} must be a JSON object"
        value = await _call(ctx, tool_context, tool.name, raw, arguments)
        return value if isinstance(value, str) else json.dumps(value, default=str)

    schema = tool.schema()["function"]
    function_tool = FunctionTool(
        name=tool.name,
        description=tool.description,
        params_json_schema=dict(schema["parameters"]),
        on_invoke_tool=on_invoke_tool,
        strict_json_schema=False,
    )
    function_tool._tenantflow_gateway = True  # type: ignore[attr-defined]
    return function_tool


def _governed_agent(ctx: StepContext, agent: Agent[Any], seen: dict[int, Agent[Any]]) -> Agent[Any]:
    if id(agent) in seen:
        return seen[id(agent)]
    if isinstance(agent.model, Model) and not isinstance(agent.model, TenantflowModel):
        raise ConfigurationError(
            f"agent {agent.name!r} has a model object: give it a model name or a tier"
            " ('small', 'large'); the tenant's gateway picks the endpoint",
            agent=agent.name,
        )
    registry = attempt_scope(ctx).services.gateway.tools
    tools: list[Any] = []
    for tool in agent.tools:
        if isinstance(tool, FunctionTool):
            if getattr(tool, "_tenantflow_gateway", False):
                tools.append(tool)  # already a gateway tool
                continue
            _register(registry, tool, 0.0)
            tools.append(_governed(ctx, tool))
        else:
            raise ConfigurationError(
                f"agent {agent.name!r}: tool {getattr(tool, 'name', tool)!r} is not a function"
                " tool; hosted tools cannot be governed by the gateway",
                agent=agent.name,
            )
    clone = agent.clone(tools=tools)
    seen[id(agent)] = clone
    clone.handoffs = [
        _governed_agent(ctx, h, seen) if isinstance(h, Agent) else h for h in agent.handoffs
    ]
    return clone


async def run_agent(
    ctx: StepContext,
    agent: Agent[Any],
    input: str | list[TResponseInputItem],
    *,
    max_turns: int = 10,
    context: Any = None,
    on_event: Callable[[StreamEvent], Awaitable[None] | None] | None = None,
) -> Any:
    """Run ``agent`` on ``input`` as (part of) this step, durably and under the tenant's policy
    (see the module's documentation). Returns the run's final output.

    Args:
        on_event: stream the run (``Runner.run_streamed``): every event of the SDK's stream
            (``RawResponsesStreamEvent`` with the model's text deltas as they arrive,
            ``RunItemStreamEvent``, ``AgentUpdatedStreamEvent``) is passed to it, in order, and
            awaited if it returns an awaitable. Model calls stream through the gateway; a call
            recorded by an earlier attempt is replayed as one delta.

    Raises:
        ConfigurationError: the agent has a model object or a hosted tool.
        Whatever the SDK raises when the run itself fails (e.g. ``MaxTurnsExceeded``).
    """
    async with agent_run(ctx, agent.name, "openai-agents"):
        with unwrap():
            return await _run(ctx, agent, input, max_turns, context, on_event)


async def _sdk_run(
    agent: Agent[Any],
    input: str | list[TResponseInputItem] | RunState[Any],
    context: Any,
    max_turns: int,
    config: RunConfig,
    on_event: Callable[[StreamEvent], Awaitable[None] | None] | None,
) -> Any:
    if on_event is None:
        return await Runner.run(
            agent, input, context=context, max_turns=max_turns, run_config=config
        )
    streamed = Runner.run_streamed(
        agent, input, context=context, max_turns=max_turns, run_config=config
    )
    async for event in streamed.stream_events():
        outcome = on_event(event)
        if inspect.isawaitable(outcome):
            await outcome
    return streamed


async def _run(
    ctx: StepContext,
    agent: Agent[Any],
    input: str | list[TResponseInputItem],
    max_turns: int,
    context: Any,
    on_event: Callable[[StreamEvent], Awaitable[None] | None] | None = None,
) -> Any:
    governed = _governed_agent(ctx, agent, {})
    config = RunConfig(model_provider=TenantflowModelProvider(ctx), tracing_disabled=True)
    state: RunState[Any] | None = None
    round_ = 0
    while True:
        round_ += 1
        async with ctx.call_identity(f"sdk-state:{round_}") as index:
            saved = await attempt_scope(ctx).recorded_call(index)
        if saved is None:
            result = await _sdk_run(
                governed,
                input if state is None else state,
                context,
                max_turns,
                config,
                on_event,
            )
            if not result.interruptions:
                return result.final_output
            saved = result.to_state().to_string()
            await record_state(ctx, index, saved)
        state = await RunState.from_string(governed, saved)
        for item in state.get_interruptions():
            await approved(ctx, "sdk", item.call_id or "", item.name or "", item.arguments or "")
            state.approve(item)
