"""``tenantflow tenants …``: register tenants and change or delete their versioned policies.

Every command works on the store (``--db``) or through a server (``--url`` with an admin API
key; a tenant's key is refused with the server's one-line 403). On the store, ``list`` and
``show`` only read (``execute=False``); ``create``, ``update`` and ``delete`` write: they open
the engine with ``execute=True``, the only mode with a writer; on SQLite an executing engine holds
the file's exclusive lock, so while another engine (a worker, ``serve``) runs on the same file
they fail with the store's one-line error instead of writing behind its back — change the
tenants of a served store through its server.

A policy is a tier preset (``--tier``) with fields overridden by ``--policy-file`` (JSON or YAML,
a mapping of policy fields, or the output of ``tenants show --json``) and then by each
``--set field=value``; a value is read as JSON when it parses (``5``, ``null``,
``{"tool:x": "50/hour"}``), else as a string (``eu-west-1``, ``4h``). Mappings replace the field
whole, except ``budget``, which is merged into the current budget.

``move TENANT --from URL --to URL`` moves a tenant at rest between two stores, with every row of
its data and the proof that none is left at the source (see docs/tenant-move.md); a live move
of a served tenant goes through its engine (:func:`tenantflow.placement.move.move_tenant`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from tenantflow.cli import render
from tenantflow.cli.common import (
    ApiKeyOption,
    DbOption,
    JsonOption,
    UrlOption,
    connect_admin,
    reporting_errors,
    target_for,
)
from tenantflow.domain.ids import check_tenant
from tenantflow.domain.policy import DEFAULT_REGIONS, TIERS, Policy
from tenantflow.domain.state import diff_states
from tenantflow.errors import ConfigurationError, StoreUnavailableError

__all__ = ["app", "load_policy_file", "parse_sets"]

app = typer.Typer(
    name="tenants",
    help="Register tenants and change or delete their versioned policies.",
    no_args_is_help=True,
)

TenantArgument = Annotated[str, typer.Argument(metavar="TENANT", help="The tenant's id.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="FIELD=VALUE",
        help="Set one policy field; VALUE is JSON when it parses, else a string. Repeatable.",
        show_default=False,
    ),
]
PolicyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--policy-file",
        metavar="FILE",
        help="Policy fields from a JSON or YAML file (--set wins over it).",
        show_default=False,
    ),
]


# -- policy input -----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON: keep them as strings


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``["max_active_runs=5", "region=eu-west-1"]`` as ``{"max_active_runs": 5, ...}``.

    Raises:
        ConfigurationError: a pair has no ``=`` or no field name.
    """
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigurationError(
                f"invalid --set {pair!r}: write FIELD=VALUE, e.g. --set max_active_runs=5",
                field="set",
                value=pair,
            )
        try:
            fields[name] = json.loads(raw, parse_constant=_reject_constant)
        except ValueError:
            fields[name] = raw
    return fields


def load_policy_file(path: Path) -> dict[str, Any]:
    """The policy fields in a JSON (``.json``) or YAML file.

    A file holding a tenant as ``tenants show --json`` prints it (a mapping with a ``policy``
    mapping and an ``id``) gives that policy, so a tenant's policy can be copied to another.

    Raises:
        ConfigurationError: the file cannot be read or parsed, or holds no mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"cannot read policy file {str(path)!r}: {reason}", field="policy_file"
        ) from None
    import yaml  # only for a policy file: every other command starts without it

    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigurationError(
            f"cannot parse policy file {str(path)!r}: {exc}", field="policy_file"
        ) from None
    if data is None:
        data = {}
    if isinstance(data, dict) and isinstance(data.get("policy"), dict) and "id" in data:
        data = data["policy"]
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"policy file {str(path)!r} must hold a mapping of policy fields,"
            f" not {type(data).__name__}",
            field="policy_file",
        )
    return data


def _policy_fields(policy_file: Path | None, sets: Sequence[str] | None) -> dict[str, Any]:
    fields = load_policy_file(policy_file) if policy_file is not None else {}
    fields.update(parse_sets(sets or ()))
    unknown = sorted(str(k) for k in fields if k not in Policy.model_fields)
    if unknown:
        raise ConfigurationError(
            f"unknown policy field(s): {', '.join(unknown)}",
            field=unknown[0],
            known=sorted(Policy.model_fields),
        )
    return fields


def _tier_of(tier: str | None, fields: dict[str, Any]) -> str:
    """The tier from ``--tier`` or the policy fields (removed from them); they must agree."""
    given = fields.pop("tier", None)
    if tier is not None and given is not None and given != tier:
        raise ConfigurationError(
            f"--tier {tier} contradicts tier = {given!r} in the policy", field="tier", value=given
        )
    chosen = tier if tier is not None else given
    if chosen is None:
        raise ConfigurationError(f"give the tenant's tier: --tier {'|'.join(TIERS)}", field="tier")
    if not isinstance(chosen, str):
        raise ConfigurationError(
            f"invalid tier = {chosen!r}: known tiers are {', '.join(TIERS)}",
            field="tier",
            value=repr(chosen),
        )
    return chosen


# -- commands ---------------------------------------------------------------------------------


@app.command("create")
def create(
    ctx: typer.Context,
    tenant: TenantArgument,
    tier: Annotated[
        str | None,
        typer.Option(
            "--tier",
            metavar="|".join(TIERS),
            help="The preset the policy starts from.",
            show_default=False,
        ),
    ] = None,
    org: Annotated[
        str | None,
        typer.Option("--org", metavar="ORG", help="The tenant's organisation.", show_default=False),
    ] = None,
    sets: SetOption = None,
    policy_file: PolicyFileOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Register a tenant with a tier preset and any policy field overridden."""
    with reporting_errors():
        check_tenant(tenant)
        fields = _policy_fields(policy_file, sets)
        chosen = _tier_of(tier, fields)
        file_org = fields.pop("org_id", None)
        org_id = org if org is not None else file_org
        if org_id is not None and not isinstance(org_id, str):
            raise ConfigurationError(
                f"invalid org_id = {org_id!r}: a string", field="org_id", value=repr(org_id)
            )
        # Checked before the store is opened, so bad input never creates a database file; the
        # engine checks again against the regions its stores serve. A server serves regions of
        # its own: it checks the region.
        regions = set(DEFAULT_REGIONS)
        region = fields.get("region")
        if isinstance(region, str) and target_for(ctx, db, url, api_key).url is not None:
            regions.add(region)
        Policy.for_tier(
            chosen,
            known_regions=regions,
            **({"org_id": org_id} if org_id else {}),
            **fields,
        )

    with connect_admin(ctx, db, url, api_key, write=True) as backend:
        info = backend.create_tenant(tenant, tier=chosen, org_id=org_id, policy=fields)
    if json:
        render.print_json(render.tenant_dict(info))
        return
    render.console().print(
        f"created tenant {info.id} ({info.policy.tier}, policy version {info.policy_version},"
        f" region {info.policy.region or 'any'}, store {info.store})",
        markup=False,
    )


@app.command("list")
def list_tenants(
    ctx: typer.Context,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List every tenant with its tier, policy version, region and caps."""
    with connect_admin(ctx, db, url, api_key) as backend:
        tenants = backend.list_tenants()
    render.print_rows(
        tenants,
        json=json,
        as_dict=render.tenant_dict,
        table=render.tenants_table,
        empty="no tenants",
    )


@app.command("show")
def show(
    ctx: typer.Context,
    tenant: TenantArgument,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a tenant: its policy, policy version, region and the store holding its data."""
    with reporting_errors():
        check_tenant(tenant)
    with connect_admin(ctx, db, url, api_key) as backend:
        info = backend.get_tenant(tenant)
    if json:
        render.print_json(render.tenant_dict(info))
        return
    grid, policy = render.tenant_detail(info)
    out = render.console()
    out.print(grid)
    out.print(policy)


@app.command("update")
def update(
    ctx: typer.Context,
    tenant: TenantArgument,
    sets: SetOption = None,
    policy_file: PolicyFileOption = None,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Change policy fields: a new policy version, used by new admissions at once and by
    running runs at their next step."""
    with reporting_errors():
        check_tenant(tenant)
        fields = _policy_fields(policy_file, sets)
        if not fields:
            raise ConfigurationError(
                "nothing to update: give --set FIELD=VALUE or --policy-file FILE", field="set"
            )
    with connect_admin(ctx, db, url, api_key, write=True) as backend:
        before = backend.get_tenant(tenant)
        after = backend.update_tenant(tenant, fields)
    changes = diff_states(
        before.policy.model_dump(mode="json"), after.policy.model_dump(mode="json")
    )
    if json:
        render.print_json(
            {**render.tenant_dict(after), "changes": [render.change_dict(c) for c in changes]}
        )
        return
    out = render.console()
    out.print(
        f"updated tenant {after.id}: policy version {before.policy_version}"
        f" -> {after.policy_version}",
        markup=False,
    )
    if changes:
        out.print(render.changes_table(changes))
    else:
        out.print("no field changed", style="dim")


@app.command("delete")
def delete(
    ctx: typer.Context,
    tenant: TenantArgument,
    purge_audit: Annotated[
        bool,
        typer.Option("--purge-audit", help="Delete the tenant's audit log too (kept by default)."),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Confirm: the tenant's data cannot be restored.")
    ] = False,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Delete a tenant and every row of its data, and print the proof: rows deleted and rows
    left (all zero) per table. Refused while it has unfinished runs."""
    with reporting_errors():
        check_tenant(tenant)
        if not yes:
            raise ConfigurationError(
                f"deleting tenant {tenant!r} purges all of its data: add --yes to confirm",
                field="yes",
            )
    with connect_admin(ctx, db, url, api_key, write=True) as backend:
        result = backend.delete_tenant(tenant, purge_audit=purge_audit)
    left = sum(int(n) for n in result.get("left", {}).values())
    if json:
        render.print_json(
            {
                "tenant_id": tenant,
                "audit_log": "purged" if purge_audit else "kept",
                "rows_left": left,
                **result,
            }
        )
        return
    out = render.console()
    out.print(render.deletion_table(result))
    audit = "purged" if purge_audit else "kept, ending with a tenant.deleted row"
    out.print(
        f"deleted tenant {tenant}: {left} rows left; audit log {audit}",
        style="green" if left == 0 else "red",
        markup=False,
    )


@app.command("move")
def move(
    ctx: typer.Context,
    tenant: TenantArgument,
    target: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="cell|shared|URL",
            help="With --url (a federated plane): cell (a dedicated cell of its own) or shared"
            " (the shared pool). With --from: the store to move it to (a SQLite file is created"
            " when new).",
            show_default=False,
        ),
    ],
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="URL",
            help="Move at rest: the store the tenant is in now (sqlite:///… or postgresql://…).",
            show_default=False,
        ),
    ] = None,
    location: Annotated[
        str | None,
        typer.Option(
            "--location",
            metavar="TEXT",
            help="With --from: where the tenant is served from now, for the audit log"
            " (default: --to).",
            show_default=False,
        ),
    ] = None,
    drain_timeout_s: Annotated[
        float,
        typer.Option(
            "--drain-timeout-s",
            min=0.1,
            help="With --url: how long attempts running at the source may take to finish.",
        ),
    ] = 30.0,
    json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Move a tenant with every row of its data and print the proof: rows moved and rows left
    at the source (all zero) per table. Live, through a federated plane (``--url PLANE`` with
    its admin key, ``--to cell|shared``): its runs in flight move with it. At rest, between two
    stores (``--from URL --to URL``): refused while an attempt of the tenant is running at the
    source (move a served tenant through its engine)."""
    import asyncio

    from tenantflow.placement.move import move_stored_tenant

    with reporting_errors():
        check_tenant(tenant)
        if source is None:
            result = _move_through_plane(ctx, tenant, target, url, api_key, drain_timeout_s)
        else:
            if url is not None:
                raise ConfigurationError(
                    "give --from URL (move at rest between stores) or --url PLANE (move live"
                    " through a federated plane), not both",
                    field="from",
                )
            report = asyncio.run(move_stored_tenant(source, target, tenant, location=location))
            result = report.to_dict()
    if json:
        render.print_json(result)
        return
    out = render.console()
    out.print(render.deletion_table({"deleted": result["rows"], "left": result["left"]}))
    left = sum(int(n) for n in result["left"].values())
    where = f"{result['to']} ({result['location']})" if "to" in result else result["target"]
    out.print(
        f"moved tenant {tenant} to {where}: {result['runs']} runs ({result['in_flight']}"
        f" unfinished), {sum(int(n) for n in result['rows'].values())} rows; {left} rows left"
        f" at the source; audit chain continues at seq {result['audit_seq']}",
        style="green" if left == 0 else "red",
        markup=False,
    )


def _move_through_plane(
    ctx: typer.Context,
    tenant: str,
    to: str,
    url: str | None,
    api_key: str | None,
    drain_timeout_s: float,
) -> dict[str, Any]:
    """POST the move to the plane (``/plane/v1/tenants/{tenant}/move``); its report."""
    import httpx

    from tenantflow.client import error_from_response

    if to not in ("cell", "shared"):
        raise ConfigurationError(
            f"--to {to!r}: cell or shared through a plane (--url), or give --from URL to move"
            " between stores",
            field="to",
            value=to,
        )
    settings = target_for(ctx, None, url, api_key)
    if settings.url is None:
        raise ConfigurationError(
            "--to cell|shared moves a tenant through a federated plane: give --url PLANE (and"
            " its admin key), or --from URL --to URL to move between stores",
            field="url",
        )
    try:
        response = httpx.post(
            f"{settings.url.rstrip('/')}/plane/v1/tenants/{tenant}/move",
            json={"to": to, "drain_timeout_s": drain_timeout_s},
            headers={"Authorization": f"Bearer {settings.api_key}"},
            timeout=max(120.0, 4 * drain_timeout_s),
        )
    except httpx.HTTPError as exc:
        raise StoreUnavailableError(f"the plane at {settings.url} did not answer: {exc}") from exc
    if response.status_code == 404 and "application/json" not in response.headers.get(
        "content-type", ""
    ):
        raise ConfigurationError(
            f"{settings.url} is not a federated plane (no /plane/v1): --to cell|shared needs one",
            field="url",
        )
    if not response.is_success:
        raise error_from_response(response)
    result: dict[str, Any] = response.json()
    return result
