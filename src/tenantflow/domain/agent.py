"""Agent loops as data: the :class:`Agent` settings, one recorded :class:`Turn` per iteration
and the loop's :class:`AgentResult`.

An agent step runs a loop — model call, the tool calls the model asks for, observe, repeat —
where every iteration is a durable element of the step (``name[0]``, ``name[1]``, …): it is
dispatched, leased, budget-checked and rate-limited like any step, and its :class:`Turn` is
committed as a state version before the next iteration is created. A crash re-executes only the
iteration in flight, and that one replays the model and tool calls it had already recorded.

This module is pure: the transcript an iteration sends to the model is rebuilt from the recorded
turns (:func:`transcript`), and what follows a turn is decided by :func:`next_move`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from tenantflow.domain.limits import MAX_TOKENS, check_int
from tenantflow.errors import ConfigurationError

__all__ = [
    "Agent",
    "AgentResult",
    "Move",
    "OnLimit",
    "StopReason",
    "ToolResult",
    "Turn",
    "next_move",
    "transcript",
]

StopReason = Literal["answered", "max_iterations", "max_wall", "budget", "escalated"]
OnLimit = Literal["fail", "answer", "escalate"]

_SUBAGENT_PREFIX = "delegate_"


@dataclass(frozen=True, slots=True)
class Agent:
    """How an agent step loops.

    Attributes:
        system: the system message.
        tools: names of registered tools the model may call (the tenant's allow list still
            applies; a tool outside this list is refused and audited even if registered).
        subagents: ``{name: workflow}``: the model may delegate to a child run of ``workflow``
            through a tool called ``delegate_<name>`` taking ``{"task": "..."}``; the child runs
            for the same tenant, draws on this run's budget and counts against the tenant's
            caps like any run. The iteration waits for it without holding a slot.
        max_iterations: iterations (model calls) at most.
        max_wall: wall time at most, from the loop's first iteration.
        max_tokens: completion cap of each model call (the budget reserves it).
        tier: model tier preference ("large" or "small"), overriding the policy's.
        on_limit: what a loop that hits ``max_iterations`` or ``max_wall`` does: ``"fail"``
            the step (the run compensates unless the step is optional), ``"answer"`` with its
            last text and the bound as its status, or ``"escalate"`` to a human reviewer of the
            tenant's pool, whose answer ends the loop.
    """

    system: str = "You are a helpful agent. Call tools when you need them; answer when done."
    tools: tuple[str, ...] = ()
    subagents: Mapping[str, str] = field(default_factory=dict)
    max_iterations: int = 8
    max_wall: timedelta = timedelta(minutes=5)
    max_tokens: int = 512
    tier: str | None = None
    on_limit: OnLimit = "fail"

    def __post_init__(self) -> None:
        check_int(self.max_iterations, "max_iterations", 1)  # iterations are stored indices
        check_int(self.max_tokens, "max_tokens", 1, MAX_TOKENS)
        if self.max_iterations < 1:
            raise ConfigurationError(
                "Agent.max_iterations must be at least 1",
                field="max_iterations",
                value=self.max_iterations,
            )
        if self.max_wall <= timedelta(0):
            raise ConfigurationError("Agent.max_wall must be positive", field="max_wall")
        if self.max_tokens < 1:
            raise ConfigurationError(
                "Agent.max_tokens must be at least 1", field="max_tokens", value=self.max_tokens
            )
        if self.on_limit not in ("fail", "answer", "escalate"):
            raise ConfigurationError(
                f"Agent.on_limit must be 'fail', 'answer' or 'escalate', not {self.on_limit!r}",
                field="on_limit",
                value=self.on_limit,
            )
        object.__setattr__(self, "tools", tuple(self.tools))
        object.__setattr__(self, "subagents", dict(self.subagents))
        clash = set(self.tools) & {subagent_tool(n) for n in self.subagents}
        if clash:
            raise ConfigurationError(
                f"Agent tool names clash with subagent tools: {', '.join(sorted(clash))}",
                field="tools",
            )

    def subagent_for(self, tool_name: str) -> str | None:
        """The workflow behind a ``delegate_<name>`` tool name, or None."""
        if not tool_name.startswith(_SUBAGENT_PREFIX):
            return None
        return self.subagents.get(tool_name[len(_SUBAGENT_PREFIX) :])

    def offers(self, tool_name: str) -> bool:
        """Whether the model was offered ``tool_name`` (a tool or a subagent)."""
        return tool_name in self.tools or self.subagent_for(tool_name) is not None


def subagent_tool(name: str) -> str:
    return f"{_SUBAGENT_PREFIX}{name}"


def subagent_schema(name: str, workflow: str) -> dict[str, Any]:
    """The OpenAI tool schema through which the model delegates to subagent ``name``."""
    return {
        "type": "function",
        "function": {
            "name": subagent_tool(name),
            "description": f"Delegate a task to the {name!r} subagent (workflow {workflow!r})"
            " and receive its answer.",
            "parameters": {
                "type": "object",
                "properties": {"task": {"type": "string", "description": "what to do"}},
                "required": ["task"],
            },
        },
    }


class ToolResult(BaseModel):
    """What one tool call of a turn returned (or why it was refused)."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    content: str
    ok: bool = True
    child_run: str | None = None


class Turn(BaseModel):
    """One recorded iteration of an agent loop."""

    iteration: int
    task: str | None = None  # the first iteration records the task the loop works on
    started_at_s: float | None = None  # ... and when the loop started (for max_wall)
    text: str = ""
    tool_results: list[ToolResult] = Field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    stop: StopReason | None = None  # set when this turn ends the loop


class AgentResult(BaseModel):
    """The output of an agent step."""

    status: StopReason
    answer: str | None
    iterations: int
    tool_calls: int
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True, slots=True)
class Move:
    """What follows a recorded turn: another iteration, or the end of the loop."""

    kind: Literal["continue", "finish", "fail"]
    result: AgentResult | None = None
    error: str | None = None


def transcript(agent: Agent, turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """The chat messages the next iteration sends: system, task, then every turn's assistant
    message and tool results, in order."""
    if not turns or turns[0].task is None:
        raise ValueError("the first turn must carry the task")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": agent.system},
        {"role": "user", "content": turns[0].task},
    ]
    for turn in turns:
        if turn.stop is not None and not turn.tool_results and not turn.text:
            continue
        assistant: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
        if turn.tool_results:
            assistant["tool_calls"] = [
                {
                    "id": r.id,
                    "type": "function",
                    "function": {"name": r.name, "arguments": json.dumps(r.arguments)},
                }
                for r in turn.tool_results
            ]
        messages.append(assistant)
        messages.extend(
            {"role": "tool", "tool_call_id": r.id, "content": r.content} for r in turn.tool_results
        )
    return messages


def _result(status: StopReason, turns: Sequence[Turn]) -> AgentResult:
    last_text = next((t.text for t in reversed(turns) if t.text), None)
    return AgentResult(
        status=status,
        answer=last_text,
        iterations=len(turns),
        tool_calls=sum(len(t.tool_results) for t in turns),
        tokens_in=sum(t.tokens_in for t in turns),
        tokens_out=sum(t.tokens_out for t in turns),
    )


def next_move(agent: Agent, turns: Sequence[Turn], now_s: float) -> Move:
    """Decide what follows the last of ``turns`` (all the loop's turns so far, in order)."""
    last = turns[-1]
    if last.stop is not None:
        if last.stop in ("answered", "escalated"):
            return Move("finish", _result(last.stop, turns))
        if agent.on_limit == "answer" or last.stop == "budget":
            return Move("finish", _result(last.stop, turns))
        return Move("fail", error=_limit_message(agent, last.stop))
    if not last.tool_results:
        return Move("finish", _result("answered", turns))
    bound = limit_reached(agent, turns, now_s)
    if bound is None:
        return Move("continue")
    if agent.on_limit == "escalate":
        return Move("continue")  # the next iteration asks a human instead of the model
    if agent.on_limit == "answer":
        return Move("finish", _result(bound, turns))
    return Move("fail", error=_limit_message(agent, bound))


def limit_reached(agent: Agent, turns: Sequence[Turn], now_s: float) -> StopReason | None:
    """The bound the loop has reached after ``turns``, if any."""
    if len(turns) >= agent.max_iterations:
        return "max_iterations"
    started = turns[0].started_at_s if turns else None
    if started is not None and now_s - started >= agent.max_wall.total_seconds():
        return "max_wall"
    return None


def _limit_message(agent: Agent, bound: StopReason) -> str:
    if bound == "max_iterations":
        return f"the agent loop reached max_iterations={agent.max_iterations} without an answer"
    if bound == "max_wall":
        return (
            f"the agent loop reached max_wall={agent.max_wall.total_seconds():g}s without an answer"
        )
    return f"the agent loop stopped: {bound}"
