"""Prometheus metrics of the API layer.

Routes are labelled by their URL template (``/v1/messages/<message_id>``), never by the raw path, so a client
probing random ids cannot blow up the label cardinality; unmatched paths share the label ``unmatched``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

UNMATCHED_ROUTE = "unmatched"
# Seconds; REST calls are SQLite-bound, so most land in the low milliseconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "hcrm_api_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "hcrm_api_request_duration_seconds",
            "HTTP request handling time by route template, method and status",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ws_clients = Gauge(
            "hcrm_api_ws_clients", "Connected, authenticated event WebSocket clients", registry=registry
        )
        self.ws_events_sent = Counter(
            "hcrm_api_ws_events_sent_total", "Event frames written to WebSocket clients", registry=registry
        )
        self.ws_clients_closed = Counter(
            "hcrm_api_ws_clients_closed_total",
            "WebSocket clients closed by the server, by reason (slow_consumer, auth, bad_request, shutdown)",
            ["reason"],
            registry=registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method, str(status)).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, with its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
