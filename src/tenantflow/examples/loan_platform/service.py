"""The loan platform as a service (``tenantflow serve --app
tenantflow.examples.loan_platform.service:setup``).

:func:`setup` gives a serving engine what the loan-approval runs need — the workflow, the
identity service and credit bureau tools, and the model endpoints in both regions (served by the
simulated provider) — from :mod:`.platform`, the same parts the demo uses. The
institutions are then registered over the API by an admin (``POST /v1/tenants``), each with its
own API key, and submit applications with ``POST /v1/runs``::

    tenantflow keys create --admin --db sqlite:///loans.db
    tenantflow serve --db sqlite:///loans.db --app tenantflow.examples.loan_platform.service:setup

Latencies are the seed's, in real time here (a tool call takes seconds, as a bureau would);
``$TENANTFLOW_LOAN_SPEED`` (a number > 0, default 1) runs the simulated tools and models that
many times faster, for rehearsals and tests. ``$TENANTFLOW_LOAN_WEBHOOK`` is where the
workflow's side effects (the CRM write, the applicant's notification) are POSTed
(:mod:`.effects`; unset, they are written to the run's log). Both are read by every process
that loads this app (``tenantflow serve``, ``worker``, ``hybrid worker``/``agent``, ``mesh``).
"""

from __future__ import annotations

import math
import os

import tenantflow as tf
from tenantflow.adapters.clock import ScaledClock
from tenantflow.examples.loan_platform.platform import add_models, register_tools
from tenantflow.examples.loan_platform.workflow import loan
from tenantflow.ports import Clock

__all__ = ["SPEED_ENV", "setup", "speed"]

SEED = 0
"""Seeds the simulated tools' and models' latencies (and so their outcomes)."""


SPEED_ENV = "TENANTFLOW_LOAN_SPEED"
"""The environment variable compressing the simulated tools' and models' latencies."""


def speed() -> float:
    """``$TENANTFLOW_LOAN_SPEED`` (default 1: real time).

    Raises:
        ConfigurationError: it is not a number > 0.
    """
    raw = os.environ.get(SPEED_ENV, "1")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise tf.ConfigurationError(
            f"{SPEED_ENV} must be a number > 0, got {raw!r}", field=SPEED_ENV, value=raw
        )
    return value


def setup(engine: tf.Engine) -> None:
    """Register the loan workflow, its tools and the model endpoints on ``engine``."""
    factor = speed()
    clock: Clock = engine.clock if factor == 1 else ScaledClock(factor)
    engine.register(loan)
    register_tools(engine, clock, SEED)
    add_models(engine, clock, SEED)
