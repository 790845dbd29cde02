"""``tenantflow reviews …``: a tenant's human review queue — list, show, claim and decide tasks.

``list`` and ``show`` only read. ``claim`` and ``decide`` write: on the store with an executing
engine (see :mod:`tenantflow.cli.tenants`), or through a server (``--url``). Deciding resumes the
waiting step in the same transaction, so it needs the run executing where the decision is made:
a server executes its runs, so ``--url`` decides any of them; on the store the command line
registers no workflows, so a decision is refused with a one-line error there.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tenantflow.cli import render
from tenantflow.cli.common import (
    ApiKeyOption,
    DbOption,
    JsonOption,
    TenantOption,
    UrlOption,
    connect,
    reporting_errors,
)
from tenantflow.domain.tenancy import ReviewStatus
from tenantflow.errors import ConfigurationError

__all__ = ["app"]

app = typer.Typer(
    name="reviews",
    help="A tenant's human review queue: list, show, claim and decide review tasks.",
    no_args_is_help=True,
)

ReviewIdArgument = Annotated[str, typer.Argument(metavar="REVIEW_ID", help="The review's id.")]
ReviewerOption = Annotated[
    str, typer.Option("--reviewer", "-r", metavar="NAME", help="Who is acting.")
]


def _reviewer(name: str) -> str:
    if not name.strip():
        raise ConfigurationError("--reviewer must name someone", field="reviewer", value=name)
    return name.strip()


@app.command("list")
def list_reviews(
    ctx: typer.Context,
    tenant: TenantOption = None,
    pool: Annotated[
        str | None,
        typer.Option("--pool", "-p", metavar="POOL", help="Only tasks in this reviewer pool."),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Decided and cancelled tasks too (default: open ones).")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many (1..1000).")] = 100,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List a tenant's review tasks in queue order: urgent lane first, then by SLA."""
    with reporting_errors():
        if not 1 <= limit <= 1000:
            raise ConfigurationError("limit must be within 1..1000", field="limit", value=limit)
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        reviews = backend.list_reviews(
            pool=pool, statuses=tuple(ReviewStatus) if everything else None, limit=limit
        )
    render.print_rows(
        reviews,
        json=json,
        as_dict=render.review_dict,
        table=render.reviews_table,
        empty="no reviews" if everything else "no open reviews",
    )


@app.command("show")
def show(
    ctx: typer.Context,
    review_id: ReviewIdArgument,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a review task and what the reviewer is asked."""
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        review = backend.get_review(review_id)
    if json:
        render.print_json(render.review_dict(review))
        return
    grid, payload = render.review_detail(review)
    out = render.console()
    out.print(grid)
    out.print(payload)


@app.command("claim")
def claim(
    ctx: typer.Context,
    review_id: ReviewIdArgument,
    reviewer: ReviewerOption,
    tenant: TenantOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Take a task, so other reviewers see it is being handled."""
    with reporting_errors():
        name = _reviewer(reviewer)
    with connect(ctx, db, url, api_key, tenant=tenant, write=True) as backend:
        review = backend.claim_review(review_id, reviewer=name)
    if json:
        render.print_json(render.review_dict(review))
        return
    render.console().print(f"review {review.id} claimed by {review.claimed_by}", markup=False)


@app.command("decide")
def decide(
    ctx: typer.Context,
    review_id: ReviewIdArgument,
    reviewer: ReviewerOption,
    tenant: TenantOption = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve the request.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject the request.")] = False,
    comment: Annotated[
        str | None, typer.Option("--comment", "-m", metavar="TEXT", help="Why.")
    ] = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Approve or reject a task; the waiting step goes on (needs its run executing where the
    decision is made: a server, with --url)."""
    with reporting_errors():
        name = _reviewer(reviewer)
        if approve == reject:
            raise ConfigurationError("give exactly one of --approve or --reject", field="approve")
    with connect(ctx, db, url, api_key, tenant=tenant, write=True) as backend:
        review = backend.decide_review(review_id, reviewer=name, approve=approve, comment=comment)
    if json:
        render.print_json(render.review_dict(review))
        return
    render.console().print(
        f"review {review.id} {review.status.value} by {review.decided_by or name}", markup=False
    )
