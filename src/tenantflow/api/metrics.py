"""Prometheus metrics of the API process, served at ``/metrics``.

HTTP metrics are labelled by method, route template (``/v1/runs/{run_id}``, never the raw path)
and status class (``2xx``…), so their cardinality is fixed by the app's routes: no tenant id, run
id or arbitrary path can create a series.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HttpMetrics", "MetricsMiddleware"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
UNMATCHED = "<unmatched>"


class HttpMetrics:
    """The API's own series, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tenantflow_http_requests",
            "HTTP requests answered, by method, route template and status class.",
            ("method", "route", "status_class"),
            registry=registry,
        )
        self.latency = Histogram(
            "tenantflow_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of the body), by route template.",
            ("method", "route"),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "tenantflow_http_requests_in_flight",
            "HTTP requests being answered.",
            registry=registry,
        )
        self.submissions_in_flight = Gauge(
            "tenantflow_api_submissions_in_flight",
            "Run submissions being recorded (capped per process).",
            registry=registry,
        )
        self.submissions_refused = Counter(
            "tenantflow_api_submissions_refused",
            "Run submissions refused with 429 because the process was at its cap.",
            registry=registry,
        )


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            m.requests.labels(method, template, f"{status // 100}xx").inc()
            m.latency.labels(method, template).observe(time.perf_counter() - start)
