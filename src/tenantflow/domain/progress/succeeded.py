"""Deciding success: a step, a fan-out element or an agent iteration returned its output."""

from __future__ import annotations

from typing import Any

from tenantflow.domain.agent import Agent, Turn, next_move
from tenantflow.domain.progress.model import (
    Attempt,
    Decision,
    Effect,
    Enqueue,
    MirrorUpdate,
    Planned,
    Requeue,
    RunView,
    delta_bytes,
    failed_for_good,
    merge,
    plan_effects,
    plan_to_transition,
    then_for,
)
from tenantflow.domain.records import (
    FinishAttempt,
    NewEvent,
    RunStatus,
    RunUpdate,
    StepStatus,
    StepUpdate,
)
from tenantflow.domain.run import Plan, advance
from tenantflow.domain.spec import child_key, parse_key
from tenantflow.domain.tenancy import UsageDelta

__all__ = ["on_iteration", "on_succeeded"]


def on_succeeded(run: RunView, att: Attempt, value: Any, output_json: bytes) -> Decision:
    """The attempt of a step (or a fan-out element) returned ``value``: record it, gather a
    fan-out whose elements all succeeded, and plan what follows."""
    name, index = parse_key(att.key)
    step = run.spec.step(name)
    if step.kind == "agent" and index is not None:
        return on_iteration(run, att, value, output_json)
    key = att.key
    then = then_for(run, att, [UsageDelta("steps", 1, step.name), *att.usage])
    statuses = dict(run.statuses)
    statuses[key] = StepStatus.SUCCEEDED
    plan = Plan()
    planned: Planned | None = None
    done_statuses = {key: StepStatus.SUCCEEDED}
    done_outputs: dict[str, Any] = {key: value}
    done_jsons = {key: output_json}
    settled: str | None = key
    if index is not None:
        n = run.children[step.name]
        done = all(statuses.get(child_key(step.name, i)) == StepStatus.SUCCEEDED for i in range(n))
        settled = None
        if done and run.status == RunStatus.RUNNING:
            jsons = [
                output_json if i == index else run.jsons[child_key(step.name, i)] for i in range(n)
            ]
            gathered_json = b"[" + b",".join(jsons) + b"]"
            statuses[step.name] = StepStatus.SUCCEEDED
            then.steps.append(
                StepUpdate(
                    step.name,
                    StepStatus.SUCCEEDED,
                    output_json=gathered_json,
                    delta_json=delta_bytes(step.name, gathered_json),
                )
            )
            then.events.append(NewEvent("step.gathered", step.name, None, {"elements": n}))
            settled = step.name
            gathered = [
                value if i == index else run.outputs[child_key(step.name, i)] for i in range(n)
            ]
            done_statuses[step.name] = StepStatus.SUCCEEDED
            done_outputs[step.name] = gathered
            done_jsons[step.name] = gathered_json
    if settled is not None and run.status == RunStatus.RUNNING:
        trial = {**run.outputs, **done_outputs}
        plan = advance(run.spec, statuses, trial, run.input, changed=[settled])
        planned = plan_to_transition(run.spec, plan, trial, run_id=run.id)
        merge(then, planned)
    delta = delta_bytes(key, output_json) if index is None else None
    op = FinishAttempt(
        run.tenant_id,
        run.id,
        key,
        att.fence,
        run.now,
        output_json,
        delta,
        then,
        expected_version=run.state_version,
    )
    update = MirrorUpdate(
        statuses=done_statuses,
        outputs=done_outputs,
        jsons=done_jsons,
        version_of=key if index is None else None,
        progressed=True,
        error=planned.error if planned else None,
    )
    effects: list[Effect] = [update, *plan_effects(run, plan, done_outputs)]
    return Decision([op], effects, [Requeue(key)])


def on_iteration(run: RunView, att: Attempt, turn: Turn, output_json: bytes) -> Decision:
    """An agent iteration is recorded: in the same transaction, create the next iteration, or
    settle the agent step (its result, or its failure at a bound) and plan what follows."""
    key = att.key
    name, index = parse_key(key)
    assert index is not None
    step = run.spec.step(name)
    agent: Agent = step.options["agent"]
    turns = [*(run.outputs[child_key(step.name, j)] for j in range(index)), turn]
    move = next_move(agent, turns, run.now)
    summary = {
        "iteration": index,
        "tools": [r.name for r in turn.tool_results],
        "refused": [r.name for r in turn.tool_results if not r.ok],
        "children": [r.child_run for r in turn.tool_results if r.child_run],
        "tokens_in": turn.tokens_in,
        "tokens_out": turn.tokens_out,
        "next": move.kind,
    }
    then = then_for(run, att, [UsageDelta("steps", 1, step.name), *att.usage])
    then.events.append(NewEvent("agent.iteration", key, att.attempt, summary))
    statuses = dict(run.statuses)
    statuses[key] = StepStatus.SUCCEEDED
    following = child_key(step.name, index + 1)
    recorded = MirrorUpdate(
        statuses={key: StepStatus.SUCCEEDED},
        outputs={key: turn},
        jsons={key: output_json},
        progressed=True,
        version_of=key,
    )
    effects: list[Effect] = [recorded]
    running = run.status == RunStatus.RUNNING
    if running and move.kind == "continue":
        then.steps.append(StepUpdate(following, StepStatus.READY, create=True))
        effects.append(
            MirrorUpdate(statuses={following: StepStatus.READY}, children={step.name: index + 2})
        )
        effects.append(Enqueue((following,)))
    elif running and move.kind == "finish" and move.result is not None:
        settled_json = move.result.model_dump_json().encode()
        statuses[step.name] = StepStatus.SUCCEEDED
        then.steps.append(
            StepUpdate(
                step.name,
                StepStatus.SUCCEEDED,
                output_json=settled_json,
                delta_json=delta_bytes(step.name, settled_json),
            )
        )
        then.events.append(
            NewEvent(
                "agent.finished",
                step.name,
                None,
                {"status": move.result.status, "iterations": move.result.iterations},
            )
        )
        trial = {**run.outputs, key: turn, step.name: move.result}
        plan = advance(run.spec, statuses, trial, run.input, changed=[step.name])
        planned = plan_to_transition(run.spec, plan, trial, run_id=run.id)
        merge(then, planned)
        settled = {key: turn, step.name: move.result}
        effects.append(
            MirrorUpdate(
                statuses={step.name: StepStatus.SUCCEEDED},
                outputs={step.name: move.result},
                jsons={step.name: settled_json},
                error=planned.error,
            )
        )
        effects.extend(plan_effects(run, plan, settled))
    elif running:  # move.kind == "fail": the loop reached a bound
        error = move.error or "the agent loop failed"
        statuses[step.name] = StepStatus.FAILED
        then.steps.append(StepUpdate(step.name, StepStatus.FAILED, error=error))
        then.events.append(NewEvent("step.failed", step.name, None, {"error": error}))
        plan = Plan()
        run_error: str | None
        if step.optional:
            plan = advance(run.spec, statuses, run.outputs, run.input, changed=[step.name])
            planned = plan_to_transition(run.spec, plan, run.outputs, run_id=run.id)
            merge(then, planned)
            run_error = planned.error
        else:
            run_error = f"step {step.name!r} failed: {error}"
            then.run = RunUpdate(RunStatus.COMPENSATING, error=run_error)
            then.events.append(NewEvent("run.failing", None, None, {"error": run_error}))
        effects.append(MirrorUpdate(statuses={step.name: StepStatus.FAILED}, error=run_error))
        effects.extend(failed_for_good(run, step, plan))
    delta = delta_bytes(key, output_json)
    op = FinishAttempt(
        run.tenant_id,
        run.id,
        key,
        att.fence,
        run.now,
        output_json,
        delta,
        then,
        expected_version=run.state_version,
    )
    return Decision([op], effects, [Requeue(key)])
