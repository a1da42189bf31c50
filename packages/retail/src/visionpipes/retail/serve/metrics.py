"""Prometheus metrics of one app, through `prometheus-client` with a registry per app (two apps in
one process never share a counter): request counts by method/route/status, a request-latency
histogram per route (p50/p99 via `histogram_quantile` over its `_bucket` series), and the index
gauges read at scrape time.

Owns no routes; `app` wires `observe` into a middleware and `exposition` into `GET /metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Latency buckets in seconds: sub-millisecond health checks up to multi-second batch searches.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Index gauges: (metric name, key of `ProductIndex.stats()`, help text).
INDEX_GAUGES = (
    ("retail_index_products", "products", "Products in the index."),
    ("retail_index_vectors", "vectors", "Live view vectors in the index."),
    ("retail_index_tombstones", "tombstones", "Deleted vectors still inside the FAISS index."),
    ("retail_index_journal_changes", "journal_changes", "Changes not yet folded into a snapshot."),
)


class _IndexCollector(Collector):
    """The index gauges, from one `stats()` call per scrape."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.stats()
        for name, key, text in INDEX_GAUGES:
            yield GaugeMetricFamily(name, text, value=float(s[key]))


class ServerMetrics:
    """The metrics of one app, in their own `CollectorRegistry`.

    Args:
        stats: returns the index counts (`ProductIndex.stats`), called at every scrape.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_IndexCollector(stats))
        self.requests = Counter(
            "retail_http_requests",
            "HTTP requests by method, route and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "retail_http_request_seconds",
            "Seconds spent serving each route (histogram: p50/p99 via histogram_quantile).",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of this app's registry."""
        return generate_latest(self.registry)
