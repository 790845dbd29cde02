"""Kept for importers of ``tenantflow.engine.reviews``: review logic lives in
:mod:`tenantflow.engine.execution.reviews`."""

from tenantflow.engine.execution.reviews import Reviews, ReviewSteps

__all__ = ["ReviewSteps", "Reviews"]
