"""tenantflow as an MCP server at ``/mcp`` (streamable HTTP; needs ``tenantflow[mcp]``).

An MCP client (an IDE, a chat assistant, another agent) connects with a tenant's API key in
``Authorization: Bearer <key>`` and gets the tenant's tools: ``list_runs``, ``get_run``,
``get_run_timeline``, ``start_run``, ``cancel_run``, ``list_reviews``, ``decide_review`` and
``get_usage``. The scoping is the REST API's: the tenant comes from the key and only from the
key, so a key reaches only its own tenant's runs and reviews (another tenant's run answers
exactly like one that does not exist), and admin keys are refused (an admin key is not a key to
every tenant). A request without a valid key gets a 401 with the API's JSON error body before
any MCP message is read.

The server is stateless (each request stands alone: nothing of a session outlives it), so any
number of API processes can serve ``/mcp`` behind one address.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request

from tenantflow.api.errors import error_response, status_for
from tenantflow.api.schemas import EventOut, ReviewOut, RunOut
from tenantflow.domain.contracts import contract_for
from tenantflow.domain.records import RunStatus
from tenantflow.engine.keys import Principal
from tenantflow.errors import (
    AuthenticationError,
    ConflictError,
    PermissionDeniedError,
    TenantflowError,
)

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from tenantflow.placement import ControlPlane

__all__ = ["MCPEndpoint"]

_PRINCIPAL = "tenantflow_principal"


class _Server(MCPServer[Any]):
    """Answers a refused or failed operation with the API's error code and message (an error
    of the tool's result, for the client to read), as the REST API answers with its JSON body."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, TenantflowError):
                raise ToolError(f"{cause.code}: {cause.message}") from None
            if isinstance(cause, ValueError):  # a bad argument value (e.g. an unknown status)
                raise ToolError(f"invalid_argument: {cause}") from None
            raise


class MCPEndpoint:
    """The ``/mcp`` ASGI endpoint of one engine; :meth:`start` it before serving."""

    def __init__(self, engine: ControlPlane) -> None:
        self._engine = engine
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        server = _Server(
            "tenantflow",
            instructions="Runs, reviews and usage of the tenant whose API key you use.",
            log_level="WARNING",
        )
        self._server = server

        def tenant_of(ctx: Context[Any, Any]) -> str:
            request = ctx.request_context.request
            principal = getattr(getattr(request, "state", None), _PRINCIPAL, None)
            if not isinstance(principal, Principal):
                raise AuthenticationError("this operation needs an API key")
            if principal.tenant_id is None:
                raise PermissionDeniedError(
                    "this operation acts on one tenant's data: use that tenant's API key, not an"
                    " admin key",
                    key_id=principal.key_id,
                )
            return principal.tenant_id

        @server.tool()
        async def list_runs(
            ctx: Context[Any, Any],
            status: str | None = None,
            workflow: str | None = None,
            limit: int = 50,
        ) -> str:
            """The tenant's runs, newest first (optionally of one status or workflow)."""
            tenant = tenant_of(ctx)
            wanted = RunStatus(status) if status else None
            runs = await engine.list_runs(
                tenant, status=wanted, workflow=workflow, limit=max(1, min(limit, 500))
            )
            return _dump([RunOut.of(r).model_dump(mode="json") for r in runs])

        @server.tool()
        async def get_run(ctx: Context[Any, Any], run_id: str) -> str:
            """One run of the tenant: status, result, error, cost."""
            return _dump(
                RunOut.of(await engine.get_run(tenant_of(ctx), run_id)).model_dump(mode="json")
            )

        @server.tool()
        async def get_run_timeline(ctx: Context[Any, Any], run_id: str) -> str:
            """A run's execution log, oldest first."""
            events = await engine.timeline(tenant_of(ctx), run_id)
            return _dump([EventOut.of(e).model_dump(mode="json") for e in events])

        @server.tool()
        async def start_run(
            ctx: Context[Any, Any],
            workflow: str,
            input: Any = None,
            idempotency_key: str | None = None,
        ) -> str:
            """Start a run of a registered workflow for the tenant; returns its id and status
            (the same key again: the same run, ``created`` false)."""
            tenant = tenant_of(ctx)
            handle = await engine.submit(
                workflow, tenant=tenant, input=input, idempotency_key=idempotency_key
            )
            record = await engine.get_run(tenant, handle.id)
            if not handle.created:  # a key names one request, as on the REST API
                spec = engine.workflow(workflow, None)
                _, input_json = contract_for(spec.input_type).check(
                    input, step="<input>", direction="input"
                )
                if record.workflow != spec.name or record.input_json != input_json:
                    raise ConflictError(
                        f"idempotency_key {idempotency_key!r} was used for a different request"
                        f" (run {record.id}); use a new key for a new run",
                        run_id=record.id,
                    )
            return _dump(
                {"id": handle.id, "status": record.status.value, "created": handle.created}
            )

        @server.tool()
        async def cancel_run(ctx: Context[Any, Any], run_id: str, reason: str | None = None) -> str:
            """Cancel one of the tenant's runs (its completed steps are compensated)."""
            record = await engine.cancel(tenant_of(ctx), run_id, reason or "cancelled over MCP")
            return _dump(RunOut.of(record).model_dump(mode="json"))

        @server.tool()
        async def list_reviews(ctx: Context[Any, Any], pool: str | None = None) -> str:
            """The tenant's open review tasks, urgent first, then by SLA."""
            found = await engine.reviews.list(tenant_of(ctx), pool=pool)
            return _dump([ReviewOut.of(r).model_dump(mode="json") for r in found])

        @server.tool()
        async def decide_review(
            ctx: Context[Any, Any],
            review_id: str,
            approve: bool,
            reviewer: str,
            comment: str | None = None,
        ) -> str:
            """Approve or reject one of the tenant's review tasks; the waiting step goes on."""
            if not reviewer.strip():
                raise ValueError("reviewer must name who decides")
            decided = await engine.reviews.decide(
                tenant_of(ctx),
                review_id,
                reviewer=reviewer.strip(),
                approve=approve,
                comment=comment,
            )
            return _dump(ReviewOut.of(decided).model_dump(mode="json"))

        @server.tool()
        async def get_usage(
            ctx: Context[Any, Any], since: str | None = None, until: str | None = None
        ) -> str:
            """The tenant's usage counters per day (tokens, cost, tool and model calls, …)."""
            return _dump(await engine.usage(tenant_of(ctx), since=since, until=until))

        # Every request carries a bearer key (no cookies), so a rebinding page gains nothing:
        # the host check would only refuse the server's own clients behind proxies.
        server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._manager = server.session_manager

    async def start(self) -> None:
        """Start the MCP session manager, in a task of its own (so that it is entered and left
        in one task whichever tasks start and stop it)."""
        started = asyncio.Event()

        async def run() -> None:
            async with self._manager.run():
                started.set()
                await self._stop.wait()

        self._task = asyncio.create_task(run(), name="tenantflow-mcp")
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({self._task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():  # it failed to start: say why
            waiting.cancel()
            self._task.result()

    async def stop(self) -> None:
        """Stop the session manager (no request is served after)."""
        if self._task is not None:
            self._stop.set()
            await self._task

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate the bearer key, then hand the request to the MCP transport."""
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        try:
            if scheme.lower() != "bearer" or not key.strip():
                raise AuthenticationError(
                    "this operation needs an API key: send Authorization: Bearer <key>"
                )
            principal = await self._engine.keys.authenticate(key.strip())
        except TenantflowError as exc:
            body = exc.to_dict()
            status = status_for(exc)
            response = error_response(
                status,
                body.pop("code"),
                body.pop("message"),
                headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
                **body,
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[_PRINCIPAL] = principal
        await self._manager.handle_request(scope, receive, send)


def _dump(value: Any) -> str:
    return json.dumps(value, default=str)
