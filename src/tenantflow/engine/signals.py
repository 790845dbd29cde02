"""Control signals: how an attempt ends with a decision rather than an error.

They derive from :class:`BaseException`, not :class:`Exception`, so step code that catches
``Exception`` cannot swallow them. The gateway (the budget ladder), the agent loop and
``ctx.delegate`` raise them; :func:`tenantflow.engine.execution.outcomes.classify` turns each
into an outcome of the attempt.
"""

from __future__ import annotations

__all__ = ["AwaitChild", "AwaitSignal", "Escalate", "Pause", "Signal", "SkipStep"]


class Signal(BaseException):
    """Ends an attempt with a decision rather than an error (user code cannot swallow it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SkipStep(Signal):
    """The budget ladder skips this optional step."""


class Escalate(Signal):
    """The budget ladder hands this call to a human reviewer."""

    def __init__(self, reason: str, index: int, prompt: str) -> None:
        super().__init__(reason)
        self.index = index
        self.prompt = prompt


class Pause(Signal):
    """The budget ladder pauses the run until its budget allows it to go on."""


class AwaitChild(Signal):
    """The step waits for child run ``run_id`` (a subagent) to end, holding no slot."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"waiting for child run {run_id}")
        self.run_id = run_id


class AwaitSignal(Signal):
    """The step waits for signal ``name`` to be sent to its run, holding no slot, until
    ``deadline`` (epoch seconds; None: no timeout)."""

    def __init__(self, name: str, deadline: float | None) -> None:
        super().__init__(f"waiting for signal {name!r}")
        self.name = name
        self.deadline = deadline
