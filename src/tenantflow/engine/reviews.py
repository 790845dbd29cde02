"""Kept for importers of ``tenantflow.engine.reviews``: review logic lives in
:mod:`tenantflow.engine.execution.reviews`."""

from tenantflow.engine.execution.reviews import ReviewHost, Reviews, ReviewSteps, ReviewWiring

__all__ = ["ReviewHost", "ReviewSteps", "ReviewWiring", "Reviews"]
