"""Human review: what a reviewer decides, as the output of a review step."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ReviewDecision"]


class ReviewDecision(BaseModel):
    """The output of a review step: who decided what, and why.

    Attributes:
        approved: the reviewer's verdict.
        comment: the reviewer's note (or why the system decided, on an SLA breach).
        reviewer: who decided (``system`` for an automatic decision).
        review_id: the ReviewTask this came from.
    """

    model_config = ConfigDict(frozen=True)

    approved: bool
    comment: str | None = None
    reviewer: str
    review_id: str
