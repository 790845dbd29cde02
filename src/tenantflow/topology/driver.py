"""The load driver: tenants, submissions, policy changes and reads over the REST API.

Every submission carries an ``Idempotency-Key`` and is retried — while the API is unreachable
or answers 5xx, for as long as the phase allows — so that a front restarting after a kill does
not lose a run the client meant to submit, and a retry never creates a second one. The driver
keeps, per submission, when it was first tried and when it was acknowledged; the runs' own
records (status, created, finished) come from the API once the phase has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from tenantflow.topology.workload import TenantPlan, Workload, poisson_times

__all__ = ["Driver", "RunInfo", "Submission"]

TERMINAL = frozenset({"completed", "failed", "compensated", "cancelled"})
UNFINISHED = ("running", "queued", "compensating", "cancelling", "paused")


@dataclass(slots=True)
class Submission:
    """One run the driver submitted (or tried to)."""

    tenant: str
    key: str
    phase: str
    first_try: float
    acked: float | None = None
    run_id: str | None = None
    refused: str | None = None
    tries: int = 0


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run's record as the API reports it."""

    id: str
    tenant: str
    status: str
    created_at: float
    finished_at: float | None
    idempotency_key: str | None


def _ts(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


@dataclass
class Driver:
    """Talks to one deployment's API (see the module docstring)."""

    base_url: str
    admin_key: str
    workload: Workload
    on_progress: Callable[[str], None] = lambda _text: None
    keys: dict[str, str] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)
    idempotency_keys: bool = True
    """The placement takes ``Idempotency-Key``; without it (the mesh), a submission is retried
    only when its connection was refused (the request never arrived), so that a retry never
    creates a second run: a submission whose answer was lost counts as refused."""
    submissions: list[Submission] = field(default_factory=list)
    _http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Driver:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        # 30 s: a loaded 2-core machine can hold an answer for more than 10 s.
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=30.0, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None
        return self._http

    def _auth(self, tenant: str | None) -> dict[str, str]:
        key = self.admin_key if tenant is None else self.keys[tenant]
        return {"Authorization": f"Bearer {key}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        tenant: str | None,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        retry_until: float | None = None,
        unsafe: bool = False,
    ) -> Any:
        """One API call; retried on transport errors and 5xx until ``retry_until`` (a
        ``time.monotonic()`` deadline; None: one try). RuntimeError with the answer otherwise.

        A federated plane answers a tenant's request ``307`` to the tenant's cell: the driver
        follows it by hand with the same method, body and key (httpx drops the key when the
        port changes), and sends the tenant's later requests to that cell directly.

        ``unsafe``: the request must not be sent twice; only a refused connection is retried."""
        hops = 0
        while True:
            route = self.routes.get(tenant) if tenant is not None else None
            url = f"{route}{path}" if route else path
            try:
                response = await self.http.request(
                    method,
                    url,
                    json=body,
                    params=params,
                    headers={**self._auth(tenant), **(headers or {})},
                )
                location = response.headers.get("location")
                if response.status_code in (307, 308) and location and tenant is not None:
                    hops += 1
                    if hops > 5:
                        raise RuntimeError(f"{method} {path}: too many redirects")
                    self.routes[tenant] = _origin(location)
                    continue
                if response.status_code < 500:
                    if response.is_success:
                        return response.json()
                    raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
                problem = f"{response.status_code}"
                if unsafe:
                    raise RuntimeError(f"{method} {path}: {problem} {response.text[:200]}")
            except httpx.TransportError as exc:
                problem = type(exc).__name__
                if unsafe and not isinstance(exc, httpx.ConnectError):
                    raise RuntimeError(f"{method} {path}: {problem} (not retried)") from None
            if retry_until is None or time.monotonic() > retry_until:
                raise RuntimeError(f"{method} {path}: {problem}")
            await asyncio.sleep(0.05)

    # -- tenants -------------------------------------------------------------------------------

    async def provision(self, tenant: TenantPlan, deadline: float) -> float:
        """Create the tenant and its key, submit one run and wait for it; the seconds it took
        (the tenant's provisioning time: created → first run done)."""
        start = time.monotonic()
        body = {"id": tenant.id, "tier": tenant.tier, "policy": tenant.policy}
        try:
            await self.call("POST", "/v1/tenants", tenant=None, body=body, retry_until=deadline)
        except RuntimeError as exc:
            # A try whose answer was lost (a timeout on a loaded machine) may have created it:
            # the retry's 409 is then this driver's own tenant, if it reads back as created.
            if ": 409 " not in str(exc):
                raise
            found = await self.call(
                "GET", f"/v1/tenants/{tenant.id}", tenant=None, retry_until=deadline
            )
            policy = found.get("policy") or {}
            if found.get("id") != tenant.id or policy.get("tier") != tenant.tier:
                raise
        created = await self.call(
            "POST", f"/v1/tenants/{tenant.id}/keys", tenant=None, body={}, retry_until=deadline
        )
        self.keys[tenant.id] = created["secret"]
        sub = await self.submit(tenant.id, "provision", 0, deadline)
        if sub.run_id is None:
            raise RuntimeError(
                f"provisioning {tenant.id}: its first run was refused: {sub.refused}"
            )
        while time.monotonic() < deadline:
            run = await self.call(
                "GET", f"/v1/runs/{sub.run_id}", tenant=tenant.id, retry_until=deadline
            )
            if run["status"] in TERMINAL:
                return time.monotonic() - start
            await asyncio.sleep(0.02)
        raise RuntimeError(f"provisioning {tenant.id}: its first run did not finish")

    async def set_policy(self, tenant: str, overrides: dict[str, Any], deadline: float) -> float:
        """Write a policy change; the wall time the API acknowledged it."""
        body = {"policy": overrides}
        await self.call(
            "PATCH", f"/v1/tenants/{tenant}", tenant=None, body=body, retry_until=deadline
        )
        return time.time()

    # -- submissions ---------------------------------------------------------------------------

    async def submit(self, tenant: str, phase: str, seq: int, deadline: float) -> Submission:
        sub = Submission(tenant, f"{phase}-{tenant}-{seq}", phase, time.time())
        self.submissions.append(sub)
        body = {"workflow": self.workload.workflow, "input": {"i": seq}}
        while True:
            sub.tries += 1
            try:
                found = await self.call(
                    "POST",
                    "/v1/runs",
                    tenant=tenant,
                    body=body,
                    headers={"Idempotency-Key": sub.key} if self.idempotency_keys else {},
                    retry_until=deadline,
                    unsafe=not self.idempotency_keys,
                )
            except RuntimeError as exc:
                sub.refused = str(exc)[:200]
                return sub
            sub.run_id = found["id"]
            sub.acked = time.time()
            return sub

    async def open_loop(
        self,
        tenants: Sequence[str],
        rate: float,
        seconds: float,
        phase: str,
        seed: int,
        *,
        stop: asyncio.Event | None = None,
    ) -> list[Submission]:
        """Each tenant submits as a Poisson process of ``rate`` for ``seconds``, or until
        ``stop`` is set (the arrivals due after it are not submitted): the same seed gives the
        same arrivals whatever the length."""
        start = time.monotonic()
        deadline = start + seconds + self.workload.settings.drain_timeout
        tasks: list[asyncio.Task[Submission | None]] = []

        async def one(tenant: str, seq: int, at: float) -> Submission | None:
            delay = max(0.0, start + at - time.monotonic())
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return None
            return await self.submit(tenant, phase, seq, deadline)

        for n, tenant in enumerate(tenants):
            for seq, at in enumerate(poisson_times(rate, seconds, seed * 1009 + n)):
                tasks.append(asyncio.create_task(one(tenant, seq, at)))
        ticker = asyncio.create_task(
            self._tick(phase, tasks, start, None if stop is not None else seconds)
        )
        try:
            return [s for s in await asyncio.gather(*tasks) if s is not None]
        finally:
            ticker.cancel()

    async def _tick(
        self,
        phase: str,
        tasks: Sequence[asyncio.Task[Submission | None]],
        start: float,
        seconds: float | None,
    ) -> None:
        while True:
            done = sum(1 for t in tasks if t.done())
            elapsed = time.monotonic() - start
            if seconds is None:
                self.on_progress(f"{phase}: {elapsed:4.1f}s, {done} submitted")
            else:
                self.on_progress(
                    f"{phase}: {elapsed:4.1f}/{seconds:g}s, {done}/{len(tasks)} submitted"
                )
            await asyncio.sleep(0.5)

    async def probe(self, tenants: Sequence[str], phase: str) -> list[Submission]:
        """One submission per tenant, all at once."""
        deadline = time.monotonic() + self.workload.settings.drain_timeout
        return list(
            await asyncio.gather(*(self.submit(t, f"{phase}-probe", 0, deadline) for t in tenants))
        )

    async def batch(
        self, tenant: str, count: int, phase: str, *, first: int = 0
    ) -> list[Submission]:
        """``count`` submissions from ``tenant`` at once (16 in flight)."""
        deadline = time.monotonic() + self.workload.settings.drain_timeout
        gate = asyncio.Semaphore(16)

        async def one(seq: int) -> Submission:
            async with gate:
                return await self.submit(tenant, phase, seq, deadline)

        return list(await asyncio.gather(*(one(first + i) for i in range(count))))

    # -- reads ---------------------------------------------------------------------------------

    async def unfinished(self, tenant: str, deadline: float) -> int:
        """The tenant's runs in the first unfinished status that has any (0: none in any):
        one read per status, stopping at the first that answers some."""
        for status in UNFINISHED:
            page = await self.call(
                "GET",
                "/v1/runs",
                tenant=tenant,
                params={"status": status, "limit": 500},
                retry_until=deadline,
            )
            if page["items"]:
                return len(page["items"])
        return 0

    async def drain(self, tenants: Iterable[str], phase: str, timeout_s: float) -> bool:
        """Until no run of ``tenants`` is unfinished (True), or ``timeout_s`` passed (False)."""
        start = time.monotonic()
        deadline = start + timeout_s
        waiting = set(tenants)
        while waiting and time.monotonic() < deadline:
            counts = await asyncio.gather(*(self.unfinished(t, deadline) for t in waiting))
            waiting = {t for t, n in zip(list(waiting), counts, strict=True) if n}
            self.on_progress(f"{phase}: draining, {len(waiting)} tenants with runs unfinished")
            if waiting:
                await asyncio.sleep(0.3)
        return not waiting

    async def runs(self, tenant: str, since: float, deadline: float) -> list[RunInfo]:
        """The tenant's runs created at or after ``since`` (wall time)."""
        out: list[RunInfo] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = await self.call(
                "GET", "/v1/runs", tenant=tenant, params=params, retry_until=deadline
            )
            older = False
            for item in page["items"]:
                created = _ts(item["created_at"]) or 0.0
                if created < since:
                    older = True
                    break
                out.append(
                    RunInfo(
                        item["id"],
                        tenant,
                        item["status"],
                        created,
                        _ts(item.get("finished_at")),
                        item.get("idempotency_key"),
                    )
                )
            cursor = page.get("next")
            if older or not cursor:
                return out

    async def all_runs(self, tenants: Iterable[str], since: float) -> dict[str, RunInfo]:
        deadline = time.monotonic() + self.workload.settings.drain_timeout
        found = await asyncio.gather(*(self.runs(t, since, deadline) for t in tenants))
        return {r.id: r for rs in found for r in rs}

    async def timeline(self, tenant: str, run_id: str) -> tuple[float, list[dict[str, Any]]]:
        """A run's timeline and the seconds it took to assemble it over the API."""
        start = time.perf_counter()
        deadline = time.monotonic() + self.workload.settings.drain_timeout
        body = await self.call(
            "GET", f"/v1/runs/{run_id}/timeline", tenant=tenant, retry_until=deadline
        )
        return time.perf_counter() - start, list(body["items"])

    async def usage(self, tenant: str) -> dict[str, float]:
        """The tenant's usage counters summed over days and dimensions, per metric."""
        body = await self.call("GET", "/v1/usage", tenant=tenant)
        out: dict[str, float] = {}
        for row in body["items"]:
            out[row["metric"]] = out.get(row["metric"], 0.0) + float(row["value"])
        return out


def _origin(location: str) -> str:
    """``scheme://host:port`` of a redirect's target (cells serve the API at their root)."""
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""


def shuffled(items: Sequence[str], seed: int) -> list[str]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out
