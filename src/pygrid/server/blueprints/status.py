"""``GET /status``: who this server is and whether its database and blob store answer."""

from __future__ import annotations

import time

from flask import Blueprint, current_app
from pydantic import BaseModel

import pygrid
from pygrid.db.engine import ping
from pygrid.server.endpoint import endpoint

bp = Blueprint("status", __name__)


class Dependency(BaseModel):
    """The health of one thing the server needs."""

    reachable: bool
    backend: str
    error: str | None = None


class Status(BaseModel):
    """The answer of ``GET /status``."""

    id: str
    app: str
    version: str
    uptime_seconds: float
    network_url: str | None
    num_replicas: int
    database: Dependency
    blob_store: Dependency


def _check(check: object, backend: str) -> Dependency:
    try:
        check()  # type: ignore[operator]
    except Exception as exc:  # any failure means unhealthy; the message helps the operator
        return Dependency(reachable=False, backend=backend, error=type(exc).__name__)
    return Dependency(reachable=True, backend=backend)


@endpoint(
    bp, "/status", summary="Identity, version, uptime and health", public=True, response=Status
)
def status() -> Status | tuple[dict[str, object], int]:
    """200 when healthy, 503 with the same body when the database or blob store fails."""
    settings = current_app.config["PYGRID_SETTINGS"]
    engine = current_app.extensions["pygrid.db"].engine
    store = current_app.extensions["pygrid.blobs"]
    result = Status(
        id=settings.id,
        app=str(settings.app),
        version=pygrid.__version__,
        uptime_seconds=round(time.time() - current_app.config["PYGRID_STARTED_AT"], 3),
        network_url=settings.network_url,
        num_replicas=settings.num_replicas,
        database=_check(lambda: ping(engine), engine.dialect.name),
        blob_store=_check(store.check, type(store).__name__),
    )
    if result.database.reachable and result.blob_store.reachable:
        return result
    return result.model_dump(mode="json"), 503
