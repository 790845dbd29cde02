"""``tenantflow memory …``: read and write a tenant's agent memory — entries (JSON values by
key) and documents (text to search) — in one namespace (``--namespace``: ``default``,
``user:<id>`` or ``session:<id>``).

Like ``runs``, each command works on the store (``--tenant`` names the tenant) or on a server
(``--url``, the API key's tenant). On the store, writes go straight to it without executing
runs, so they work while a server runs on the same database. ``purge`` — the retention job
that deletes expired memory — works on the store only.
"""

from __future__ import annotations

import json as jsonlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from tenantflow.cli import render
from tenantflow.cli.common import (
    ApiKeyOption,
    CliState,
    DbOption,
    JsonOption,
    UrlOption,
    connect,
    read,
    reporting_errors,
)
from tenantflow.domain.memory import (
    DEFAULT_NAMESPACE,
    MAX_LIST,
    MAX_SEARCH,
    MemoryEntry,
    SearchHit,
    check_document_id,
    check_key,
    check_limit,
    check_namespace,
    check_text,
    encode_metadata,
    encode_value,
    query_words,
)
from tenantflow.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantflow.placement import ControlPlane

__all__ = ["app", "entry_dict", "hit_dict"]

app = typer.Typer(
    name="memory",
    help="A tenant's agent memory: get, put, list and delete entries; add and search documents.",
    no_args_is_help=True,
)

TenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        "-t",
        metavar="TENANT",
        help="The tenant whose memory this is (with --url: the API key's tenant).",
        show_default=False,
    ),
]
NamespaceOption = Annotated[
    str,
    typer.Option(
        "--namespace",
        "-N",
        metavar="NAMESPACE",
        help="default, user:ID or session:ID.",
    ),
]
KeyArgument = Annotated[str, typer.Argument(metavar="KEY", help="The entry's key.")]


def entry_dict(entry: MemoryEntry) -> dict[str, Any]:
    """An entry, JSON-ready."""
    return {
        "namespace": entry.namespace,
        "key": entry.key,
        "value": entry.value,
        "version": entry.version,
        "created_at": render.iso(entry.created_at),
        "updated_at": render.iso(entry.updated_at),
        "expires_at": render.iso(entry.expires_at),
    }


def hit_dict(hit: SearchHit) -> dict[str, Any]:
    """A search hit, JSON-ready."""
    return {
        "id": hit.id,
        "namespace": hit.namespace,
        "score": round(hit.score, 6),
        "text": hit.text,
        "metadata": hit.metadata,
        "created_at": render.iso(hit.created_at),
        "expires_at": render.iso(hit.expires_at),
    }


def _compact(value: Any) -> str:
    return jsonlib.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _time(ts: float | None) -> str:
    return render.iso(ts, timespec="milliseconds") or ""


def _entries_table(entries: Sequence[MemoryEntry]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("key", "version", "updated", "expires", "value"):
        table.add_column(name, overflow="fold" if name in ("key", "updated") else "ellipsis")
    for e in entries:
        table.add_row(
            Text(e.key),
            str(e.version),
            _time(e.updated_at),
            _time(e.expires_at) or "never",
            Text(_compact(e.value)),
        )
    return table


def _hits_table(hits: Sequence[SearchHit]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("score", "id", "text", "metadata"):
        table.add_column(name, overflow="fold" if name == "id" else "ellipsis")
    for h in hits:
        table.add_row(
            f"{h.score:.3f}",
            Text(h.id),
            Text(" ".join(h.text.split())),
            Text(_compact(h.metadata) if h.metadata else ""),
        )
    return table


def _entry_detail(entry: MemoryEntry) -> tuple[Table, JSON]:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in (
        ("namespace", entry.namespace),
        ("key", entry.key),
        ("version", str(entry.version)),
        ("created", _time(entry.created_at)),
        ("updated", _time(entry.updated_at)),
        ("expires", _time(entry.expires_at) or "never"),
    ):
        grid.add_row(name, Text(value))
    return grid, JSON(_compact(entry.value))


def _parse_json(option: str, text: str) -> Any:
    try:
        return jsonlib.loads(text)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, jsonlib.JSONDecodeError) else str(exc)
        raise ConfigurationError(
            f"{option} is not JSON ({reason}); to store text as it is, pass --string",
            field=option.lower().lstrip("-"),
        ) from None


@app.command("get")
def get(
    ctx: typer.Context,
    key: KeyArgument,
    tenant: TenantOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show the entry under KEY (exit 1 if there is none)."""
    with reporting_errors():
        check_namespace(namespace)
        check_key(key)
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        entry = backend.memory_get(key, namespace=namespace)
    if json:
        render.print_json(entry_dict(entry))
        return
    grid, value = _entry_detail(entry)
    out = render.console()
    out.print(grid)
    out.print(value)


@app.command("put")
def put(
    ctx: typer.Context,
    key: KeyArgument,
    value: Annotated[
        str,
        typer.Argument(metavar="VALUE", help="A JSON value ('-': read it from stdin)."),
    ],
    string: Annotated[
        bool, typer.Option("--string", help="Store VALUE as a JSON string, as it is.")
    ] = False,
    tenant: TenantOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Store VALUE under KEY, replacing what was there."""
    with reporting_errors():
        check_namespace(namespace)
        check_key(key)
        text = sys.stdin.read() if value == "-" else value
        parsed = text if string else _parse_json("VALUE", text)
        encode_value(parsed)  # refuse a value over the limit before connecting
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        entry = backend.memory_put(key, parsed, namespace=namespace)
    if json:
        render.print_json(entry_dict(entry))
        return
    render.console().print(
        f"stored {entry.key} in namespace {entry.namespace} (version {entry.version},"
        f" expires {_time(entry.expires_at) or 'never'})",
        markup=False,
    )


@app.command("list")
def list_entries(
    ctx: typer.Context,
    tenant: TenantOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    prefix: Annotated[
        str | None, typer.Option("--prefix", "-p", help="Only keys that start with this.")
    ] = None,
    after: Annotated[
        str | None,
        typer.Option("--after", metavar="KEY", help="Only keys after this one (paging)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help=f"At most this many (1..{MAX_LIST}).")
    ] = 100,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List the entries of a namespace by key."""
    with reporting_errors():
        check_namespace(namespace)
        check_limit(limit, MAX_LIST)
        if after is not None:
            check_key(after, field="after")
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        entries = backend.memory_list(namespace=namespace, prefix=prefix, after=after, limit=limit)
    shown = render.print_rows(
        entries,
        json=json,
        as_dict=entry_dict,
        table=_entries_table,
        empty=f"no entries in namespace {namespace}",
    )
    if shown and len(entries) == limit:
        render.console().print(f"more: --after {entries[-1].key}", style="dim", markup=False)


@app.command("delete")
def delete(
    ctx: typer.Context,
    key: Annotated[
        str, typer.Argument(metavar="KEY", help="The entry's key (with --document: its id).")
    ],
    document: Annotated[
        bool, typer.Option("--document", help="Delete the document with this id instead.")
    ] = False,
    tenant: TenantOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Delete the entry under KEY, or a document (exit 1 if there is none)."""
    with reporting_errors():
        check_namespace(namespace)
        if document:
            check_document_id(key)
        else:
            check_key(key)
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        if document:
            backend.memory_delete_document(key, namespace=namespace)
        else:
            backend.memory_delete(key, namespace=namespace)
    what = "document" if document else "entry"
    render.console().print(f"deleted {what} {key} from namespace {namespace}", markup=False)


@app.command("add")
def add(
    ctx: typer.Context,
    text: Annotated[
        str, typer.Argument(metavar="TEXT", help="The document's text ('-': read it from stdin).")
    ],
    metadata: Annotated[
        str | None,
        typer.Option("--metadata", "-m", metavar="JSON", help="A JSON object kept with it."),
    ] = None,
    document_id: Annotated[
        str | None,
        typer.Option("--id", metavar="ID", help="An id of your own (adding again is a no-op)."),
    ] = None,
    tenant: TenantOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Add a document to search; prints its id."""
    with reporting_errors():
        check_namespace(namespace)
        body = check_text(sys.stdin.read() if text == "-" else text)
        meta = None if metadata is None else _metadata(metadata)
        if document_id is not None:
            check_document_id(document_id)
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        added = backend.memory_add_document(
            body, metadata=meta, namespace=namespace, id=document_id
        )
    if json:
        render.print_json({"id": added, "namespace": namespace})
    else:
        print(added)


def _metadata(text: str) -> dict[str, Any]:
    try:
        found = jsonlib.loads(text)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise ConfigurationError(
            f'--metadata must be a JSON object such as \'{{"source": "call"}}\', not {text!r}',
            field="metadata",
        )
    encode_metadata(found)  # refuse metadata over the limit before connecting
    return found


@app.command("search")
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(metavar="QUERY", help="Words to look for.")],
    tenant: TenantOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help=f"At most this many (1..{MAX_SEARCH}).")
    ] = 5,
    json: JsonOption = False,
    db: DbOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Search the documents of a namespace, best first."""
    with reporting_errors():
        check_namespace(namespace)
        query_words(query)
        check_limit(limit, MAX_SEARCH)
    with connect(ctx, db, url, api_key, tenant=tenant) as backend:
        hits = backend.memory_search(query, namespace=namespace, limit=limit)
    render.print_rows(hits, json=json, as_dict=hit_dict, table=_hits_table, empty="no documents")


@app.command("purge")
def purge(
    ctx: typer.Context,
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant", "-t", metavar="TENANT", help="Only this tenant (default: every tenant)."
        ),
    ] = None,
    json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Delete expired memory (the retention job; on the store only)."""
    with reporting_errors():
        state = ctx.find_object(CliState)
        if state is not None and (state.url is not None or state.api_key is not None):
            raise ConfigurationError(
                "tenantflow memory purge works on the store only (--db), not a server (--url)",
                field="url",
            )

    async def call(engine: ControlPlane) -> dict[str, dict[str, int]]:
        return await engine.memory.purge_expired(tenant)

    purged = read(ctx, db, call)
    if json:
        render.print_json(purged)
        return
    out = render.console()
    if not purged:
        out.print("nothing expired", markup=False)
        return
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("tenant", "entries", "documents", "words"):
        table.add_column(name)
    for owner, rows in sorted(purged.items()):
        table.add_row(
            Text(owner),
            str(rows.get("memory_entries", 0)),
            str(rows.get("memory_documents", 0)),
            str(rows.get("memory_terms", 0)),
        )
    out.print(table)
