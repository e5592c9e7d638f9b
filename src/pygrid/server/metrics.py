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

        # Model-centric FL: what /metrics promises operators (issue 3).
        self.reports = Counter(
            "pygrid_fl_reports", "Device reports, by outcome", ["outcome"], registry=self.registry
        )
        self.cycle_requests = Counter(
            "pygrid_fl_cycle_requests",
            "Cycle requests, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.cycles_closed = Counter(
            "pygrid_fl_cycles_closed", "Cycles folded into a checkpoint", registry=self.registry
        )
        self.aggregation_seconds = Histogram(
            "pygrid_fl_aggregation_seconds",
            "Seconds to fold a cycle's diffs into a checkpoint",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )

        self.jobs_claimed = Counter(
            "pygrid_jobs_claimed", "Data-centric jobs leased to Workers", registry=self.registry
        )
        self.jobs_finished = Counter(
            "pygrid_jobs_finished",
            "Data-centric job reports from Workers, by outcome",
            ["outcome"],
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
