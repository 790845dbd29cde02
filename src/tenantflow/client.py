"""A typed client of the REST API: what ``tenantflow --url URL …`` talks to.

One method per API operation the command line needs. Each returns the records the engine
returns for the same question (``RunRecord``, ``StepRecord``, ``EventRecord``, ``ReviewRecord``,
``AuditRecord``, ``TenantInfo``…), so what is printed from a server and from the store is the
same. Tenant operations act on the API key's tenant; admin operations need an admin key::

    with Client("http://127.0.0.1:8000", key) as client:
        runs = client.list_runs(status=RunStatus.COMPLETED, limit=10)

Errors come back as the error tree: the API's ``{"error": {"code", "message", ...}}`` is raised
as the :class:`~tenantflow.errors.TenantflowError` subclass that has that ``code``, with the
other fields kept (a code no class has is mapped by HTTP status); a server that cannot be reached
is a :class:`~tenantflow.errors.StoreUnavailableError` naming its URL.

Against a federated deployment (docs/federated.md) ``url`` is the plane's: it answers a tenant's
requests with a redirect to the tenant's cell, which the client follows (same method, body and
key) and remembers, so that its later requests go to the cell without the plane.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from tenantflow import __version__
from tenantflow.domain.audit import AuditRecord, VerifyResult
from tenantflow.domain.memory import DEFAULT_NAMESPACE, MemoryEntry, SearchHit
from tenantflow.domain.policy import DEFAULT_REGIONS, Policy
from tenantflow.domain.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from tenantflow.domain.state import Change
from tenantflow.domain.tenancy import ReviewRecord, ReviewStatus
from tenantflow.engine.engine import StateVersion
from tenantflow.engine.keys import ApiKeyInfo
from tenantflow.engine.operator import Overview, StuckRun, TenantLoad
from tenantflow.engine.run_signals import EventReceipt, SignalReceipt, StartedRun
from tenantflow.engine.runs import Reason, RetryResult
from tenantflow.engine.tenants import TenantInfo
from tenantflow.engine.workers import TenantLease, WorkerInfo
from tenantflow.errors import (
    AuthenticationError,
    BackpressureError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
    TenantflowError,
    brief,
)

__all__ = ["DEFAULT_TIMEOUT", "Client", "error_from_response"]

DEFAULT_TIMEOUT = timedelta(seconds=30)

# The API's page sizes are capped (runs and memory entries 500, tenants and audit rows 1000):
# longer lists are read page by page.
_RUNS_PAGE = 500
_MEMORY_PAGE = 500
_PAGE = 1000


def _codes(cls: type[TenantflowError]) -> Iterator[tuple[str, type[TenantflowError]]]:
    yield cls.code, cls
    for sub in cls.__subclasses__():
        yield from _codes(sub)


_BY_CODE: dict[str, type[TenantflowError]] = dict(_codes(TenantflowError))
_BY_STATUS: dict[int, type[TenantflowError]] = {
    400: ConfigurationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: ConfigurationError,
    415: ConfigurationError,
    422: ConfigurationError,  # "request_invalid": the request broke the API's schema
    429: BackpressureError,
    502: StoreUnavailableError,
    503: StoreUnavailableError,
    504: StoreUnavailableError,
}


def error_from_response(response: httpx.Response) -> TenantflowError:
    """The error an unsuccessful answer stands for.

    Args:
        response: an answer with a 4xx or 5xx status.

    Returns:
        The error class whose ``code`` the body names (by HTTP status when no class has it, or
        when the body is not the API's error shape), with the body's message and fields and the
        ``status``.
    """
    detail: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("error")
    if not isinstance(detail, dict) or not isinstance(detail.get("message"), str):
        cls = _BY_STATUS.get(response.status_code, TenantflowError)
        reason = response.reason_phrase or "error"
        return cls(
            f"the server at {response.request.url.copy_with(query=None)} answered"
            f" {response.status_code} {reason}",
            http_status=response.status_code,
        )
    code = str(detail.get("code", ""))
    cls = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, TenantflowError)
    fields = {k: v for k, v in detail.items() if k not in ("code", "message")}
    fields["http_status"] = response.status_code
    return cls(detail["message"], **fields)


def _checked_url(url: str) -> str:
    """``url`` without its trailing ``/``, if it is an http(s) URL with a host.

    Raises:
        ConfigurationError: it is not (``http://[::1``, ``localhost:8000``, ``ftp://…``, a port
            outside 1..65535).
    """
    text = url.rstrip("/")
    try:
        parsed = httpx.URL(text)
        if parsed.scheme not in ("http", "https"):
            reason = f"the scheme must be http or https, not {brief(parsed.scheme)}"
        elif not parsed.host:
            reason = "it has no host"
        elif parsed.port is not None and not 0 < parsed.port < 65536:
            reason = f"the port must be within 1..65535, not {parsed.port}"
        else:
            parsed.host.encode("idna")  # what name resolution does: a label over 63 fails
            reason = ""
    except (httpx.InvalidURL, ValueError, TypeError) as exc:  # a bad port, bracket or host name
        reason = " ".join(str(exc).split()) or type(exc).__name__
    if reason:
        raise ConfigurationError(
            f"invalid server URL {brief(text)}: {reason} (e.g. http://127.0.0.1:8000)",
            field="url",
            value=text,
        )
    return text


class Client:
    """The REST API of one tenantflow server, called with one API key.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: the key sent as ``Authorization: Bearer <key>``: a tenant's key for tenant
            operations, an admin key for the ``*_tenant(s)`` operations.
        timeout: how long one request may take.
        transport: the HTTP transport (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: timedelta = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = _checked_url(url)
        self._tenant_id: str | None = None
        self._routed: str | None = None  # a federated tenant's cell, once redirected there
        self._http = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"tenantflow-cli/{__version__}",
            },
            timeout=timeout.total_seconds(),
            transport=transport,
        )

    def __repr__(self) -> str:  # never the key
        return f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        response = self._send(method, path, query, body, headers)
        if not response.is_success:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError:
            raise TenantflowError(
                f"the server at {self.url} answered {method} {path} with something that is not"
                " JSON: is it a tenantflow server?",
                url=self.url,
            ) from None

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any],
        body: Any,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        """Send one request, following the redirects of a federated deployment.

        A plane answers a tenant's request ``307``/``308`` to the tenant's cell (and a cell
        that no longer holds a moved tenant answers with its new place): the request is sent
        again there, with the same method, body and key, and the cell's address is kept for
        the next requests — the plane is then out of the path. If the remembered cell cannot
        be reached (connection refused: nothing was sent), the route is forgotten and the
        request goes to ``url`` again, which knows where the tenant lives now.
        """
        refused: Exception | None = None
        for _ in range(_MAX_REDIRECTS):
            base = self._routed or self.url
            target = path if base == self.url else f"{base}{path}"
            try:
                response = self._http.request(
                    method, target, params=query, json=body, headers=headers
                )
            except httpx.InvalidURL as exc:
                raise ConfigurationError(
                    f"invalid server URL {self.url!r}: {exc}", field="url", value=self.url
                ) from None
            except httpx.ConnectError as exc:
                if self._routed is not None:
                    self._routed = None  # the cell moved or is restarting: ask again
                    refused = exc
                    continue
                raise _unreachable(self.url, exc) from exc
            except httpx.TransportError as exc:
                raise _unreachable(base, exc) from exc
            location = response.headers.get("location")
            if response.status_code in (307, 308) and location:
                self._routed = _base_of(location, path)
                continue
            return response
        if refused is not None:
            raise _unreachable(base, refused) from refused
        raise TenantflowError(
            f"too many redirects from {self.url} for {method} {path}", url=self.url
        )

    def _pages(
        self, path: str, params: Mapping[str, Any], cursor: str, start: Any, limit: int, page: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` items of a paged list, following ``next`` as ``?{cursor}=``."""
        items: list[dict[str, Any]] = []
        position = start
        while len(items) < limit:
            found = self._call(
                "GET",
                path,
                params={**params, cursor: position, "limit": min(page, limit - len(items))},
            )
            items.extend(found["items"])
            position = found.get("next")
            if position is None:
                break
        return items

    # -- the caller's tenant -------------------------------------------------------------------

    def tenant(self) -> TenantInfo:
        """The API key's tenant and its policy (``GET /v1/tenant``; 403 for an admin key)."""
        info = _tenant(self._call("GET", "/v1/tenant"))
        self._tenant_id = info.id
        return info

    @property
    def tenant_id(self) -> str:
        """The API key's tenant (asked once)."""
        if self._tenant_id is None:
            return self.tenant().id
        return self._tenant_id

    # -- runs ----------------------------------------------------------------------------------

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[RunRecord]:
        """The tenant's runs, newest first; ``before`` a run id, for paging."""
        params = {"status": None if status is None else status.value, "workflow": workflow}
        items = self._pages("/v1/runs", params, "cursor", before, limit, _RUNS_PAGE)
        return [_run(item) for item in items]

    def get_run(self, run_id: str) -> RunRecord:
        return _run(self._call("GET", f"/v1/runs/{_segment(run_id)}"))

    def submit(
        self,
        workflow: str,
        input: Any,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
    ) -> RunRecord:
        """Submit a run of a registered workflow (the key's tenant); the same
        ``idempotency_key`` returns the same run."""
        body: dict[str, Any] = {"workflow": workflow, "input": input}
        if version is not None:
            body["version"] = version
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        submitted = self._call("POST", "/v1/runs", body=body, headers=headers)
        return self.get_run(str(submitted["id"]))

    def cancel(self, run_id: str, *, reason: str | None = None) -> RunRecord:
        """Cancel a run: its steps stop and completed ones are compensated."""
        body = {"reason": reason} if reason else None
        return _run(self._call("POST", f"/v1/runs/{_segment(run_id)}/cancel", body=body))

    def resume(self, run_id: str) -> RunRecord:
        """Resume a run the budget ladder paused."""
        return _run(self._call("POST", f"/v1/runs/{_segment(run_id)}/resume"))

    def signal(
        self, run_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> SignalReceipt:
        """Send signal ``name`` with ``payload`` (plain JSON, at most 64 KiB) into a run: its
        step waiting for it resumes with the payload (see ``Engine.signal``)."""
        body: dict[str, Any] = {"payload": payload}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        path = f"/v1/runs/{_segment(run_id)}/signals/{_segment(name)}"
        data = self._call("POST", path, body=body)
        return SignalReceipt(
            run_id=str(data["run_id"]),
            name=str(data["name"]),
            signal_id=str(data["signal_id"]),
            duplicate=bool(data["duplicate"]),
            woke=tuple(data["woke"]),
        )

    def publish(self, name: str, event_id: str, data: Any = None) -> EventReceipt:
        """Send event ``name``: a run of every workflow registered to it starts with ``data``
        as its input; the same ``event_id`` again starts nothing (see ``Engine.publish``)."""
        body = {"id": event_id, "data": data}
        out = self._call("POST", f"/v1/events/{_segment(name)}", body=body)
        runs = tuple(StartedRun(r["workflow"], r["run_id"], r["created"]) for r in out["runs"])
        return EventReceipt(str(out["name"]), str(out["id"]), runs)

    def retry(
        self, run_id: str, *, from_start: bool = False, reason: str | None = None
    ) -> RetryResult:
        """Retry a failed, cancelled or compensated run from its failed step (completed steps'
        outputs kept), or ``from_start`` as a new run with the same input."""
        body: dict[str, Any] = {"from_start": from_start}
        if reason:
            body["reason"] = reason
        return _retry(self._call("POST", f"/v1/runs/{_segment(run_id)}/retry", body=body))

    def retry_many(
        self,
        *,
        status: RunStatus = RunStatus.FAILED,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        from_start: bool = False,
        reason: str | None = None,
    ) -> list[RetryResult]:
        """Retry the tenant's runs that ended in ``status`` within the window (the earliest to
        end first, up to ``limit``); one result per run."""
        body: dict[str, Any] = {
            "status": status.value,
            "limit": limit,
            "from_start": from_start,
            "workflow": workflow,
            "since": None if since is None else since.isoformat(),
            "until": None if until is None else until.isoformat(),
            "reason": reason,
        }
        found = self._call(
            "POST", "/v1/runs/retry", body={k: v for k, v in body.items() if v is not None}
        )
        return [_retry(item) for item in found["items"]]

    def why(self, run_id: str) -> list[Reason]:
        """Why the run (and each unfinished step) is not progressing now."""
        found = self._call("GET", f"/v1/runs/{_segment(run_id)}/why")
        return [_reason(r) for r in found["reasons"]]

    def schedules(self) -> list[dict[str, Any]]:
        """The tenant's schedules: name, workflow, every_s or cron, overlap, catchup, next_at,
        last_at, last_run_id (times ISO-8601)."""
        return list(self._call("GET", "/v1/schedules")["items"])

    def create_schedule(
        self,
        name: str,
        workflow: str,
        input: Any = None,
        *,
        every_s: float | None = None,
        cron: str | None = None,
        at: datetime | None = None,
        overlap: str = "skip",
        catchup: int = 1,
        lane: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Make a durable schedule for the tenant: exactly one of ``every_s``, ``cron`` (five
        fields, UTC) and ``at`` (once). The schedule as listed by :meth:`schedules`."""
        body: dict[str, Any] = {
            "name": name,
            "workflow": workflow,
            "input": input,
            "every_s": every_s,
            "cron": cron,
            "at": None if at is None else at.isoformat(),
            "overlap": overlap,
            "catchup": catchup,
            "lane": lane,
            "version": version,
        }
        body = {k: v for k, v in body.items() if v is not None or k == "input"}
        return dict(self._call("POST", "/v1/schedules", body=body))

    def pause_schedule(self, name: str) -> dict[str, Any]:
        """Stop a durable schedule firing (resume makes up, bounded by its catchup)."""
        return dict(self._call("POST", f"/v1/schedules/{_segment(name)}/pause"))

    def resume_schedule(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/schedules/{_segment(name)}/resume"))

    def delete_schedule(self, name: str) -> None:
        """Delete a durable schedule (its runs are left as they are)."""
        self._call("DELETE", f"/v1/schedules/{_segment(name)}")

    def submit_later(
        self,
        workflow: str,
        input: Any,
        *,
        start_at: datetime | None = None,
        delay_s: float | None = None,
        version: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """A delayed start (``start_at`` or ``delay_s``): a durable one-shot schedule that
        submits the run then. ``{"schedule", "workflow", "start_at", "created"}``; a time
        already come submits at once and gives ``{"id", "status", ...}`` of the run."""
        body: dict[str, Any] = {"workflow": workflow, "input": input}
        if start_at is not None:
            body["start_at"] = start_at.isoformat()
        if delay_s is not None:
            body["delay_s"] = delay_s
        if version is not None:
            body["version"] = version
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return dict(self._call("POST", "/v1/runs", body=body, headers=headers))

    def steps(self, run_id: str) -> list[StepRecord]:
        found = self._call("GET", f"/v1/runs/{_segment(run_id)}/steps")
        return [_step(self.tenant_id, run_id, item) for item in found["items"]]

    def timeline(self, run_id: str) -> list[EventRecord]:
        """The run's execution log, oldest first."""
        found = self._call("GET", f"/v1/runs/{_segment(run_id)}/timeline")
        return [_event(self.tenant_id, run_id, item) for item in found["items"]]

    def state(self, run_id: str, version: int | None = None) -> StateVersion:
        """The run's state at ``version`` (the latest when None)."""
        body = self._call("GET", f"/v1/runs/{_segment(run_id)}/state", params={"version": version})
        return _state(body)

    def diff(self, run_id: str, a: int, b: int) -> list[Change]:
        """What changed in the run's state between versions ``a`` and ``b``."""
        body = self._call("GET", f"/v1/runs/{_segment(run_id)}/state/diff", params={"a": a, "b": b})
        return [
            Change(path=c["path"], kind=c["kind"], before=c.get("before"), after=c.get("after"))
            for c in body["items"]
        ]

    # -- reviews -------------------------------------------------------------------------------

    def list_reviews(
        self,
        *,
        pool: str | None = None,
        statuses: Sequence[ReviewStatus] | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        """Review tasks in queue order; open ones (pending, claimed) when ``statuses`` is None."""
        params = {
            "pool": pool,
            "status": None if statuses is None else [s.value for s in statuses],
            "limit": limit,
        }
        found = self._call("GET", "/v1/reviews", params=params)
        return [_review(self.tenant_id, item) for item in found["items"]]

    def get_review(self, review_id: str) -> ReviewRecord:
        return _review(self.tenant_id, self._call("GET", f"/v1/reviews/{_segment(review_id)}"))

    def claim_review(self, review_id: str, *, reviewer: str) -> ReviewRecord:
        body = self._call(
            "POST", f"/v1/reviews/{_segment(review_id)}/claim", body={"reviewer": reviewer}
        )
        return _review(self.tenant_id, body)

    def decide_review(
        self, review_id: str, *, reviewer: str, approve: bool, comment: str | None = None
    ) -> ReviewRecord:
        """Approve or reject; the server resumes the waiting step."""
        body = self._call(
            "POST",
            f"/v1/reviews/{_segment(review_id)}/decide",
            body={"reviewer": reviewer, "approve": approve, "comment": comment},
        )
        return _review(self.tenant_id, body)

    # -- usage, budget, audit ------------------------------------------------------------------

    def usage(self, *, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Usage counters per day (``day``, ``metric``, ``dim``, ``value``); days YYYY-MM-DD."""
        found = self._call("GET", "/v1/usage", params={"since": since, "until": until})
        return [
            {"day": r["day"], "metric": r["metric"], "dim": r["dim"], "value": r["value"]}
            for r in found["items"]
        ]

    def budget(self) -> list[dict[str, Any]]:
        """Budget ledgers: scope, unit, period, limit, spent, reserved, overrun, period_start."""
        found = self._call("GET", "/v1/budget")
        return [
            {**row, "period_start": _ts_or_none(row.get("period_start"))} for row in found["items"]
        ]

    def audit_log(self) -> list[AuditRecord]:
        """The tenant's audit rows, oldest first."""
        items = self._pages("/v1/audit", {}, "after", 0, 2**62, _PAGE)
        tenant = self.tenant_id
        return [AuditRecord(tenant_id=tenant, **{**item, "ts": _ts(item["ts"])}) for item in items]

    def audit_verify(self) -> VerifyResult:
        """The check of the tenant's audit hash chain."""
        body = self._call("GET", "/v1/audit/verify")
        return VerifyResult(
            ok=body["ok"],
            checked=body["checked"],
            first_bad_seq=body.get("first_bad_seq"),
            reason=body.get("reason") or "",
        )

    # -- agent memory --------------------------------------------------------------------------

    def _memory(self, namespace: str, *parts: str) -> str:
        return "/".join(["/v1/memory", _segment(namespace), *(_segment(p) for p in parts)])

    def memory_get(self, key: str, *, namespace: str = DEFAULT_NAMESPACE) -> MemoryEntry:
        """The entry under ``key`` (NotFoundError if there is none)."""
        body = self._call("GET", self._memory(namespace, "entries", key))
        return _memory_entry(self.tenant_id, body)

    def memory_put(
        self, key: str, value: Any, *, namespace: str = DEFAULT_NAMESPACE
    ) -> MemoryEntry:
        """Store ``value`` (JSON) under ``key``; the entry as committed."""
        body = self._call("PUT", self._memory(namespace, "entries", key), body={"value": value})
        return _memory_entry(self.tenant_id, body)

    def memory_delete(self, key: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Delete the entry under ``key`` (NotFoundError if there is none)."""
        self._call("DELETE", self._memory(namespace, "entries", key))

    def memory_list(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[MemoryEntry]:
        """Entries by key: only keys starting with ``prefix``, after the key ``after``."""
        path = self._memory(namespace, "entries")
        items = self._pages(path, {"prefix": prefix}, "cursor", after, limit, _MEMORY_PAGE)
        tenant = self.tenant_id
        return [_memory_entry(tenant, item) for item in items]

    def memory_add_document(
        self,
        text: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        id: str | None = None,
    ) -> str:
        """Store a document for search; its id."""
        body = {"text": text, "metadata": None if metadata is None else dict(metadata), "id": id}
        found = self._call("POST", self._memory(namespace, "documents"), body=body)
        return str(found["id"])

    def memory_delete_document(self, id: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Delete a document (NotFoundError if there is none)."""
        self._call("DELETE", self._memory(namespace, "documents", id))

    def memory_search(
        self, query: str, *, namespace: str = DEFAULT_NAMESPACE, limit: int = 5
    ) -> list[SearchHit]:
        """Documents matching ``query``, best first."""
        found = self._call(
            "GET", self._memory(namespace, "search"), params={"q": query, "limit": limit}
        )
        tenant = self.tenant_id
        return [_search_hit(tenant, item) for item in found["items"]]

    # -- tenants (admin) -----------------------------------------------------------------------

    def overview(self, *, stuck_after: timedelta = timedelta(hours=1), top: int = 10) -> Overview:
        """Runs by status across tenants, the top tenants, stuck runs (admin)."""
        body = self._call(
            "GET",
            "/v1/operator/overview",
            params={"stuck_after_s": stuck_after.total_seconds(), "top": top},
        )
        return Overview(
            at=_ts(body["at"]),
            by_status=dict(body["by_status"]),
            tenants=[
                TenantLoad(
                    t["tenant_id"], dict(t["runs"]), t["spend_micros"], t["rate_limit_waits"]
                )
                for t in body["tenants"]
            ],
            top_queued=list(body["top_queued"]),
            top_spend=list(body["top_spend"]),
            top_rate_limited=list(body["top_rate_limited"]),
            stuck=[
                StuckRun(
                    s["tenant_id"],
                    s["run_id"],
                    s["workflow"],
                    s["status"],
                    _ts(s["updated_at"]),
                    float(s["idle_s"]),
                    tuple(_reason(r) for r in s["reasons"]),
                )
                for s in body["stuck"]
            ],
            stuck_after_s=float(body["stuck_after_s"]),
            capped=bool(body["capped"]),
        )

    # -- a tenant's API keys (admin) ------------------------------------------------------------

    def _keys(self, tenant_id: str, *parts: str) -> str:
        return "/".join(["/v1/tenants", _segment(tenant_id), "keys", *map(_segment, parts)])

    def create_key(self, tenant_id: str, *, name: str = "default") -> tuple[ApiKeyInfo, str]:
        """A new key of the tenant and its secret (shown this once)."""
        body = self._call("POST", self._keys(tenant_id), body={"name": name})
        return _key(body["key"]), str(body["secret"])

    def list_keys(self, tenant_id: str) -> list[ApiKeyInfo]:
        """The tenant's keys, revoked ones included, never their secrets."""
        return [_key(k) for k in self._call("GET", self._keys(tenant_id))["items"]]

    def revoke_key(self, tenant_id: str, key_id: str) -> ApiKeyInfo:
        return _key(self._call("DELETE", self._keys(tenant_id, key_id)))

    def rotate_key(self, tenant_id: str, key_id: str) -> tuple[ApiKeyInfo, str]:
        """Revoke the key and create its successor; the new secret is shown this once."""
        body = self._call("POST", self._keys(tenant_id, key_id, "rotate"))
        return _key(body["key"]), str(body["secret"])

    def workers(self) -> list[WorkerInfo]:
        """The cluster's workers, their heartbeats and the tenants they drive (admin)."""
        found = self._call("GET", "/v1/workers")
        return [
            WorkerInfo(
                id=w["id"],
                live=bool(w["live"]),
                started_at=_ts_or_none(w.get("started_at")),
                beat_at=_ts_or_none(w.get("beat_at")),
                slots=w.get("slots"),
                tenants=tuple(
                    TenantLease(t["tenant_id"], _ts(t["expires_at"])) for t in w["tenants"]
                ),
            )
            for w in found["items"]
        ]

    def list_tenants(self) -> list[TenantInfo]:
        """Every tenant, by id."""
        items = self._pages("/v1/tenants", {}, "cursor", None, 2**62, _PAGE)
        return [_tenant(item) for item in items]

    def get_tenant(self, tenant_id: str) -> TenantInfo:
        return _tenant(self._call("GET", f"/v1/tenants/{_segment(tenant_id)}"))

    def create_tenant(
        self,
        tenant_id: str,
        *,
        tier: str,
        org_id: str | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> TenantInfo:
        """Register a tenant: the ``tier`` preset with ``policy`` fields overridden."""
        body = {"id": tenant_id, "tier": tier, "org_id": org_id, "policy": dict(policy or {})}
        return _tenant(self._call("POST", "/v1/tenants", body=body))

    def update_tenant(self, tenant_id: str, policy: Mapping[str, Any]) -> TenantInfo:
        """Change policy fields: a new policy version."""
        body = {"policy": dict(policy)}
        return _tenant(self._call("PATCH", f"/v1/tenants/{_segment(tenant_id)}", body=body))

    def delete_tenant(self, tenant_id: str, *, purge_audit: bool = False) -> dict[str, Any]:
        """Purge the tenant: rows ``deleted`` and rows ``left`` (all zero) per table."""
        body = self._call(
            "DELETE",
            f"/v1/tenants/{_segment(tenant_id)}",
            params={"purge_audit": "true" if purge_audit else "false"},
        )
        return {"deleted": body["deleted"], "left": body["left"]}


# -- the API's JSON as records -------------------------------------------------------------------


def _segment(value: str) -> str:
    """An id as one path segment: a '/' or '?' in it must not change the route."""
    return quote(value, safe="")


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _ts_or_none(value: str | None) -> float | None:
    return None if value is None else _ts(value)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _run(body: dict[str, Any]) -> RunRecord:
    status = RunStatus(body["status"])
    result = body.get("result")
    return RunRecord(
        id=body["id"],
        tenant_id=body["tenant_id"],
        workflow=body["workflow"],
        workflow_version=body["workflow_version"],
        status=status,
        input_json=_dumps(body.get("input")),
        created_at=_ts(body["created_at"]),
        updated_at=_ts(body["updated_at"]),
        lane=body["lane"],
        state_version=body["state_version"],
        state_hash=body["state_hash"],
        # A completed run always has a result, even a null one.
        result_json=None if result is None and status != RunStatus.COMPLETED else _dumps(result),
        error=body.get("error"),
        idempotency_key=body.get("idempotency_key"),
        parent_run_id=body.get("parent_run_id"),
        finished_at=_ts_or_none(body.get("finished_at")),
        meta=dict(body.get("meta") or {}),
    )


def _key(body: dict[str, Any]) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=body["id"],
        tenant_id=body.get("tenant_id"),
        name=body["name"],
        prefix=body["prefix"],
        created_at=_ts(body["created_at"]),
        revoked_at=_ts_or_none(body.get("revoked_at")),
    )


def _reason(r: dict[str, Any]) -> Reason:
    return Reason(r.get("step"), r["kind"], r["message"], dict(r.get("detail") or {}))


def _retry(body: dict[str, Any]) -> RetryResult:
    run = body.get("run")
    return RetryResult(
        run_id=body["run_id"],
        ok=bool(body["ok"]),
        mode=body["mode"],
        run=None if run is None else _run(run),
        error=body.get("error"),
    )


def _step(tenant_id: str, run_id: str, body: dict[str, Any]) -> StepRecord:
    output = body.get("output")
    return StepRecord(
        run_id=run_id,
        tenant_id=tenant_id,
        key=body["key"],
        status=StepStatus(body["status"]),
        attempt=body["attempt"],
        output_json=None if output is None else _dumps(output),
        error=body.get("error"),
        version=body.get("state_version"),
        started_at=_ts_or_none(body.get("started_at")),
        finished_at=_ts_or_none(body.get("finished_at")),
    )


def _event(tenant_id: str, run_id: str, body: dict[str, Any]) -> EventRecord:
    return EventRecord(
        id=body["id"],
        tenant_id=tenant_id,
        run_id=run_id,
        ts=_ts(body["ts"]),
        kind=body["kind"],
        step=body.get("step"),
        attempt=body.get("attempt"),
        data=body.get("data") or {},
    )


def _state(body: dict[str, Any]) -> StateVersion:
    return StateVersion(
        run_id=body["run_id"],
        version=body["version"],
        parent=body.get("parent"),
        step=body.get("step"),
        hash=body["hash"],
        created_at=_ts(body["created_at"]),
        state=body["state"],
    )


def _review(tenant_id: str, body: dict[str, Any]) -> ReviewRecord:
    return ReviewRecord(
        id=body["id"],
        tenant_id=tenant_id,
        run_id=body["run_id"],
        step=body["step"],
        pool=body["pool"],
        lane=body["lane"],
        status=ReviewStatus(body["status"]),
        sla_due=_ts_or_none(body.get("sla_due")),
        created_at=_ts(body["created_at"]),
        payload=body.get("payload") or {},
        claimed_by=body.get("claimed_by"),
        decided_by=body.get("decided_by"),
        comment=body.get("comment"),
        decided_at=_ts_or_none(body.get("decided_at")),
        escalations=body.get("escalations", 0),
    )


def _memory_entry(tenant_id: str, body: dict[str, Any]) -> MemoryEntry:
    return MemoryEntry(
        tenant_id=tenant_id,
        namespace=body["namespace"],
        key=body["key"],
        value=body.get("value"),
        version=body["version"],
        created_at=_ts(body["created_at"]),
        updated_at=_ts(body["updated_at"]),
        expires_at=_ts_or_none(body.get("expires_at")),
    )


def _search_hit(tenant_id: str, body: dict[str, Any]) -> SearchHit:
    return SearchHit(
        tenant_id=tenant_id,
        namespace=body["namespace"],
        id=body["id"],
        text=body["text"],
        metadata=body.get("metadata") or {},
        score=float(body["score"]),
        created_at=_ts(body["created_at"]),
        expires_at=_ts_or_none(body.get("expires_at")),
    )


def _tenant(body: dict[str, Any]) -> TenantInfo:
    policy = body["policy"]
    # The server checked the region against the regions it serves, which may be more than the
    # default ones this process knows.
    region = policy.get("region")
    known = DEFAULT_REGIONS | ({region} if isinstance(region, str) else set())
    return TenantInfo(
        id=body["id"],
        org_id=body.get("org_id"),
        policy=Policy.model_validate(policy, context={"known_regions": known}),
        policy_version=body["policy_version"],
        created_at=_ts(body["created_at"]),
        updated_at=_ts(body["updated_at"]),
        store=body["store"],
    )


_MAX_REDIRECTS = 5


def _base_of(location: str, path: str) -> str:
    """The base URL a redirect names: ``location`` up to where the request's ``path`` starts
    (a redirect keeps the path), else its origin.

    Raises:
        ConfigurationError: the location is not an http(s) URL.
    """
    parsed = httpx.URL(location)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(
            f"the server redirected to {brief(location)}, not an http(s) URL", field="location"
        )
    head = location.split("?", 1)[0]
    if path and head.endswith(path):
        return _checked_url(head[: -len(path)])
    return _checked_url(f"{parsed.scheme}://{parsed.netloc.decode('ascii')}")


def _unreachable(url: str, exc: Exception) -> StoreUnavailableError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return StoreUnavailableError(f"cannot reach the tenantflow server at {url}: {reason}", url=url)
