"""One iteration of an agent loop, executed as a step attempt (see :mod:`tenantflow.domain.agent`).

An iteration sends the transcript rebuilt from the recorded turns to the model (through the
gateway: allow list, residency, rate limit, budget, breaker, durable call record), then makes the
tool calls the model asked for, each through the gateway too. A tool the agent was not offered,
or one the tenant's policy denies, is refused: the refusal is audited and goes back to the model
as the tool's result, so the loop can recover without the call ever being made. A subagent call
starts a child run and the iteration waits for it (holding no slot). The returned :class:`Turn`
is committed as the element's output before the next iteration exists.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tenantflow.domain.agent import (
    Agent,
    ToolResult,
    Turn,
    limit_reached,
    subagent_schema,
    transcript,
)
from tenantflow.domain.models import ModelResponse
from tenantflow.domain.tenancy import AuditEntry
from tenantflow.engine.gateway import response_from_json
from tenantflow.engine.signals import Escalate, SkipStep
from tenantflow.errors import ContractError, NotAllowedError, NotFoundError

if TYPE_CHECKING:
    from tenantflow.engine.context import StepContext
    from tenantflow.ports import CallScope

__all__ = ["run_iteration"]


async def run_iteration(
    ctx: StepContext, scope: CallScope, agent: Agent, turns: list[Turn], index: int, task: Any
) -> Turn:
    """Run iteration ``index`` given the turns recorded before it (``task``: the first
    iteration's task, from the step function; ignored afterwards). ``ctx`` makes the calls a
    step makes; ``scope`` is the attempt's engine-side record (call indexes, decisions)."""
    now = scope.now_s()
    if index == 0:
        first = Turn(iteration=0, task=str(task), started_at_s=now)
        history = [first]
    else:
        first = Turn(iteration=index)
        history = turns
    if index > 0 and limit_reached(agent, turns, now) is not None:
        return await _ask_human(scope, agent, turns, first)
    messages = transcript(agent, history)
    try:
        response = await ctx.model(
            messages=messages,
            max_tokens=agent.max_tokens,
            tools=agent.tools,
            extra_tools=[subagent_schema(n, wf) for n, wf in agent.subagents.items()],
            tier=agent.tier,
        )
    except SkipStep:  # the budget ladder skips an optional agent: the loop ends here
        first.stop = "budget"
        return first
    first.text = response.text
    first.tokens_in, first.tokens_out = response.tokens_in, response.tokens_out
    for call in response.tool_calls:
        first.tool_results.append(
            await _call(ctx, scope, agent, call.id, call.name, call.arguments)
        )
    if not first.tool_results:
        first.stop = "answered"
    if response.model == "human":
        first.stop = "escalated"
    return first


async def _ask_human(ctx: CallScope, agent: Agent, turns: list[Turn], turn: Turn) -> Turn:
    """The loop reached a bound with ``on_limit="escalate"``: a reviewer answers instead of the
    model. The review is opened by the runtime; once decided, the answer is replayed here."""
    index = ctx.next_call_index()
    recorded = await ctx.recorded_call(index)
    if recorded is None:
        bound = limit_reached(agent, turns, ctx.now_s())
        prompt = "\n".join(
            f"{m['role']}: {m.get('content') or ''}" for m in transcript(agent, turns)
        )
        raise Escalate(f"agent loop reached {bound}", index, prompt)
    response: ModelResponse = response_from_json(recorded)
    turn.text = response.text
    turn.stop = "escalated"
    return turn


async def _call(
    ctx: StepContext,
    scope: CallScope,
    agent: Agent,
    call_id: str,
    name: str,
    arguments: dict[str, Any],
) -> ToolResult:
    if not agent.offers(name):
        await scope.note_decision(
            "tool.denied",
            {"tool": name, "reason": "not offered to this agent"},
            audit=AuditEntry(
                f"run:{ctx.run_id}",
                "tool.denied",
                f"tool:{name}",
                {"step": ctx.step, "reason": "not offered to this agent"},
            ),
        )
        return _refused(call_id, name, arguments, f"tool {name!r} is not available to this agent")
    workflow = agent.subagent_for(name)
    if workflow is not None:
        task = arguments.get("task")
        if not isinstance(task, str) or not task:
            return _refused(call_id, name, arguments, "a subagent needs a non-empty 'task'")
        child, answer = await ctx.delegate(workflow, task)
        return ToolResult(
            id=call_id, name=name, arguments=arguments, content=answer, child_run=child
        )
    try:
        value = await ctx.tool(name, **arguments)
    except NotAllowedError as exc:  # denied by the tenant's policy: audited by the gateway
        return _refused(call_id, name, arguments, exc.message)
    except (ContractError, NotFoundError) as exc:  # bad arguments from the model
        return _refused(call_id, name, arguments, exc.message)
    content = value.model_dump_json() if hasattr(value, "model_dump_json") else _dumps(value)
    return ToolResult(id=call_id, name=name, arguments=arguments, content=content)


def _refused(call_id: str, name: str, arguments: dict[str, Any], why: str) -> ToolResult:
    return ToolResult(id=call_id, name=name, arguments=arguments, content=f"error: {why}", ok=False)


def _dumps(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)
