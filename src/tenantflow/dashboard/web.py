"""What every dashboard page shares: templates, the session of a request, forms and CSRF.

A page never takes a tenant from the URL, a form or a query: the tenant is the signed-in key's,
exactly as the REST API takes it from the bearer key (:mod:`tenantflow.api.auth`), and every
read goes through the same engine calls with it, so another tenant's objects are "not found".
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tenantflow.dashboard.sessions import COOKIE, Session, SessionStore
from tenantflow.errors import NotFoundError, PermissionDeniedError, TenantflowError
from tenantflow.placement.control import ControlPlane

__all__ = [
    "AdminSession",
    "CsrfError",
    "Form",
    "SignInRequired",
    "TenantSession",
    "engine_of",
    "read_form",
    "redirect",
    "render",
    "sessions_of",
]

HERE = Path(__file__).parent

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _usd(micros: int | float | None) -> str:
    if micros is None:
        return "-"
    return f"${micros / 1_000_000:,.4f}"


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "∞"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}"
    return f"{int(value):,}"


_env.filters["when"] = _when
_env.filters["usd"] = _usd
_env.filters["num"] = _num


class SignInRequired(Exception):
    """No live session: the page answers with a redirect to the sign-in page."""


class CsrfError(Exception):
    """A form without this session's CSRF token: refused with 403."""


def engine_of(request: Request) -> ControlPlane:
    engine: ControlPlane = request.app.state.engine
    return engine


def sessions_of(request: Request) -> SessionStore:
    sessions: SessionStore = request.app.state.sessions
    return sessions


async def current_session(request: Request) -> Session | None:
    """The request's live session: its cookie names one, and its key is still active."""
    sessions = sessions_of(request)
    token = request.cookies.get(COOKIE)
    session = await sessions.get(token)
    if session is None:
        return None
    principal = session.principal
    try:
        key = await engine_of(request).keys.get(principal.tenant_id, principal.key_id)
    except NotFoundError:  # the tenant was deleted
        key = None
    if key is None or not key.active:
        await sessions.close(token)
        return None
    return session


async def _any(request: Request) -> Session:
    session = await current_session(request)
    if session is None:
        raise SignInRequired()
    request.state.session = session
    return session


async def _tenant(session: Annotated[Session, Depends(_any)]) -> Session:
    if session.principal.tenant_id is None:
        raise PermissionDeniedError(
            "this page shows one tenant's data: sign in with that tenant's key, not an admin key"
        )
    return session


async def _admin(session: Annotated[Session, Depends(_any)]) -> Session:
    if not session.is_admin:
        raise PermissionDeniedError(
            "this page is the control plane: sign in with an admin key; a tenant key sees only"
            " its own tenant"
        )
    return session


TenantSession = Annotated[Session, Depends(_tenant)]
"""A signed-in tenant key's session (403 for an admin key)."""

AdminSession = Annotated[Session, Depends(_admin)]
"""A signed-in admin key's session (403 for a tenant key)."""


def tenant_of(session: Session) -> str:
    """The session's tenant (a TenantSession always has one)."""
    tenant = session.principal.tenant_id
    if tenant is None:  # pragma: no cover - _tenant refuses admin sessions
        raise PermissionDeniedError("an admin session has no tenant")
    return tenant


class Form:
    """A parsed ``application/x-www-form-urlencoded`` body."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._fields.get(name)
        return values[0] if values else default

    def all(self, name: str) -> list[str]:
        return list(self._fields.get(name, ()))


async def read_form(request: Request, session: Session | None, *, change: bool = True) -> Form:
    """The request's form, after checking its CSRF token against ``session``'s.

    Raises:
        CsrfError: the form has no CSRF token, or not this session's.
        PermissionDeniedError: ``change`` is true and the dashboard is read-only.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise CsrfError("a form must be sent as application/x-www-form-urlencoded")
    body = (await request.body()).decode("utf-8", errors="replace")
    form = Form(parse_qs(body, keep_blank_values=True, max_num_fields=2000))
    if session is None or not session.csrf_ok(form.get("csrf")):
        raise CsrfError("the form's CSRF token is missing or not this session's; reload the page")
    if change and request.app.state.read_only:
        raise PermissionDeniedError(
            "this dashboard is read-only; make changes with the REST API or the command line"
        )
    return form


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context`` plus the request's session and CSRF token."""
    session: Session | None = getattr(request.state, "session", None)
    html = _env.get_template(template).render(
        session=session,
        csrf=session.csrf if session is not None else "",
        path=request.url.path,
        read_only=request.app.state.read_only,
        query=lambda **kw: urlencode({k: v for k, v in kw.items() if v not in (None, "")}),
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


def redirect(url: str) -> RedirectResponse:
    """See Other: after a form, the browser loads ``url`` with GET."""
    return RedirectResponse(url, status_code=303)


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status_code, status=status_code, message=message)


def tenantflow_error_page(request: Request, exc: TenantflowError) -> HTMLResponse:
    from tenantflow.api.errors import status_for

    if isinstance(exc, NotFoundError):
        # Not the id back: another tenant's object and a made-up id read exactly alike.
        kind = str(exc.fields.get("kind") or "page").replace("_", " ")
        return error_page(request, 404, f"No such {kind} here.")
    page = error_page(request, status_for(exc), str(exc))
    retry_after = getattr(exc, "retry_after_s", None)
    if isinstance(retry_after, float) and math.isfinite(retry_after):
        page.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return page
