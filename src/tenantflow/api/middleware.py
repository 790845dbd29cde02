"""The request guard: request ids, body limits, content types and the last-resort 500.

A pure ASGI middleware (no per-request task or buffering), in front of routing:

* every request gets an id (``X-Request-ID``: the caller's, when it is a short token, else this
  process's next one), echoed in the answer and in any 500 body and log line;
* a body over ``max_body_bytes`` is refused with 413: at once when ``Content-Length`` says so,
  else as soon as the streamed bytes pass the limit (a chunked body cannot slip through);
* a body that is not JSON (``Content-Type`` other than ``application/json`` or ``+json``) is
  refused with 415 — except an HTML form (``application/x-www-form-urlencoded``) posted to the
  dashboard under ``/ui/``;
* an exception nothing else handled becomes a 500 with only the request id; the traceback
  goes to the log.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantflow.api.errors import error_response, internal_error_response

__all__ = ["BodyTooLarge", "RequestGuard"]

logger = logging.getLogger("tenantflow.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_FORMS = "/ui/"  # the dashboard's pages post HTML forms


class BodyTooLarge(HTTPException):
    """The streamed body passed the limit (raised from ``receive``; answered as 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _is_form(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"


class RequestGuard:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Unique per process and request without a system call per request (ids are for
        # logs, not secrets).
        self._prefix = secrets.token_hex(4) + "-"
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else f"{self._prefix}{next(self._ids):x}"
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw_id)]
            await send(message)

        refusal = self._refusal(scope["method"], headers, scope["path"])
        if refusal is not None:
            await refusal(scope, receive, send_with_id)
            return
        limit = self.max_body_bytes
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, receive_limited, send_with_id)
        except Exception:
            logger.exception("request %s %s %s failed", request_id, scope["method"], scope["path"])
            if not started:
                await internal_error_response(request_id)(scope, receive, send_with_id)

    def _refusal(self, method: str, headers: Headers, path: str) -> ASGIApp | None:
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return error_response(
                    422,
                    "request_invalid",
                    "Content-Length is not a number",
                    field="header.content-length",
                )
            if size > self.max_body_bytes:
                return error_response(
                    413,
                    "payload_too_large",
                    f"the request body is over the limit of {self.max_body_bytes} bytes",
                    limit=self.max_body_bytes,
                )
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        content_type = headers.get("content-type", "")
        if (
            method in _WITH_BODY
            and has_body
            and not _is_json(content_type)
            and not (path.startswith(_FORMS) and _is_form(content_type))
        ):
            return error_response(
                415,
                "unsupported_media_type",
                "the request body must be JSON (Content-Type: application/json)",
                field="header.content-type",
            )
        return None
