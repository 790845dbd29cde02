"""``tenantflow reviews …``: a tenant's human review queue — list, show, claim and decide tasks.

``list`` and ``show`` only read. ``claim`` and ``decide`` write, with an executing engine (see
:func:`tenantflow.cli.tenants.write`). Deciding resumes the waiting step in the same transaction,
so it needs the run executing in the same engine: the command line registers no workflows, so
from here a decision is refused with a one-line error; decide through the engine (or server) that
executes the run.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tenantflow.cli import render
from tenantflow.cli.common import DbOption, JsonOption, TenantOption, read, reporting_errors
from tenantflow.cli.tenants import write
from tenantflow.domain.tenancy import ReviewRecord
from tenantflow.engine.engine import Engine, check_tenant
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


async def _tenant(engine: Engine, tenant: str) -> str:
    """The tenant, checked: a well-formed id of a registered tenant."""
    await engine.tenants.get(check_tenant(tenant))
    return tenant


def _reviewer(name: str) -> str:
    if not name.strip():
        raise ConfigurationError("--reviewer must name someone", field="reviewer", value=name)
    return name.strip()


@app.command("list")
def list_reviews(
    ctx: typer.Context,
    tenant: TenantOption,
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
) -> None:
    """List a tenant's review tasks in queue order: urgent lane first, then by SLA."""
    with reporting_errors():
        if not 1 <= limit <= 1000:
            raise ConfigurationError("limit must be within 1..1000", field="limit", value=limit)

    async def fetch(engine: Engine) -> list[ReviewRecord]:
        await _tenant(engine, tenant)
        if everything:
            return await engine.reviews.list(tenant, pool=pool, status=None, limit=limit)
        return await engine.reviews.list(tenant, pool=pool, limit=limit)

    reviews = read(ctx, db, fetch)
    if json:
        render.print_json([render.review_dict(r) for r in reviews])
        return
    out = render.console()
    if not reviews:
        out.print("no reviews" if everything else "no open reviews")
        return
    out.print(render.reviews_table(reviews))


@app.command("show")
def show(
    ctx: typer.Context,
    review_id: ReviewIdArgument,
    tenant: TenantOption,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Show a review task and what the reviewer is asked."""

    async def fetch(engine: Engine) -> ReviewRecord:
        return await engine.reviews.get(await _tenant(engine, tenant), review_id)

    review = read(ctx, db, fetch)
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
    tenant: TenantOption,
    reviewer: ReviewerOption,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Take a task, so other reviewers see it is being handled."""
    with reporting_errors():
        name = _reviewer(reviewer)

    async def take(engine: Engine) -> ReviewRecord:
        return await engine.reviews.claim(await _tenant(engine, tenant), review_id, reviewer=name)

    review = write(ctx, db, take)
    if json:
        render.print_json(render.review_dict(review))
        return
    render.console().print(f"review {review.id} claimed by {review.claimed_by}", markup=False)


@app.command("decide")
def decide(
    ctx: typer.Context,
    review_id: ReviewIdArgument,
    tenant: TenantOption,
    reviewer: ReviewerOption,
    approve: Annotated[bool, typer.Option("--approve", help="Approve the request.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject the request.")] = False,
    comment: Annotated[
        str | None, typer.Option("--comment", "-m", metavar="TEXT", help="Why.")
    ] = None,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Approve or reject a task; the waiting step goes on (needs its run executing here)."""
    with reporting_errors():
        name = _reviewer(reviewer)
        if approve == reject:
            raise ConfigurationError("give exactly one of --approve or --reject", field="approve")

    async def settle(engine: Engine) -> ReviewRecord:
        return await engine.reviews.decide(
            await _tenant(engine, tenant),
            review_id,
            reviewer=name,
            approve=approve,
            comment=comment,
        )

    review = write(ctx, db, settle)
    if json:
        render.print_json(render.review_dict(review))
        return
    render.console().print(
        f"review {review.id} {review.status.value} by {review.decided_by or name}", markup=False
    )
