"""Prometheus metrics of one app: its own registry, a timing middleware, and the live engine's state.

    npid_http_requests_total{method, route, status}
    npid_http_request_duration_seconds{method, route, status}   histogram
    npid_search_stage_seconds{stage="decode"|"embed"|"search"}   histogram
    npid_collection_size                                          images searchable now
    npid_live_version_info{version}                               1 for the version serving now
    npid_version_swaps_total{outcome="swapped"|"refused"}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "<unmatched>"  # requests no route matched share one label: bounded cardinality


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("npid_http_requests", "HTTP requests by route and status",
                                ("method", "route", "status"), registry=self.registry)
        self.latency = Histogram("npid_http_request_duration_seconds", "HTTP request latency",
                                 ("method", "route", "status"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("npid_search_stage_seconds", "time per search stage", ("stage",),
                               buckets=LATENCY_BUCKETS, registry=self.registry)
        self.swaps = Counter("npid_version_swaps", "version changes tried by the engine", ("outcome",),
                             registry=self.registry)

    def observe_stages(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage.labels(stage).observe(seconds)

    def watch(self, live_state: Callable[[], tuple[str | None, int]]) -> None:
        """Report the live (version, collection size) at every scrape."""
        self.registry.register(_LiveCollector(live_state))


class _LiveCollector(Collector):
    def __init__(self, live_state: Callable[[], tuple[str | None, int]]):
        self.live_state = live_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        version, size = self.live_state()
        yield GaugeMetricFamily("npid_collection_size", "images searchable in the live version", value=size)
        info = GaugeMetricFamily("npid_live_version_info", "the index version serving now", labels=["version"])
        if version is not None:
            info.add_metric([version], 1)
        yield info


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (`/images/{image_id}`)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", UNMATCHED) if route is not None else UNMATCHED
            labels = (scope["method"], label, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
