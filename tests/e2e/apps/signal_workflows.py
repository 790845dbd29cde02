"""A workflow that waits for signals (``--app signal_workflows:setup``).

``handoff``: ``wait`` takes signal ``go`` (sent over the API in the tests), then signal ``local``
(sent on the store in the tests), and returns both payloads.
"""

from __future__ import annotations

from typing import Any

import tenantflow as tf

__all__ = ["handoff", "setup"]

handoff = tf.Workflow("handoff")


@handoff.step
async def wait(ctx: tf.StepContext) -> dict[str, Any]:
    go = await ctx.wait_for_signal("go")
    local = await ctx.wait_for_signal("local")
    return {"go": go, "local": local}


def setup(engine: tf.Engine) -> None:
    engine.register(handoff)
