"""Prometheus metrics per app; aggregated across replicas through prometheus_client's
multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (``pygrid node`` sets it)."""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)


class Metrics:
    """The request counters and latency histogram of one app (``init_app`` style)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pygrid_http_requests",
            "HTTP requests answered, by route, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pygrid_http_request_seconds",
            "Seconds spent answering HTTP requests, by route",
            ["endpoint"],
            registry=self.registry,
        )

    def init_app(self, app: Flask) -> None:
        """Time every request of ``app``."""
        app.extensions["pygrid.metrics"] = self
        app.before_request(self._start)
        app.after_request(self._finish)

    def _start(self) -> None:
        g.metrics_started = time.perf_counter()

    def _finish(self, response: Response) -> Response:
        endpoint = request.endpoint or "unmatched"
        self.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        started = g.pop("metrics_started", None)
        if started is not None:
            self.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def exposition(self) -> Response:
        """The Prometheus text format of every metric, summed over replicas when there are several."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
