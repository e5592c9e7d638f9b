"""The PyGrid Node: hosts models for model-centric FL and private datasets for data-centric FL."""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask

from pygrid.config import AppKind
from pygrid.server.app import ConfigArg, build_app
from pygrid.server.bootstrap import Prepared


def create_app(config: ConfigArg = None) -> Flask:
    """Build a Node app: defaults, then the environment, then ``config`` (settings or a dict)."""
    from pygrid.apps.node import catalogue, dashboard, data_centric, model_centric, worker_api

    return build_app(
        __name__,
        AppKind.node,
        config,
        blueprints=(model_centric.bp, data_centric.bp, worker_api.bp, catalogue.bp, dashboard.bp),
        setup=_setup,
    )


def _setup(app: Flask, prepared: Prepared) -> None:
    from pygrid.data_centric.queue import QueueSignal
    from pygrid.server.auth import WorkerAuth

    WorkerAuth().init_app(app)
    app.extensions["pygrid.queue"] = QueueSignal()
    _start_scheduler(app, prepared)
    _start_membership(app)
    _publish_worker_token(app)


def _publish_worker_token(app: Flask) -> None:
    """In a cloud deployment, the token the Worker group reads from the cloud's secret store."""
    from pygrid.providers.worker_secret import publish_in_background

    publish_in_background(app.config["PYGRID_SETTINGS"], app.extensions["pygrid.db"].sessions)


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


def _start_membership(app: Flask) -> None:
    """Join the Network and heartbeat (docs/network.md): one replica of the Node does it."""
    from pygrid.network.catalogue import node_catalogue
    from pygrid.network.membership import Membership

    settings = app.config["PYGRID_SETTINGS"]
    if not settings.network_url:
        return
    sessions = app.extensions["pygrid.db"].sessions

    def catalogue() -> dict[str, Any]:
        with sessions() as session:
            return node_catalogue(session, settings.id)

    membership = Membership(settings, catalogue)
    app.extensions["pygrid.membership"] = membership
    membership.start()
    # Under gunicorn a replica exits normally on SIGTERM/SIGINT: say goodbye to the Network then.
    atexit.register(membership.stop)
