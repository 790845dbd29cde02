"""The dashboard as an ASGI app, mounted by :func:`tenantflow.api.create_app` at ``/ui``.

Sign-in exchanges an API key for a session cookie (:mod:`tenantflow.dashboard.sessions`); the
pages are rendered on the server from the same engine calls the REST API makes, scoped to the
session's tenant. Every answer carries a strict Content-Security-Policy: scripts and styles
only from ``/ui/static`` (no inline script or style), no framing, forms only to this origin.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from tenantflow.dashboard import admin, runs, tenant
from tenantflow.dashboard.records import DashboardRecords, records_for
from tenantflow.dashboard.sessions import COOKIE, DEFAULT_TTL, SessionStore
from tenantflow.dashboard.throttle import SignInThrottle
from tenantflow.dashboard.web import (
    HERE,
    CsrfError,
    SignInRequired,
    current_session,
    engine_of,
    error_page,
    read_form,
    redirect,
    render,
    sessions_of,
    tenantflow_error_page,
)
from tenantflow.errors import AuthenticationError, RateLimitedError, TenantflowError
from tenantflow.placement.control import ControlPlane

__all__ = ["CSP", "PREFIX", "create_dashboard"]

PREFIX = "/ui"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""No inline script or style anywhere: a page that gets markup injected still runs none."""

_LOGIN_COOKIE = "tf_login"  # the sign-in form's CSRF token (before there is a session)


def create_dashboard(
    engine: ControlPlane,
    *,
    session_ttl: timedelta = DEFAULT_TTL,
    now: Callable[[], float] | None = None,
    read_only: bool = False,
    throttle: SignInThrottle | None = None,
    records: DashboardRecords | None = None,
) -> FastAPI:
    """The dashboard app of ``engine``; mount it at ``/ui``.

    Args:
        engine: the control plane the REST API serves, however it is placed.
        session_ttl: how long a sign-in lasts.
        now: the sessions' clock (default: the engine's).
        read_only: show everything, change nothing: no action buttons, and every form that
            would change something is refused with 403 (signing in and out still work).
        throttle: failed sign-ins counted per key and per client address (default: 5 per key
            and 20 per address in 5 minutes, on the sessions' clock; see
            :class:`~tenantflow.dashboard.throttle.SignInThrottle`).
        records: where sessions and failed sign-ins are kept (default: the engine's database
            when it is an engine on a store, shared by every process on it; else this
            process's memory; see :mod:`tenantflow.dashboard.records`).
    """
    ui = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    ui.state.engine = engine
    ui.state.read_only = read_only
    records = records if records is not None else records_for(engine)
    ui.state.sessions = SessionStore(records, ttl=session_ttl, now=now or engine.now)
    ui.state.throttle = throttle or SignInThrottle(now=ui.state.sessions.now_s, records=records)
    ui.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    ui.include_router(_auth)
    for module in (runs, tenant, admin):
        ui.include_router(module.router)
    _install(ui)
    return ui


def _install(ui: FastAPI) -> None:
    @ui.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if not request.url.path.startswith(f"{PREFIX}/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def sign_in(request: Request, exc: Exception) -> Response:
        if request.headers.get("HX-Request"):
            return Response(status_code=204, headers={"HX-Redirect": f"{PREFIX}/login"})
        return RedirectResponse(f"{PREFIX}/login", status_code=303)

    async def csrf(request: Request, exc: Exception) -> Response:
        return error_page(request, 403, str(exc))

    async def domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TenantflowError)
        return tenantflow_error_page(request, exc)

    async def invalid(request: Request, exc: Exception) -> Response:
        return error_page(request, 422, "the address has an invalid parameter")

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_page(request, exc.status_code, str(exc.detail))

    ui.add_exception_handler(SignInRequired, sign_in)
    ui.add_exception_handler(CsrfError, csrf)
    ui.add_exception_handler(TenantflowError, domain)
    ui.add_exception_handler(RequestValidationError, invalid)
    ui.add_exception_handler(HTTPException, http)


# -- sign-in ---------------------------------------------------------------------------------

_auth = APIRouter()


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


@_auth.get("/", response_model=None)
async def index(request: Request) -> RedirectResponse:
    session = await current_session(request)
    if session is None:
        return redirect(f"{PREFIX}/login")
    return redirect(f"{PREFIX}/admin/tenants" if session.is_admin else f"{PREFIX}/runs")


def _login_page(request: Request, status_code: int, error: str | None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status_code, login_csrf=token, error=error)
    _cookie(response, request, _LOGIN_COOKIE, token, 600)
    return response


@_auth.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    return _login_page(request, 200, None)


@_auth.post("/login", response_model=None)
async def login(request: Request) -> Response:
    """Exchange the key for a session; the key is not kept (only its id and tenant)."""
    presented = request.cookies.get(_LOGIN_COOKIE)
    body = (await request.body()).decode("utf-8", errors="replace")
    fields = parse_qs(body, keep_blank_values=True, max_num_fields=10)
    token = (fields.get("csrf") or [""])[0]
    if not presented or not secrets.compare_digest(presented, token):
        return _login_page(request, 403, "the sign-in form expired; please try again")
    key = (fields.get("key") or [""])[0].strip()
    engine = engine_of(request)
    throttle: SignInThrottle = request.app.state.throttle
    address = request.client.host if request.client else "unknown"
    try:
        await throttle.check(key, address)
    except RateLimitedError as exc:
        page = _login_page(request, 429, str(exc))
        page.headers["Retry-After"] = str(int(exc.retry_after_s))
        return page
    try:
        principal = await engine.keys.authenticate(key)
    except AuthenticationError as exc:
        await throttle.failed(key, address)
        return _login_page(request, 401, str(exc))
    await throttle.succeeded(key)
    info = await engine.keys.get(principal.tenant_id, principal.key_id)
    sessions = sessions_of(request)
    session_token, _ = await sessions.open(principal, info.name)
    response = redirect(f"{PREFIX}/")
    _cookie(response, request, COOKIE, session_token, int(sessions.ttl_s))
    response.delete_cookie(_LOGIN_COOKIE, path=PREFIX)
    return response


@_auth.post("/logout", response_model=None)
async def logout(request: Request) -> Response:
    session = await current_session(request)
    await read_form(request, session, change=False)
    await sessions_of(request).close(request.cookies.get(COOKIE))
    response = redirect(f"{PREFIX}/login")
    response.delete_cookie(COOKIE, path=PREFIX)
    return response
