"""A local OpenAI-compatible HTTP server for tests and demos, on the standard library only.

It serves ``POST …/chat/completions`` on 127.0.0.1 (an ephemeral port) from a background thread,
answers deterministically, can be scripted response by response, and records what it received::

    with OpenAITestServer() as server:
        server.queue(status=429, headers={"Retry-After": "2"})
        provider = OpenAIProvider("local", base_url=server.base_url)
        ...
        assert server.requests[0].headers["idempotency-key"] == "k1"

By default the reply is ``"You said: <last user message>"``, one completion token per word
(capped at ``max_tokens``, then ``finish_reason="length"``), and ``prompt_tokens`` is the
messages' characters / 4, rounded up. ``stream: true`` is answered with server-sent events over
chunked transfer encoding, one word per chunk, and a final usage chunk when the request asks for
it with ``stream_options.include_usage``.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["OpenAITestServer", "RecordedRequest", "ScriptedResponse"]

_STATUSES = {s.value for s in HTTPStatus}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the server received.

    Attributes:
        method: the HTTP method.
        path: the request path.
        headers: header names lower-cased.
        body: the parsed JSON body (``None`` when absent or not JSON).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True, slots=True)
class ScriptedResponse:
    """How to answer one request; see :meth:`OpenAITestServer.queue` for the fields."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    text: str | None = None
    tool_calls: Sequence[tuple[str, Mapping[str, Any]]] = ()
    message: str | None = None
    stream_break_after: int | None = None
    delay_s: float = 0.0


class OpenAITestServer:
    """An OpenAI-compatible chat-completions server running in a background thread.

    Args:
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get a 401.
        host: the interface to bind.
        port: the port; 0 picks a free one.
    """

    def __init__(self, *, api_key: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self.api_key = api_key
        self._address = (host, port)
        self._lock = threading.Lock()
        self._script: deque[ScriptedResponse] = deque()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``: what an OpenAI client takes as its base URL."""
        if self._httpd is None:
            raise RuntimeError("the server is not running; use `with OpenAITestServer() as s:`")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def queue(
        self,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        text: str | None = None,
        tool_calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
        message: str | None = None,
        stream_break_after: int | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Script the answer to the next unscripted request (FIFO; then the default reply).

        Args:
            status: the HTTP status; not 200 gives an OpenAI-style ``{"error": {...}}`` body.
            headers: extra response headers (e.g. ``{"Retry-After": "2"}``).
            text: the reply text instead of the default.
            tool_calls: ``(name, arguments)`` pairs to answer with tool calls.
            message: the error message for a non-200 status.
            stream_break_after: send this many content chunks, then drop the connection (a
                non-streaming reply is cut halfway through its body).
            delay_s: wait this long before answering (for client timeouts).
        """
        scripted = ScriptedResponse(
            status,
            dict(headers or {}),
            text,
            tuple(tool_calls),
            message,
            stream_break_after,
            delay_s,
        )
        with self._lock:
            self._script.append(scripted)

    def start(self) -> OpenAITestServer:
        """Bind and serve in a background thread."""
        httpd = _Server(self._address, _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="openai-test-server"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and join every thread."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.drop_connections()
        httpd.server_close()  # joins the request threads
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next(self) -> ScriptedResponse:
        with self._lock:
            return self._script.popleft() if self._script else ScriptedResponse()


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins them, so no thread outlives the server
    owner: OpenAITestServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    def drop_connections(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                _abort(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is routine here
            super().handle_error(request, client_address)


def _abort(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        owner = self.server.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner._record(RecordedRequest("POST", self.path, headers, body))
        if owner.api_key is not None and headers.get("authorization") != f"Bearer {owner.api_key}":
            self._error(401, "Incorrect API key provided.", {}, code="invalid_api_key")
        elif not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"Unknown path {self.path}.", {})
        elif not isinstance(body, dict) or "model" not in body or "messages" not in body:
            self._error(400, "The body must be a JSON object with 'model' and 'messages'.", {})
        else:
            script = owner._next()
            if script.delay_s and owner._stopping.wait(script.delay_s):
                self._drop()
            elif script.status != 200:
                self._error(script.status, script.message, script.headers)
            elif body.get("stream"):
                self._stream(body, script)
            else:
                self._complete(body, script)

    def do_GET(self) -> None:
        self._error(405, "Only POST /chat/completions is served.", {})

    def _send(self, status: int, headers: Mapping[str, str], payload: bytes, cut: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if cut:
            self.wfile.write(payload[: len(payload) // 2])
            self._drop()
        else:
            self.wfile.write(payload)

    def _drop(self) -> None:
        self.close_connection = True
        _abort(self.connection)

    def _error(
        self, status: int, message: str | None, headers: Mapping[str, str], code: str | None = None
    ) -> None:
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        if status >= 500:
            kind = "server_error"
        text = message or (HTTPStatus(status).phrase if status in _STATUSES else f"HTTP {status}")
        payload = {"error": {"message": text, "type": kind, "param": None, "code": code}}
        self._send(status, headers, json.dumps(payload).encode(), cut=False)

    def _complete(self, body: dict[str, Any], script: ScriptedResponse) -> None:
        words, finish, prompt_tokens, completion_tokens = _reply(body, script)
        message: dict[str, Any] = {"role": "assistant", "content": " ".join(words)}
        if script.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": _calls(script)}
        completion = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(prompt_tokens, completion_tokens),
        }
        payload = json.dumps(completion).encode()
        self._send(200, script.headers, payload, cut=script.stream_break_after is not None)

    def _stream(self, body: dict[str, Any], script: ScriptedResponse) -> None:
        words, finish, prompt_tokens, completion_tokens = _reply(body, script)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in script.headers.items():
            self.send_header(name, value)
        self.end_headers()
        base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": body["model"]}

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            self._chunk(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n")

        event({"role": "assistant", "content": ""})
        deltas: list[dict[str, Any]] = [
            {"content": word if i == 0 else " " + word} for i, word in enumerate(words)
        ]
        if script.tool_calls:
            deltas = []
            for i, call in enumerate(_calls(script)):
                args = call["function"]["arguments"]
                head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
                deltas.append({"tool_calls": [{"index": i, **head}]})
                for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                    deltas.append({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
        for sent, delta in enumerate(deltas):
            if sent == script.stream_break_after:
                self._drop()
                return
            event(delta)
        event({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}
            self._chunk(f"data: {json.dumps(usage)}\n\n")
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _reply(body: dict[str, Any], script: ScriptedResponse) -> tuple[list[str], str, int, int]:
    """The reply's words, its finish reason, and the prompt's and the reply's tokens."""
    messages = body.get("messages") or []
    contents = [m.get("content") or "" for m in messages if isinstance(m, dict)]
    prompt_tokens = math.ceil(sum(len(str(c)) for c in contents) / 4)
    if script.tool_calls:
        return [], "tool_calls", prompt_tokens, math.ceil(len(json.dumps(_calls(script))) / 4)
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = str(users[-1].get("content") or "") if users else ""
    text = script.text if script.text is not None else f"You said: {last}"
    words = text.split()
    limit = int(body.get("max_tokens") or len(words))
    finish = "length" if len(words) > limit else "stop"
    return words[:limit], finish, prompt_tokens, min(limit, len(words))


def _calls(script: ScriptedResponse) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{i}_{name}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(dict(args))},
        }
        for i, (name, args) in enumerate(script.tool_calls)
    ]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
