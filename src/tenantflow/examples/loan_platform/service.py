"""The loan platform as a service (``tenantflow serve --app
tenantflow.examples.loan_platform.service:setup``).

:func:`setup` gives a serving engine what the loan-approval runs need — the workflow, the
identity service and credit bureau tools, and the model endpoints in both regions (served by the
simulated provider) — from :mod:`.platform`, the same parts the demo uses. The
institutions are then registered over the API by an admin (``POST /v1/tenants``), each with its
own API key, and submit applications with ``POST /v1/runs``::

    tenantflow keys create --admin --db sqlite:///loans.db
    tenantflow serve --db sqlite:///loans.db --app tenantflow.examples.loan_platform.service:setup

Latencies are the seed's, in real time here (a tool call takes seconds, as a bureau would).
"""

from __future__ import annotations

import tenantflow as tf
from tenantflow.examples.loan_platform.platform import add_models, register_tools
from tenantflow.examples.loan_platform.workflow import loan

__all__ = ["setup"]

SEED = 0
"""Seeds the simulated tools' and models' latencies (and so their outcomes)."""


def setup(engine: tf.Engine) -> None:
    """Register the loan workflow, its tools and the model endpoints on ``engine``."""
    engine.register(loan)
    register_tools(engine, engine.clock, SEED)
    add_models(engine, engine.clock, SEED)
