"""Errors as HTTP answers: one JSON shape, one status per meaning.

Every error answer is ``{"error": {"code", "message", ...fields}}``: a
:class:`~tenantflow.errors.TenantflowError` gives its own ``to_dict()``; request validation,
unknown routes and methods, oversized bodies and unexpected failures are put in the same shape.
This module is where the error tree meets HTTP status codes:

==========================================================  ======  =============
error                                                       status  extra header
==========================================================  ======  =============
AuthenticationError                                          401    WWW-Authenticate
BudgetExceededError                                          402
PermissionDeniedError, NotAllowedError, ResidencyError        403
NotFoundError (also another tenant's object)                 404
ConflictError                                                409
body over the limit                                          413
body not JSON                                                415
request headers over the limit (16 KiB)                      431
ContractError, ConfigurationError, SpecError, bad request    422
RateLimitedError, BackpressureError                          429    Retry-After
StoreUnavailableError, CircuitOpenError                      503    Retry-After
anything else                                                500
==========================================================  ======  =============

A 500 says only ``internal error`` and the request id; the traceback goes to the server log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tenantflow.api.schemas import ErrorOut
from tenantflow.errors import (
    AuthenticationError,
    BackpressureError,
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    ConflictError,
    ContractError,
    NotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    PolicyError,
    RateLimitedError,
    ResidencyError,
    SpecError,
    StoreUnavailableError,
    TenantflowError,
    json_ready,
)

__all__ = [
    "ERROR_RESPONSES",
    "STREAM_ERROR_RESPONSES",
    "error_response",
    "install_error_handlers",
    "internal_error_response",
    "status_for",
]

logger = logging.getLogger("tenantflow.api")

_STATUS: Sequence[tuple[type[TenantflowError], int]] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (ContractError, 422),
    (ConfigurationError, 422),
    (SpecError, 422),
    (BudgetExceededError, 402),
    (RateLimitedError, 429),
    (NotAllowedError, 403),
    (ResidencyError, 403),
    (PolicyError, 403),
    (BackpressureError, 429),
    (StoreUnavailableError, 503),
    (CircuitOpenError, 503),
)
_RETRY_AFTER = (RateLimitedError, BackpressureError, StoreUnavailableError, CircuitOpenError)
_HTTP_CODES = {
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "request_invalid",
    429: "too_many_requests",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in (
        (401, "No valid API key (WWW-Authenticate: Bearer)."),
        (403, "The key may not do this, or the tenant's policy refuses it."),
        (404, "No such object for this tenant."),
        (413, "The request body is over the limit."),
        (415, "The request body is not JSON."),
        (431, "The request headers are over the limit."),
        (422, "The request is invalid; `field` names the offending value."),
        (429, "Over capacity or rate limited; retry after Retry-After seconds."),
        (503, "The store is unreachable; retry after Retry-After seconds."),
    )
}
"""The error answers every /v1 operation may give, for the OpenAPI document."""

STREAM_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": response["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }
    for status, response in ERROR_RESPONSES.items()
}
"""The same, for an operation whose success is not JSON (errors still are)."""


def status_for(exc: TenantflowError) -> int:
    """The HTTP status for an error of the tree (500 for anything without a mapping)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **fields: Any
) -> JSONResponse:
    """An error answer in the one shape (``fields``: any values, made JSON-ready)."""
    body = {"code": code, "message": message, **{k: json_ready(v) for k, v in fields.items()}}
    return JSONResponse({"error": body}, status, headers=headers)


def internal_error_response(request_id: str) -> JSONResponse:
    """The answer to an unexpected failure: nothing about it but the request id."""
    return error_response(500, "internal_error", "internal error", request_id=request_id)


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


async def _tenantflow_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TenantflowError)
    status = status_for(exc)
    if status == 500:
        return _unexpected(request, exc)
    headers: dict[str, str] = {}
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, _RETRY_AFTER):
        headers["Retry-After"] = _retry_after(float(exc.fields.get("retry_after_s", 1.0)))
    return JSONResponse({"error": exc.to_dict()}, status, headers=headers)


def _field_path(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "$"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": _field_path(e.get("loc", ())),
            "message": str(e.get("msg", "")),
            "type": e["type"],
        }
        for e in exc.errors()
    ]
    if not errors:
        return error_response(422, "request_invalid", "the request is invalid")
    first = errors[0]
    message = f"invalid {first['field']}: {first['message']}"
    if first["type"] == "json_invalid":  # its location is a character offset: name the body
        first["field"] = "body"
        message = f"the body is not valid JSON: {first['message']}"
    return error_response(422, "request_invalid", message, field=first["field"], errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI could not read the body (e.g. not UTF-8)
        return error_response(
            422, "request_invalid", f"the body is not valid JSON: {exc.detail}", field="body"
        )
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = str(getattr(request.state, "request_id", "-"))
    logger.error(
        "request %s %s %s failed", request_id, request.method, request.url.path, exc_info=exc
    )
    return internal_error_response(request_id)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the one JSON shape (unexpected ones: see ``RequestGuard``)."""
    app.add_exception_handler(TenantflowError, _tenantflow_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
