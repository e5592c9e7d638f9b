"""The PyGrid Node: hosts models for model-centric FL and private datasets for data-centric FL."""

from __future__ import annotations

from typing import Any

from flask import Flask

from pygrid.config import AppKind
from pygrid.server.app import ConfigArg, build_app
from pygrid.server.bootstrap import Prepared


def create_app(config: ConfigArg = None) -> Flask:
    """Build a Node app: defaults, then the environment, then ``config`` (settings or a dict)."""
    from pygrid.apps.node import data_centric, model_centric, worker_api

    return build_app(
        __name__,
        AppKind.node,
        config,
        blueprints=(model_centric.bp, data_centric.bp, worker_api.bp),
        setup=_setup,
    )


def _setup(app: Flask, prepared: Prepared) -> None:
    from pygrid.data_centric.queue import QueueSignal
    from pygrid.server.auth import WorkerAuth

    WorkerAuth().init_app(app)
    app.extensions["pygrid.queue"] = QueueSignal()
    _start_scheduler(app, prepared)


def _start_scheduler(app: Flask, prepared: Prepared) -> None:
    from pygrid.data_centric.maintenance import JobMaintenance, autoscaler_from_settings
    from pygrid.model_centric.scheduler import CycleScheduler

    metrics = app.extensions["pygrid.metrics"]
    sessions = app.extensions["pygrid.db"].sessions

    def on_closed(_cycle: Any, seconds: float) -> None:
        metrics.cycles_closed.inc()
        metrics.aggregation_seconds.observe(seconds)

    settings = app.config["PYGRID_SETTINGS"]
    maintenance = JobMaintenance(sessions, autoscaler_from_settings(settings))
    app.extensions["pygrid.maintenance"] = maintenance
    interval = settings.scheduler_interval
    scheduler = CycleScheduler(
        sessions,
        prepared.blobs,
        interval=interval or 1.0,
        on_closed=on_closed,
        chores=(maintenance.run_once,),
    )
    app.extensions["pygrid.scheduler"] = scheduler
    if interval > 0:
        scheduler.start()
